package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/detourhq/detour/bench/loadgen"
	"github.com/detourhq/detour/sim"
)

// One client request survives a failing provider: Envoy retries it on the
// next backend of the request's own order, rewritten for that backend.
func TestFailover(t *testing.T) {
	s := startStack(t, stackOptions{})
	faults := []struct {
		name  string
		fault sim.Fault
	}{
		{"503", sim.Fault{Status: 503}},
		{"429 with Retry-After", sim.Fault{Status: 429, RetryAfterS: 5}},
		{"connection reset", sim.Fault{Reset: true}},
		{"connection refused", sim.Fault{Refuse: true}},
	}
	for _, f := range faults {
		for _, stream := range []bool{false, true} {
			name := f.name
			if stream {
				name += "/stream"
			}
			t.Run(name, func(t *testing.T) {
				s.ResetSims()
				s.Sim("fast").SetFault(f.fault)
				defer s.Sim("fast").ClearFault()
				start := time.Now()
				r := post(t, s.URL("/v1/chat/completions"), chat("auto", map[string]any{"stream": stream}, user("hello")))
				took := time.Since(start)
				if r.Status != 200 {
					t.Fatalf("status %d: %s", r.Status, r.Body)
				}
				if got := r.Header.Get("x-sim-name"); got != "fast-b" {
					t.Fatalf("answered by %q, want the next backend fast-b", got)
				}
				if got := r.Header.Get("x-detour-backend"); got != "fast-b" {
					t.Errorf("x-detour-backend %q, want the backend that answered", got)
				}
				if stream && !strings.Contains(string(r.Body), "data: [DONE]") {
					t.Errorf("stream incomplete: %s", r.Body)
				}
				// Retry-After from the failed provider must not delay the
				// attempt on another one.
				if took > 2*time.Second {
					t.Errorf("failover took %s", took)
				}
				t.Logf("served by fast-b after %s", took.Round(time.Millisecond))
			})
		}
	}
}

// The fallback serves another model: the retried request carries that
// backend's model id, and its response says so.
func TestFailoverRewritesModel(t *testing.T) {
	s := startStack(t, stackOptions{})
	s.Sim("fast").SetFault(sim.Fault{Status: 503})
	s.Sim("fast-b").SetFault(sim.Fault{Status: 500})
	r := post(t, s.URL("/v1/chat/completions"), chat("auto", nil, user("hello")))
	if r.Status != 200 || r.Header.Get("x-sim-name") != "long" {
		t.Fatalf("status %d from %q: %s", r.Status, r.Header.Get("x-sim-name"), r.Body)
	}
	if got := r.Header.Get("x-detour-model"); got != "long-200k" {
		t.Errorf("x-detour-model %q, want long-200k", got)
	}
	recs := s.Sim("long").Requests(1)
	if len(recs) != 1 || recs[0].Model != "long-200k" {
		t.Fatalf("long received %+v, want model long-200k", recs)
	}
	for name, want := range map[string]string{"fast": "fast-8k", "fast-b": "fast-8k"} {
		if recs := s.Sim(name).Requests(1); len(recs) != 1 || recs[0].Model != want {
			t.Errorf("%s received %+v, want one attempt for %s", name, recs, want)
		}
	}
	for _, rec := range append(s.Sim("long").Requests(1), s.Sim("fast-b").Requests(1)...) {
		for h := range rec.Headers {
			if strings.HasPrefix(h, "x-detour-") {
				t.Errorf("%s reached a provider", h)
			}
		}
	}
}

// Every backend down: one clear 503 in the OpenAI error shape, quickly, and
// no more upstream attempts than the policy allows.
func TestAllBackendsDown(t *testing.T) {
	s := startStack(t, stackOptions{})
	for _, srv := range s.sims {
		srv.SetFault(sim.Fault{Status: 503})
	}
	start := time.Now()
	r := post(t, s.URL("/v1/chat/completions"), chat("auto", nil, user("hello")))
	took := time.Since(start)
	assertOpenAIError(t, r, 503, "")
	var attempts int64
	for _, srv := range s.sims {
		attempts += srv.Stats().Requests
	}
	if attempts != 4 {
		t.Errorf("%d upstream attempts, want 4 (retry.attempts)", attempts)
	}
	if took > 3*time.Second {
		t.Errorf("the 503 took %s", took)
	}
	t.Logf("503 after %d attempts in %s: %s", attempts, took.Round(time.Millisecond), r.Body)
}

