package signals

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"sync"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
)

// PrometheusSourceConfig configures a PrometheusSource.
type PrometheusSourceConfig struct {
	// URL is the Prometheus server's base URL, such as
	// "http://127.0.0.1:9090".
	URL string
	// Selector narrows every series read to detour's Envoys: PromQL label
	// matchers without braces, such as `job="envoy"`; empty reads all.
	Selector string
	// Backend maps cluster names (and the backend label of detour's own
	// histograms) to backends; see Backends.
	Backend BackendFunc
	// Length is the window for counts, error rate and latency (default
	// 30s); FailureSpan the one for Failures (default 1m). Both should
	// hold at least a few of Prometheus's scrapes of Envoy: increase()
	// needs two samples in range and extrapolates from them.
	Length, FailureSpan time.Duration
	// StaleAfter: Stats are Stale when Prometheus's newest sample of
	// Envoy is older than this. Default 30s, two scrapes at Prometheus's
	// default 15s interval: a tighter bound would flap between scrapes.
	StaleAfter time.Duration
	// Timeout bounds one Collect's query; default 2s.
	Timeout time.Duration
	// Client sends the queries; nil means a client with the default
	// transport (Timeout still applies through the context).
	Client *http.Client
}

// PrometheusSource reads the same signals as EnvoySource from a Prometheus
// server that scrapes every Envoy's /stats/prometheus (ideally with the
// same ?usedonly&filter=StatsFilter as the Scraper). Requests, Errors and
// the rest keep the package's definitions, summed over the Envoys; the
// differences from EnvoySource come from PromQL: increase() extrapolates
// to the window's edges (so counts are not whole numbers and are rounded
// per series), Span is always Length, a percentile is histogram_quantile
// over the summed bucket increases, Restarted is true for every backend
// when any Envoy restarted within Length, and At and Stale are the same for
// every backend (Prometheus's newest sample of Envoy). It is safe for
// concurrent use.
type PrometheusSource struct {
	cfg      PrometheusSourceConfig
	api      promv1.API
	query    string
	counters []promCounter
	hists    [4]promHist

	mu     sync.Mutex
	totals map[string]*monotonic // per backend: requests, errors, 429s
}

// monotonic turns the sum of current counter values, which drops when an
// Envoy restarts (or vanishes), into totals that only grow, as the Stats
// contract says: a drop is added to an offset.
type monotonic struct {
	last, off [3]uint64 // requests, errors, 429s
}

// NewPrometheusSource checks the config, fills in defaults and builds the
// query each Collect sends.
func NewPrometheusSource(cfg PrometheusSourceConfig) (*PrometheusSource, error) {
	if cfg.Length == 0 {
		cfg.Length = 30 * time.Second
	}
	if cfg.FailureSpan == 0 {
		cfg.FailureSpan = time.Minute
	}
	if cfg.StaleAfter == 0 {
		cfg.StaleAfter = 30 * time.Second
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Second
	}
	var errs []error
	if cfg.URL == "" {
		errs = append(errs, errors.New("signals: PrometheusSource needs a URL"))
	}
	if cfg.Backend == nil {
		errs = append(errs, errors.New("signals: PrometheusSource needs a BackendFunc"))
	}
	if strings.ContainsAny(cfg.Selector, "{}") {
		errs = append(errs, fmt.Errorf("signals: Selector %q: give the label matchers without braces", cfg.Selector))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"Length", cfg.Length}, {"FailureSpan", cfg.FailureSpan}, {"StaleAfter", cfg.StaleAfter}, {"Timeout", cfg.Timeout}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("signals: %s %v must be > 0", d.name, d.v))
		}
	}
	// PromQL ranges are whole milliseconds at least.
	if cfg.Length > 0 && cfg.Length < time.Second || cfg.FailureSpan > 0 && cfg.FailureSpan < time.Second {
		errs = append(errs, fmt.Errorf("signals: Length %v and FailureSpan %v must be at least 1s", cfg.Length, cfg.FailureSpan))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	client, err := promapi.NewClient(promapi.Config{Address: cfg.URL, Client: cfg.Client})
	if err != nil {
		return nil, fmt.Errorf("signals: prometheus client for %s: %w", cfg.URL, err)
	}
	return &PrometheusSource{
		cfg:      cfg,
		api:      promv1.NewAPI(client),
		query:    buildQuery(cfg.Selector, cfg.Length, cfg.FailureSpan),
		counters: promCounters(),
		hists:    promHists(),
		totals:   map[string]*monotonic{},
	}, nil
}

