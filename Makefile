# detour: two commands matter on a fresh clone.
#   make run    builds everything, obtains Envoy if missing, starts the quickstart stack
#   make test   the whole suite: lint, unit tests (race), short fuzzing, e2e against a real Envoy, a 2-minute soak
SHELL := /bin/bash
GO ?= go
BIN := bin/detour
WASM := bin/detour.wasm
ENVOY = $(shell scripts/get-envoy.sh --path)
UNIT_PKGS = $(shell $(GO) list ./... | grep -v /e2e)
FUZZTIME ?= 2m
FUZZ_CI_TIME ?= 5s
# Every fuzz target, as package:FuzzName; their seed corpora are in each
# package's testdata/fuzz/FuzzName/.
FUZZ_TARGETS = \
	./route/:FuzzParseRequest \
	./route/:FuzzAPIErrorJSON \
	./policy/:FuzzParse \
	./extproc/:FuzzProcess \
	./extproc/:FuzzScanFirstToken \
	./wasm/proxywasm/:FuzzDecodePairs \
	./wasm/plugin/:FuzzUsageScanner \
	./signals/:FuzzParse \
	./signals/:FuzzParseHosts \
	./probe/:FuzzAnswer \
	./respcache/:FuzzParse

.PHONY: all build wasm run test unit e2e bench bench-micro envoy lint fuzz fuzz-ci schema clean chaos soak soak-ci

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

test: lint unit fuzz-ci e2e soak-ci

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

# The chaos suite, about 25 minutes: every fault of the catalogue with
# detour and against plain Envoy; writes reports/chaos.md, a plot per
# scenario in reports/chaos/ and the summary in README.md.
chaos: build
	@scripts/get-envoy.sh
	ENVOY_BIN="$(ENVOY)" $(GO) run ./bench/cmd/detour-bench -detour $(CURDIR)/$(BIN) -wasm $(CURDIR)/$(WASM) -only chaos

# The soak: $(SOAK) of mixed load with faults coming and going; writes
# reports/soak.md and fails on a crash, a leak or growing memory.
SOAK ?= 20m
soak: build
	@scripts/get-envoy.sh
	ENVOY_BIN="$(ENVOY)" $(GO) run ./bench/cmd/detour-bench -detour $(CURDIR)/$(BIN) -wasm $(CURDIR)/$(WASM) -only soak -soak-duration $(SOAK)

# The soak's short version in `make test` (report in bin/, not committed).
soak-ci: build
	@scripts/get-envoy.sh
	ENVOY_BIN="$(ENVOY)" $(GO) run ./bench/cmd/detour-bench -detour $(CURDIR)/$(BIN) -wasm $(CURDIR)/$(WASM) -only soak -soak-duration 2m -soak-out $(CURDIR)/bin/soak-ci.md

fuzz:
	@GO="$(GO)" scripts/fuzz.sh $(FUZZTIME) $(FUZZ_TARGETS)

# A short run of every target: part of `make test`.
fuzz-ci:
	@GO="$(GO)" scripts/fuzz.sh $(FUZZ_CI_TIME) $(FUZZ_TARGETS)

schema: build
	./$(BIN) schema > policy/detour-policy.schema.json

clean:
	rm -rf bin .venv
