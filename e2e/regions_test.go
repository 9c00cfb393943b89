package e2e

import (
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/detourhq/detour/sim"
	"github.com/detourhq/detour/xds"
)

// regionBackends are the quickstart backends with fast and fast-b in two
// regions, east (the Envoy's own: priority 0) and west (priority 1, served
// by the simulators fast-west and fast-b-west), and long and vision in
// east only (one priority level).
func regionBackends() []backendSpec {
	b := quickstartBackends()
	for i := range b {
		b[i].Region = "east"
	}
	b[0].FarRegion, b[1].FarRegion = "west", "west"
	return b
}

// Retries and hedges avoid the regions (priority levels) a request's
// earlier attempts went to (envoy.retry_priorities.previous_priorities on
// every routed route, xds/resources.go avoidAttemptedRegions), on Envoy
// 1.40: a stream abandoned at its first-token deadline in east is retried
// on the next backend's west endpoint; a whole answer's hedge goes to the
// same backend's west endpoint and rescues a black hole; and a backend in
// one region only still takes its retries (Envoy falls back to the
// original load once every level has been attempted).
func TestRetryAvoidsAttemptedRegions(t *testing.T) {
	const (
		deadline   = 500 * time.Millisecond // the hedged response deadline
		firstToken = time.Second            // the streams' first-token deadline
	)
	for _, mode := range []string{"extproc", "wasm"} {
		t.Run(mode, func(t *testing.T) {
			o := stackOptions{
				Backends: regionBackends(),
				Region:   "east",
				// Ejections would move first attempts to west between
				// subtests; this test is about retries alone.
				Extra: "outlier_detection: {consecutive_errors: 1000}",
			}
			if mode == "wasm" {
				o.Wasm = "route"
			}
			s := controlStack(t, o, &xds.Control{ResponseTimeout: deadline, FirstTokenTimeout: firstToken})
			waitFor(t, 5*time.Second, "Envoy has the retry priority and the hedged deadline", func() bool {
				dump := s.EnvoyStatsPath("/config_dump?resource=dynamic_route_configs")
				return strings.Contains(dump, `"hedge_on_per_try_timeout": true`) && strings.Contains(dump, xds.RetryPriorityPrevious)
			})
			// fast's and fast-b's west endpoints are priority 1: unused
			// while east answers.
			s.ResetSims()
			for range 4 {
				r := post(t, s.URL("/v1/chat/completions"), chat("auto", nil, user("hello")))
				if r.Status != 200 || r.Header.Get("x-sim-name") != "fast" {
					t.Fatalf("status %d from %q, want fast's east endpoint", r.Status, r.Header.Get("x-sim-name"))
				}
			}
			t.Run("stream retried in the other region", func(t *testing.T) {
				testStreamRetryOtherRegion(t, s, firstToken, stallBeforeFirstToken, "fast")
			})
			t.Run("stream retried in the other region, east black-holed", func(t *testing.T) {
				testStreamRetryOtherRegion(t, s, firstToken, blackHole, "fast", "fast-b", "long", "vision")
			})
			t.Run("stream retried past both regions to a one-region backend", func(t *testing.T) {
				testStreamRetryToOneRegion(t, s, firstToken)
			})
			t.Run("hedge rescues a black hole in the other region", func(t *testing.T) {
				testHedgeOtherRegion(t, s, deadline, "fast")
			})
			t.Run("hedge rescues a black hole in the other region, east black-holed", func(t *testing.T) {
				testHedgeOtherRegion(t, s, deadline, "fast", "fast-b", "long", "vision")
			})
			t.Run("slow first answer still wins", func(t *testing.T) { testHedgeOtherRegionSlowFirst(t, s) })
			// With a hedge policy on the route, Envoy 1.40 retries a reset
			// on the same backend (its other region, then the first
			// again): it does not re-run the cluster specifier, so a
			// backend down everywhere fails the request. This is why
			// hedging is opt-in (controller.hedging).
			t.Run("hedging keeps a reset's retries on the same backend", func(t *testing.T) {
				s.ResetSims()
				defer hang(s, sim.Fault{Reset: true}, "fast", "fast-west")()
				r := post(t, s.URL("/v1/chat/completions"), chat("auto", nil, user("hello")))
				got := simAttempts(s)
				if r.Status != 503 || got["fast"] != 2 || got["fast-west"] != 2 || len(got) != 2 {
					t.Errorf("status %d from %q, attempts %v: Envoy now moves a hedged route's reset retries to the next backend; make hedging the default again (xds/hedge.go)",
						r.Status, r.Header.Get("x-sim-name"), got)
				}
			})
			t.Run("one-region backend keeps its retries", func(t *testing.T) {
				for _, isStream := range []bool{false, true} {
					testOneRegionRetry(t, s, isStream)
				}
			})
			t.Logf("Envoy stats:\n%s", s.EnvoyStats(`cluster\.(fast|fast-b|long)\.(upstream_rq_(per_try_timeout|retry|retry_success|retry_limit_exceeded|total)|outlier_detection\.ejections_total)$`))
			if mode == "wasm" {
				s.checkWasmDecided()
			}
		})
	}
}