// Query is the PromQL each Collect evaluates: one query, so that every
// signal is read at the same instant and a Collect is one round trip.
func (p *PrometheusSource) Query() string { return p.query }

// The label that tells the parts of the query apart, and its values'
// prefixes.
const (
	labelSignal = "detour_signal"

	sigWindow   = "w:" // counter increase over Length
	sigFailures = "f:" // counter increase over FailureSpan
	sigTotal    = "t:" // counter value now
	sigQuantile = "q:" // histogram_quantile over Length
	sigCount    = "n:" // histogram count increase over Length
	sigSum      = "s:" // histogram sum increase over Length
	sigGauge    = "g:"
	sigRestarts = "restarts"
	sigNewest   = "newest"
)

// promCounter is one counter family Parse reads, and where it goes.
type promCounter struct {
	metric string
	match  string // an extra matcher
	by     string // an extra grouping label, or ""
	// requests: part of Requests (and so of the totals); errors: part of
	// Errors (and so of Failures).
	requests, errors bool
	add              func(c *Counters, byValue string, v uint64)
}

func classAdd(field func(*Counters) *Codes) func(*Counters, string, uint64) {
	return func(c *Counters, class string, v uint64) {
		if len(class) == 1 && class[0] >= '1' && class[0] <= '5' {
			field(c).Class[class[0]-'0'] += v
		}
	}
}

func fieldAdd(field func(*Counters) *uint64) func(*Counters, string, uint64) {
	return func(c *Counters, _ string, v uint64) { *field(c) += v }
}

// promCounters mirror Parse: the same families feed the same fields, so
// Counters' Requests and Errors keep their definitions.
func promCounters() []promCounter {
	return []promCounter{
		{metric: famRqXX, match: labelCodeClass + `=~"[1-5]"`, by: labelCodeClass, requests: true, errors: true,
			add: classAdd(func(c *Counters) *Codes { return &c.Final })},
		{metric: famRetryRqXX, match: labelCodeClass + `=~"[1-5]"`, by: labelCodeClass, requests: true, errors: true,
			add: classAdd(func(c *Counters) *Codes { return &c.Retried })},
		{metric: famRqCode, match: labelCode + `="429"`,
			add: func(c *Counters, _ string, v uint64) { c.Final.TooMany += v }},
		{metric: famRetryRqCode, match: labelCode + `="429"`,
			add: func(c *Counters, _ string, v uint64) { c.Retried.TooMany += v }},
		{metric: famConnectFail, requests: true, errors: true, add: fieldAdd(func(c *Counters) *uint64 { return &c.ConnectFailures })},
		{metric: famRxReset, requests: true, errors: true, add: fieldAdd(func(c *Counters) *uint64 { return &c.Resets })},
		{metric: famRemoteDestroy, requests: true, errors: true, add: fieldAdd(func(c *Counters) *uint64 { return &c.Resets })},
		{metric: famPerTryTimeout, requests: true, errors: true, add: fieldAdd(func(c *Counters) *uint64 { return &c.PerTryTimeouts })},
		{metric: famRetry, add: fieldAdd(func(c *Counters) *uint64 { return &c.Retries })},
		{metric: famRetrySuccess, add: fieldAdd(func(c *Counters) *uint64 { return &c.RetrySuccesses })},
		{metric: famRetryOverflow, add: fieldAdd(func(c *Counters) *uint64 { return &c.RetryOverflows })},
	}
}

// promHist is one histogram family, its grouping label and its quantile.
type promHist struct {
	metric, by string
	q          float64
	mean       bool // also read the sum, for MeanLatency
	lowWorse   bool // a token rate: the lowest of several clusters is the worst
}

// promHists are in the order of promBackend.hists.
func promHists() [4]promHist {
	return [4]promHist{
		{metric: famRqTime, by: labelCluster, q: 0.95, mean: true},
		{metric: famTTFT, by: labelBackend, q: 0.95},
		{metric: famResponseTime, by: labelBackend, q: 0.95},
		{metric: famTokenRate, by: labelBackend, q: 0.5, lowWorse: true},
	}
}

// promGauges: ejections add up over Envoys; a breaker is open if it is on
// any Envoy.
func promGauges() [4]struct{ metric, agg string } {
	return [4]struct{ metric, agg string }{
		{famEjectionsAct, "sum"},
		{famCBRqOpen, "max"},
		{famCBRetryOpen, "max"},
		{famCBPendingOpen, "max"},
	}
}

