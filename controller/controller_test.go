package controller

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/detourhq/detour/examples"
	"github.com/detourhq/detour/health"
	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/healthview/viewhttp"
	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/signals"
	"github.com/detourhq/detour/xds"
)

// fakeSource serves the Stats a test scripts, per backend.
type fakeSource struct {
	stats map[string]signals.Stats
	err   error
}

func (f *fakeSource) Collect(context.Context, time.Time) (map[string]signals.Stats, error) {
	out := map[string]signals.Stats{}
	for k, v := range f.stats {
		out[k] = v
	}
	return out, f.err
}

// traffic keeps monotonic totals per backend and renders windowed Stats.
type traffic struct {
	totalReq, totalErr uint64
}

func (t *traffic) window(name string, req, errs uint64) signals.Stats {
	t.totalReq += req / 30 // one second's worth of the window
	t.totalErr += errs / 30
	s := signals.Stats{Backend: name, Span: 30 * time.Second, Requests: req, Errors: errs,
		Failures: errs * 2, TotalRequests: t.totalReq, TotalErrors: t.totalErr}
	if req > 0 {
		s.ErrorRate = float64(errs) / float64(req)
	}
	return s
}

type fakePusher struct {
	mu    sync.Mutex
	last  *xds.Control
	count int
	err   error
}

func (f *fakePusher) SetControl(_ context.Context, c *xds.Control) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	f.last, f.count = c, f.count+1
	return nil
}

type harness struct {
	t      *testing.T
	mu     sync.Mutex // guards now: probe goroutines read the clock
	now    time.Time
	src    *fakeSource
	push   *fakePusher
	pub    *viewhttp.Publisher
	m      *Metrics
	c      *Controller
	p      *policy.Policy
	prober *fakeProber
}

func quickstart(t testing.TB) *policy.Policy {
	t.Helper()
	p, err := policy.Parse("quickstart", examples.QuickstartPolicy)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func newHarness(t *testing.T, p *policy.Policy, prober *fakeProber) *harness {
	t.Helper()
	h := &harness{t: t, now: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC), src: &fakeSource{stats: map[string]signals.Stats{}},
		push: &fakePusher{}, pub: viewhttp.NewPublisher(), m: NewMetrics(prometheus.NewRegistry()), p: p, prober: prober}
	cfg := Config{Policy: p, NewSource: func(*policy.Policy) (signals.Source, error) { return h.src, nil },
		Pusher: h.push, Publisher: h.pub, Metrics: h.m, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Clock: h.clock}
	if prober != nil {
		prober.now = h.clock
		cfg.Prober = prober
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.c = c
	return h
}

func (h *harness) clock() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.now
}

// step advances the clock by d and evaluates.
func (h *harness) step(d time.Duration) *healthview.Snapshot {
	h.t.Helper()
	h.mu.Lock()
	h.now = h.now.Add(d)
	h.mu.Unlock()
	if err := h.c.Step(context.Background()); err != nil {
		h.t.Fatal(err)
	}
	return h.pub.Current()
}

func (h *harness) state(b string) string { return h.pub.Current().Backends[b].State }

func TestBrownoutOpensAndRecovers(t *testing.T) {
	h := newHarness(t, quickstart(t), nil)
	var fast traffic
	// Healthy first.
	h.src.stats["fast"] = fast.window("fast", 300, 0)
	v := h.step(time.Second)
	if h.state("fast") != healthview.Healthy {
		t.Fatalf("fast = %s, want HEALTHY", h.state("fast"))
	}
	if got := h.push.last.Backends["fast"].Health; got != corev3.HealthStatus_HEALTHY {
		t.Errorf("pushed health %v", got)
	}
	before := v.Version
	// 30 % of requests fail.
	h.src.stats["fast"] = fast.window("fast", 300, 90)
	v = h.step(time.Second)
	b := v.Backends["fast"]
	if b.State != healthview.Open {
		t.Fatalf("fast = %s (%s), want OPEN", b.State, b.Reason)
	}
	if v.Version == before {
		t.Error("an opening did not publish a new view version")
	}
	if b.RetryAt == nil || b.RetryAt.Sub(h.now) != 10*time.Second {
		t.Errorf("retry_at = %v, want now + 10s", b.RetryAt)
	}
	if len(b.Transitions) != 1 || b.Transitions[0].To != healthview.Open {
		t.Errorf("transitions = %+v", b.Transitions)
	}
	if got := h.push.last.Backends["fast"].Health; got != corev3.HealthStatus_UNHEALTHY {
		t.Errorf("pushed health %v, want UNHEALTHY", got)
	}
	if n := testutil.ToFloat64(h.m.Transitions.WithLabelValues("fast", "HEALTHY", "OPEN")); n != 1 {
		t.Errorf("transitions metric = %v", n)
	}
	// fast-8k still has fast-b: nothing shed.
	if r := v.Routes["fast-8k"]; r.Shed != "" || r.HealthyShare != 0.5 {
		t.Errorf("fast-8k route = %+v", r)
	}
	// While OPEN no traffic reaches it; after the cool-down it is tried.
	h.src.stats["fast"] = fast.window("fast", 0, 0)
	for range 10 {
		h.step(time.Second)
	}
	if h.state("fast") != healthview.HalfOpen {
		t.Fatalf("after the cool-down fast = %s, want HALF_OPEN", h.state("fast"))
	}
	// Trial requests succeed (totals grow, none failed).
	for range 12 {
		fast.totalReq++
		h.src.stats["fast"] = signals.Stats{Backend: "fast", Span: 30 * time.Second, Requests: 1, TotalRequests: fast.totalReq, TotalErrors: fast.totalErr}
		h.step(time.Second)
	}
	if h.state("fast") != healthview.Healthy {
		t.Fatalf("after good trials fast = %s (%s), want HEALTHY", h.state("fast"), h.pub.Current().Backends["fast"].Reason)
	}
	// A backend that opened once gets tighter outlier detection.
	if got := h.push.last.Backends["fast"].ConsecutiveErrors; got != uint32(h.p.OutlierDetection.ConsecutiveErrors-1) {
		t.Errorf("consecutive_errors after one opening = %d", got)
	}
}

