package signals

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// WindowConfig sizes a Window.
type WindowConfig struct {
	// Length is the window for request counts, error rate, latency and
	// retries. Default 30s (the mission brief's breaker window).
	Length time.Duration
	// FailureSpan is the window for Stats.Failures. Default 1m (the
	// brief's "failures per minute").
	FailureSpan time.Duration
	// StaleAfter: when the newest scrape is older than this, Stats are
	// marked Stale. Default 10s.
	StaleAfter time.Duration
}

// DefaultWindowConfig returns the defaults described on WindowConfig.
func DefaultWindowConfig() WindowConfig {
	return WindowConfig{Length: 30 * time.Second, FailureSpan: time.Minute, StaleAfter: 10 * time.Second}
}

// Validate reports every field out of range.
func (c WindowConfig) Validate() error {
	var errs []error
	if c.Length <= 0 {
		errs = append(errs, fmt.Errorf("signals: window Length %v must be > 0", c.Length))
	}
	if c.FailureSpan <= 0 {
		errs = append(errs, fmt.Errorf("signals: window FailureSpan %v must be > 0", c.FailureSpan))
	}
	if c.StaleAfter <= 0 {
		errs = append(errs, fmt.Errorf("signals: window StaleAfter %v must be > 0", c.StaleAfter))
	}
	return errors.Join(errs...)
}

// Stats are one backend's signals over the window that ends at the newest
// scrape.
type Stats struct {
	Backend string
	// At is the time of the newest scrape; zero when none was added.
	At time.Time
	// Age is how old the newest scrape was at the time asked.
	Age time.Duration
	// Stale is true when no scrape was added yet or Age > StaleAfter. A
	// stale Stats is not evidence of health: the counts below are what
	// was last known, and the backend may have failed since.
	Stale bool
	// Span is the time the counts cover: at least Length once enough
	// scrapes were added (at most Length plus one scrape interval),
	// shorter while history builds up, and 0 with a single scrape.
	Span time.Duration
	// Requests, Errors and TooManyRequests over Span; see the package
	// documentation for what each counts.
	Requests, Errors, TooManyRequests uint64
	// ErrorRate is Errors / Requests; 0 when there were no requests.
	ErrorRate float64
	// Failures are the Errors over FailuresSpan (up to FailureSpan).
	Failures     uint64
	FailuresSpan time.Duration
	// P95 is the 95th percentile of upstream request time over Span,
	// estimated from the histogram's bucket deltas; LatencySamples is the
	// number of responses it comes from (0: P95 means nothing).
	P95            time.Duration
	LatencySamples uint64
	// MeanLatency is the mean upstream request time over Span (the
	// histogram's sum over its count): with the request rate it gives the
	// backend's concurrency by Little's law.
	MeanLatency time.Duration
	// detour's own measurements over Span (the wasm measure plugin's
	// detour_* stats in Envoy): time to first token p95, total response
	// time p95, median output tokens per second, and the number of
	// responses each comes from. Zero: not measured.
	TTFT            time.Duration
	TTFTSamples     uint64
	TotalTime       time.Duration
	TotalSamples    uint64
	TokensPerSecond float64
	RateSamples     uint64
	// Retries, RetrySuccesses and RetryOverflows over Span.
	Retries, RetrySuccesses, RetryOverflows uint64
	// Gauges at the newest scrape.
	EjectionsActive                uint64
	RqOpen, RetryOpen, PendingOpen bool
	// Restarted: Envoy restarted (its counters went back) within Span.
	// Counts are still right: after a restart a counter's increase is its
	// new value.
	Restarted bool
	// TotalRequests, TotalErrors and TotalTooManyRequests count from the
	// first scrape that saw the backend, corrected for restarts, so they
	// only grow: a consumer can take differences between two calls.
	TotalRequests, TotalErrors, TotalTooManyRequests uint64
}

// Window turns successive scrapes of one Envoy into windowed Stats. It is
// not safe for concurrent use.
type Window struct {
	cfg        WindowConfig
	keep       time.Duration
	n          int
	last       time.Time
	lastUptime time.Duration
	series     map[string]*series
}

type series struct {
	raw    Counters // as last scraped, for reset detection
	points []point  // ascending; points[0] is the oldest still needed
}

// point is a backend's counters at one scrape, corrected for restarts so
// that every counter only grows. Gauges are as scraped.
type point struct {
	at      time.Time
	c       Counters
	restart bool // Envoy restarted between the previous point and this one
}

// NewWindow returns an empty Window.
func NewWindow(cfg WindowConfig) (*Window, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Window{cfg: cfg, keep: max(cfg.Length, cfg.FailureSpan), series: make(map[string]*series)}, nil
}