// buildQuery joins every part with "or": each part carries its own
// detour_signal value, so no two parts' label sets match and "or" keeps
// them all.
func buildQuery(selector string, length, failureSpan time.Duration) string {
	sel := func(extra string) string {
		var parts []string
		for _, s := range []string{extra, strings.TrimSpace(selector)} {
			if s != "" {
				parts = append(parts, s)
			}
		}
		return "{" + strings.Join(parts, ",") + "}"
	}
	win, fail := "["+model.Duration(length).String()+"]", "["+model.Duration(failureSpan).String()+"]"
	var parts []string
	tag := func(signal, expr string) {
		parts = append(parts, fmt.Sprintf("label_replace(%s, %q, %q, \"\", \"\")", expr, labelSignal, signal))
	}
	for _, c := range promCounters() {
		by := labelCluster
		if c.by != "" {
			by += ", " + c.by
		}
		s := c.metric + sel(c.match)
		tag(sigWindow+c.metric, fmt.Sprintf("sum by (%s) (%s)", by, counterIncrease(s, win)))
		if c.errors {
			tag(sigFailures+c.metric, fmt.Sprintf("sum by (%s) (%s)", by, counterIncrease(s, fail)))
		}
		if c.requests {
			tag(sigTotal+c.metric, fmt.Sprintf("sum by (%s) (%s)", by, s))
		}
	}
	for _, h := range promHists() {
		tag(sigQuantile+h.metric, fmt.Sprintf("histogram_quantile(%g, sum by (%s, le) (increase(%s_bucket%s%s)))", h.q, h.by, h.metric, sel(""), win))
		tag(sigCount+h.metric, fmt.Sprintf("sum by (%s) (increase(%s_count%s%s))", h.by, h.metric, sel(""), win))
		if h.mean {
			tag(sigSum+h.metric, fmt.Sprintf("sum by (%s) (increase(%s_sum%s%s))", h.by, h.metric, sel(""), win))
		}
	}
	for _, g := range promGauges() {
		tag(sigGauge+g.metric, fmt.Sprintf("%s by (%s) (%s%s)", g.agg, labelCluster, g.metric, sel("")))
	}
	tag(sigRestarts, fmt.Sprintf("sum(resets(%s%s%s))", famServerUptime, sel(""), win))
	tag(sigNewest, fmt.Sprintf("max(timestamp(%s%s))", famServerUptime, sel("")))
	return strings.Join(parts, "\n  or ")
}

// counterIncrease is a counter's increase over rng ("[30s]"), per series.
// Envoy creates a counter such as upstream_rq_5xx at its first event, and
// increase() starts from a series' first sample, so the events a new
// series already holds when first scraped would be lost: a fault's first
// errors, exactly the ones that should be seen first. A series that did
// not exist a window ago counts whole instead (all of it happened within
// the window).
func counterIncrease(series, rng string) string {
	offset := strings.Trim(rng, "[]")
	fresh := fmt.Sprintf("(%s unless %s offset %s)", series, series, offset)
	return fmt.Sprintf("(increase(%s%s) unless %s) or %s", series, rng, fresh, fresh)
}

// promBackend gathers one backend's series.
type promBackend struct {
	win, fail, total               Counters
	hists                          [4]promHistValue // in promHists' order
	ejections                      uint64
	rqOpen, retryOpen, pendingOpen bool
}

type promHistValue struct {
	q      float64 // the worst quantile among the backend's clusters
	haveQ  bool
	n, sum float64
}