func TestAllOpenShedsAllButCritical(t *testing.T) {
	h := newHarness(t, quickstart(t), nil)
	var a, b traffic
	h.src.stats["fast"] = a.window("fast", 100, 60)
	h.src.stats["fast-b"] = b.window("fast-b", 100, 60)
	v := h.step(time.Second)
	r := v.Routes["fast-8k"]
	if r.Shed != healthview.Standard || r.RetryAfter != 10 {
		t.Errorf("fast-8k = %+v, want shed standard, retry after 10", r)
	}
	if !r.Refuses(healthview.Standard, 0) || r.Refuses(healthview.Critical, 0) {
		t.Errorf("refusals wrong: %+v", r)
	}
	// "auto" still has long and vision.
	if r := v.Routes["auto"]; r.Shed != "" || r.HealthyShare != 0.5 {
		t.Errorf("auto = %+v", r)
	}
	// Two of two busy backends unwell: retries shrink to the bounds' minimum.
	bc := h.push.last.Backends["long"]
	if bc.RetryBudgetPercent != h.p.Controller.Bounds.RetryBudgetPercent.Min || bc.MinRetryConcurrency != uint32(h.p.Controller.Bounds.MinRetryConcurrency.Min) {
		t.Errorf("retry budget while errors are widespread = %v / %v", bc.RetryBudgetPercent, bc.MinRetryConcurrency)
	}
}

func TestStaleSignalsDegradeNeverOpen(t *testing.T) {
	h := newHarness(t, quickstart(t), nil)
	h.src.err = errors.New("envoy admin unreachable")
	for range 60 {
		h.step(time.Second)
	}
	for _, b := range []string{"fast", "fast-b", "long", "vision"} {
		if s := h.state(b); s == healthview.Open {
			t.Errorf("%s opened on stale signals", b)
		}
	}
	if s := h.state("fast"); s != healthview.Degraded {
		t.Errorf("fast = %s, want DEGRADED (signals stale)", s)
	}
	if h.pub.Current().SignalError == "" {
		t.Error("the view does not say the signals failed")
	}
}

// TestFlappingBoundsPushes: a backend failing for 5 s then fine for 5 s,
// for 5 minutes, at 10 requests/s. The pushes the controller makes stay
// bounded by the state machine's growing cool-down.
func TestFlappingBoundsPushes(t *testing.T) {
	h := newHarness(t, quickstart(t), nil)
	type ev struct {
		at  time.Duration
		bad bool
	}
	var events []ev // per-second outcomes, to keep a 30 s window
	var total, totalErr uint64
	for sec := 0; sec < 300; sec++ {
		bad := (sec/5)%2 == 0
		st := h.state("fast")
		n := uint64(10)
		switch st {
		case healthview.Open:
			n = 0
		case healthview.HalfOpen:
			n = 1
		}
		for range n {
			events = append(events, ev{time.Duration(sec) * time.Second, bad})
			total++
			if bad {
				totalErr++
			}
		}
		var req, errs, fails uint64
		for _, e := range events {
			age := time.Duration(sec)*time.Second - e.at
			if age < 30*time.Second {
				req++
				if e.bad {
					errs++
				}
			}
			if age < time.Minute && e.bad {
				fails++
			}
		}
		h.src.stats["fast"] = signals.Stats{Backend: "fast", Span: 30 * time.Second, Requests: req, Errors: errs, Failures: fails,
			TotalRequests: total, TotalErrors: totalErr}
		h.step(time.Second)
	}
	endpointPushes := testutil.ToFloat64(h.m.Pushes.WithLabelValues("endpoint"))
	transitions := 0.0
	for _, from := range []string{"HEALTHY", "DEGRADED", "OPEN", "HALF_OPEN"} {
		for _, to := range []string{"HEALTHY", "DEGRADED", "OPEN", "HALF_OPEN"} {
			transitions += testutil.ToFloat64(h.m.Transitions.WithLabelValues("fast", from, to))
		}
	}
	t.Logf("5 min of 5 s flapping: %v transitions, %v endpoint pushes, %d pushes in all", transitions, endpointPushes, h.push.count)
	// Bound from decision 0009: at most 5 openings in 300 s with the
	// doubling cool-down, each with at most 3 other transitions: 20. Every
	// push follows a state change (plus the first one).
	if transitions > 20 {
		t.Errorf("%v transitions, bound 20", transitions)
	}
	if h.push.count > 21 {
		t.Errorf("%d pushes, bound 21", h.push.count)
	}
}

func TestThrottledBackendRanksLower(t *testing.T) {
	h := newHarness(t, quickstart(t), nil)
	s := signals.Stats{Backend: "fast", Span: 30 * time.Second, Requests: 200, TooManyRequests: 120, TotalRequests: 200, TotalTooManyRequests: 120}
	h.src.stats["fast"] = s
	v := h.step(time.Second)
	b := v.Backends["fast"]
	if !b.Throttled || b.State != healthview.Healthy {
		t.Fatalf("fast: throttled %v state %s, want throttled and still HEALTHY", b.Throttled, b.State)
	}
	// Stops throttling: back to normal once under the lower threshold.
	h.src.stats["fast"] = signals.Stats{Backend: "fast", Span: 30 * time.Second, Requests: 200, TooManyRequests: 10, TotalRequests: 400, TotalTooManyRequests: 130}
	if v := h.step(time.Second); !v.Backends["fast"].Throttled {
		t.Error("left throttled at 5 %: the hysteresis should keep it until under 2 %")
	}
	h.src.stats["fast"] = signals.Stats{Backend: "fast", Span: 30 * time.Second, Requests: 200, TooManyRequests: 1, TotalRequests: 600, TotalTooManyRequests: 131}
	if v := h.step(time.Second); v.Backends["fast"].Throttled {
		t.Error("still throttled at 0.5 %")
	}
}

// Throttling ends on a run of requests without a 429, though the window
// still holds the earlier ones, and does not start again until a new 429
// comes.
func TestThrottlingEndsOnACleanRun(t *testing.T) {
	h := newHarness(t, quickstart(t), nil)
	steps := []struct {
		total, total429 uint64
		want            bool
	}{
		{200, 120, true},  // 60 % of the window: throttled
		{205, 121, true},  // a new 429
		{214, 121, true},  // 9 clean since
		{215, 121, false}, // 10 clean: done, the window's 60 % notwithstanding
		{230, 121, false}, // still no new 429
		{231, 122, true},  // a new one, the window over 10 %: throttled again
	}
	for i, st := range steps {
		h.src.stats["fast"] = signals.Stats{Backend: "fast", Span: 30 * time.Second, Requests: 200, TooManyRequests: 120,
			TotalRequests: st.total, TotalTooManyRequests: st.total429}
		if got := h.step(time.Second).Backends["fast"].Throttled; got != st.want {
			t.Errorf("step %d (%d requests, %d 429s in all): throttled %v, want %v", i, st.total, st.total429, got, st.want)
		}
	}
}

