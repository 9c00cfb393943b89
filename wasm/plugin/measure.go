package plugin

import (
	"strconv"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/detourhq/detour/wasm/proxywasm"
)

// Stat names. Labels ride in the name as ".label.value" segments, which
// the tag extraction rules in detour's Envoy bootstrap (xds.StatsTags)
// turn into Prometheus labels: detour_ttft_milliseconds{backend="fast"}.
const (
	statTTFT      = "detour_ttft_milliseconds"
	statDuration  = "detour_response_milliseconds"
	statRate      = "detour_output_tokens_per_second"
	statTokens    = "detour_output_tokens_total"
	statResponses = "detour_responses_total"
	statDecisions = "detour_wasm_decisions_total"
	statRejected  = "detour_wasm_rejections_total"
	statFailures  = "detour_wasm_failures_total"
	statPanics    = "detour_wasm_panics_total"
	statAttempts  = "detour_upstream_attempts_total"
	// statDemotions counts local demotions (demote.go), per worker VM.
	statDemotions = "detour_wasm_local_demotions_total"
	// statViews counts controller views taken (per worker VM), statViewErrors
	// failed or unreadable reads of it (the last view stays in use).
	statViews      = "detour_wasm_health_views_total"
	statViewErrors = "detour_wasm_health_view_errors_total"
)

// backendStats are one backend's measurement series.
type backendStats struct {
	ttft, duration, rate proxywasm.MetricHistogram
	tokens               proxywasm.MetricCounter
	byClass              [6]proxywasm.MetricCounter // index: status/100; 0 = no status
	defined              [6]bool
	name                 string
}

// metricSet holds the VM's stats, defined on first use. Envoy keeps the
// values; the guest only remembers ids.
type metricSet struct {
	backends  map[string]*backendStats
	decisions map[string]proxywasm.MetricCounter
	rejects   map[string]proxywasm.MetricCounter
	attempts  map[string]proxywasm.MetricCounter
	demotions map[string]proxywasm.MetricCounter
	failures  proxywasm.MetricCounter
	panics    proxywasm.MetricCounter

	views, viewErrors proxywasm.MetricCounter
}

// maxSeries bounds the label values one VM defines: backend names come
// from detour's own headers (clients cannot set them: Envoy strips them on
// the way in), but a bound costs nothing and keeps memory flat whatever
// happens.
const maxSeries = 4096

func newMetricSet() *metricSet {
	return &metricSet{
		backends:  map[string]*backendStats{},
		decisions: map[string]proxywasm.MetricCounter{},
		rejects:   map[string]proxywasm.MetricCounter{},
		attempts:  map[string]proxywasm.MetricCounter{},
		demotions: map[string]proxywasm.MetricCounter{},
		failures:  proxywasm.DefineCounterMetric(statFailures),
		panics:    proxywasm.DefineCounterMetric(statPanics),

		views:      proxywasm.DefineCounterMetric(statViews),
		viewErrors: proxywasm.DefineCounterMetric(statViewErrors),
	}
}

func (m *metricSet) backend(name string) *backendStats {
	if b := m.backends[name]; b != nil {
		return b
	}
	if len(m.backends) >= maxSeries {
		name = "other"
		if b := m.backends[name]; b != nil {
			return b
		}
	}
	l := ".backend." + name
	b := &backendStats{
		name:     name,
		ttft:     proxywasm.DefineHistogramMetric(statTTFT + l),
		duration: proxywasm.DefineHistogramMetric(statDuration + l),
		rate:     proxywasm.DefineHistogramMetric(statRate + l),
		tokens:   proxywasm.DefineCounterMetric(statTokens + l),
	}
	m.backends[name] = b
	return b
}

func (b *backendStats) response(status int) {
	c := status / 100
	if c < 0 || c >= len(b.byClass) {
		c = 0
	}
	if !b.defined[c] {
		class := "none"
		if c > 0 {
			class = itoa(c) + "xx"
		}
		b.byClass[c] = proxywasm.DefineCounterMetric(statResponses + ".backend." + b.name + ".class." + class)
		b.defined[c] = true
	}
	b.byClass[c].Increment(1)
}

func (m *metricSet) decided(backend string) {
	countIn(m.decisions, backend, func() string { return statDecisions + ".backend." + backend })
}

func (m *metricSet) demoted(backend string) {
	countIn(m.demotions, backend, func() string { return statDemotions + ".backend." + backend })
}

// countIn increments the counter of key in set, defining it as name()
// the first time (so a known key builds no name). Past maxSeries keys,
// new ones are not counted.
func countIn(set map[string]proxywasm.MetricCounter, key string, name func() string) {
	c, ok := set[key]
	if !ok {
		if len(set) >= maxSeries {
			return
		}
		c = proxywasm.DefineCounterMetric(name())
		set[key] = c
	}
	c.Increment(1)
}