// Collect evaluates the query at now and returns every backend that has
// series. A failed query returns no Stats and the error.
func (p *PrometheusSource) Collect(ctx context.Context, now time.Time) (map[string]Stats, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	// Warnings (such as a query touching too many series) do not change
	// the answer's meaning: the result is used as it is.
	v, _, _, err := p.api.Query(ctx, p.query, now)
	if err != nil {
		return nil, fmt.Errorf("signals: prometheus query at %s: %w", p.cfg.URL, err)
	}
	vec, ok := v.(model.Vector)
	if !ok {
		return nil, fmt.Errorf("signals: prometheus query at %s: got a %s, want a vector", p.cfg.URL, v.Type())
	}
	backends, newest, restarted := p.decode(vec)

	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]Stats, len(backends))
	for name, b := range backends {
		st := Stats{Backend: name, At: newest, Stale: true, Span: p.cfg.Length, FailuresSpan: p.cfg.FailureSpan, Restarted: restarted}
		if !newest.IsZero() {
			st.Age = max(now.Sub(newest), 0)
			st.Stale = st.Age > p.cfg.StaleAfter
		}
		st.Requests, st.Errors, st.TooManyRequests = b.win.Requests(), b.win.Errors(), b.win.TooManyRequests()
		if st.Requests > 0 {
			st.ErrorRate = float64(st.Errors) / float64(st.Requests)
		}
		st.Failures = b.fail.Errors()
		st.Retries, st.RetrySuccesses, st.RetryOverflows = b.win.Retries, b.win.RetrySuccesses, b.win.RetryOverflows
		st.EjectionsActive = b.ejections
		st.RqOpen, st.RetryOpen, st.PendingOpen = b.rqOpen, b.retryOpen, b.pendingOpen

		lat, ttft, total, rate := &b.hists[0], &b.hists[1], &b.hists[2], &b.hists[3]
		st.P95, st.LatencySamples = millis(lat.q), count(lat.n)
		if lat.n > 0 && lat.sum > 0 {
			st.MeanLatency = millis(lat.sum / lat.n)
		}
		st.TTFT, st.TTFTSamples = millis(ttft.q), count(ttft.n)
		st.TotalTime, st.TotalSamples = millis(total.q), count(total.n)
		st.TokensPerSecond, st.RateSamples = rate.q, count(rate.n)

		m := p.totals[name]
		if m == nil {
			m = &monotonic{}
			p.totals[name] = m
		}
		t := m.update([3]uint64{b.total.Requests(), b.total.Errors(), b.total.TooManyRequests()})
		st.TotalRequests, st.TotalErrors, st.TotalTooManyRequests = t[0], t[1], t[2]
		out[name] = st
	}
	return out, nil
}

func (m *monotonic) update(v [3]uint64) [3]uint64 {
	for i := range v {
		if v[i] < m.last[i] {
			m.off[i] += m.last[i] - v[i]
		}
		m.last[i] = v[i]
		v[i] += m.off[i]
	}
	return v
}

// count rounds an extrapolated increase to a whole count.
func count(v float64) uint64 {
	if !(v > 0) || v >= maxExactFloatUint {
		return 0
	}
	return uint64(math.Round(v))
}

// decode sorts the query's samples into backends.
func (p *PrometheusSource) decode(vec model.Vector) (backends map[string]*promBackend, newest time.Time, restarted bool) {
	backends = map[string]*promBackend{}
	get := func(s *model.Sample, by string) *promBackend {
		name, ok := p.cfg.Backend(string(s.Metric[model.LabelName(by)]))
		if !ok {
			return nil
		}
		b := backends[name]
		if b == nil {
			b = &promBackend{}
			backends[name] = b
		}
		return b
	}
	for _, s := range vec {
		sig := string(s.Metric[labelSignal])
		v := float64(s.Value)
		switch {
		case sig == sigNewest:
			if !math.IsNaN(v) {
				newest = time.UnixMilli(int64(math.Round(v * 1000)))
			}
		case sig == sigRestarts:
			restarted = v > 0
		case strings.HasPrefix(sig, sigGauge):
			b := get(s, labelCluster)
			if b == nil || !(v > 0) {
				continue
			}
			switch strings.TrimPrefix(sig, sigGauge) {
			case famEjectionsAct:
				b.ejections += count(v)
			case famCBRqOpen:
				b.rqOpen = true
			case famCBRetryOpen:
				b.retryOpen = true
			case famCBPendingOpen:
				b.pendingOpen = true
			}
		case len(sig) > 2:
			p.decodeFamily(sig[:2], sig[2:], s, v, get)
		}
	}
	return backends, newest, restarted
}

func (p *PrometheusSource) decodeFamily(kind, metric string, s *model.Sample, v float64, get func(*model.Sample, string) *promBackend) {
	for _, c := range p.counters {
		if c.metric != metric {
			continue
		}
		b := get(s, labelCluster)
		if b == nil {
			return
		}
		target := map[string]*Counters{sigWindow: &b.win, sigFailures: &b.fail, sigTotal: &b.total}[kind]
		if target != nil {
			c.add(target, string(s.Metric[model.LabelName(c.by)]), count(v))
		}
		return
	}
	for i, h := range p.hists {
		if h.metric != metric {
			continue
		}
		b := get(s, h.by)
		if b == nil || math.IsNaN(v) {
			return
		}
		hv := &b.hists[i]
		switch kind {
		case sigQuantile:
			// Several clusters of one backend: the worst of them, as
			// MergeStats does for several Envoys.
			if !hv.haveQ || (h.lowWorse && v < hv.q) || (!h.lowWorse && v > hv.q) {
				hv.q, hv.haveQ = v, true
			}
		case sigCount:
			hv.n += v
		case sigSum:
			hv.sum += v
		}
		return
	}
}