func TestLittlesLawLimits(t *testing.T) {
	h := newHarness(t, quickstart(t), nil)
	// 3000 requests over 30 s (100/s) × 5 s mean = 500 in flight → × 4 = 2000.
	h.src.stats["fast"] = signals.Stats{Backend: "fast", Span: 30 * time.Second, Requests: 3000, MeanLatency: 5 * time.Second, TotalRequests: 3000}
	h.step(time.Second)
	if got := h.push.last.Backends["fast"].MaxRequests; got != 2000 {
		t.Errorf("max_requests = %d, want 2000", got)
	}
	// Quiet backends keep the floor (Envoy's default).
	if got := h.push.last.Backends["long"].MaxRequests; got != 1024 {
		t.Errorf("idle max_requests = %d, want 1024", got)
	}
	// A 10 % change is noise: the pushed value stays.
	h.src.stats["fast"] = signals.Stats{Backend: "fast", Span: 30 * time.Second, Requests: 3300, MeanLatency: 5 * time.Second, TotalRequests: 6300}
	h.step(time.Second)
	if got := h.push.last.Backends["fast"].MaxRequests; got != 2000 {
		t.Errorf("after a 10%% change max_requests = %d, want 2000 kept", got)
	}
	var found bool
	for _, s := range h.pub.Current().Backends["fast"].Settings {
		if s.Name == "max_requests" && s.Value == "2000" && s.Why != "" {
			found = true
		}
	}
	if !found {
		t.Errorf("max_requests not explained: %+v", h.pub.Current().Backends["fast"].Settings)
	}
}

func TestFirstTokenDeadlineFollowsTTFT(t *testing.T) {
	h := newHarness(t, quickstart(t), nil)
	h.src.stats["fast"] = signals.Stats{Backend: "fast", Span: 30 * time.Second, Requests: 100, TotalRequests: 100,
		TTFT: 400 * time.Millisecond, TTFTSamples: 100}
	v := h.step(time.Second)
	if got := h.push.last.FirstTokenTimeout; got != 1600*time.Millisecond {
		t.Errorf("first-token deadline = %v, want 4 × 400ms", got)
	}
	if time.Duration(v.FirstTokenTimeout) != 1600*time.Millisecond || v.FirstTokenWhy == "" {
		t.Errorf("view: %v (%q)", time.Duration(v.FirstTokenTimeout), v.FirstTokenWhy)
	}
	// Too few samples: the policy's value.
	h2 := newHarness(t, quickstart(t), nil)
	h2.src.stats["fast"] = signals.Stats{Backend: "fast", Span: 30 * time.Second, Requests: 5, TTFT: 400 * time.Millisecond, TTFTSamples: 5}
	h2.step(time.Second)
	if got := h2.push.last.FirstTokenTimeout; got != 0 {
		t.Errorf("deadline from 5 samples = %v, want the policy's (0)", got)
	}
}

// fakeProber answers with scripted results.
type fakeProber struct {
	now    func() time.Time
	mu     sync.Mutex
	result ProbeResult
	calls  int
}

func (f *fakeProber) Due(string, health.State, bool, time.Time) bool { return true }

func (f *fakeProber) Probe(_ context.Context, backend string) []ProbeResult {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	r := f.result
	r.Backend, r.At = backend, f.now()
	return []ProbeResult{r}
}

func TestSlowProbesDegradeAnIdleBackend(t *testing.T) {
	pr := &fakeProber{result: ProbeResult{Name: "short", OK: true, Slow: true, TTFT: 3 * time.Second, Total: 4 * time.Second, TokensPerSecond: 50}}
	h := newHarness(t, quickstart(t), pr)
	for range 15 {
		h.step(time.Second)
		time.Sleep(time.Millisecond) // let the probe goroutines deliver
	}
	waitFor(t, func() bool { h.step(time.Second); return h.state("fast") == healthview.Degraded })
	b := h.pub.Current().Backends["fast"]
	if len(b.Probes) == 0 || time.Duration(b.Signals.TTFT) != 3*time.Second {
		t.Errorf("probes %+v, ttft %v", b.Probes, time.Duration(b.Signals.TTFT))
	}
}

