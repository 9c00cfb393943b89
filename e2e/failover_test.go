package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/detourhq/detour/bench/loadgen"
	"github.com/detourhq/detour/sim"
)

// One client request survives a failing provider: Envoy retries it on the
// next backend of the request's own order, rewritten for that backend.
func TestFailover(t *testing.T) { inBothModes(t, stackOptions{}, testFailover) }

func testFailover(t *testing.T, s *stack) {
	faults := []struct {
		name  string
		fault sim.Fault
	}{
		{"503", sim.Fault{Status: 503}},
		{"429 with Retry-After", sim.Fault{Status: 429, RetryAfterS: 5}},
		{"connection reset", sim.Fault{Reset: true}},
		{"connection refused", sim.Fault{Refuse: true}},
	}
	first := true
	for _, f := range faults {
		for _, stream := range []bool{false, true} {
			name := f.name
			if stream {
				name += "/stream"
			}
			if !first {
				// Five quick failovers would demote fast in the processor
				// (TestLocalDemotion), and the later faults would then
				// never reach it: one at a time, a demotion window apart.
				time.Sleep(1100 * time.Millisecond)
			}
			first = false
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
				// fast was tried first and failed: a retry, not a detour
				// around a backend already known bad.
				if got := r.Header.Get("x-envoy-attempt-count"); got != "2" {
					t.Errorf("x-envoy-attempt-count %q, want 2 (fast, then fast-b)", got)
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
	inBothModes(t, stackOptions{}, testFailoverRewritesModel)
}

func testFailoverRewritesModel(t *testing.T, s *stack) {
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
func TestAllBackendsDown(t *testing.T) { inBothModes(t, stackOptions{}, testAllBackendsDown) }

func testAllBackendsDown(t *testing.T, s *stack) {
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
// (The first-token stage holds a stream's headers until its first token:
// one that dies within that hold has shown the client nothing and is
// retried like any failed attempt; the tokens are paced here so the drop
// comes well after the client got the first.)
func TestStartedStreamIsNotRetried(t *testing.T) {
	inBothModes(t, stackOptions{}, testStartedStreamIsNotRetried)
}

func testStartedStreamIsNotRetried(t *testing.T, s *stack) {
	req, _ := http.NewRequest(http.MethodPost, s.URL("/v1/chat/completions"),
		strings.NewReader(string(chat("auto", map[string]any{"stream": true}, user("hello")))))
	req.Header.Set("x-sim-drop-after-tokens", "3")
	req.Header.Set("x-sim-tokens-per-second", "20")
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
	// The role chunk and three tokens; with the resume filter on (the
	// default, ext_proc routing), the last of them may still be in the
	// processor's full-duplex pipeline when the upstream reset ends the
	// response: Envoy 1.40 resets the client's stream at once.
	want := []int{4}
	if s.opts.Wasm != "route" {
		want = []int{3, 4}
	}
	if !slices.Contains(want, chunks) {
		t.Errorf("%d chunks before the drop, want %v", chunks, want)
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

// A retry whose backend serves the model the router stage wrote follows
// one whose body was rewritten for another model: it must go out with its
// own content-length, not the rewritten body's (Envoy keeps an earlier
// attempt's headers), or the provider waits for bytes that never come.
// The chaos suite's saturation run found it: hundreds of requests hung
// until the client's timeout.
func TestRetryAfterRewriteSendsWholeBody(t *testing.T) {
	s := startStack(t, stackOptions{RouteExtra: "    objective: ordered\n    backends: [fast, long, fast-b]"})
	s.Sim("fast").SetFault(sim.Fault{Status: 503})
	s.Sim("long").SetFault(sim.Fault{Status: 503})
	for _, stream := range []bool{false, true} {
		start := time.Now()
		r := post(t, s.URL("/v1/chat/completions"), chat("auto", map[string]any{"stream": stream}, user("hello")))
		if r.Status != 200 || r.Header.Get("x-sim-name") != "fast-b" {
			t.Fatalf("stream %v: status %d from %q after %s, want 200 from fast-b: %s", stream, r.Status, r.Header.Get("x-sim-name"), time.Since(start), r.Body)
		}
		if n := r.Header.Get("x-envoy-attempt-count"); n != "3" {
			t.Errorf("stream %v: %s attempts, want 3 (fast, long, fast-b)", stream, n)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("stream %v: answered after %s", stream, took)
		}
	}
}

// A backend whose attempts all fail is demoted by the router on its own
// evidence (the processor, or the wasm plugin's worker VM): after a few
// requests retried away from it, the next go straight to the next backend
// (one attempt), with no controller at all, but for one in three, a trial
// that still tries it first. Once it answers again, its traffic comes back
// when the demotion's hold ends.
func TestLocalDemotion(t *testing.T) {
	inBothModes(t, stackOptions{}, testLocalDemotion) // controller disabled: no view
}

// A backend with credentials keeps its own per-attempt filters in wasm
// routing (the processor adds its key); an observing instance of the
// plugin there counts its attempts, so it is demoted locally too.
func TestLocalDemotionKeyedBackend(t *testing.T) {
	t.Setenv("DETOUR_E2E_FAST_KEY", "sk-fast-e2e")
	backends := quickstartBackends()
	backends[0].APIKey, backends[0].KeyEnv = "sk-fast-e2e", "DETOUR_E2E_FAST_KEY"
	s := startStack(t, stackOptions{Backends: backends, Wasm: "route"})
	if r := post(t, s.URL("/v1/chat/completions"), chat("auto", nil, user("hello"))); r.Status != 200 || r.Header.Get("x-sim-name") != "fast" {
		t.Fatalf("before the fault: %d from %q (a 401 means the key was not injected): %s", r.Status, r.Header.Get("x-sim-name"), r.Body)
	}
	testLocalDemotion(t, s)
	s.checkWasmDecided()
}

func testLocalDemotion(t *testing.T, s *stack) {
	s.Sim("fast").SetFault(sim.Fault{Refuse: true})
	body := chat("auto", nil, user("hello"))
	var retried, direct, trials int
	for i := range 30 {
		r := post(t, s.URL("/v1/chat/completions"), body)
		if r.Status != 200 || r.Header.Get("x-sim-name") != "fast-b" {
			t.Fatalf("request %d: status %d from %q, want 200 from fast-b: %s", i, r.Status, r.Header.Get("x-sim-name"), r.Body)
		}
		n, reason := r.Header.Get("x-envoy-attempt-count"), r.Header.Get("x-detour-reason")
		switch {
		case n == "1" && reason == "health":
			direct++
		case n == "2" && reason == "trial" && direct > 0:
			trials++
		case n == "2" && direct == 0 && trials == 0:
			retried++
		default:
			t.Errorf("request %d: %s attempts, reason %s after %d retried, %d direct, %d trials", i, n, reason, retried, direct, trials)
		}
	}
	// Five moves within the demotion window (0.5 to 1 s of them) demote
	// it: the fifth request when they come quickly, a few later on a
	// loaded machine.
	third := float64(30-retried) / 3
	if retried < 5 || retried > 8 || float64(trials) < third-1.5 || float64(trials) > third+1.5 || direct != 30-retried-trials {
		t.Errorf("%d requests retried away from fast, then %d went to fast-b directly and %d were trials of fast; want 5 to 8, then one trial in three", retried, direct, trials)
	}
	t.Logf("demoted after %d requests retried away; then %d direct, %d trials", retried, direct, trials)
	// The client's one connection is one Envoy worker: in wasm mode one VM
	// saw every attempt.
	counted, log := metricValue(s.Metrics(), `detour_extproc_local_demotions_total{backend="fast"}`), s.extLogText()
	if s.opts.Wasm == "route" {
		counted, log = sumSeries(grepLines(s.EnvoyPrometheus(), `backend="fast"`), "detour_wasm_local_demotions_total"), s.envLog.String()
	}
	if counted != 1 {
		t.Errorf("local demotions of fast counted %v, want 1", counted)
	}
	if !strings.Contains(log, "demoted locally") {
		t.Error("no log line for the demotion")
	}

	// Fixed: most of its trials failed, so the demotion runs out its hold
	// (with a controller, its view would have taken over by then); then
	// fast has its traffic back.
	s.Sim("fast").ClearFault()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := post(t, s.URL("/v1/chat/completions"), body)
		if r.Status == 200 && r.Header.Get("x-sim-name") == "fast" && r.Header.Get("x-detour-reason") == "cheapest" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("fast got no traffic back 10 s after it was fixed (hold 5 s):\n%s", s.extLogText())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// firstTokenStack is a stack whose deadlines are short enough to test:
// retry.first_token_timeout and retry.per_try_timeout of 1s, applied as a
// policy edit once the stack runs.
func firstTokenStack(t *testing.T, s *stack) *stack {
	t.Helper()
	o := s.opts
	s.WritePolicy(s.PolicyText(s.edit()) + "retry:\n  first_token_timeout: 1s\n  per_try_timeout: 1s\n")
	// Two routed routes (stream and not), twice more in wasm mode.
	want := 2
	if o.Wasm == "route" {
		want = 4
	}
	waitFor(t, 5*time.Second, "Envoy has the 1s deadlines", func() bool {
		dump := s.EnvoyStatsPath("/config_dump?resource=dynamic_route_configs")
		return strings.Count(dump, `"per_try_timeout": "1s"`) == want
	})
	return s
}

// streamed is one streaming answer as the client saw it.
type streamed struct {
	status     int
	header     http.Header
	firstToken time.Duration // to the first content chunk; 0 if none came
	total      time.Duration
	body       string
}

// stream posts a streaming chat and reads the answer to its end.
func stream(t *testing.T, url string, body []byte, headers ...string) streamed {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := streamed{status: resp.StatusCode, header: resp.Header}
	var b strings.Builder
	br := bufio.NewReader(resp.Body)
	for {
		line, err := br.ReadString('\n')
		b.WriteString(line)
		if out.firstToken == 0 && strings.Contains(line, `"content":"tok0"`) {
			out.firstToken = time.Since(start)
		}
		if err != nil {
			break
		}
	}
	out.total, out.body = time.Since(start), b.String()
	return out
}

// A backend that accepts a request and then stalls is abandoned at the
// deadline, and the client gets its answer from the next backend: streams
// at retry.first_token_timeout (even though the provider had sent its
// headers and role chunk), whole answers at retry.per_try_timeout.
func TestFirstTokenDeadline(t *testing.T) {
	inBothModes(t, stackOptions{}, testFirstTokenDeadline)
}

func testFirstTokenDeadline(t *testing.T, s *stack) {
	s = firstTokenStack(t, s)
	const deadline = time.Second
	faults := []struct {
		name  string
		fault sim.Fault
	}{
		// Headers and the role chunk at once, then nothing (a whole answer:
		// nothing at all).
		{"accepts, then stalls before the first token", sim.Fault{TTFTMS: 60_000}},
		// Not even response headers.
		{"accepts, then sends nothing", sim.Fault{LatencyMS: 60_000}},
	}
	for _, f := range faults {
		for _, isStream := range []bool{true, false} {
			name := f.name
			if isStream {
				name += "/stream"
			}
			t.Run(name, func(t *testing.T) {
				s.ResetSims()
				s.Sim("fast").SetFault(f.fault)
				defer s.Sim("fast").ClearFault()
				timeouts := func() float64 {
					v := metricValue(s.EnvoyPrometheus(), `envoy_cluster_upstream_rq_per_try_timeout{envoy_cluster_name="fast"}`)
					return v
				}
				abandoned := func() float64 {
					v := metricValue(s.Metrics(), `detour_extproc_first_token_holds_total{backend="fast",outcome="abandoned"}`)
					return v
				}
				timeoutsBefore, abandonedBefore := timeouts(), abandoned()

				body := chat("auto", map[string]any{"stream": isStream}, user("hello"))
				var first time.Duration
				var answeredBy string
				if isStream {
					r := stream(t, s.URL("/v1/chat/completions"), body)
					if r.status != 200 || !strings.Contains(r.body, "data: [DONE]") {
						t.Fatalf("status %d, body %q", r.status, r.body)
					}
					if n := strings.Count(r.body, `"role":"assistant"`); n != 1 {
						t.Errorf("%d role chunks: the client saw more than one answer", n)
					}
					first, answeredBy = r.firstToken, r.header.Get("x-sim-name")
				} else {
					start := time.Now()
					r := post(t, s.URL("/v1/chat/completions"), body)
					if r.Status != 200 {
						t.Fatalf("status %d: %s", r.Status, r.Body)
					}
					first, answeredBy = time.Since(start), r.Header.Get("x-sim-name")
				}
				if answeredBy != "fast-b" {
					t.Fatalf("answered by %q, want the next backend fast-b", answeredBy)
				}
				// The deadline, then a jittered back-off of at most 100 ms.
				if first < deadline || first > deadline+600*time.Millisecond {
					t.Errorf("first token after %s, want within [%s, %s]", first, deadline, deadline+600*time.Millisecond)
				}
				// Exactly one attempt abandoned, on fast; one answered, on fast-b.
				waitFor(t, 2*time.Second, "fast records its abandoned attempt", func() bool { return s.Sim("fast").Stats().Requests == 1 })
				for name, want := range map[string]int64{"fast": 1, "fast-b": 1, "long": 0, "vision": 0} {
					if got := s.Sim(name).Stats().Requests; got != want {
						t.Errorf("%s had %d attempts, want %d", name, got, want)
					}
				}
				if got := timeouts() - timeoutsBefore; got != 1 {
					t.Errorf("Envoy counted %v per-try timeouts on fast, want 1", got)
				}
				// The hold is what made the stalled stream retriable.
				wantHeld := 0.0
				if isStream && f.fault.TTFTMS > 0 {
					wantHeld = 1
				}
				if got := abandoned() - abandonedBefore; got != wantHeld {
					t.Errorf("first_token_holds_total{fast,abandoned} grew by %v, want %v", got, wantHeld)
				}
				t.Logf("first token from fast-b after %s", first.Round(time.Millisecond))
			})
		}
	}

	// A stream that has started is never cut by the deadline nor retried,
	// even when it then pauses longer than the deadline.
	t.Run("started stream that pauses", func(t *testing.T) {
		s.ResetSims()
		r := stream(t, s.URL("/v1/chat/completions"), chat("auto", map[string]any{"stream": true}, user("hello")),
			"x-sim-tokens", "2", "x-sim-tokens-per-second", "0.5")
		if r.status != 200 || !strings.Contains(r.body, "data: [DONE]") || r.header.Get("x-sim-name") != "fast" {
			t.Fatalf("status %d from %q: %q", r.status, r.header.Get("x-sim-name"), r.body)
		}
		if r.total < 3*deadline/2 {
			t.Errorf("the stream took %s, want a pause past the deadline", r.total)
		}
		if r.firstToken > 500*time.Millisecond {
			t.Errorf("first token after %s: held past its arrival", r.firstToken)
		}
		var attempts int64
		for _, srv := range s.sims {
			attempts += srv.Stats().Requests
		}
		if attempts != 1 {
			t.Errorf("%d upstream attempts, want 1", attempts)
		}
		t.Logf("first token after %s, whole stream %s, one attempt", r.firstToken.Round(time.Millisecond), r.total.Round(time.Millisecond))
	})
}
