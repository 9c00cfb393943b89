package signals

import (
	"slices"
	"time"
)

// Codes counts upstream responses by status.
type Codes struct {
	// Class[k] counts responses with a kxx status, k in 1..5; Class[0] is
	// unused.
	Class [6]uint64
	// TooMany counts 429 responses (they are in Class[4] too).
	TooMany uint64
}

// Total is the number of responses of every class.
func (c Codes) Total() uint64 {
	var n uint64
	for _, v := range c.Class[1:] {
		n += v
	}
	return n
}

// Histogram is a cumulative histogram as Prometheus exposes it.
type Histogram struct {
	// Bounds are the finite upper bounds, ascending. Envoy's defaults (ms):
	// 0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, ... 3600000.
	Bounds []float64
	// Cumulative[i] counts observations <= Bounds[i]; the last element,
	// one past the Bounds, is the +Inf bucket (every observation).
	Cumulative []uint64
	// Sum of the observations.
	Sum float64
}

// Count is the number of observations.
func (h *Histogram) Count() uint64 {
	if len(h.Cumulative) == 0 {
		return 0
	}
	return h.Cumulative[len(h.Cumulative)-1]
}

// Quantile estimates the q-quantile (0 < q <= 1) by linear interpolation
// inside the bucket that holds it, as Prometheus's histogram_quantile does:
// the lowest bucket starts at 0, and a quantile that falls in the +Inf
// bucket is reported as the highest finite bound. It returns 0 when the
// histogram is empty.
func (h *Histogram) Quantile(q float64) float64 {
	return quantile(h.Bounds, h.Cumulative, nil, q)
}

func (h *Histogram) sameBounds(o *Histogram) bool {
	return slices.Equal(h.Bounds, o.Bounds)
}

func (h *Histogram) clone() Histogram {
	return Histogram{Bounds: h.Bounds, Cumulative: slices.Clone(h.Cumulative), Sum: h.Sum}
}

// add sums o into h; a histogram with other bounds is dropped.
func (h *Histogram) add(o *Histogram) {
	switch {
	case len(o.Cumulative) == 0:
	case len(h.Cumulative) == 0:
		*h = o.clone()
	case h.sameBounds(o):
		for i, v := range o.Cumulative {
			h.Cumulative[i] += v
		}
		h.Sum += o.Sum
	}
}

// Counters are one backend's cumulative counters and current gauges at one
// scrape. When several clusters map to one backend they are summed.
type Counters struct {
	// Final are the responses Envoy passed downstream (upstream_rq_<N>xx,
	// upstream_rq_429).
	Final Codes
	// Retried are the responses Envoy discarded to retry, on this backend
	// or on the next (retry.upstream_rq_<N>xx, retry.upstream_rq_429).
	Retried Codes
	// ConnectFailures: upstream_cx_connect_fail.
	ConnectFailures uint64
	// Resets: upstream_rq_rx_reset + upstream_cx_destroy_remote_with_active_rq.
	Resets uint64
	// PerTryTimeouts: upstream_rq_per_try_timeout.
	PerTryTimeouts uint64
	// Retries are attempts sent to this backend as a retry
	// (upstream_rq_retry), RetrySuccesses those that succeeded
	// (upstream_rq_retry_success), RetryOverflows the retries not sent
	// because of the circuit breaker or retry budget (upstream_rq_retry_overflow).
	Retries, RetrySuccesses, RetryOverflows uint64
	// RequestTime is upstream_rq_time in milliseconds.
	RequestTime Histogram
	// detour's own measurements, from the wasm measure plugin, per backend
	// that answered (after failover): TTFT is the time to the first byte
	// of the response body in milliseconds (detour_ttft_milliseconds),
	// ResponseTime the time to its last byte (detour_response_milliseconds),
	// TokenRate the output tokens per second of a streamed response
	// (detour_output_tokens_per_second).
	TTFT, ResponseTime, TokenRate Histogram

	// Gauges: current values, not cumulative.

	// EjectionsActive: outlier_detection.ejections_active.
	EjectionsActive uint64
	// RqOpen, RetryOpen, PendingOpen: circuit_breakers.default.rq_open,
	// rq_retry_open, rq_pending_open (the breaker is at its limit).
	RqOpen, RetryOpen, PendingOpen bool
}