func TestFailingProbesCountAsFailures(t *testing.T) {
	pr := &fakeProber{result: ProbeResult{Name: "short", OK: false, Reason: "status 500"}}
	p := quickstart(t)
	p.CircuitBreaker.MinRequests = 5
	h := newHarness(t, p, pr)
	waitFor(t, func() bool { h.step(time.Second); return h.state("fast") == healthview.Open })
	if n := testutil.ToFloat64(h.m.Probes.WithLabelValues("fast", "short", "failed")); n < 5 {
		t.Errorf("failed probes counted %v", n)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5 s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestPushFailureIsReported(t *testing.T) {
	h := newHarness(t, quickstart(t), nil)
	h.push.err = errors.New("no")
	h.mu.Lock()
	h.now = h.now.Add(time.Second)
	h.mu.Unlock()
	if err := h.c.Step(context.Background()); err == nil {
		t.Error("a failed push was not reported")
	}
}

// fakeHosts serves scripted endpoint windows.
type fakeHosts struct {
	w map[string]map[string]signals.HostWindow
}

func (f *fakeHosts) Collect(context.Context, time.Time) (map[string]map[string]signals.HostWindow, error) {
	return f.w, nil
}

func TestEndpointWeightsFollowErrorRate(t *testing.T) {
	p := quickstart(t)
	// fast gets a second endpoint.
	p.Backends[0].Endpoints = append(p.Backends[0].Endpoints, policy.Endpoint{Address: "127.0.0.1:8111", Region: "local"})
	hosts := &fakeHosts{w: map[string]map[string]signals.HostWindow{
		"fast": {"127.0.0.1:8101": {Requests: 200, Errors: 20}, "127.0.0.1:8111": {Requests: 200}},
		// A single-endpoint backend is never weighted.
		"fast-b": {"127.0.0.1:8102": {Requests: 200, Errors: 100}},
	}}
	h := newHarness(t, p, nil)
	h.c.cfg.NewHosts = func(*policy.Policy) (HostSource, error) { return hosts, nil }
	h.c.sourceKey = "" // rebuild the sources with the hosts
	if err := h.c.apply(p); err != nil {
		t.Fatal(err)
	}
	h.step(time.Second)
	w := h.push.last.Backends["fast"].EndpointWeights
	if w["127.0.0.1:8101"] != 80 || w["127.0.0.1:8111"] != 100 {
		t.Errorf("weights %v, want 80 for the endpoint failing 10 %%, 100 for the other", w)
	}
	if got := h.push.last.Backends["fast-b"].EndpointWeights; got != nil {
		t.Errorf("single-endpoint backend weighted: %v", got)
	}
	found := false
	for _, s := range h.pub.Current().Backends["fast"].Settings {
		if s.Name == "endpoint_weights" && strings.Contains(s.Why, "10.0% errors of 200") {
			found = true
		}
	}
	if !found {
		t.Errorf("weights not explained: %+v", h.pub.Current().Backends["fast"].Settings)
	}
	// A small change is noise: the pushed weight stays.
	hosts.w["fast"]["127.0.0.1:8101"] = signals.HostWindow{Requests: 200, Errors: 22}
	h.step(time.Second)
	if got := h.push.last.Backends["fast"].EndpointWeights["127.0.0.1:8101"]; got != 80 {
		t.Errorf("after 11%% errors weight %d, want 80 kept", got)
	}
	// Fixed: back to equal weights, nothing pushed for the backend.
	hosts.w["fast"]["127.0.0.1:8101"] = signals.HostWindow{Requests: 200}
	h.step(time.Second)
	if got := h.push.last.Backends["fast"].EndpointWeights; got != nil {
		t.Errorf("recovered endpoints still weighted: %v", got)
	}
}

// withHosts gives h's controller an endpoint source.
func (h *harness) withHosts(hosts HostSource) {
	h.t.Helper()
	h.c.cfg.NewHosts = func(*policy.Policy) (HostSource, error) { return hosts, nil }
	h.c.sourceKey = "" // rebuild the sources with the hosts
	if err := h.c.apply(h.p); err != nil {
		h.t.Fatal(err)
	}
}

// fastTwoEndpoints is a harness on the quickstart policy whose fast has a
// second endpoint, second, in region, with endpoint windows from w.
func fastTwoEndpoints(t *testing.T, second, region string, w map[string]map[string]signals.HostWindow) (*harness, *fakeHosts) {
	t.Helper()
	p := quickstart(t)
	p.Backends[0].Endpoints = append(p.Backends[0].Endpoints, policy.Endpoint{Address: second, Region: region})
	hosts := &fakeHosts{w: w}
	h := newHarness(t, p, nil)
	h.withHosts(hosts)
	return h, hosts
}

// A lost region: fast's east endpoint takes requests and answers none, its
// west one serves. The east endpoint is pushed UNHEALTHY on its own, its
// timeouts do not open fast, and a backend with nothing else (fast-b, one
// endpoint, silent too) opens. Back after its cool-down, an endpoint that
// answers stays in.
func TestEndpointOutOfService(t *testing.T) {
	const east, west = "127.0.0.1:8101", "127.0.0.1:8111"
	silent := signals.HostWindow{Requests: 200, Errors: 150, TotalRequests: 1200, TotalErrors: 150, Active: 40, Started: 60, Unanswered: 3 * time.Second}
	h, hosts := fastTwoEndpoints(t, west, "local", map[string]map[string]signals.HostWindow{
		"fast":   {east: silent, west: {Requests: 400, TotalRequests: 2400}},
		"fast-b": {"127.0.0.1:8102": {Requests: 50, TotalRequests: 300, Active: 5, Started: 10, Unanswered: 3 * time.Second}},
		// A long answer alone in flight is no silence.
		"long": {"127.0.0.1:8103": {Requests: 1, TotalRequests: 1, Active: 1, Started: 1, Unanswered: 20 * time.Second}},
	})
	var tf, tb traffic
	measured := func(s signals.Stats) signals.Stats {
		s.P95, s.LatencySamples = 80*time.Millisecond, 500
		return s
	}
	h.src.stats["fast"] = measured(tf.window("fast", 600, 150)) // the east endpoint's timeouts: 25 % of the backend
	h.src.stats["fast-b"] = measured(tb.window("fast-b", 50, 0))
	h.step(time.Second)

	out := h.push.last.Backends["fast"].EndpointsOut
	if !out[east] || out[west] || len(out) != 1 {
		t.Fatalf("fast's endpoints out: %v, want only %s", out, east)
	}
	v := h.pub.Current()
	if st := v.Backends["fast"].State; st != healthview.Healthy {
		t.Errorf("fast is %s (%s), want HEALTHY: its west endpoint serves without error", st, v.Backends["fast"].Reason)
	}
	if eo := v.Backends["fast"].EndpointsOut; len(eo) != 1 || eo[0].Endpoint != east || !strings.Contains(eo[0].Reason, "no answer for 3s to 60 attempts") {
		t.Errorf("view's endpoints out: %+v", eo)
	}
	if b := v.Backends["fast-b"]; b.State != healthview.Open || !strings.Contains(b.Reason, "no answer for 3s") {
		t.Errorf("fast-b: %s (%s), want OPEN for answering nothing", b.State, b.Reason)
	}
	if got := h.push.last.Backends["fast-b"].EndpointsOut; got != nil {
		t.Errorf("a backend with nothing else serving had an endpoint pushed apart: %v", got)
	}
	if st := v.Backends["long"].State; st != healthview.Healthy {
		t.Errorf("long (one answer in flight for 20 s) is %s", st)
	}
	if n := testutil.ToFloat64(h.m.EndpointOuts.WithLabelValues("fast", "unanswering")); n != 1 {
		t.Errorf("endpoint outs counted %v", n)
	}

	// While out, what it did stays out of fast's figures: more timeouts
	// arrive in the backend's counts, none in a healthy endpoint's.
	for range 5 {
		silent.TotalRequests += 10
		silent.TotalErrors += 10
		hosts.w["fast"][east] = silent
		h.src.stats["fast"] = measured(tf.window("fast", 600, 150))
		h.step(time.Second)
	}
	if st := h.pub.Current().Backends["fast"].State; st != healthview.Healthy {
		t.Errorf("fast is %s while only its out endpoint fails", st)
	}

	// After the cool-down it answers again: back in service.
	hosts.w["fast"][east] = signals.HostWindow{Requests: 100, TotalRequests: 1400, TotalErrors: 200}
	h.step(5 * time.Second)
	if got := h.push.last.Backends["fast"].EndpointsOut; got != nil {
		t.Errorf("recovered endpoint still out: %v", got)
	}
}

// In a backend of several endpoints, one whose own error rate opens the
// circuit is taken out; a backend of one is judged whole.
func TestEndpointErringOut(t *testing.T) {
	const a, b = "127.0.0.1:8101", "127.0.0.1:8111"
	h, hosts := fastTwoEndpoints(t, b, "local", map[string]map[string]signals.HostWindow{
		"fast":   {a: {Requests: 100, Errors: 40}, b: {Requests: 100}},
		"fast-b": {"127.0.0.1:8102": {Requests: 100, Errors: 40}},
	})
	h.step(time.Second)
	if out := h.push.last.Backends["fast"].EndpointsOut; !out[a] || len(out) != 1 {
		t.Errorf("fast's endpoints out: %v, want %s", out, a)
	}
	if eo := h.pub.Current().Backends["fast"].EndpointsOut; len(eo) != 1 || !strings.Contains(eo[0].Reason, "error rate 40.0% > 25%") {
		t.Errorf("reason: %+v", eo)
	}
	if out := h.push.last.Backends["fast-b"].EndpointsOut; out != nil {
		t.Errorf("single endpoint taken out on its own: %v", out)
	}
	// Back after its cool-down, it is judged on what it does since, not
	// on the window's failures that took it out.
	hosts.w["fast"][a] = signals.HostWindow{Requests: 100, Errors: 40, TotalRequests: 1000, TotalErrors: 400}
	h.step(10 * time.Second)
	if out := h.push.last.Backends["fast"].EndpointsOut; out != nil {
		t.Errorf("out again on old failures: %v", out)
	}
	hosts.w["fast"][a] = signals.HostWindow{Requests: 130, Errors: 50, TotalRequests: 1030, TotalErrors: 410}
	h.step(time.Second)
	if out := h.push.last.Backends["fast"].EndpointsOut; !out[a] {
		t.Errorf("failing a third of its requests since it came back, it stays in: %v", out)
	}
}

// fakeReacher answers reachability checks as scripted, counting them.
type fakeReacher struct {
	mu    sync.Mutex
	err   error
	calls []string
}

func (f *fakeReacher) Reach(_ context.Context, backend, endpoint string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, backend+" "+endpoint)
	return f.err
}

// waitCheck waits for the endpoint judge's running check to report.
func (h *harness) waitCheck() {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		h.c.endpoints.mu.Lock()
		n := len(h.c.endpoints.checks)
		h.c.endpoints.mu.Unlock()
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatal("no reachability check finished")
		}
		time.Sleep(time.Millisecond)
	}
}

