#!/usr/bin/env bash
# Records Envoy 1.40 scrapes that hold detour's own measurements: the wasm
# measure plugin's detour_ttft_milliseconds, detour_response_milliseconds
# and detour_output_tokens_per_second histograms per backend.
#
# It starts the quickstart stack (`detour up`, which loads bin/detour.wasm)
# on ports shifted away from `make run` and from capture.sh, scrapes once,
# sends streaming and non-streaming chat completions while the simulated
# fast provider answers with a 150 ms first token at 200 tokens a second,
# waits for a stats flush (histograms merge every 5 s) and scrapes again.
#
#   cd signals/testdata && ./capture-measure.sh   (needs bin/detour, bin/detour.wasm, .venv/bin/envoy)
#
# Output:
#   measure/00.prom, measure/01.prom   filtered scrapes (?usedonly&filter=StatsFilter)
#   measure/times.txt                  "NN unix_millis phase" for each
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
trap 'kill "${up_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

sed -e 's/127.0.0.1:810\([1-4]\)/127.0.0.1:3810\1/' -e 's/127.0.0.1:10000/127.0.0.1:30000/' \
    -e 's/127.0.0.1:9901/127.0.0.1:39901/' -e 's/127.0.0.1:9002/127.0.0.1:39002/' \
    -e 's/127.0.0.1:9190/127.0.0.1:39190/' -e 's/127.0.0.1:9191/127.0.0.1:39191/' \
    -e 's/127.0.0.1:18000/127.0.0.1:38000/' "$root/examples/quickstart/policy.yaml" > "$work/policy.yaml"

admin=http://127.0.0.1:39901
envoy=http://127.0.0.1:30000/v1/chat/completions
# Keep in step with signals.StatsFilter (capture.sh holds the same line).
filter='^(cluster\.[^.]+\.((retry\.)?upstream_rq_([0-9]xx|429)|upstream_rq_time|upstream_rq_retry(_success|_overflow)?|upstream_rq_per_try_timeout|upstream_rq_rx_reset|upstream_cx_connect_fail|upstream_cx_destroy_remote_with_active_rq|outlier_detection\.ejections_active|circuit_breakers\.default\.(rq_open|rq_retry_open|rq_pending_open))|wasmcustom\.detour_(ttft_milliseconds|response_milliseconds|output_tokens_per_second)\.backend\.[^.]+|server\.uptime)$'

(cd "$root" && exec ./bin/detour up --policy "$work/policy.yaml" --workdir "$work/envoy" >"$work/up.log" 2>&1) &
up_pid=$!
for _ in $(seq 100); do curl -sf "$admin/ready" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf "$admin/ready" >/dev/null || { cat "$work/up.log"; exit 1; }

req() { # $1 = model, $2 = stream (true/false)
  curl -s -o /dev/null -H 'content-type: application/json' "$envoy" \
    -d "{\"model\":\"$1\",\"stream\":$2,\"messages\":[{\"role\":\"user\",\"content\":\"tell me a story\"}]}" || true
}
mkdir -p "$here/measure"; rm -f "$here"/measure/*.prom; : > "$here/measure/times.txt"
n=0
scrape() { # $1 = phase
  local f; f=$(printf '%s/measure/%02d.prom' "$here" "$n")
  curl -sfG "$admin/stats/prometheus" --data usedonly --data-urlencode "filter=$filter" > "$f"
  echo "$(printf %02d "$n") $(date +%s%3N) $1" >> "$here/measure/times.txt"
  n=$((n + 1))
}

# Some fast traffic first, so the first scrape already holds histograms.
for _ in $(seq 10); do req auto true; req auto false; done
sleep 6
scrape before
curl -sf 127.0.0.1:39101/_sim/faults -d '{"ttft_ms":150,"tokens_per_second":200}' >/dev/null
for _ in $(seq 20); do req auto true; req auto false; done
for _ in $(seq 5); do req long-200k true; done
curl -sf -X DELETE 127.0.0.1:39101/_sim/faults >/dev/null
sleep 6
scrape after
echo "captured $n scrapes"