var (
	// blackHole accepts a request and sends nothing (the chaos run's
	// region-wide failure).
	blackHole = sim.Fault{LatencyMS: 60_000}
	// stallBeforeFirstToken sends a stream's headers and role chunk, then
	// nothing.
	stallBeforeFirstToken = sim.Fault{TTFTMS: 60_000}
)

// hang sets f on each of names and returns the undo.
func hang(s *stack, f sim.Fault, names ...string) func() {
	for _, n := range names {
		s.Sim(n).SetFault(f)
	}
	return func() {
		for _, n := range names {
			s.Sim(n).ClearFault()
		}
	}
}

// simAttempts counts the requests each simulator has recorded.
func simAttempts(s *stack) map[string]int {
	m := map[string]int{}
	for name, srv := range s.sims {
		if n := len(srv.Requests(0)); n > 0 {
			m[name] = n
		}
	}
	return m
}

// fast's east endpoint (and with it maybe the rest of east) stalls before
// the first token: at the first-token deadline the stream is retried on the
// next backend, fast-b, in west, not on fast-b's east endpoint.
func testStreamRetryOtherRegion(t *testing.T, s *stack, firstToken time.Duration, f sim.Fault, hung ...string) {
	s.ResetSims()
	defer hang(s, f, hung...)()
	r := stream(t, s.URL("/v1/chat/completions"), chat("auto", map[string]any{"stream": true}, user("hello")))
	if r.status != 200 || !strings.Contains(r.body, "data: [DONE]") {
		t.Fatalf("status %d from %q: %q", r.status, r.header.Get("x-sim-name"), r.body)
	}
	if got := r.header.Get("x-sim-name"); got != "fast-b-west" {
		t.Fatalf("answered by %q, want fast-b's west endpoint (fast-b-west)", got)
	}
	if got := r.header.Get("x-detour-backend"); got != "fast-b" {
		t.Errorf("x-detour-backend %q, want fast-b", got)
	}
	if r.firstToken < firstToken || r.firstToken > firstToken+600*time.Millisecond {
		t.Errorf("first token after %s, want the deadline %s plus a back-off", r.firstToken, firstToken)
	}
	requestsEnded(t, s, "fast", 1, 2*time.Second)
	got := simAttempts(s)
	if got["fast"] != 1 || got["fast-b-west"] != 1 || len(got) != 2 {
		t.Errorf("attempts %v, want fast (east) then fast-b-west", got)
	}
	t.Logf("east hung %v: first token from fast-b-west after %s (x-envoy-attempt-count %s); attempts %v",
		hung, r.firstToken.Round(time.Millisecond), r.header.Get("x-envoy-attempt-count"), got)
}

// fast's east endpoint stalls and fast-b's west one answers 503: the
// third attempt goes to long, whose one level was attempted (priority 0,
// on fast): with every level excluded Envoy uses long's own load, and long
// answers.
func testStreamRetryToOneRegion(t *testing.T, s *stack, firstToken time.Duration) {
	s.ResetSims()
	defer hang(s, stallBeforeFirstToken, "fast")()
	s.Sim("fast-b-west").SetFault(sim.Fault{Status: 503})
	defer s.Sim("fast-b-west").ClearFault()
	r := stream(t, s.URL("/v1/chat/completions"), chat("auto", map[string]any{"stream": true}, user("hello")))
	if r.status != 200 || !strings.Contains(r.body, "data: [DONE]") {
		t.Fatalf("status %d from %q: %q", r.status, r.header.Get("x-sim-name"), r.body)
	}
	if got := r.header.Get("x-sim-name"); got != "long" {
		t.Fatalf("answered by %q, want long", got)
	}
	requestsEnded(t, s, "fast", 1, 2*time.Second)
	got := simAttempts(s)
	if got["fast"] != 1 || got["fast-b-west"] != 1 || got["long"] != 1 || len(got) != 3 {
		t.Errorf("attempts %v, want fast, fast-b-west, long", got)
	}
	t.Logf("first token from long after %s (x-envoy-attempt-count %s); attempts %v",
		r.firstToken.Round(time.Millisecond), r.header.Get("x-envoy-attempt-count"), got)
}