// An endpoint out of service takes traffic again only once it answers:
// after its cool-down a check runs; while checks fail the endpoint stays
// out and is checked again after 1s, 2s, 4s, 5s...; once one passes the
// endpoint is back.
func TestEndpointBackOnlyWhenReached(t *testing.T) {
	const east, west = "127.0.0.1:8101", "127.0.0.1:8111"
	h, hosts := fastTwoEndpoints(t, west, "local", map[string]map[string]signals.HostWindow{
		"fast": {east: {Requests: 200, TotalRequests: 200, Active: 40, Started: 60, Unanswered: 3 * time.Second}, west: {Requests: 400, TotalRequests: 400}},
	})
	reacher := &fakeReacher{err: errors.New("context deadline exceeded")}
	h.c.endpoints.reach = reacher
	var tf traffic
	st := tf.window("fast", 600, 0)
	st.P95, st.LatencySamples = 80*time.Millisecond, 500
	h.src.stats["fast"] = st
	h.step(time.Second)
	if !h.push.last.Backends["fast"].EndpointsOut[east] {
		t.Fatal("the silent endpoint was not taken out")
	}
	// Nothing in flight any more: it is only out by its cool-down.
	hosts.w["fast"][east] = signals.HostWindow{TotalRequests: 200}
	h.step(10 * time.Second) // the cool-down (10 s) ends: a check starts
	if !h.push.last.Backends["fast"].EndpointsOut[east] {
		t.Fatal("back in service before any check")
	}
	for _, next := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second} {
		h.waitCheck()
		h.step(time.Second) // the check failed: checked again soon
		eo := h.pub.Current().Backends["fast"].EndpointsOut
		if len(eo) != 1 || !strings.Contains(eo[0].Reason, "unreachable after its cool-down (context deadline exceeded); taken out for: no answer") {
			t.Fatalf("after a failed check: %+v", eo)
		}
		if got := eo[0].Until.Sub(h.clock()); got != next {
			t.Errorf("next check in %v, want %v", got, next)
		}
		h.step(next) // the next check starts
		if !h.push.last.Backends["fast"].EndpointsOut[east] {
			t.Fatal("back in service while its checks fail")
		}
	}
	// It answers again: the next check, started after this, passes.
	h.waitCheck()
	h.step(time.Second)
	reacher.mu.Lock()
	reacher.err = nil
	reacher.mu.Unlock()
	h.step(5 * time.Second)
	h.waitCheck()
	h.step(time.Second)
	if got := h.push.last.Backends["fast"].EndpointsOut; got != nil {
		t.Errorf("reached, still out: %v", got)
	}
	// Back in service, it is not checked again (nor held out for it).
	for range 5 {
		h.step(2 * time.Second)
		if got := h.push.last.Backends["fast"].EndpointsOut; got != nil {
			t.Fatalf("back in service, then out again: %v", got)
		}
	}
	reacher.mu.Lock()
	defer reacher.mu.Unlock()
	if len(reacher.calls) != 7 || reacher.calls[0] != "fast "+east {
		t.Errorf("checks %v, want seven of fast %s", reacher.calls, east)
	}
}

// The hedged deadline of non-streaming attempts follows the slowest
// healthy backend's response p95, within its bounds; a hard
// retry.per_try_timeout or controller.no_hedging turns it off.
func TestResponseDeadline(t *testing.T) {
	measured := func(p95 time.Duration, n uint64, state health.State) backendInput {
		return backendInput{name: "b", status: health.Status{State: state}, stats: signals.Stats{P95: p95, LatencySamples: n}}
	}
	tests := []struct {
		name   string
		modify func(*policy.Policy)
		in     []backendInput
		want   time.Duration
	}{
		{"nothing measured: the lower bound", nil, []backendInput{measured(0, 0, health.Healthy)}, 10 * time.Second},
		{"4 × p95", nil, []backendInput{measured(5*time.Second, 100, health.Healthy), measured(time.Second, 100, health.Healthy)}, 20 * time.Second},
		{"too few samples", nil, []backendInput{measured(9*time.Second, 5, health.Healthy)}, 10 * time.Second},
		{"a degraded backend's p95 does not count", nil, []backendInput{measured(60*time.Second, 100, health.Degraded)}, 10 * time.Second},
		{"the upper bound", nil, []backendInput{measured(100*time.Second, 100, health.Healthy)}, 300 * time.Second},
		{"hard per-try timeout", func(p *policy.Policy) { p.Retry.PerTryTimeout = policy.Duration(30 * time.Second) }, []backendInput{measured(0, 0, health.Healthy)}, 0},
		{"hedging off", func(p *policy.Policy) { p.Controller.Hedging = false }, []backendInput{measured(0, 0, health.Healthy)}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := quickstart(t)
			p.Controller.Hedging = true
			if tt.modify != nil {
				tt.modify(p)
			}
			c := &xds.Control{}
			newTuner().tuneResponse(p, tt.in, c)
			if c.ResponseTimeout != tt.want {
				t.Errorf("deadline %v, want %v", c.ResponseTimeout, tt.want)
			}
		})
	}
	// A small move is noise: the pushed deadline stays.
	tu := newTuner()
	p := quickstart(t)
	p.Controller.Hedging = true
	tu.tuneResponse(p, []backendInput{measured(5*time.Second, 100, health.Healthy)}, &xds.Control{})
	c := &xds.Control{}
	tu.tuneResponse(p, []backendInput{measured(5500*time.Millisecond, 100, health.Healthy)}, c)
	if c.ResponseTimeout != 20*time.Second {
		t.Errorf("after a 10%% move: %v, want 20s kept", c.ResponseTimeout)
	}
}

