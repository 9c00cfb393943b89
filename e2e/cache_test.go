package e2e

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/detourhq/detour/respcache"
	"github.com/detourhq/detour/sim"
)

// The response cache and the queue (issue 7) through a real Envoy.

// reusable is a chat request that may be cached: temperature 0.
func reusable(prompt string, extra map[string]any) []byte {
	m := map[string]any{"temperature": 0}
	for k, v := range extra {
		m[k] = v
	}
	return chat("auto", m, user(prompt))
}

// allDown makes every simulated provider of s answer status.
func (s *stack) allDown(status int) {
	for _, srv := range s.sims {
		srv.SetFault(sim.Fault{Status: status})
	}
}

func (s *stack) allUp() {
	for _, srv := range s.sims {
		srv.ClearFault()
	}
}

// waitMetric waits until series on the metrics at addr reaches at least want.
func waitMetric(t testing.TB, addr, series string, want float64, within time.Duration) float64 {
	t.Helper()
	deadline := time.Now().Add(within)
	var v float64
	for {
		v = metricValue(metricsAt(t, addr), series)
		if v >= want || time.Now().After(deadline) {
			return v
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func metricsAt(t testing.TB, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return b.String()
}

// contentOf reads the answer's text from a chat completion.
func contentOf(t testing.TB, body []byte) string {
	t.Helper()
	var a struct {
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(body, &a); err != nil || len(a.Choices) == 0 {
		t.Fatalf("not a chat completion: %v\n%s", err, body)
	}
	return a.Choices[0].Message.Content
}

const storeSeries = `detour_cache_requests_total{result="store"}`

// Every attempt fails (each provider answers 503): a request answered
// before gets its stored answer, marked stale with its age, as JSON or
// replayed as a stream; anything else (another prompt, another API key,
// no-store) gets the clear 503.
func TestCacheStaleWhenEveryAttemptFails(t *testing.T) {
	s := startStack(t, stackOptions{})
	keyA := []string{"authorization", "Bearer sk-tenant-a"}
	body := reusable("what is the capital of france", nil)
	first := post(t, s.URL("/v1/chat/completions"), body, keyA...)
	if first.Status != 200 || first.Header.Get(HeaderCacheName) != "" {
		t.Fatalf("first answer: %d cache=%q %s", first.Status, first.Header.Get(HeaderCacheName), first.Body)
	}
	if v := waitMetric(t, s.MetricsAddr, storeSeries, 1, 5*time.Second); v < 1 {
		t.Fatalf("the answer was not stored: %s", grepLines(s.Metrics(), "detour_cache"))
	}
	// Not cacheable: temperature 1 (the default): never stored.
	post(t, s.URL("/v1/chat/completions"), chat("auto", nil, user("a creative poem")), keyA...)
	// A streamed answer is stored too, assembled, through the first-token
	// stage and the response body phase.
	streamedFirst := post(t, s.URL("/v1/chat/completions"), reusable("streamed first", map[string]any{"stream": true}), keyA...)
	if streamedFirst.Status != 200 || !strings.Contains(string(streamedFirst.Body), "[DONE]") {
		t.Fatalf("stream: %d %s", streamedFirst.Status, streamedFirst.Body)
	}
	if v := waitMetric(t, s.MetricsAddr, storeSeries, 2, 5*time.Second); v < 2 {
		t.Fatalf("the streamed answer was not stored: %s", grepLines(s.Metrics(), "detour_cache"))
	}

	time.Sleep(1100 * time.Millisecond) // so the age is at least 1 s
	s.allDown(503)
	stale := post(t, s.URL("/v1/chat/completions"), body, keyA...)
	if stale.Status != 200 || stale.Header.Get(HeaderCacheName) != "stale" {
		t.Fatalf("with every provider failing: %d cache=%q %s", stale.Status, stale.Header.Get(HeaderCacheName), stale.Body)
	}
	if age, err := strconv.Atoi(stale.Header.Get("age")); err != nil || age < 1 {
		t.Errorf("age header %q, want ≥ 1", stale.Header.Get("age"))
	}
	if got, want := contentOf(t, stale.Body), contentOf(t, first.Body); got != want {
		t.Errorf("stale answer %q, first answer %q", got, want)
	}
	t.Logf("stale answer served: %s", stale.Body)

	// The same question streamed: the stored answer replayed as events.
	streamed := post(t, s.URL("/v1/chat/completions"), reusable("what is the capital of france", map[string]any{"stream": true}), keyA...)
	if streamed.Status != 200 || !strings.HasPrefix(streamed.Header.Get("content-type"), "text/event-stream") || streamed.Header.Get(HeaderCacheName) != "stale" {
		t.Fatalf("streamed: %d %q cache=%q\n%s", streamed.Status, streamed.Header.Get("content-type"), streamed.Header.Get(HeaderCacheName), streamed.Body)
	}
	assembled, err := respcache.AssembleSSE("chat", streamed.Body)
	if err != nil {
		t.Fatalf("the replay is not an OpenAI stream: %v\n%s", err, streamed.Body)
	}
	if got, want := contentOf(t, assembled), contentOf(t, first.Body); got != want {
		t.Errorf("replayed stream says %q, want %q", got, want)
	}

	// The streamed answer, asked for as JSON: assembled from the events.
	asJSON := post(t, s.URL("/v1/chat/completions"), reusable("streamed first", nil), keyA...)
	if asJSON.Status != 200 || asJSON.Header.Get(HeaderCacheName) != "stale" {
		t.Fatalf("stored stream as JSON: %d %s", asJSON.Status, asJSON.Body)
	}
	want, err := respcache.AssembleSSE("chat", streamedFirst.Body)
	if err != nil {
		t.Fatal(err)
	}
	if got := contentOf(t, asJSON.Body); got != contentOf(t, want) || got == "" {
		t.Errorf("stored stream says %q, the stream said %q", got, contentOf(t, want))
	}

	// Uncached: a clear 503 in the OpenAI shape.
	for _, c := range []struct {
		name    string
		body    []byte
		headers []string
	}{
		{"another prompt", reusable("never asked before", nil), keyA},
		{"another tenant", body, []string{"authorization", "Bearer sk-tenant-b"}},
		{"no API key", body, nil},
		{"no-store", body, append([]string{"cache-control", "no-store"}, keyA...)},
		{"not reusable", chat("auto", nil, user("a creative poem")), keyA},
	} {
		r := post(t, s.URL("/v1/chat/completions"), c.body, c.headers...)
		if r.Status != 503 || r.Header.Get(HeaderCacheName) != "" {
			t.Errorf("%s: %d cache=%q %s", c.name, r.Status, r.Header.Get(HeaderCacheName), r.Body)
		}
	}
	m := s.Metrics()
	if metricValue(m, `detour_cache_served_total{result="stale",route="auto",why="failed"}`) != 3 {
		t.Errorf("served metrics:\n%s", grepLines(m, "detour_cache"))
	}
}

// HeaderCacheName is the response header of a cached answer.
const HeaderCacheName = "x-detour-cache"

// queueYAML: the controller decides fast (half-second evaluations) and
// keeps an OPEN backend out for 6 s; model fast-8k (global queue) waits up
// to 15 s, the alias auto (fast and fast-b only) up to 1 s.
// queueController's cool-down leaves room for the test's steps while
// both backends are OPEN: the first to open starts its cool-down seconds
// before the second (2.4 s in one CI run).
const queueController = `controller:
  interval: 500ms
  dwell: 2s
  cool_down: 10s
probes: {disabled: true}`

const queueExtra = `queue:
  max_wait: 15s
  max_depth: 20`

const queueRoute = `    backends: [fast, fast-b]
    queue: {max_wait: 1s, max_depth: 20}`

// openBoth fails fast and fast-b until the controller has opened both
// circuits, then clears the faults: the providers are fine again but stay
// OPEN for the cool-down. It returns when both were seen OPEN.
func openBoth(t *testing.T, s *stack) time.Time {
	t.Helper()
	s.Sim("fast").SetFault(sim.Fault{Status: 500})
	s.Sim("fast-b").SetFault(sim.Fault{Status: 500})
	deadline := time.Now().Add(20 * time.Second)
	body := chat("fast-8k", nil, user("load"))
	for {
		v := s.controllerView()
		if v.Backends["fast"].State == "OPEN" && v.Backends["fast-b"].State == "OPEN" {
			s.Sim("fast").ClearFault()
			s.Sim("fast-b").ClearFault()
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("fast and fast-b never both OPEN: %+v %+v", v.Backends["fast"].State, v.Backends["fast-b"].State)
		}
		// Short client timeout: once both are OPEN a request would queue.
		c := &http.Client{Timeout: 300 * time.Millisecond}
		if resp, err := c.Post(s.URL("/v1/chat/completions"), "application/json", bytes.NewReader(body)); err == nil {
			resp.Body.Close()
		}
	}
}

// Every backend of a route OPEN in the controller's view: a cached
// request gets its stored answer at once, without a backend being tried;
// an uncached one waits the route's max_wait (1 s) and gets 503 with
// Retry-After in the OpenAI shape; requests queued meanwhile all succeed
// once the cool-down ends (HALF_OPEN), critical first, then standard,
// then sheddable.
func TestQueueAndStaleWhileAllOpen(t *testing.T) {
	s := startStack(t, stackOptions{Controller: queueController, Extra: queueExtra, RouteExtra: queueRoute})
	key := []string{"authorization", "Bearer sk-queue"}
	cached := reusable("cached question", nil)
	if r := post(t, s.URL("/v1/chat/completions"), cached, key...); r.Status != 200 {
		t.Fatalf("priming: %d %s", r.Status, r.Body)
	}
	waitMetric(t, s.MetricsAddr, storeSeries, 1, 5*time.Second)

	openedAt := openBoth(t, s)
	time.Sleep(100 * time.Millisecond) // the ext_proc service's long poll has the view
	s.ResetSims()

	// (a) cached: served before anything is tried.
	start := time.Now()
	r := post(t, s.URL("/v1/chat/completions"), cached, key...)
	if r.Status != 200 || r.Header.Get(HeaderCacheName) != "stale" {
		t.Fatalf("cached request while all OPEN: %d cache=%q %s", r.Status, r.Header.Get(HeaderCacheName), r.Body)
	}
	t.Logf("stale answer while all OPEN in %v", time.Since(start).Round(time.Millisecond))
	if n := s.Sim("fast").Stats().Requests + s.Sim("fast-b").Stats().Requests; n != 0 {
		t.Errorf("%d requests reached the OPEN backends for a cached answer", n)
	}

	// (c) queued requests, enqueued lowest priority first; their
	// max_tokens tells them apart at the providers.
	prios := []string{"sheddable", "sheddable", "standard", "standard", "critical", "critical"}
	type result struct {
		prio   string
		status int
		body   string
	}
	results := make(chan result, len(prios))
	for i, p := range prios {
		body := chat("fast-8k", map[string]any{"max_tokens": 10*rank(p) + i}, user("queued "+p))
		go func() {
			req, _ := http.NewRequest(http.MethodPost, s.URL("/v1/chat/completions"), bytes.NewReader(body))
			req.Header.Set("content-type", "application/json")
			req.Header.Set("x-detour-priority", p)
			resp, err := client.Do(req)
			if err != nil {
				results <- result{p, 0, err.Error()}
				return
			}
			defer resp.Body.Close()
			var b bytes.Buffer
			b.ReadFrom(resp.Body)
			results <- result{p, resp.StatusCode, b.String()}
		}()
		time.Sleep(40 * time.Millisecond)
	}
	if d := waitMetric(t, s.MetricsAddr, `detour_queue_depth{route="fast-8k"}`, float64(len(prios)), 2*time.Second); d != float64(len(prios)) {
		t.Errorf("queue depth %v, want %d", d, len(prios))
	}

	// (b) uncached, to auto (max_wait 1 s): 503 + Retry-After.
	start = time.Now()
	r = post(t, s.URL("/v1/chat/completions"), reusable("never cached", nil), key...)
	waited := time.Since(start)
	assertOpenAIError(t, r, 503, "all_backends_down")
	if ra := r.Header.Get("retry-after"); ra == "" || ra == "0" {
		t.Errorf("no Retry-After on the 503: %v", r.Header)
	}
	if waited < 900*time.Millisecond || waited > 3*time.Second {
		t.Errorf("the uncached request waited %v, want about the route's max_wait (1 s)", waited)
	}
	t.Logf("uncached: 503 after %v, Retry-After %s: %s", waited.Round(time.Millisecond), r.Header.Get("retry-after"), r.Body)

	for range prios {
		select {
		case res := <-results:
			if res.status != 200 {
				t.Errorf("queued %s request: %d %s", res.prio, res.status, res.body)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("queued requests never answered")
		}
	}
	t.Logf("queued requests answered %v after both circuits opened", time.Since(openedAt).Round(100*time.Millisecond))
	var recs []sim.RequestRecord
	for _, name := range []string{"fast", "fast-b"} {
		for _, rec := range s.Sim(name).Requests(100) {
			rec.Path = name // which provider, for the log below
			recs = append(recs, rec)
		}
	}
	sortRecords(recs)
	var order []string
	for _, rec := range recs {
		if rec.MaxTokens > 0 {
			order = append(order, prioOf(rec.MaxTokens))
			t.Logf("%s max_tokens=%d at %s status %d attempt %s", rec.Path, rec.MaxTokens, rec.Time.Format("15:04:05.000000"), rec.Status, rec.Headers["x-envoy-attempt-count"])
		}
	}
	// The queue releases them in priority order, one after another's
	// answer is ready and 10 ms apart; the order they reach the providers
	// in also depends on Envoy's two workers, so it is logged, not checked.
	want := []string{"critical", "critical", "standard", "standard", "sheddable", "sheddable"}
	if released := releaseOrder(s.extLogText(), "fast-8k"); strings.Join(released, ",") != strings.Join(want, ",") {
		t.Errorf("queued requests released in the order %v, want %v", released, want)
	}
	m := s.Metrics()
	if v := metricValue(m, `detour_queue_outcomes_total{outcome="released",route="fast-8k"}`); v != float64(len(prios)) {
		t.Errorf("released %v:\n%s", v, grepLines(m, "detour_queue"))
	}
	if v := metricValue(m, `detour_queue_outcomes_total{outcome="timeout",route="auto"}`); v != 1 {
		t.Errorf("timeouts %v:\n%s", v, grepLines(m, "detour_queue"))
	}
	t.Logf("order at the providers: %v", order)
}

// releaseOrder is the priorities of route's queued requests in the order
// the ext_proc service released them, from its log.
func releaseOrder(log, route string) []string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, `msg="queued while every backend is OPEN"`) || !strings.Contains(line, " route="+route+" ") ||
			!strings.Contains(line, " outcome=released ") {
			continue
		}
		if _, rest, ok := strings.Cut(line, " priority="); ok {
			p, _, _ := strings.Cut(rest, " ")
			out = append(out, p)
		}
	}
	return out
}

func rank(p string) int {
	switch p {
	case "critical":
		return 1
	case "standard":
		return 2
	}
	return 3
}

func prioOf(maxTokens int) string {
	switch maxTokens / 10 {
	case 1:
		return "critical"
	case 2:
		return "standard"
	}
	return "sheddable"
}

func sortRecords(recs []sim.RequestRecord) {
	for i := 1; i < len(recs); i++ {
		for j := i; j > 0 && recs[j].Time.Before(recs[j-1].Time); j-- {
			recs[j], recs[j-1] = recs[j-1], recs[j]
		}
	}
}

// A queue wait longer than the ext_proc gRPC service's 10 s timeout and
// the default 2 s message timeout: the request still gets detour's own 503
// at the end of its wait (not Envoy's router_unavailable), because detour
// extends the message timeout and nothing else bounds the stream.
func TestQueueWaitOutlastsGRPCTimeouts(t *testing.T) {
	s := startStack(t, stackOptions{Controller: `controller:
  interval: 500ms
  dwell: 2s
  cool_down: 60s
probes: {disabled: true}`, RouteExtra: `    backends: [fast, fast-b]
    queue: {max_wait: 12s, max_depth: 5}`})
	openBoth(t, s)
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	r := post(t, s.URL("/v1/chat/completions"), chat("auto", nil, user("waits 12 s")))
	waited := time.Since(start)
	assertOpenAIError(t, r, 503, "all_backends_down")
	if waited < 11500*time.Millisecond || waited > 14*time.Second {
		t.Errorf("answered after %v, want about 12 s", waited)
	}
	t.Logf("503 all_backends_down after %v, Retry-After %s", waited.Round(100*time.Millisecond), r.Header.Get("retry-after"))
}