// Requests is every attempt that ended: responses of any class, passed on
// or retried, plus connect failures, resets and per-try timeouts.
func (c *Counters) Requests() uint64 {
	return c.Final.Total() + c.Retried.Total() + c.ConnectFailures + c.Resets + c.PerTryTimeouts
}

// Errors is the attempts that failed for the backend's sake: 5xx responses
// (passed on or retried), connect failures, resets and per-try timeouts.
func (c *Counters) Errors() uint64 {
	return c.Final.Class[5] + c.Retried.Class[5] + c.ConnectFailures + c.Resets + c.PerTryTimeouts
}

// TooManyRequests is the 429 responses, passed on or retried.
func (c *Counters) TooManyRequests() uint64 { return c.Final.TooMany + c.Retried.TooMany }

// counts lists the cumulative counters, for reset detection and deltas.
func (c *Counters) counts() [18]*uint64 {
	return [18]*uint64{
		&c.Final.Class[1], &c.Final.Class[2], &c.Final.Class[3], &c.Final.Class[4], &c.Final.Class[5], &c.Final.TooMany,
		&c.Retried.Class[1], &c.Retried.Class[2], &c.Retried.Class[3], &c.Retried.Class[4], &c.Retried.Class[5], &c.Retried.TooMany,
		&c.ConnectFailures, &c.Resets, &c.PerTryTimeouts, &c.Retries, &c.RetrySuccesses, &c.RetryOverflows,
	}
}

// hists lists the histograms, for the code that treats them alike.
func (c *Counters) hists() [4]*Histogram {
	return [4]*Histogram{&c.RequestTime, &c.TTFT, &c.ResponseTime, &c.TokenRate}
}

// cloneHists gives c histograms of its own, so that adding to them does
// not write into the ones it was copied from.
func (c *Counters) cloneHists() {
	for _, h := range c.hists() {
		*h = h.clone()
	}
}

// add sums o into c: counters and histograms add (a histogram with other
// bounds is dropped), ejections add, open flags or.
func (c *Counters) add(o *Counters) {
	dst, src := c.counts(), o.counts()
	for i := range dst {
		*dst[i] += *src[i]
	}
	ch, oh := c.hists(), o.hists()
	for i, h := range ch {
		h.add(oh[i])
	}
	c.EjectionsActive += o.EjectionsActive
	c.RqOpen = c.RqOpen || o.RqOpen
	c.RetryOpen = c.RetryOpen || o.RetryOpen
	c.PendingOpen = c.PendingOpen || o.PendingOpen
}

// wentBack reports whether any cumulative counter of c is below prev's: the
// counters started again from zero, so Envoy restarted.
func (c *Counters) wentBack(prev *Counters) bool {
	cur, old := c.counts(), prev.counts()
	for i := range cur {
		if *cur[i] < *old[i] {
			return true
		}
	}
	ch, ph := c.hists(), prev.hists()
	for i, h := range ch {
		if h.Count() < ph[i].Count() {
			return true
		}
	}
	return false
}

// boundsChanged reports whether a histogram present in both c and prev has
// other bucket bounds: a new Envoy config, so a restart.
func (c *Counters) boundsChanged(prev *Counters) bool {
	ch, ph := c.hists(), prev.hists()
	for i, h := range ch {
		if len(h.Cumulative) > 0 && len(ph[i].Cumulative) > 0 && !h.sameBounds(ph[i]) {
			return true
		}
	}
	return false
}

// Scrape is what one Envoy reported at one time.
type Scrape struct {
	// At is when the scrape's answer was read.
	At time.Time
	// Uptime is Envoy's server.uptime; 0 when absent. It going down
	// between two scrapes means Envoy restarted.
	Uptime time.Duration
	// Backends holds the counters per backend name. A backend with no
	// traffic since Envoy started is absent (the scrape asks for used
	// stats only): its counters are all zero.
	Backends map[string]Counters
}