// Both endpoints dead, the second (another region) not yet tried: the
// first goes out so traffic moves on, but the backend is judged on all of
// its failures, not made to look healthy by an endpoint that has shown
// nothing.
func TestEndpointOutNoExclusionWithoutEvidence(t *testing.T) {
	const east, west = "127.0.0.1:8101", "127.0.0.1:8111"
	h, _ := fastTwoEndpoints(t, west, "west", map[string]map[string]signals.HostWindow{
		"fast": {east: {Requests: 100, Errors: 100, TotalRequests: 100, TotalErrors: 100}, west: {}},
	})
	var tf traffic
	h.src.stats["fast"] = tf.window("fast", 100, 100)
	h.step(time.Second)
	if out := h.push.last.Backends["fast"].EndpointsOut; !out[east] || out[west] {
		t.Errorf("endpoints out %v, want %s alone", out, east)
	}
	if st := h.pub.Current().Backends["fast"].State; st != healthview.Open {
		t.Errorf("fast is %s, want OPEN on its failures: its other endpoint has answered nothing yet", st)
	}
}

// A silent endpoint (a lost region) is left out of its backend's figures
// at once, even before the other region has answered: its attempts end in
// timeouts only, and judging the backend on them would send its traffic to
// other backends in the same lost region.
func TestEndpointSilentExcludedAtOnce(t *testing.T) {
	const east, west = "127.0.0.1:8101", "127.0.0.1:8111"
	h, _ := fastTwoEndpoints(t, west, "west", map[string]map[string]signals.HostWindow{
		"fast": {east: {Requests: 300, Errors: 30, TotalRequests: 300, TotalErrors: 30, Active: 40, Started: 60, Unanswered: 2 * time.Second}, west: {}},
	})
	var tf traffic
	st := tf.window("fast", 300, 30)
	st.P95, st.LatencySamples = 80*time.Millisecond, 500
	h.src.stats["fast"] = st
	h.step(time.Second)
	if out := h.push.last.Backends["fast"].EndpointsOut; !out[east] || out[west] {
		t.Errorf("endpoints out %v, want %s alone", out, east)
	}
	if st := h.pub.Current().Backends["fast"]; st.State != healthview.Healthy {
		t.Errorf("fast is %s (%s), want HEALTHY: only its silent endpoint's timeouts failed", st.State, st.Reason)
	}
}

// Between evaluations the silence check reads the endpoints; one in
// service that has gone silent by its backend's bound brings the next
// evaluation forward. Endpoints already out, too few attempts, or a
// silence shorter than the bound wait for the interval.
func TestSilenceCheck(t *testing.T) {
	const east, west = "127.0.0.1:8101", "127.0.0.1:8111"
	answering := signals.HostWindow{Requests: 100, TotalRequests: 100, Active: 2}
	silent := signals.HostWindow{Requests: 100, TotalRequests: 100, Active: 8, Started: 8, Unanswered: 600 * time.Millisecond}
	tests := []struct {
		name string
		east signals.HostWindow
		out  bool // east already out of service
		due  bool
	}{
		{"all answering", answering, false, false},
		{"silent past the bound", silent, false, true},
		{"silent, but too few attempts", signals.HostWindow{Active: 3, Started: 3, Unanswered: time.Second}, false, false},
		{"quiet for less than the bound", signals.HostWindow{Active: 8, Started: 8, Unanswered: 300 * time.Millisecond}, false, false},
		{"already out of service", silent, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, hosts := fastTwoEndpoints(t, west, "west", map[string]map[string]signals.HostWindow{
				"fast": {east: answering, west: answering},
			})
			var tf traffic
			st := tf.window("fast", 100, 0)
			st.P95, st.LatencySamples = 80*time.Millisecond, 500 // bound: the 500ms floor
			h.src.stats["fast"] = st
			h.step(time.Second)
			if tt.out {
				h.c.endpoints.outs["fast"][east] = &endpointOut{until: h.now.Add(time.Minute)}
			}
			hosts.w = map[string]map[string]signals.HostWindow{"fast": {east: tt.east, west: answering}}
			h.c.policy.Controller.SilenceCheck = policy.Duration(20 * time.Millisecond)
			start := time.Now()
			if !h.c.wait(context.Background(), time.Second) {
				t.Fatal("wait ended without its context ending")
			}
			early := time.Since(start) < 700*time.Millisecond
			if early != tt.due {
				t.Errorf("evaluation brought forward: %v after %v, want %v", early, time.Since(start).Round(time.Millisecond), tt.due)
			}
			if n := testutil.ToFloat64(h.m.SilenceWakeups); (n == 1) != tt.due {
				t.Errorf("silence_wakeups_total = %v", n)
			}
		})
	}
	// A check as long as the interval is off: no reads between evaluations.
	h, _ := fastTwoEndpoints(t, west, "west", nil)
	h.c.policy.Controller.SilenceCheck = policy.Duration(time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if h.c.wait(ctx, time.Second) {
		t.Error("wait went on after its context ended")
	}
}

// waitReach waits for the running reachability check of an OPEN backend
// to report.
func (h *harness) waitReach(backend string) {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		h.c.reachable.mu.Lock()
		_, done := h.c.reachable.done[backend]
		h.c.reachable.mu.Unlock()
		if done {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatal("no reachability check of " + backend + " finished")
		}
		time.Sleep(time.Millisecond)
	}
}