// Add records a scrape. Scrapes must come in time order. A backend absent
// from a scrape has zero counters (Envoy reports used stats only), so a
// backend that disappears means Envoy restarted.
func (w *Window) Add(s *Scrape) error {
	if w.n > 0 && !s.At.After(w.last) {
		return fmt.Errorf("signals: scrape at %s is not after the previous one at %s", s.At.Format(time.RFC3339Nano), w.last.Format(time.RFC3339Nano))
	}
	restart := w.n > 0 && s.Uptime < w.lastUptime
	for name, c := range s.Backends {
		sr := w.series[name]
		if sr == nil {
			sr = &series{}
			if w.n > 0 {
				// Known zero at the previous scrape: keep what it did since.
				sr.points = append(sr.points, point{at: w.last})
			}
			w.series[name] = sr
		}
		w.record(sr, s.At, &c, restart)
	}
	for name, sr := range w.series {
		if _, ok := s.Backends[name]; !ok {
			w.record(sr, s.At, &Counters{}, restart)
		}
	}
	w.n++
	w.last, w.lastUptime = s.At, s.Uptime
	return nil
}

// Forget drops a backend's history, for a backend removed from the policy.
func (w *Window) Forget(backend string) { delete(w.series, backend) }

// Backends lists the backends seen, sorted.
func (w *Window) Backends() []string {
	names := make([]string, 0, len(w.series))
	for n := range w.series {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func (w *Window) record(sr *series, at time.Time, raw *Counters, restart bool) {
	var prev *point
	if len(sr.points) > 0 {
		prev = &sr.points[len(sr.points)-1]
	}
	p := point{at: at}
	switch {
	case prev == nil:
		p.c = *raw
		p.c.cloneHists()
	case raw.boundsChanged(&sr.raw):
		// Other histogram bounds: a new Envoy config, so a restart. Deltas
		// across it would compare different buckets: start over.
		sr.points = sr.points[:0]
		p.c = *raw
		p.c.cloneHists()
		p.restart = true
	default:
		p.restart = restart || raw.wentBack(&sr.raw)
		p.c = prev.c
		p.c.cloneHists()
		inc := *raw
		if !p.restart {
			sub(&inc, &sr.raw)
		}
		dst, src := p.c.counts(), inc.counts()
		for i := range dst {
			*dst[i] += *src[i]
		}
		acc, cur, old := p.c.hists(), inc.hists(), sr.raw.hists()
		for i := range acc {
			addHist(acc[i], cur[i], p.restart, old[i])
		}
		p.c.EjectionsActive = raw.EjectionsActive
		p.c.RqOpen, p.c.RetryOpen, p.c.PendingOpen = raw.RqOpen, raw.RetryOpen, raw.PendingOpen
	}
	sr.raw = *raw
	sr.raw.cloneHists()
	sr.points = append(sr.points, p)
	// Keep one point at or before the oldest boundary asked for.
	cut := at.Add(-w.keep)
	k := 0
	for k+1 < len(sr.points) && !sr.points[k+1].at.After(cut) {
		k++
	}
	// Reslicing rather than copying down: append moves the live points to
	// a new array when the old one is full, so the cost is amortized and
	// the memory at most about twice what is live.
	sr.points = sr.points[k:]
}

// sub subtracts prev's cumulative counters from c (c >= prev throughout).
func sub(c, prev *Counters) {
	dst, src := c.counts(), prev.counts()
	for i := range dst {
		*dst[i] -= *src[i]
	}
}

// addHist adds to acc the increase of the raw histogram cur since prev (or
// all of cur after a restart). Same bounds are guaranteed by the caller
// when both have buckets.
func addHist(acc, cur *Histogram, restart bool, prev *Histogram) {
	if len(cur.Cumulative) == 0 {
		return
	}
	if len(acc.Cumulative) == 0 {
		acc.Bounds = cur.Bounds
		acc.Cumulative = make([]uint64, len(cur.Cumulative))
	}
	usePrev := !restart && len(prev.Cumulative) == len(cur.Cumulative)
	for i, v := range cur.Cumulative {
		if usePrev {
			v -= prev.Cumulative[i]
		}
		acc.Cumulative[i] += v
	}
	if usePrev {
		acc.Sum += cur.Sum - prev.Sum
	} else {
		acc.Sum += cur.Sum
	}
}

// Stats returns a backend's signals over the window ending at the newest
// scrape, judged for staleness at now. A backend never seen gets zero
// counts (and is stale only if the scrapes are).
func (w *Window) Stats(backend string, now time.Time) Stats {
	st := Stats{Backend: backend, At: w.last, Stale: w.n == 0}
	if w.n > 0 {
		st.Age = now.Sub(w.last)
		st.Stale = st.Age > w.cfg.StaleAfter
	}
	sr := w.series[backend]
	if sr == nil || len(sr.points) == 0 {
		return st
	}
	newest := &sr.points[len(sr.points)-1]
	cur := &newest.c
	st.TotalRequests, st.TotalErrors, st.TotalTooManyRequests = cur.Requests(), cur.Errors(), cur.TooManyRequests()
	st.EjectionsActive = cur.EjectionsActive
	st.RqOpen, st.RetryOpen, st.PendingOpen = cur.RqOpen, cur.RetryOpen, cur.PendingOpen

	bi := sr.base(newest.at.Add(-w.cfg.Length))
	base := &sr.points[bi].c
	st.Span = newest.at.Sub(sr.points[bi].at)
	st.Requests = cur.Requests() - base.Requests()
	st.Errors = cur.Errors() - base.Errors()
	st.TooManyRequests = cur.TooManyRequests() - base.TooManyRequests()
	if st.Requests > 0 {
		st.ErrorRate = float64(st.Errors) / float64(st.Requests)
	}
	st.Retries = cur.Retries - base.Retries
	st.RetrySuccesses = cur.RetrySuccesses - base.RetrySuccesses
	st.RetryOverflows = cur.RetryOverflows - base.RetryOverflows
	for i := bi + 1; i < len(sr.points) && !st.Restarted; i++ {
		st.Restarted = sr.points[i].restart
	}
	var ms float64
	ms, st.LatencySamples = windowed(&cur.RequestTime, &base.RequestTime, 0.95)
	st.P95 = millis(ms)
	if d := windowedMean(&cur.RequestTime, &base.RequestTime); d > 0 {
		st.MeanLatency = millis(d)
	}
	ms, st.TTFTSamples = windowed(&cur.TTFT, &base.TTFT, 0.95)
	st.TTFT = millis(ms)
	ms, st.TotalSamples = windowed(&cur.ResponseTime, &base.ResponseTime, 0.95)
	st.TotalTime = millis(ms)
	st.TokensPerSecond, st.RateSamples = windowed(&cur.TokenRate, &base.TokenRate, 0.5)

	fi := sr.base(newest.at.Add(-w.cfg.FailureSpan))
	st.Failures = cur.Errors() - sr.points[fi].c.Errors()
	st.FailuresSpan = newest.at.Sub(sr.points[fi].at)
	return st
}

// windowed is the q-quantile of the observations h gained since base (a
// base without buckets: all of h), and how many there were.
func windowed(h, base *Histogram, q float64) (float64, uint64) {
	n := len(h.Cumulative)
	if n == 0 {
		return 0, 0
	}
	var below uint64
	if len(base.Cumulative) == n {
		below = base.Cumulative[n-1]
	}
	return quantile(h.Bounds, h.Cumulative, base.Cumulative, q), h.Cumulative[n-1] - below
}

// windowedMean is the mean of the observations h gained since base, 0
// when there were none. Envoy's sums are of float observations, so a
// negative difference (rounding) is read as none.
func windowedMean(h, base *Histogram) float64 {
	n := len(h.Cumulative)
	if n == 0 {
		return 0
	}
	count, sum := h.Cumulative[n-1], h.Sum
	if len(base.Cumulative) == n {
		count -= base.Cumulative[n-1]
		sum -= base.Sum
	}
	if count == 0 || !(sum > 0) {
		return 0
	}
	return sum / float64(count)
}

// millis converts milliseconds to a Duration.
func millis(ms float64) time.Duration { return time.Duration(ms * float64(time.Millisecond)) }

// base is the index of the newest point at or before t, or 0.
func (sr *series) base(t time.Time) int {
	lo, hi := 0, len(sr.points) // the first point after t is in [lo, hi]
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if sr.points[mid].at.After(t) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return max(lo-1, 0)
}

// quantile estimates the q-quantile of the observations counted by cum
// minus base (base may be empty: nothing to subtract), by linear
// interpolation inside the bucket that holds it, as Prometheus's
// histogram_quantile does: the first bucket starts at 0, and a quantile in
// the +Inf bucket is the highest finite bound. It returns 0 for no
// observations.
func quantile(bounds []float64, cum, base []uint64, q float64) float64 {
	if len(bounds) == 0 || len(cum) != len(bounds)+1 {
		return 0
	}
	at := func(i int) uint64 {
		if len(base) == len(cum) {
			return cum[i] - base[i]
		}
		return cum[i]
	}
	n := at(len(cum) - 1)
	if n == 0 {
		return 0
	}
	rank := q * float64(n)
	var below uint64
	for i := range bounds {
		c := at(i)
		if float64(c) >= rank {
			lo := 0.0
			if i > 0 {
				lo = bounds[i-1]
			}
			if c == below {
				return bounds[i]
			}
			return lo + (bounds[i]-lo)*(rank-float64(below))/float64(c-below)
		}
		below = c
	}
	return bounds[len(bounds)-1]
}
