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
	if metricValue(m, `detour_cache_served_total{result="stale",route="auto",why="failed"}`) != 2 {
		t.Errorf("served metrics:\n%s", grepLines(m, "detour_cache"))
	}
}

// HeaderCacheName is the response header of a cached answer.
const HeaderCacheName = "x-detour-cache"
