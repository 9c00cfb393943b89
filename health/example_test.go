package health_test

import (
	"fmt"
	"time"

	"github.com/detourhq/detour/health"
)

func ExampleMachine() {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	m, err := health.New(health.DefaultConfig(), func() time.Time { return now })
	if err != nil {
		panic(err)
	}
	// Each tick, one Observation per backend: Envoy's window from package
	// signals (Stats.Span, Requests, Errors, Failures, P95, ...) plus
	// detour's own TTFT and token rate.
	batch := []health.Observation{
		{Backend: "fast", Window: 30 * time.Second, Requests: 128, Errors: 40, TotalRequests: 128, TotalErrors: 40},
		{Backend: "long", Window: 30 * time.Second, Requests: 64, P95: 900 * time.Millisecond, LatencySamples: 64, TotalRequests: 64},
	}
	for _, t := range m.ObserveAll(batch, nil) {
		// In the controller: one slog line and one counter per transition.
		fmt.Println(t)
	}
	now = now.Add(10 * time.Second)
	tr, _ := m.Observe(health.Observation{Backend: "fast", TotalRequests: 128, TotalErrors: 40})
	fmt.Println(tr)
	st, _ := m.Status("fast")
	fmt.Println(st.State, st.Opens)
	// Output:
	// fast: HEALTHY → OPEN: error rate 31.2% > 25% over 30s (n=128); cool-down 10s
	// fast: OPEN → HALF_OPEN: cool-down 10s elapsed (opening 1 in a row)
	// HALF_OPEN 1
}