// A stream that has started is never retried: the client sees one answer.
func TestStartedStreamIsNotRetried(t *testing.T) {
	s := startStack(t, stackOptions{})
	req, _ := http.NewRequest(http.MethodPost, s.URL("/v1/chat/completions"),
		strings.NewReader(string(chat("auto", map[string]any{"stream": true}, user("hello")))))
	req.Header.Set("x-sim-drop-after-tokens", "3")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	chunks := 0
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "data: ") {
			chunks++
		}
	}
	var attempts int64
	for _, srv := range s.sims {
		attempts += srv.Stats().Requests
	}
	if attempts != 1 {
		t.Errorf("%d upstream attempts for a stream that had started, want 1", attempts)
	}
	t.Logf("%d chunks before the drop", chunks)
}

// A backend's key reaches that backend only: not the client, not the
// backend a retry moves to.
func TestCredentialsStayWithTheirBackend(t *testing.T) {
	t.Setenv("DETOUR_E2E_FAST_KEY", "sk-fast-e2e")
	backends := quickstartBackends()
	backends[0].APIKey, backends[0].KeyEnv = "sk-fast-e2e", "DETOUR_E2E_FAST_KEY"
	s := startStack(t, stackOptions{Backends: backends})

	r := post(t, s.URL("/v1/chat/completions"), chat("auto", nil, user("hello")))
	if r.Status != 200 || r.Header.Get("x-sim-name") != "fast" {
		t.Fatalf("status %d from %q (a 401 means the key was not injected): %s", r.Status, r.Header.Get("x-sim-name"), r.Body)
	}
	sum := sha256.Sum256([]byte("Bearer sk-fast-e2e"))
	want := "sha256:" + hex.EncodeToString(sum[:])[:12]
	if recs := s.Sim("fast").Requests(1); len(recs) != 1 || recs[0].Auth != want {
		t.Errorf("fast saw auth %+v, want %s", recs, want)
	}
	if strings.Contains(fmt.Sprint(r.Header), "sk-fast-e2e") || strings.Contains(string(r.Body), "sk-fast-e2e") {
		t.Error("the key reached the client")
	}

	s.ResetSims()
	s.Sim("fast").SetFault(sim.Fault{Status: 503})
	r = post(t, s.URL("/v1/chat/completions"), chat("auto", nil, user("hello")))
	if r.Status != 200 || r.Header.Get("x-sim-name") != "fast-b" {
		t.Fatalf("failover: status %d from %q", r.Status, r.Header.Get("x-sim-name"))
	}
	if recs := s.Sim("fast-b").Requests(1); len(recs) != 1 || recs[0].Auth != "none" {
		t.Errorf("fast-b, the retry's backend, saw auth %+v: fast's key leaked", recs)
	}
}

// Under load, a provider outage costs no client request: concurrent
// retries must fit the retry budget (with min_retry_concurrency 10 about
// 16 % overflowed at 200 req/s).
func TestFailoverUnderLoad(t *testing.T) {
	s := startStack(t, stackOptions{})
	s.Sim("fast").SetFault(sim.Fault{Status: 503})
	res, err := loadgen.OpenLoop{Rate: 200, Duration: 3 * time.Second, Warmup: 200 * time.Millisecond}.Run(context.Background(), loadgen.Request{
		Method: http.MethodPost, URL: s.URL("/v1/chat/completions"),
		Header: http.Header{"Content-Type": []string{"application/json"}},
		Body:   chat("auto", nil, user("hello")),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", res)
	if res.Failed != 0 || res.OK != res.Sent || res.Sent < 500 {
		t.Errorf("%d of %d requests failed (by status %v); want none while fast-b is healthy", res.Failed, res.Sent, res.ByStatus)
	}
	if st := s.EnvoyStats("retry_overflow"); strings.Contains(st, "overflow: ") && !strings.Contains(st, "overflow: 0") {
		t.Logf("retry overflow counters:\n%s", st)
	}
}
