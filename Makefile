# detour: two commands matter on a fresh clone.
#   make run    builds everything, obtains Envoy if missing, starts the quickstart stack
#   make test   the whole suite: lint, unit tests (race), e2e against a real Envoy
SHELL := /bin/bash
GO ?= go
BIN := bin/detour
WASM := bin/detour.wasm
ENVOY = $(shell scripts/get-envoy.sh --path)
UNIT_PKGS = $(shell $(GO) list ./... | grep -v /e2e)
FUZZTIME ?= 30s

.PHONY: all build wasm run test unit e2e bench bench-micro envoy lint fuzz schema clean

all: build

# detour.wasm sits beside the detour binary, where detour looks for it.
build: wasm
	$(GO) build -o $(BIN) ./cmd/detour

# The proxy-wasm plugin, with the standard Go toolchain (see wasm/main.go).
wasm:
	GOOS=wasip1 GOARCH=wasm $(GO) build -buildmode=c-shared -trimpath -ldflags="-s -w" -o $(WASM) ./wasm

envoy:
	@scripts/get-envoy.sh

run: build
	@ENVOY_BIN="$(ENVOY)" ./$(BIN) up

test: lint unit e2e

# Unit tests include a check of the generated bootstrap by the real Envoy.
unit: wasm
	@scripts/get-envoy.sh
	@scripts/get-prometheus.sh
	@scripts/get-redis.sh
	ENVOY_BIN="$(ENVOY)" PROMETHEUS_BIN="$$(scripts/get-prometheus.sh --path)" REDIS_BIN="$$(scripts/get-redis.sh --path)" DETOUR_WASM="$(CURDIR)/$(WASM)" $(GO) test -race -count=1 $(UNIT_PKGS)
	$(GO) test -count=1 -run 'Allocs$$' ./route/   # exact allocation counts: not under -race

e2e: build
	@scripts/get-envoy.sh
	@scripts/get-prometheus.sh
	@scripts/get-redis.sh
	ENVOY_BIN="$(ENVOY)" PROMETHEUS_BIN="$$(scripts/get-prometheus.sh --path)" REDIS_BIN="$$(scripts/get-redis.sh --path)" DETOUR_BIN="$(CURDIR)/$(BIN)" DETOUR_WASM="$(CURDIR)/$(WASM)" $(GO) test -count=1 -timeout 20m -v ./e2e/ 2>&1 | scripts/testsummary.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "not gofmt'ed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	GOOS=wasip1 GOARCH=wasm $(GO) build ./route/
	GOOS=wasip1 GOARCH=wasm $(GO) vet ./wasm/...

bench-micro:
	$(GO) test -run '^$$' -bench . -benchmem -count=5 ./route/ ./extproc/

bench: build
	@scripts/get-envoy.sh
	@scripts/get-redis.sh
	ENVOY_BIN="$(ENVOY)" REDIS_BIN="$$(scripts/get-redis.sh --path)" $(GO) run ./bench/cmd/detour-bench -detour $(CURDIR)/$(BIN) -out BENCHMARKS.md

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParseRequest$$' -fuzztime $(FUZZTIME) ./route/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./policy/
	$(GO) test -run '^$$' -fuzz '^FuzzProcess$$' -fuzztime $(FUZZTIME) ./extproc/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodePairs$$' -fuzztime $(FUZZTIME) ./wasm/proxywasm/
	$(GO) test -run '^$$' -fuzz '^FuzzUsageScanner$$' -fuzztime $(FUZZTIME) ./wasm/plugin/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./signals/
	$(GO) test -run '^$$' -fuzz '^FuzzParseHosts$$' -fuzztime $(FUZZTIME) ./signals/
	$(GO) test -run '^$$' -fuzz '^FuzzAnswer$$' -fuzztime $(FUZZTIME) ./probe/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./respcache/

schema: build
	./$(BIN) schema > policy/detour-policy.schema.json

clean:
	rm -rf bin .venv
