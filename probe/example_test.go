package probe_test

import (
	"context"
	"fmt"
	"time"

	"github.com/detourhq/detour/health"
	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/probe"
)

// A controller's probing step, once per evaluation: probe the backends
// that are due and count every result like a request, every failed one
// like a failed request, in the totals its health.Observation carries.
func Example() {
	pol := &policy.Policy{Backends: []policy.Backend{{
		Name: "a", Model: "m", Endpoints: []policy.Endpoint{{Address: "127.0.0.1:1"}},
		Capabilities: policy.Capabilities{ContextWindow: 8192},
	}}}
	pol.ApplyDefaults()
	prober, err := probe.New(pol, nil)
	if err != nil {
		panic(err)
	}
	defer prober.Close()
	sched := probe.NewScheduler(pol)

	var totalRequests, totalErrors uint64
	now := time.Now()
	state, busy := health.Open, false // from the health machine and Envoy's stats
	for _, b := range pol.Backends {
		if !sched.Due(b.Name, state, busy, now) {
			continue
		}
		results := prober.Probe(context.Background(), b.Name)
		sched.Spent(b.Name, len(results), now)
		for _, r := range results {
			totalRequests++
			if !r.OK {
				totalErrors++
			}
		}
	}
	fmt.Println(totalRequests, totalErrors) // nothing listens on 127.0.0.1:1
	// Output: 2 2
}
