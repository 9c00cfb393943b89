package controller

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/detourhq/detour/health"
	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/signals"
)

// An outing's end hands the state machine only what the endpoint does
// from then on: its new outcomes count at once (a HALF_OPEN backend
// needs them), the timeouts that took it out never do, neither in the
// window nor as a jump of the monotonic totals when the outing is over.
func TestEndpointOutingEndsCleanly(t *testing.T) {
	const east, west = "127.0.0.1:8101", "127.0.0.1:8111"
	p := quickstart(t)
	p.Backends[0].Endpoints = append(p.Backends[0].Endpoints, policy.Endpoint{Address: west, Region: "west"})
	hc := healthConfig(p)
	j := newEndpointJudge(slog.New(slog.DiscardHandler), prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x"}, []string{"backend", "cause"}))
	j.setPolicy(p)
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	eastW := signals.HostWindow{Requests: 200, Errors: 150, TotalRequests: 1200, TotalErrors: 150, Active: 40, Started: 60, Unanswered: 3 * time.Second}
	westW := signals.HostWindow{Requests: 400, TotalRequests: 2400}
	var given health.Observation
	eval := func(d time.Duration) health.Observation {
		t.Helper()
		now = now.Add(d)
		o := health.Observation{Backend: "fast", Window: 30 * time.Second, P95: 80 * time.Millisecond, LatencySamples: 500,
			Requests: eastW.Requests + westW.Requests, Errors: eastW.Errors + westW.Errors,
			TotalRequests: eastW.TotalRequests + westW.TotalRequests, TotalErrors: eastW.TotalErrors + westW.TotalErrors}
		x := backendInput{name: "fast", endpoints: 2, hosts: map[string]signals.HostWindow{east: eastW, west: westW}}
		j.judge(context.Background(), p, &hc, &x, &o, now)
		return o
	}
	given = eval(0)
	if e := j.outs["fast"][east]; e == nil || !now.Before(e.until) {
		t.Fatal("the silent endpoint was not taken out")
	}
	// While out: more timeouts there, good answers in the west.
	for range 5 {
		eastW.TotalRequests, eastW.TotalErrors = eastW.TotalRequests+10, eastW.TotalErrors+10
		westW.TotalRequests += 100
		o := eval(time.Second)
		if dr, de := o.TotalRequests-given.TotalRequests, o.TotalErrors-given.TotalErrors; dr != 100 || de != 0 {
			t.Fatalf("while out: +%d requests +%d errors handed on, want +100 +0", dr, de)
		}
		if o.Errors != 0 || o.Requests != westW.Requests {
			t.Fatalf("while out: window %d requests %d errors, want the west's %d and none", o.Requests, o.Errors, westW.Requests)
		}
		given = o
	}
	// Back after its cool-down (no reacher here): nothing in flight,
	// the window still holding its timeouts.
	eastW.Active, eastW.Started, eastW.Unanswered = 0, 0, 0
	given = eval(6 * time.Second)
	if e := j.outs["fast"][east]; now.Before(e.until) {
		t.Fatal("not back after its cool-down")
	}
	// Then it answers: 20 good requests, each counted at once; its old
	// timeouts count nowhere, now or once the outing is out of the window.
	for _, d := range []time.Duration{time.Second, 30 * time.Second, time.Minute} {
		eastW.Requests, eastW.TotalRequests = eastW.Requests+20, eastW.TotalRequests+20
		if d >= 30*time.Second { // the window has slid past the outing
			eastW.Requests, eastW.Errors = 20, 0
		}
		westW.TotalRequests += 100
		o := eval(d)
		if dr, de := o.TotalRequests-given.TotalRequests, o.TotalErrors-given.TotalErrors; dr != 120 || de != 0 {
			t.Fatalf("back %v: +%d requests +%d errors handed on, want +120 +0", d, dr, de)
		}
		if d == time.Second && (o.Errors != 0 || o.Requests != westW.Requests+20) {
			t.Errorf("back: window %d requests %d errors, want %d and none", o.Requests, o.Errors, westW.Requests+20)
		}
		given = o
	}
}

// Attempts in flight, none finished for longer than the bound, but too
// few to take the endpoint out: the backend is marked hanging (HALF_OPEN
// does not close on successes that may be stalled streams).
func TestEndpointHanging(t *testing.T) {
	p := quickstart(t)
	hc := healthConfig(p)
	j := newEndpointJudge(slog.New(slog.DiscardHandler), prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x"}, []string{"backend", "cause"}))
	j.setPolicy(p)
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	ep := p.Backends[0].Endpoints[0].Address
	for _, tc := range []struct {
		name string
		hw   signals.HostWindow
		want string
	}{
		{"answering", signals.HostWindow{Requests: 5, TotalRequests: 5, Active: 3, Started: 3, Unanswered: 100 * time.Millisecond}, ""},
		{"stalled", signals.HostWindow{Requests: 5, TotalRequests: 5, Active: 3, Started: 3, Unanswered: 2 * time.Second},
			ep + ": 3 attempts in flight, none finished for 2s (bound 500ms)"},
		{"idle", signals.HostWindow{Requests: 5, TotalRequests: 5, Unanswered: 0}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := health.Observation{Backend: "fast", Window: 30 * time.Second, P95: 80 * time.Millisecond, LatencySamples: 500,
				Requests: 5, TotalRequests: 5}
			x := backendInput{name: p.Backends[0].Name, endpoints: 1, hosts: map[string]signals.HostWindow{ep: tc.hw}}
			if out := j.judge(context.Background(), p, &hc, &x, &o, now); len(out) != 0 {
				t.Errorf("taken out: %v", out)
			}
			if o.Hanging != tc.want {
				t.Errorf("hanging %q, want %q", o.Hanging, tc.want)
			}
		})
	}
}