func (m *metricSet) rejected(kind string) {
	c, ok := m.rejects[kind]
	if !ok {
		c = proxywasm.DefineCounterMetric(statRejected + ".kind." + kind)
		m.rejects[kind] = c
	}
	c.Increment(1)
}

// measure follows one response as the client receives it: time to first
// token, output tokens per second, total time and status, per backend
// that answered (x-detour-backend on the response, which Envoy fills from
// the answering endpoint's metadata, so failovers are counted where they
// landed).
type measure struct {
	p          *Plugin
	started    int64 // request seen, ns
	firstByte  int64
	status     int
	stream     bool // an event stream: tokens arrive over time
	backend    string
	usage      usageScanner
	measuring  bool
	headersEnd bool
	// retried: the answer came from a later attempt (Envoy's
	// x-envoy-attempt-count on the response). Its times include the
	// attempts before it, so they say nothing of the answering backend
	// and are not recorded against it.
	retried bool
}

func (m *measure) start(now int64) {
	m.started = now
	m.measuring = true
}

func (m *measure) responseHeaders(now int64, endOfStream bool) {
	if !m.measuring {
		return
	}
	s, _ := proxywasm.GetHttpResponseHeader(":status")
	m.status, _ = strconv.Atoi(s)
	m.backend, _ = proxywasm.GetHttpResponseHeader(HeaderBackend)
	ct, _ := proxywasm.GetHttpResponseHeader("content-type")
	m.stream = isEventStream(ct)
	n, _ := proxywasm.GetHttpResponseHeader(AttemptCountHeader)
	m.retried = n != "" && n != "1"
	if endOfStream {
		m.firstByte = now
	}
}

// tailWindow is how much of each body chunk is scanned for the usage
// block: OpenAI-compatible providers send it last (the final SSE event, or
// the end of a JSON body), so the tail of each chunk is enough and long
// answers are not copied into the VM whole.
const tailWindow = 1024

func (m *measure) responseBody(now int64, size int, endOfStream bool) {
	if !m.measuring || size <= 0 {
		return
	}
	if m.firstByte == 0 {
		m.firstByte = now
	}
	if m.status != 200 {
		return
	}
	start := 0
	if size > tailWindow {
		start = size - tailWindow
	}
	if b, err := proxywasm.GetHttpResponseBody(start, size-start); err == nil {
		m.usage.scan(b, start > 0)
	}
}

func (m *measure) done(now int64) {
	if !m.measuring {
		return
	}
	m.measuring = false
	if m.backend == "" {
		// A reply from detour or Envoy itself (an error, or no backend
		// reached): counted, not timed against any backend.
		m.p.vm.metrics.backend("none").response(m.status)
		return
	}
	b := m.p.vm.metrics.backend(m.backend)
	b.response(m.status)
	if m.status != 200 || m.firstByte == 0 {
		return
	}
	n := m.usage.completionTokens
	if n > 0 {
		b.tokens.Increment(uint64(n))
	}
	if m.retried {
		return
	}
	b.ttft.Record(uint64((m.firstByte - m.started) / 1e6))
	b.duration.Record(uint64((now - m.started) / 1e6))
	if n > 0 {
		// A stream's rate counts from its first token; a whole answer
		// arrives at once, so its rate is over the whole response.
		gen := now - m.started
		if m.stream {
			gen = now - m.firstByte
		}
		if gen > 0 {
			b.rate.Record(uint64(int64(n) * 1e9 / gen))
		}
	}
}

// measureStream is the measure role's stream: measurement only.
type measureStream struct {
	measure
	types.DefaultHttpContext
}

func (s *measureStream) OnHttpRequestHeaders(int, bool) types.Action {
	defer s.p.guard("request headers")
	s.start(s.p.vm.clock())
	return types.ActionContinue
}

func (s *measureStream) OnHttpResponseHeaders(_ int, endOfStream bool) types.Action {
	defer s.p.guard("response headers")
	s.responseHeaders(s.p.vm.clock(), endOfStream)
	return types.ActionContinue
}

func (s *measureStream) OnHttpResponseBody(size int, endOfStream bool) types.Action {
	defer s.p.guard("response body")
	s.responseBody(s.p.vm.clock(), size, endOfStream)
	return types.ActionContinue
}

func (s *measureStream) OnHttpStreamDone() {
	defer s.p.guard("stream done")
	s.done(s.p.vm.clock())
	s.p.streamDone()
}

// attempt counts one upstream attempt by what happened to its body.
func (m *metricSet) attempt(backend, outcome string) {
	countIn(m.attempts, backend+"/"+outcome, func() string { return statAttempts + ".backend." + backend + ".outcome." + outcome })
}

func isEventStream(ct string) bool {
	const want = "text/event-stream"
	return len(ct) >= len(want) && ct[:len(want)] == want
}
