#!/usr/bin/env bash
# Passes `go test -v` output through and keeps its exit status meaningful:
# prints the full log, then a closing "N passed, N failed" line, and exits
# non-zero when any test failed or the run did not finish.
set -uo pipefail
log=$(mktemp)
tee "$log"
passed=$(grep -cE '^\s*--- PASS' "$log" || true)
failed=$(grep -cE '^\s*--- FAIL' "$log" || true)
skipped=$(grep -cE '^\s*--- SKIP' "$log" || true)
echo "e2e: $passed passed, $failed failed, $skipped skipped"
status=0
grep -qE '^(FAIL|panic:)' "$log" && status=1
[ "$failed" -gt 0 ] && status=1
grep -qE '^(ok|PASS)' "$log" || status=1
rm -f "$log"
exit $status
