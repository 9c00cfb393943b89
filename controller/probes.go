package controller

import (
	"context"
	"time"

	"github.com/detourhq/detour/health"
	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/signals"
)

// probeBook is what the probes of one backend have shown.
type probeBook struct {
	// Monotonic totals, added to Envoy's so HALF_OPEN and recovery count
	// probe outcomes like requests.
	requests, errors uint64
	// outcomes in the last minute, for the window counts.
	outcomes []probeOutcome
	// last performance measured by a probe, used while traffic measures
	// none (an idle backend).
	ttft, total time.Duration
	rate        float64
	measuredAt  time.Time
	recent      []healthview.Probe
}

type probeOutcome struct {
	at time.Time
	ok bool
}

// drainProbes takes in the results of probes that finished.
func (c *Controller) drainProbes(now time.Time) {
	for {
		select {
		case run := <-c.results:
			for _, r := range run.results {
				c.book(r)
			}
			c.probing[run.backend] = false
		default:
			return
		}
	}
}

func (c *Controller) book(r ProbeResult) {
	pb := c.probes[r.Backend]
	if pb == nil {
		pb = &probeBook{}
		c.probes[r.Backend] = pb
	}
	pb.requests++
	result := "ok"
	switch {
	case !r.OK:
		pb.errors++
		result = "failed"
	case r.Slow:
		result = "slow"
	}
	c.cfg.Metrics.Probes.WithLabelValues(r.Backend, r.Name, result).Inc()
	pb.outcomes = append(pb.outcomes, probeOutcome{at: r.At, ok: r.OK})
	if r.OK && r.TTFT > 0 {
		pb.ttft, pb.total, pb.rate, pb.measuredAt = r.TTFT, r.Total, r.TokensPerSecond, r.At
	}
	pb.recent = append(pb.recent, healthview.Probe{Name: r.Name, OK: r.OK, Reason: r.Reason, At: r.At})
	if len(pb.recent) > keepProbes {
		pb.recent = pb.recent[len(pb.recent)-keepProbes:]
	}
	if !r.OK {
		c.log.Info("probe failed", "backend", r.Backend, "probe", r.Name, "reason", r.Reason)
	}
}

// observation is what the state machine judges a backend on: Envoy's
// window plus the probes' outcomes and, while traffic measured none, the
// probes' performance.
func (c *Controller) observation(name string, s signals.Stats, now time.Time) health.Observation {
	o := health.Observation{
		Backend: name, Stale: s.Stale, Age: s.Age, Window: s.Span,
		Requests: s.Requests, Errors: s.Errors, Failures: s.Failures,
		P95: s.P95, LatencySamples: s.LatencySamples,
		TTFT: s.TTFT, TokensPerSecond: s.TokensPerSecond, TotalTime: s.TotalTime,
		TotalRequests: s.TotalRequests, TotalErrors: s.TotalErrors,
	}
	if o.Window == 0 {
		o.Window = c.policy.CircuitBreaker.Window.D()
	}
	pb := c.probes[name]
	if pb == nil {
		return o
	}
	o.TotalRequests += pb.requests
	o.TotalErrors += pb.errors
	window := c.policy.CircuitBreaker.Window.D()
	keep := pb.outcomes[:0]
	for _, x := range pb.outcomes {
		age := now.Sub(x.at)
		if age > time.Minute {
			continue
		}
		keep = append(keep, x)
		if !x.ok {
			o.Failures++
		}
		if age <= window {
			o.Requests++
			if !x.ok {
				o.Errors++
			}
		}
	}
	pb.outcomes = keep
	if fresh := now.Sub(pb.measuredAt) <= window; fresh {
		if s.TTFTSamples == 0 {
			o.TTFT = pb.ttft
		}
		if s.TotalSamples == 0 {
			o.TotalTime = pb.total
		}
		if s.RateSamples == 0 {
			o.TokensPerSecond = pb.rate
		}
	}
	return o
}

// probe starts the probes that are due, one run per backend at a time.
func (c *Controller) probe(ctx context.Context, p *policy.Policy, in []backendInput, now time.Time) {
	if c.cfg.Prober == nil || p.Probes.Disabled {
		return
	}
	for _, x := range in {
		if c.probing[x.name] || !c.cfg.Prober.Due(x.name, x.status.State, x.stats.Requests > 0, now) {
			continue
		}
		c.probing[x.name] = true
		go func(name string) {
			rs := c.cfg.Prober.Probe(ctx, name)
			select {
			case c.results <- probeRun{backend: name, results: rs}:
			case <-ctx.Done():
			}
		}(x.name)
	}
}

// probeRun is one backend's finished probes.
type probeRun struct {
	backend string
	results []ProbeResult
}
