#!/usr/bin/env bash
# Passes `go test -v` output through and keeps its exit status meaningful:
# prints the full log, then a closing "N passed, N failed" line, and exits
# non-zero when any test failed or the run did not finish. When tests
# failed, it repeats each failing test's own messages (first line of each,
# without the stack logs a failure dumps) just above the closing line, so
# the tail of a long CI log says why.
set -uo pipefail
log=$(mktemp)
tee "$log"
passed=$(grep -cE '^\s*--- PASS' "$log" || true)
failed=$(grep -cE '^\s*--- FAIL' "$log" || true)
skipped=$(grep -cE '^\s*--- SKIP' "$log" || true)
if [ "$failed" -gt 0 ]; then
	echo "why they failed (each test's own messages, first lines only):"
	awk '
		/^=== RUN   [^\/]+$/ { n = 0; next }
		/^ +[A-Za-z0-9_]+_test\.go:[0-9]+: / {
			line = $0; sub(/^ +/, "", line)
			if (length(line) > 300) line = substr(line, 1, 300) "..."
			msgs[++n] = line; next
		}
		/^ *--- FAIL: / {
			name = $3; print "  " name
			for (i = 1; i <= n; i++) print "    " msgs[i]
			if ($0 ~ /^--- FAIL/) n = 0
		}
	' "$log"
fi
echo "e2e: $passed passed, $failed failed, $skipped skipped"
status=0
grep -qE '^(FAIL|panic:)' "$log" && status=1
[ "$failed" -gt 0 ] && status=1
grep -qE '^(ok|PASS)' "$log" || status=1
rm -f "$log"
exit $status
