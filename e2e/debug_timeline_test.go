package e2e

import (
	"fmt"
	"strings"
	"time"
)

// dump renders per-second figures of the clients' view, for a test's log:
// requests started, how many went to backend (answered by it, or retried),
// attempts per request, stream TTFT p99, and the controller's state.
func (tl *timeline) dump(backend string) string {
	var b strings.Builder
	for sec := 0; ; sec++ {
		from, until := time.Duration(sec)*time.Second, time.Duration(sec+1)*time.Second
		var mine, all int
		for _, o := range tl.outcomes {
			if o.at >= from && o.at < until {
				all++
				if o.backend == backend || o.attempts > 1 {
					mine++
				}
			}
		}
		if all == 0 {
			break
		}
		fmt.Fprintf(&b, "%2ds %s %2d/%2d requests, %.2f attempts each, stream TTFT p99 %v, %s\n", sec, backend, mine, all,
			tl.attemptsPerRequest(from, until), tl.ttftQuantile(0.99, from, until).Round(time.Millisecond), tl.stateAfter(backend, from))
	}
	return b.String()
}

// offenders lists the requests started in [from, until) that count
// against backend's share in shiftedAt: served by it, or retried.
func (tl *timeline) offenders(backend string, from, until time.Duration) string {
	var b strings.Builder
	for _, o := range tl.outcomes {
		if o.at >= from && o.at < until && (o.backend == backend || o.attempts > 1) {
			fmt.Fprintf(&b, "%7.2fs served by %s after %d attempt(s)\n", o.at.Seconds(), o.backend, o.attempts)
		}
	}
	return b.String()
}
