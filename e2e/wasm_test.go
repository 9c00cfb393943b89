package e2e

import (
	"regexp"
	"strconv"
	"testing"
	"time"
)

// inBothModes runs a scenario once with the ext_proc service deciding and
// once with detour's wasm plugin deciding inside Envoy (routing.mode:
// wasm): clients must not be able to tell them apart.
func inBothModes(t *testing.T, o stackOptions, test func(t *testing.T, s *stack)) {
	t.Run("extproc", func(t *testing.T) {
		test(t, startStack(t, o))
	})
	t.Run("wasm", func(t *testing.T) {
		o := o
		o.Wasm = "route"
		s := startStack(t, o)
		test(t, s)
		s.checkWasmDecided()
	})
}

// checkWasmDecided: in wasm mode the plugin decided, and the ext_proc
// service decided nothing.
func (s *stack) checkWasmDecided() {
	s.t.Helper()
	if n := sumSeries(s.Metrics(), "detour_extproc_decisions_total"); n != 0 {
		s.t.Errorf("wasm mode, yet the ext_proc service decided %v requests", n)
	}
	if n := sumSeries(s.EnvoyPrometheus(), "detour_wasm_decisions_total"); n == 0 && !s.t.Failed() {
		s.t.Errorf("wasm mode, yet the plugin counted no decision:\n%s", grepLines(s.EnvoyPrometheus(), "detour_wasm"))
	}
}

// EnvoyPrometheus is Envoy's /stats/prometheus.
func (s *stack) EnvoyPrometheus() string {
	return s.EnvoyStatsPath("/stats/prometheus")
}

// sumSeries adds every sample of a metric (all label sets).
func sumSeries(text, name string) float64 {
	var sum float64
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(\{[^}]*\})? ([0-9.e+-]+)$`)
	for _, m := range re.FindAllStringSubmatch(text, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		sum += v
	}
	return sum
}

// The plugin's measurements appear in Envoy's own /stats/prometheus, per
// backend that answered, with `make run`'s setup (measurement only, the
// ext_proc service routing).
func TestWasmMeasurement(t *testing.T) {
	s := startStack(t, stackOptions{Wasm: "measure"})
	for range 3 {
		if r := post(t, s.URL("/v1/chat/completions"), chat("auto", nil, user("hello"))); r.Status != 200 {
			t.Fatalf("status %d: %s", r.Status, r.Body)
		}
	}
	stream := chat("auto", map[string]any{"stream": true, "stream_options": map[string]any{"include_usage": true}}, user("count"))
	if r := post(t, s.URL("/v1/chat/completions"), stream, "x-sim-tokens", "10", "x-sim-tokens-per-second", "50"); r.Status != 200 {
		t.Fatalf("stream: status %d", r.Status)
	}
	// Histograms reach /stats/prometheus at Envoy's stats flush (5 s).
	var text string
	deadline := time.Now().Add(12 * time.Second)
	for {
		text = s.EnvoyPrometheus()
		if v := metricValue(text, `detour_ttft_milliseconds_count{backend="fast"}`); v >= 4 || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	for _, want := range []struct {
		series string
		min    float64
	}{
		{`detour_responses_total{backend="fast",class="2xx"}`, 4},
		{`detour_ttft_milliseconds_count{backend="fast"}`, 4},
		{`detour_response_milliseconds_count{backend="fast"}`, 4},
		{`detour_output_tokens_per_second_count{backend="fast"}`, 4},
		{`detour_output_tokens_total{backend="fast"}`, 3*16 + 10},
	} {
		if v := metricValue(text, want.series); v < want.min {
			t.Errorf("%s = %v, want at least %v", want.series, v, want.min)
		}
	}
	// The stream's rate: 10 tokens at 50/s is about 50 tokens/s; the whole
	// answers' rates are far higher. The sum is at least the stream's.
	if v := metricValue(text, `detour_output_tokens_per_second_sum{backend="fast"}`); v < 20 {
		t.Errorf("tokens per second sum %v", v)
	}
	if n := sumSeries(text, "detour_wasm_panics_total"); n != 0 {
		t.Errorf("plugin panicked %v times", n)
	}
	t.Logf("plugin stats:\n%s", grepLines(text, "detour_"))
}