// An OPEN backend is checked for reachability each evaluation; when it
// answers again after an outage longer than the base cool-down, it is
// tried at once instead of waiting out its doubled cool-down.
func TestOpenBackendTriedWhenReachableAgain(t *testing.T) {
	h := newHarness(t, quickstart(t), nil)
	reacher := &fakeReacher{err: errors.New("connection refused")}
	h.c.reachable.reach = reacher
	var fast traffic
	h.src.stats["fast"] = fast.window("fast", 300, 0)
	h.step(time.Second)
	h.src.stats["fast"] = fast.window("fast", 300, 90)
	h.step(time.Second)
	if h.state("fast") != healthview.Open {
		t.Fatalf("fast = %s, want OPEN", h.state("fast"))
	}
	h.src.stats["fast"] = signals.Stats{Backend: "fast", Span: 30 * time.Second, TotalRequests: fast.totalReq, TotalErrors: fast.totalErr}
	for range 10 { // the first cool-down, 10 s, checked unreachable throughout
		h.waitReach("fast")
		h.step(time.Second)
	}
	if h.state("fast") != healthview.HalfOpen {
		t.Fatalf("after the cool-down fast = %s, want HALF_OPEN", h.state("fast"))
	}
	fast.totalReq++
	fast.totalErr++ // its trial fails: OPEN for 20 s
	h.src.stats["fast"] = signals.Stats{Backend: "fast", Span: 30 * time.Second, Requests: 1, Errors: 1, TotalRequests: fast.totalReq, TotalErrors: fast.totalErr}
	h.step(time.Second)
	if b := h.pub.Current().Backends["fast"]; b.State != healthview.Open || !strings.Contains(b.Reason, "cool-down 20s") {
		t.Fatalf("fast = %s (%s), want OPEN for 20s", b.State, b.Reason)
	}
	h.waitReach("fast")
	h.step(time.Second)
	// A check starts with each evaluation: the provider comes back
	// between one's verdict and the next's start.
	h.waitReach("fast")
	reacher.mu.Lock()
	reacher.err = nil
	reacher.mu.Unlock()
	h.step(time.Second)
	h.waitReach("fast")
	h.step(time.Second)
	b := h.pub.Current().Backends["fast"]
	if b.State != healthview.HalfOpen || !strings.Contains(b.Reason, "reachable again after 13s unreachable: the rest of the cool-down (17s) waived") {
		t.Fatalf("fast = %s (%s), want HALF_OPEN at once", b.State, b.Reason)
	}
	if n := testutil.ToFloat64(h.m.ReachChecks.WithLabelValues("fast", "reachable")); n != 1 {
		t.Errorf("reachable checks = %v, want 1", n)
	}
	if n := testutil.ToFloat64(h.m.ReachChecks.WithLabelValues("fast", "unreachable")); n != 12 {
		t.Errorf("unreachable checks = %v, want 12", n)
	}
	// HALF_OPEN is not checked: its trials are the evidence.
	h.step(time.Second)
	reacher.mu.Lock()
	defer reacher.mu.Unlock()
	if len(reacher.calls) != 13 {
		t.Errorf("%d checks, want 13", len(reacher.calls))
	}
}

// While a route's backends throttle, its shed level moves a step each
// evaluation: up while they take under half of their recent requests
// (sheddable first, then standard, a quarter at a time), holding while
// the share is between 0.5 and 0.6 (the shedding is what keeps it
// there), down a quarter as it rises past that, all of it past 0.9;
// nothing is shed once the throttling ends. The window (30 % 429s throughout)
// does not decide: the last seconds do.
func TestShedLevelFollowsRecent429s(t *testing.T) {
	h := newHarness(t, quickstart(t), nil)
	sd, st := healthview.Sheddable, healthview.Standard
	steps := []struct {
		req, tooMany uint64 // since the last step (the first: the window)
		shed         string
		admit        float64
	}{
		{200, 60, "", 0},    // 30 % turned away: share 0.70, holds at 0
		{100, 90, sd, 0.75}, // 60 % lately: share 0.40, up
		{100, 90, sd, 0.5},
		{100, 90, sd, 0.25},
		{100, 90, sd, 0},    // every sheddable request refused
		{100, 90, st, 0.75}, // then standard ones
		{100, 30, st, 0.5},  // share 0.41
		{100, 30, st, 0.5},  // 0.56: holds
		{100, 10, st, 0.75}, // 0.73: down a step
		{100, 5, sd, 0},     // 0.84
		{100, 1, "", 0},     // 0.91: the overload has passed
		{100, 1, "", 0},
		{100, 0, "", 0}, // a clean run: no longer throttling
	}
	var a, b throttling429s
	for i, step := range steps {
		h.src.stats["fast"] = a.stats("fast", step.req, step.tooMany)
		h.src.stats["fast-b"] = b.stats("fast-b", step.req, step.tooMany)
		v := h.step(time.Second)
		if throttled := v.Backends["fast"].Throttled; throttled != (i < len(steps)-1) {
			t.Errorf("step %d: fast throttled %v", i, throttled)
		}
		r := v.Routes["fast-8k"]
		if r.Shed != step.shed || math.Abs(r.Admit-step.admit) > 1e-9 {
			t.Errorf("step %d: fast-8k sheds %q admitting %.2f (share %.2f), want %q admitting %.2f", i, r.Shed, r.Admit, r.HealthyShare, step.shed, step.admit)
		}
		if r.Shed != "" && (r.RetryAfter != 2 || !strings.Contains(r.Reason, "turning requests away")) {
			t.Errorf("step %d: %+v", i, r)
		}
		// auto has long and vision besides: never short.
		if r := v.Routes["auto"]; r.Shed != "" {
			t.Errorf("step %d: auto sheds %+v", i, r)
		}
	}
}

// Capacity lost to failures is not overload: with fast OPEN and fast-b
// turning away 30 % of its requests, fast-8k sheds nothing (its healthy
// share by state is ½); with fast-b turning away 60 %, the level climbs.
func TestShedLevelLeavesOutLostCapacity(t *testing.T) {
	h := newHarness(t, quickstart(t), nil)
	var a traffic
	var fb throttling429s
	for i := range 10 {
		h.src.stats["fast"] = a.window("fast", 100, 60)
		share := uint64(30)
		if i >= 5 {
			share = 60
		}
		h.src.stats["fast-b"] = fb.stats("fast-b", 100, share)
		v := h.step(time.Second)
		if st := v.Backends["fast"].State; st != healthview.Open {
			t.Fatalf("step %d: fast %s, want OPEN", i, st)
		}
		r := v.Routes["fast-8k"]
		switch {
		case i < 5 && r.Shed != "":
			t.Errorf("step %d: fast-8k sheds %+v with fast-b taking 70 %%", i, r)
		case i >= 6 && r.Shed == "":
			t.Errorf("step %d: fast-8k sheds nothing with fast-b taking 40 %%: %+v", i, r)
		}
	}
	if r := h.pub.Current().Routes["fast-8k"]; r.Shed == "" || r.Shed == healthview.Sheddable && r.Admit > 0 {
		t.Errorf("after 5 evaluations at 40 %%: %+v, want every sheddable request shed", r)
	}
}

// throttling429s feeds a backend's 429s: req requests since the last
// step, tooMany of them 429, over a window at 30 %.
type throttling429s struct{ total, total429 uint64 }

func (c *throttling429s) stats(name string, req, tooMany uint64) signals.Stats {
	c.total, c.total429 = c.total+req, c.total429+tooMany
	return signals.Stats{Backend: name, Span: 30 * time.Second, Requests: 200, TooManyRequests: 60,
		TotalRequests: c.total, TotalTooManyRequests: c.total429}
}

