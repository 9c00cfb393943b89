#!/usr/bin/env bash
# Re-records the Envoy 1.40 /stats/prometheus captures in this directory.
#
# It starts the quickstart stack (`detour up`) on shifted ports so it does
# not collide with a running `make run`, drives traffic through Envoy while
# scripting faults on the simulated providers, and scrapes Envoy's admin
# endpoint once a second with the same query the scraper sends. Halfway it
# restarts the stack, so the sequence holds a real counter reset.
#
#   cd signals/testdata && ./capture.sh      (needs bin/detour and .venv/bin/envoy)
#
# Output:
#   envoy-1.40-full.prom     one unfiltered scrape after the fault scenario
#   seq/NN.prom              filtered scrapes (?usedonly&filter=...), one a second
#   seq/times.txt            "NN unix_millis phase" for each scrape
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
trap 'kill "${up_pid:-0}" 2>/dev/null || true; kill "${load_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

# The quickstart policy on shifted ports, with a 1 s per-try timeout.
sed -e 's/127.0.0.1:810\([1-4]\)/127.0.0.1:2810\1/' -e 's/127.0.0.1:10000/127.0.0.1:20000/' \
    -e 's/127.0.0.1:9901/127.0.0.1:29901/' -e 's/127.0.0.1:9002/127.0.0.1:29002/' \
    -e 's/127.0.0.1:9190/127.0.0.1:29190/' -e 's/127.0.0.1:9191/127.0.0.1:29191/' \
    -e 's/127.0.0.1:18000/127.0.0.1:28000/' "$root/examples/quickstart/policy.yaml" > "$work/policy.yaml"
printf '\nretry:\n  per_try_timeout: 1s\n' >> "$work/policy.yaml"

admin=http://127.0.0.1:29901
envoy=http://127.0.0.1:20000/v1/chat/completions
# Keep in step with signals.StatsFilter.
filter='^(cluster\.[^.]+\.((retry\.)?upstream_rq_([0-9]xx|429)|upstream_rq_time|upstream_rq_retry(_success|_overflow)?|upstream_rq_per_try_timeout|upstream_rq_rx_reset|upstream_cx_connect_fail|upstream_cx_destroy_remote_with_active_rq|outlier_detection\.ejections_active|circuit_breakers\.default\.(rq_open|rq_retry_open|rq_pending_open))|wasmcustom\.detour_(ttft_milliseconds|response_milliseconds|output_tokens_per_second)\.backend\.[^.]+|server\.uptime)$'

up() {
  (cd "$root" && exec ./bin/detour up --policy "$work/policy.yaml" --workdir "$work/envoy" >"$work/up.log" 2>&1) &
  up_pid=$!
  for _ in $(seq 100); do curl -sf "$admin/ready" >/dev/null 2>&1 && return; sleep 0.1; done
  cat "$work/up.log"; exit 1
}
down() { kill "$up_pid"; wait "$up_pid" 2>/dev/null || true; }
fault() { curl -sf "127.0.0.1:$1/_sim/faults" -d "$2" >/dev/null; }
clear() { curl -sf -X DELETE "127.0.0.1:$1/_sim/faults" >/dev/null; }
req() { curl -s -o /dev/null -H 'content-type: application/json' "$envoy" -d "{\"model\":\"$1\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}" "${@:2}" || true; }
load() { while :; do req auto & sleep 0.05; done; }  # about 20 requests a second

mkdir -p "$here/seq"; rm -f "$here"/seq/*.prom; : > "$here/seq/times.txt"
n=0
scrape() { # $1 = phase
  local f; f=$(printf '%s/seq/%02d.prom' "$here" "$n")
  curl -sfG "$admin/stats/prometheus" --data usedonly --data-urlencode "filter=$filter" > "$f"
  echo "$(printf %02d "$n") $(date +%s%3N) $1" >> "$here/seq/times.txt"
  n=$((n + 1))
}
phase() { # $1 = name, $2 = seconds
  for _ in $(seq "$2"); do sleep 1; scrape "$1"; done
}

up
scrape start
load & load_pid=$!
phase healthy 8
fault 29101 '{"status":503,"rate":0.4}'   # fast: 40 % 503, retried on fast-b
phase brownout 8
clear 29101
fault 29101 '{"latency_ms":700}'          # fast: slow but under the 1 s per-try timeout
phase slow 12
clear 29101
kill "$load_pid"; wait "$load_pid" 2>/dev/null || true

# The fault tour for the unfiltered capture: a 429 retried elsewhere, an
# upstream reset, a refused connection, per-try timeouts, and a final 503.
fault 29101 '{"status":429,"rate":0.5,"retry_after_s":1}'; for _ in $(seq 10); do req auto; done; clear 29101
fault 29103 '{"reset":true,"rate":0.5}'; for _ in $(seq 6); do req long-200k; done; clear 29103
fault 29102 '{"refuse":true}'; for _ in $(seq 5); do req auto -H 'x-sim-target: fast' -H 'x-sim-status: 503'; done; clear 29102
fault 29104 '{"latency_ms":1500}'; for _ in $(seq 2); do req vision-128k; done; clear 29104
fault 29103 '{"status":503}'; for _ in $(seq 4); do req long-200k; done; clear 29103
sleep 6  # let a stats flush merge the histograms
curl -sf "$admin/stats/prometheus" > "$here/envoy-1.40-full.prom"
phase tour 1

# A restart: every counter starts again from zero.
down
up
load & load_pid=$!
phase restarted 6
kill "$load_pid"; wait "$load_pid" 2>/dev/null || true
down
echo "captured $n scrapes"
