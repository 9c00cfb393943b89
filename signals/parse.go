package signals

import (
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// StatsFilter is the regular expression the Scraper passes as Envoy's
// ?filter=, with ?usedonly: only the stats Parse reads, so a scrape of four
// backends is about 10 KB instead of about 200 KB. Envoy matches it against
// the stat name before tag extraction (cluster.<name>.upstream_rq_5xx, and
// for the wasm measure plugin's histograms
// wasmcustom.detour_ttft_milliseconds.backend.<name>).
const StatsFilter = `^(cluster\.[^.]+\.((retry\.)?upstream_rq_([0-9]xx|429)|upstream_rq_time|upstream_rq_retry(_success|_overflow)?|upstream_rq_per_try_timeout|upstream_rq_rx_reset|upstream_cx_connect_fail|upstream_cx_destroy_remote_with_active_rq|outlier_detection\.ejections_active|circuit_breakers\.default\.(rq_open|rq_retry_open|rq_pending_open))|wasmcustom\.detour_(ttft_milliseconds|response_milliseconds|output_tokens_per_second)\.backend\.[^.]+|server\.uptime)$`

// ErrMalformed marks a stats body that is not Prometheus text, or whose
// values make no sense for Envoy stats (a negative counter, a histogram
// whose buckets are not cumulative).
var ErrMalformed = errors.New("malformed stats")

// BackendFunc maps an Envoy cluster name to the detour backend it serves;
// ok is false for clusters that are not backends (detour_extproc,
// detour_xds), whose stats are skipped.
type BackendFunc func(cluster string) (backend string, ok bool)

// Backends returns the BackendFunc for clusters named after their backend,
// as detour's xds package names them, accepting only the names given.
func Backends(names ...string) BackendFunc {
	set := make(map[string]struct{}, len(names))
	for _, n := range names {
		set[n] = struct{}{}
	}
	return func(cluster string) (string, bool) {
		_, ok := set[cluster]
		return cluster, ok
	}
}

// Prometheus names of the stats read, and their labels.
const (
	labelCluster   = "envoy_cluster_name"
	labelBackend   = "backend" // detour's own stats (xds.StatsTags)
	labelCodeClass = "envoy_response_code_class"
	labelCode      = "envoy_response_code"

	famRqXX           = "envoy_cluster_upstream_rq_xx"
	famRqCode         = "envoy_cluster_upstream_rq"
	famRetryRqXX      = "envoy_cluster_retry_upstream_rq_xx"
	famRetryRqCode    = "envoy_cluster_retry_upstream_rq"
	famRqTime         = "envoy_cluster_upstream_rq_time"
	famRetry          = "envoy_cluster_upstream_rq_retry"
	famRetrySuccess   = "envoy_cluster_upstream_rq_retry_success"
	famRetryOverflow  = "envoy_cluster_upstream_rq_retry_overflow"
	famPerTryTimeout  = "envoy_cluster_upstream_rq_per_try_timeout"
	famRxReset        = "envoy_cluster_upstream_rq_rx_reset"
	famRemoteDestroy  = "envoy_cluster_upstream_cx_destroy_remote_with_active_rq"
	famConnectFail    = "envoy_cluster_upstream_cx_connect_fail"
	famEjectionsAct   = "envoy_cluster_outlier_detection_ejections_active"
	famCBRqOpen       = "envoy_cluster_circuit_breakers_default_rq_open"
	famCBRetryOpen    = "envoy_cluster_circuit_breakers_default_rq_retry_open"
	famCBPendingOpen  = "envoy_cluster_circuit_breakers_default_rq_pending_open"
	famServerUptime   = "envoy_server_uptime"
	famTTFT           = "detour_ttft_milliseconds"
	famResponseTime   = "detour_response_milliseconds"
	famTokenRate      = "detour_output_tokens_per_second"
	maxExactFloatUint = 1 << 53
)

// Parse reads Envoy's Prometheus text (all of /stats/prometheus, or the
// part StatsFilter selects) into counters per backend, skipping clusters
// backendOf does not accept. It also returns Envoy's uptime (0 if absent).
// Errors wrap ErrMalformed.
func Parse(r io.Reader, backendOf BackendFunc) (map[string]Counters, time.Duration, error) {
	fams, err := textToFamilies(r)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	ps := parser{fams: fams, backendOf: backendOf, out: make(map[string]*Counters)}
	ps.codes(famRqXX, famRqCode, func(c *Counters) *Codes { return &c.Final })
	ps.codes(famRetryRqXX, famRetryRqCode, func(c *Counters) *Codes { return &c.Retried })
	ps.counter(famConnectFail, func(c *Counters) *uint64 { return &c.ConnectFailures })
	ps.counter(famRxReset, func(c *Counters) *uint64 { return &c.Resets })
	ps.counter(famRemoteDestroy, func(c *Counters) *uint64 { return &c.Resets })
	ps.counter(famPerTryTimeout, func(c *Counters) *uint64 { return &c.PerTryTimeouts })
	ps.counter(famRetry, func(c *Counters) *uint64 { return &c.Retries })
	ps.counter(famRetrySuccess, func(c *Counters) *uint64 { return &c.RetrySuccesses })
	ps.counter(famRetryOverflow, func(c *Counters) *uint64 { return &c.RetryOverflows })
	ps.counter(famEjectionsAct, func(c *Counters) *uint64 { return &c.EjectionsActive })
	ps.flag(famCBRqOpen, func(c *Counters) *bool { return &c.RqOpen })
	ps.flag(famCBRetryOpen, func(c *Counters) *bool { return &c.RetryOpen })
	ps.flag(famCBPendingOpen, func(c *Counters) *bool { return &c.PendingOpen })
	ps.histogram(famRqTime, labelCluster, func(c *Counters) *Histogram { return &c.RequestTime })
	// The measure plugin labels its stats with the backend that answered
	// (the endpoint metadata xds stamps), which is also the name of that
	// backend's cluster: the same BackendFunc accepts it.
	ps.histogram(famTTFT, labelBackend, func(c *Counters) *Histogram { return &c.TTFT })
	ps.histogram(famResponseTime, labelBackend, func(c *Counters) *Histogram { return &c.ResponseTime })
	ps.histogram(famTokenRate, labelBackend, func(c *Counters) *Histogram { return &c.TokenRate })
	var uptime time.Duration
	if f := ps.family(famServerUptime); f != nil && len(f.GetMetric()) > 0 {
		v, ok := value(f.GetMetric()[0])
		if ok && v >= 0 && v < float64(math.MaxInt64/int64(time.Second)) {
			uptime = time.Duration(v * float64(time.Second))
		} else if ps.err == nil {
			ps.err = fmt.Errorf("%w: %s = %v", ErrMalformed, famServerUptime, v)
		}
	}
	if ps.err != nil {
		return nil, 0, ps.err
	}
	out := make(map[string]Counters, len(ps.out))
	for b, c := range ps.out {
		out[b] = *c
	}
	return out, uptime, nil
}

// textToFamilies runs expfmt's text parser, turning a panic into an
// error: prometheus/common v0.72.0 panics on some malformed lines (FuzzParse
// found "# TYPE e histogram\nA{}0\n{e,A=\"\"0", a nil map write in
// startLabelValue; prometheus/common#922 fixed a sibling case), and a
// scrape body must never crash the controller.
func textToFamilies(r io.Reader) (fams map[string]*dto.MetricFamily, err error) {
	defer func() {
		if v := recover(); v != nil {
			fams, err = nil, fmt.Errorf("text parser panicked: %v", v)
		}
	}()
	p := expfmt.NewTextParser(model.UTF8Validation) // the zero TextParser panics
	return p.TextToMetricFamilies(r)
}

type parser struct {
	fams      map[string]*dto.MetricFamily
	backendOf BackendFunc
	out       map[string]*Counters
	err       error
}

// family finds a family by its Envoy name, or with a _total suffix, which
// some exporters (and OpenMetrics) add to counters and Envoy does not.
func (p *parser) family(name string) *dto.MetricFamily {
	if f, ok := p.fams[name]; ok {
		return f
	}
	return p.fams[name+"_total"]
}

// each calls fn for every metric of the family that belongs to a backend.
func (p *parser) each(name string, fn func(c *Counters, m *dto.Metric)) {
	p.eachBy(name, labelCluster, fn)
}

// eachBy is each with the label that names the cluster or backend.
func (p *parser) eachBy(name, by string, fn func(c *Counters, m *dto.Metric)) {
	f := p.family(name)
	if f == nil || p.err != nil {
		return
	}
	for _, m := range f.GetMetric() {
		cluster, ok := label(m, by)
		if !ok {
			continue
		}
		backend, ok := p.backendOf(cluster)
		if !ok {
			continue
		}
		c := p.out[backend]
		if c == nil {
			c = new(Counters)
			p.out[backend] = c
		}
		fn(c, m)
		if p.err != nil {
			return
		}
	}
}

// count reads a metric as a non-negative whole count.
func (p *parser) count(name string, m *dto.Metric) uint64 {
	v, ok := value(m)
	if !ok || !(v >= 0) || v >= maxExactFloatUint || v != math.Trunc(v) {
		p.err = fmt.Errorf("%w: %s: value %v is not a count", ErrMalformed, name, v)
		return 0
	}
	return uint64(v)
}

func (p *parser) counter(name string, field func(*Counters) *uint64) {
	p.each(name, func(c *Counters, m *dto.Metric) { *field(c) += p.count(name, m) })
}

func (p *parser) flag(name string, field func(*Counters) *bool) {
	p.each(name, func(c *Counters, m *dto.Metric) {
		if p.count(name, m) > 0 {
			*field(c) = true
		}
	})
}

// codes reads a class family (label envoy_response_code_class) and a code
// family (label envoy_response_code, of which only 429 is kept).
func (p *parser) codes(classFam, codeFam string, field func(*Counters) *Codes) {
	p.each(classFam, func(c *Counters, m *dto.Metric) {
		cl, _ := label(m, labelCodeClass)
		if len(cl) != 1 || cl[0] < '1' || cl[0] > '5' {
			return
		}
		field(c).Class[cl[0]-'0'] += p.count(classFam, m)
	})
	p.each(codeFam, func(c *Counters, m *dto.Metric) {
		if code, _ := label(m, labelCode); code == "429" {
			field(c).TooMany += p.count(codeFam, m)
		}
	})
}

func (p *parser) histogram(name, by string, field func(*Counters) *Histogram) {
	p.eachBy(name, by, func(c *Counters, m *dto.Metric) {
		h, err := histogram(m)
		if err != nil {
			p.err = fmt.Errorf("%w: %s: %w", ErrMalformed, name, err)
			return
		}
		field(c).add(&h)
	})
}

// histogram converts a parsed histogram, checking that its buckets are
// cumulative and end with +Inf (added from the sample count if missing).
func histogram(m *dto.Metric) (Histogram, error) {
	dh := m.GetHistogram()
	if dh == nil {
		return Histogram{}, errors.New("not a histogram")
	}
	bs := dh.GetBucket()
	sorted := sort.SliceIsSorted(bs, func(i, j int) bool { return bs[i].GetUpperBound() < bs[j].GetUpperBound() })
	if !sorted {
		return Histogram{}, errors.New("buckets out of order")
	}
	h := Histogram{Sum: dh.GetSampleSum()}
	for _, b := range bs {
		n, err := whole(b.GetCumulativeCount(), b.GetCumulativeCountFloat())
		if err != nil {
			return Histogram{}, err
		}
		if k := len(h.Cumulative); k > 0 && n < h.Cumulative[k-1] {
			return Histogram{}, errors.New("buckets are not cumulative")
		}
		ub := b.GetUpperBound()
		if math.IsNaN(ub) || (len(h.Bounds) > 0 && ub <= h.Bounds[len(h.Bounds)-1]) {
			return Histogram{}, fmt.Errorf("bad bucket bound %v", ub)
		}
		h.Cumulative = append(h.Cumulative, n)
		if math.IsInf(ub, +1) {
			break
		}
		h.Bounds = append(h.Bounds, ub)
	}
	count, err := whole(dh.GetSampleCount(), dh.GetSampleCountFloat())
	if err != nil {
		return Histogram{}, err
	}
	if len(h.Cumulative) == len(h.Bounds) { // no +Inf bucket
		h.Cumulative = append(h.Cumulative, count)
	}
	if k := len(h.Cumulative); k > 1 && h.Cumulative[k-1] < h.Cumulative[k-2] {
		return Histogram{}, errors.New("buckets are not cumulative")
	}
	return h, nil
}

// whole returns a histogram count given as an integer or a float.
func whole(n uint64, f float64) (uint64, error) {
	if f == 0 {
		return n, nil
	}
	if !(f >= 0) || f >= maxExactFloatUint || f != math.Trunc(f) {
		return 0, fmt.Errorf("count %v is not a count", f)
	}
	return uint64(f), nil
}

func label(m *dto.Metric, name string) (string, bool) {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue(), true
		}
	}
	return "", false
}

// value reads a counter, gauge or untyped sample.
func value(m *dto.Metric) (float64, bool) {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue(), true
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue(), true
	case m.GetUntyped() != nil:
		return m.GetUntyped().GetValue(), true
	}
	return 0, false
}