// fast's east endpoint accepts and never answers: the hedge at the
// deadline goes to fast's west endpoint (the same backend: hedges do not
// refresh the cluster, but they do take the retry priority), which
// answers; the black-holed attempt is reset.
func testHedgeOtherRegion(t *testing.T, s *stack, deadline time.Duration, hung ...string) {
	s.ResetSims()
	defer hang(s, blackHole, hung...)()
	c := &http.Client{Timeout: 5 * time.Second}
	start := time.Now()
	resp, err := c.Post(s.URL("/v1/chat/completions"), "application/json", strings.NewReader(string(chat("auto", nil, user("hello")))))
	if err != nil {
		t.Fatalf("no answer after %s: %v", time.Since(start).Round(time.Millisecond), err)
	}
	resp.Body.Close()
	took := time.Since(start)
	if resp.StatusCode != 200 || resp.Header.Get("x-sim-name") != "fast-west" {
		t.Fatalf("status %d from %q after %s, want 200 from fast's west endpoint", resp.StatusCode, resp.Header.Get("x-sim-name"), took)
	}
	if took < deadline || took > deadline+600*time.Millisecond {
		t.Errorf("answered after %s, want shortly after the deadline %s", took, deadline)
	}
	recs := requestsEnded(t, s, "fast", 1, 2*time.Second)
	if recs[0].Status != 499 {
		t.Errorf("fast's black-holed attempt ended %d, want a reset (499)", recs[0].Status)
	}
	got := simAttempts(s)
	if got["fast"] != 1 || got["fast-west"] != 1 || len(got) != 2 {
		t.Errorf("attempts %v, want fast (east) and its hedge on fast-west", got)
	}
	t.Logf("east hung %v: 200 from fast-west after %s (x-envoy-attempt-count %s); attempts %v",
		hung, took.Round(time.Millisecond), resp.Header.Get("x-envoy-attempt-count"), got)
}

// fast's east endpoint answers after 800 ms, past the deadline; its west
// one would take 2 s. The late attempt is not cut: the client gets east's
// answer, and the hedge, on fast-west, is reset.
func testHedgeOtherRegionSlowFirst(t *testing.T, s *stack) {
	r, took := slowFirstAnswer(t, s, "fast-west")
	recs := requestsEnded(t, s, "fast-west", 1, 3*time.Second)
	if recs[0].Status != 499 {
		t.Errorf("the hedge on fast-west ended %d, want a reset (499)", recs[0].Status)
	}
	got := simAttempts(s)
	if got["fast"] != 1 || got["fast-west"] != 1 || len(got) != 2 {
		t.Errorf("attempts %v, want fast (east, answered) and its hedge on fast-west (reset)", got)
	}
	t.Logf("fast (east) answered after %s (x-envoy-attempt-count %s); hedge on fast-west reset; attempts %v",
		took.Round(time.Millisecond), r.Header.Get("x-envoy-attempt-count"), got)
}

// long has one endpoint (priority 0 only) and is the only backend of
// model long-200k: its first attempt answers 503, and the retry, with
// long's only level excluded, still goes to long and answers.
func testOneRegionRetry(t *testing.T, s *stack, isStream bool) {
	s.ResetSims()
	long := s.Sim("long")
	// Every other request fails; line the count up so the next one, the
	// first attempt, does.
	long.SetFault(sim.Fault{Status: 503, Rate: 0.5, Even: true})
	defer long.ClearFault()
	direct := "http://" + long.Addr() + "/v1/chat/completions"
	for {
		if r := post(t, direct, chat("long-200k", nil, user("hi"))); r.Status == 200 {
			break
		}
	}
	long.ResetStats()
	start := time.Now()
	var status int
	var h http.Header
	body := chat("long-200k", map[string]any{"stream": isStream}, user("hello"))
	if isStream {
		r := stream(t, s.URL("/v1/chat/completions"), body)
		status, h = r.status, r.header
	} else {
		r := post(t, s.URL("/v1/chat/completions"), body)
		status, h = r.Status, r.Header
	}
	took := time.Since(start)
	if status != 200 || h.Get("x-sim-name") != "long" {
		t.Fatalf("stream %v: status %d from %q, want long's retry to answer", isStream, status, h.Get("x-sim-name"))
	}
	recs := long.Requests(0)
	sort.Slice(recs, func(i, j int) bool { return recs[i].Time.Before(recs[j].Time) })
	var statuses []int
	for _, rec := range recs {
		statuses = append(statuses, rec.Status)
	}
	if len(statuses) != 2 || statuses[0] != 503 || statuses[1] != 200 {
		t.Errorf("stream %v: long's attempts answered %v, want [503 200]", isStream, statuses)
	}
	if got := simAttempts(s); len(got) != 1 {
		t.Errorf("stream %v: attempts %v, want long's only", isStream, got)
	}
	t.Logf("stream %v: long answered %v in %s (x-envoy-attempt-count %s)", isStream, statuses, took.Round(time.Millisecond), h.Get("x-envoy-attempt-count"))
}
