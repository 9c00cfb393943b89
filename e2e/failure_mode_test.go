package e2e

import (
	"testing"
	"time"
)

// With failure_mode_allow false (the default) a dead ext_proc service costs
// clients a fast, clear 503 (never a hang, never a wrong backend) and
// traffic recovers by itself when the service returns.
func TestExtProcDownFailsClosed(t *testing.T) {
	s := startStack(t, stackOptions{})
	body := chat("auto", nil, user("hello"))
	if r := post(t, s.URL("/v1/chat/completions"), body); r.Status != 200 {
		t.Fatalf("before: status %d %s", r.Status, r.Body)
	}
	s.StopExtProc()
	start := time.Now()
	r := post(t, s.URL("/v1/chat/completions"), body)
	took := time.Since(start)
	assertOpenAIError(t, r, 503, "router_unavailable")
	// Envoy first retries the processing stream (xds.extProcRetry:
	// jittered back-off of 50 ms up to 500 ms, inside the 4 s message
	// timeout), which carries requests over a restart of a few seconds;
	// past that, a dead processor must still fail, never hang.
	if took > 5*time.Second {
		t.Errorf("the 503 took %s; a dead processor must fail within the stream's retries", took)
	}
	for name, srv := range s.sims {
		if n := srv.Stats().Requests; n != 1 && name == "fast" || n != 0 && name != "fast" {
			t.Errorf("backend %s saw %d requests; an unrouted request must not reach a provider", name, n)
		}
	}
	s.StartExtProc()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := post(t, s.URL("/v1/chat/completions"), body)
		if r.Status == 200 && r.Header.Get("x-detour-backend") == "fast" {
			t.Logf("recovered %s after the restart", time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery after restart: %d %s", r.Status, r.Body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// With failure_mode_allow true, requests pass a dead ext_proc service
// unrouted and unrewritten to the first backend: documented behaviour for
// users who prefer availability over capability routing.
func TestExtProcDownFailsOpen(t *testing.T) {
	s := startStack(t, stackOptions{FailureModeAllow: true})
	s.StopExtProc()
	r := post(t, s.URL("/v1/chat/completions"), chat("fast-8k", nil, user("hello")))
	if r.Status != 200 {
		t.Fatalf("status %d %s, want 200 from the first backend", r.Status, r.Body)
	}
	if got := r.Header.Get("x-sim-name"); got != "fast" {
		t.Errorf("answered by %q, want the first backend, fast", got)
	}
	if got := r.Header.Get("x-detour-backend"); got != "fast" {
		t.Errorf("x-detour-backend %q: it names the backend that answered, decision or not", got)
	}
	// A model alias reaches the provider as written: the provider decides.
	r = post(t, s.URL("/v1/chat/completions"), chat("auto", nil, user("hello")))
	if r.Status != 404 {
		t.Errorf("alias without the processor: status %d, want the provider's 404 for an unknown model", r.Status)
	}
}