// A failed signal read in the middle of an overload changes nothing: the
// throttling and the shed level stand, and the next read counts only
// what happened since the last good one.
func TestShedLevelSurvivesAFailedRead(t *testing.T) {
	h := newHarness(t, quickstart(t), nil)
	var a, b throttling429s
	feed := func(req, tooMany uint64) *healthview.Snapshot {
		h.src.stats["fast"] = a.stats("fast", req, tooMany)
		h.src.stats["fast-b"] = b.stats("fast-b", req, tooMany)
		return h.step(time.Second)
	}
	feed(200, 60)
	for range 3 {
		feed(100, 90)
	}
	before := h.pub.Current().Routes["fast-8k"]
	if before.Shed != healthview.Sheddable || before.Admit != 0.25 {
		t.Fatalf("before the failed read: %+v", before)
	}
	h.src.err = errors.New("envoy admin unreachable")
	h.src.stats = map[string]signals.Stats{}
	v := h.step(time.Second)
	if r := v.Routes["fast-8k"]; r.Shed != before.Shed || r.Admit != before.Admit {
		t.Errorf("a failed read moved the level: %+v, was %+v", r, before)
	}
	if !v.Backends["fast"].Throttled {
		t.Error("a failed read ended the throttling")
	}
	h.src.err = nil
	h.src.stats = map[string]signals.Stats{}
	if r := feed(100, 90).Routes["fast-8k"]; r.Shed != healthview.Sheddable || r.Admit != 0 {
		t.Errorf("after the failed read: %+v, want the level a step up (every sheddable request refused)", r)
	}
}

// The state rule is a floor: auto with three of its four backends OPEN
// refuses every sheddable request; vision, the last, throttling hard
// takes standard requests too, and once it stops throttling the level is
// the state rule's again.
func TestShedLevelAboveTheStateFloor(t *testing.T) {
	h := newHarness(t, quickstart(t), nil)
	var f, fb, l traffic
	var vision throttling429s
	step := func(req, tooMany uint64) healthview.Route {
		h.src.stats["fast"] = f.window("fast", 100, 60)
		h.src.stats["fast-b"] = fb.window("fast-b", 100, 60)
		h.src.stats["long"] = l.window("long", 100, 60)
		h.src.stats["vision"] = vision.stats("vision", req, tooMany)
		return h.step(time.Second).Routes["auto"]
	}
	if r := step(200, 60); r.Shed != healthview.Sheddable || r.Admit != 0 || !strings.Contains(r.Reason, "healthy capacity share 0.25") {
		t.Fatalf("three of four OPEN: %+v", r)
	}
	var r healthview.Route
	for range 4 {
		r = step(100, 70)
	}
	if r.Shed != healthview.Standard || r.Admit >= 1 || !strings.Contains(r.Reason, "turning requests away") {
		t.Errorf("vision throttling hard: %+v, want standard refused in part", r)
	}
	if r = step(100, 0); r.Shed != healthview.Sheddable || r.Admit != 0 || !strings.Contains(r.Reason, "healthy capacity share") {
		t.Errorf("vision no longer throttling: %+v, want the state rule's level", r)
	}
}

// A handful of 429s is no evidence: with the throttling backends' recent
// requests under minThrottleRequests, the level does not rise.
func TestShedLevelHoldsOnFewRequests(t *testing.T) {
	h := newHarness(t, quickstart(t), nil)
	var a, b throttling429s
	for i := range 6 {
		h.src.stats["fast"] = a.stats("fast", 4, 3)
		h.src.stats["fast-b"] = b.stats("fast-b", 4, 3)
		v := h.step(time.Second)
		if !v.Backends["fast"].Throttled {
			t.Fatalf("step %d: fast not throttled", i)
		}
		if r := v.Routes["fast-8k"]; r.Shed != "" {
			t.Errorf("step %d: %+v on 8 requests a second", i, r)
		}
	}
}

// Steps are per second, whatever the interval: ten evaluations 100 ms
// apart move the level as one a second apart.
func TestShedLevelStepsPerSecond(t *testing.T) {
	h := newHarness(t, quickstart(t), nil)
	var a, b throttling429s
	h.src.stats["fast"] = a.stats("fast", 200, 60)
	h.src.stats["fast-b"] = b.stats("fast-b", 200, 60)
	h.step(time.Second)
	var r healthview.Route
	for range 10 {
		h.src.stats["fast"] = a.stats("fast", 40, 36)
		h.src.stats["fast-b"] = b.stats("fast-b", 40, 36)
		r = h.step(100 * time.Millisecond).Routes["fast-8k"]
	}
	if r.Shed != healthview.Sheddable || math.Abs(r.Admit-0.75) > 0.03 {
		t.Errorf("after a second of 100 ms evaluations: %+v, want sheddable admitting about 75 %%", r)
	}
}

// A backend the policy drops is forgotten: added back, it starts afresh.
func TestTunerForgetsADroppedBackend(t *testing.T) {
	tu := newTuner()
	now := time.Now()
	s := signals.Stats{Backend: "fast", Span: 30 * time.Second, Requests: 200, TooManyRequests: 120, TotalRequests: 200, TotalTooManyRequests: 120}
	if on, _ := tu.throttledNow("fast", s, now); !on {
		t.Fatal("not throttled at 60 %")
	}
	tu.forget("fast")
	if l := tu.load("fast"); l.taken != 1 || l.requests != 0 {
		t.Errorf("load after forget = %+v", l)
	}
	if _, ok := tu.throttled["fast"]; ok {
		t.Error("throttle record kept")
	}
}

// After an overload the route may be quiet because it sheds: throttling
// backends that get nothing keep their throttling (no clean run), and
// their want of requests must not keep the level up.
func TestShedLevelFallsWhenTheRouteGoesQuiet(t *testing.T) {
	h := newHarness(t, quickstart(t), nil)
	var a, b throttling429s
	feed := func(req, tooMany uint64) healthview.Route {
		h.src.stats["fast"] = a.stats("fast", req, tooMany)
		h.src.stats["fast-b"] = b.stats("fast-b", req, tooMany)
		return h.step(time.Second).Routes["fast-8k"]
	}
	feed(200, 60)
	var r healthview.Route
	for range 8 {
		r = feed(100, 90)
	}
	if r.Shed != healthview.Standard || r.Admit != 0 {
		t.Fatalf("overload: %+v, want every standard request refused", r)
	}
	steps := 0
	for r.Shed != "" && steps < 20 {
		r = feed(0, 0)
		steps++
		if !h.pub.Current().Backends["fast"].Throttled {
			t.Fatal("throttling ended without a clean run")
		}
	}
	// Four seconds for the recent requests to fade under the minimum,
	// then eight quarter steps.
	if r.Shed != "" || steps > 12 {
		t.Errorf("quiet route: %+v after %d evaluations, want nothing shed within 12", r, steps)
	}
}
