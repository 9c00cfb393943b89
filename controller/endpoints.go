package controller

import (
	"fmt"
	"log/slog"
	"math"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/detourhq/detour/health"
	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/signals"
)

// Endpoint judgement constants.
const (
	// An endpoint is unanswering when it has had attempts in flight and
	// answered none for unansweredFactor × its backend's response p95
	// (at least minUnanswered), over at least minUnansweredAttempts
	// attempts: requests keep arriving and none is answered, which long
	// generations alone in flight never look like. Without a measured
	// p95 the policy's total-time threshold stands in for it.
	unansweredFactor      = 3
	minUnanswered         = time.Second
	minUnansweredAttempts = 5
)

// endpointJudge takes single endpoints out of service: one that answers
// nothing (a black hole, a lost region, a stalled server: no error is
// ever counted for it) or, in a backend of several, one whose own error
// rate opens the circuit. An endpoint out of service is pushed UNHEALTHY
// over EDS while its backend's other endpoints serve, and its outcomes are
// left out of its backend's figures, so one bad region does not open a
// backend that still has a good one. When every endpoint of a backend is
// out, the backend itself is judged: unanswering, it opens.
type endpointJudge struct {
	log  *slog.Logger
	outc *prometheus.CounterVec             // Metrics.EndpointOuts
	outs map[string]map[string]*endpointOut // by backend and endpoint
	// excluded are outcomes of out endpoints already taken off each
	// backend's monotonic totals, and last the totals they are taken
	// from, by backend and endpoint.
	excluded map[string]signals.HostCounters
	last     map[string]map[string]signals.HostWindow
	// given are the totals last given to the state machine: they never
	// go down, which it would take for a restart of the counts; raw are
	// Envoy's own, before anything was taken off, whose going down is a
	// restart.
	given, raw map[string]signals.HostCounters
}

// endpointOut is one endpoint taken out of service.
type endpointOut struct {
	since, until time.Time // pushed UNHEALTHY over [since, until)
	// exclude: its outcomes stay out of the backend's figures until then
	// (until + the window, so the failures that took it out do not
	// count against the backend once it is back).
	exclude time.Time
	times   int // outings in a row, each cool-down twice the last
	why     string
	silent  bool // taken out for answering nothing
}

func newEndpointJudge(log *slog.Logger, outc *prometheus.CounterVec) *endpointJudge {
	return &endpointJudge{log: log, outc: outc, outs: map[string]map[string]*endpointOut{},
		excluded: map[string]signals.HostCounters{}, last: map[string]map[string]signals.HostWindow{},
		given: map[string]signals.HostCounters{}, raw: map[string]signals.HostCounters{}}
}

// forget drops a backend removed from the policy.
func (j *endpointJudge) forget(backend string) {
	delete(j.outs, backend)
	delete(j.excluded, backend)
	delete(j.last, backend)
	delete(j.given, backend)
	delete(j.raw, backend)
}

// unansweredAfter is how long an endpoint of a backend observed as o may
// stay silent with work in flight.
func unansweredAfter(p *policy.Policy, o *health.Observation, minSamples uint64) time.Duration {
	typical := p.Health.TotalTime.D()
	if o.LatencySamples >= minSamples && o.P95 > 0 {
		typical = o.P95
	}
	return max(minUnanswered, unansweredFactor*typical)
}

// judge updates the endpoints of backend x at now and adjusts its
// observation o: outcomes of endpoints out of service (or ejected by
// Envoy) are taken off while another endpoint serves; a backend whose
// every endpoint is unanswering is marked Unresponsive. It returns the
// endpoints to push UNHEALTHY, with why.
func (j *endpointJudge) judge(p *policy.Policy, h *health.Config, x *backendInput, o *health.Observation, now time.Time) map[string]string {
	if len(x.hosts) == 0 {
		return nil
	}
	if r := j.raw[x.name]; o.TotalRequests < r.Total || o.TotalErrors < r.Errors {
		// Envoy's counts restarted: so does what was taken off them.
		delete(j.excluded, x.name)
		delete(j.given, x.name)
	}
	j.raw[x.name] = signals.HostCounters{Total: o.TotalRequests, Errors: o.TotalErrors}
	outs := j.outs[x.name]
	if outs == nil {
		outs = map[string]*endpointOut{}
		j.outs[x.name] = outs
	}
	after := unansweredAfter(p, o, h.MinLatencySamples)
	inService := 0
	for _, ep := range sortedKeys(x.hosts) {
		hw := x.hosts[ep]
		e := outs[ep]
		if e != nil && now.Before(e.until) {
			continue // out: judged again once back in service
		}
		why, silent := "", false
		switch {
		case hw.Active > 0 && hw.Started >= minUnansweredAttempts && hw.Unanswered >= after:
			why = fmt.Sprintf("no answer for %v to %d attempts (%d in flight; bound %v)",
				hw.Unanswered.Round(100*time.Millisecond), hw.Started, hw.Active, after.Round(10*time.Millisecond))
			silent = true
		case x.endpoints >= 2 && hw.Requests >= minHostRequests && hw.ErrorRate() > h.OpenErrorRate:
			why = fmt.Sprintf("error rate %.1f%% > %.0f%% over the window (n=%d)", 100*hw.ErrorRate(), 100*h.OpenErrorRate, hw.Requests)
		}
		if why == "" {
			if !hw.Ejected {
				inService++
			}
			if e != nil && now.Sub(e.until) > h.ForgiveAfter {
				delete(outs, ep) // back long enough: cool-downs start over
			}
			continue
		}
		if e == nil {
			e = &endpointOut{}
			outs[ep] = e
		}
		e.times++
		cd := min(h.BaseCoolDown<<min(e.times-1, 16), h.MaxCoolDown)
		e.since, e.until, e.why, e.silent = now, now.Add(cd), why, silent
		e.exclude = e.until.Add(p.CircuitBreaker.Window.D())
		j.log.Info("endpoint out of service", "backend", x.name, "endpoint", ep, "reason", why, "for", cd)
		cause := "erring"
		if silent {
			cause = "unanswering"
		}
		j.outc.WithLabelValues(x.name, cause).Inc()
	}
	pushed := map[string]string{}
	var silent []string
	for _, ep := range sortedKeys(outs) {
		if e := outs[ep]; now.Before(e.until) {
			pushed[ep] = e.why
			if e.silent {
				silent = append(silent, ep)
			}
		}
	}
	if inService == 0 {
		// Nothing of this backend serves: it is judged whole, by its own
		// figures, and opens when nothing of it answers.
		if len(silent) > 0 {
			o.Unresponsive = unresponsive(x.name, silent, outs)
		}
		j.track(x, nil)
		j.give(x.name, o)
		return nil
	}
	j.track(x, func(ep string) bool {
		e := outs[ep]
		return x.hosts[ep].Ejected || (e != nil && now.Before(e.exclude))
	})
	j.exclude(x, o, outs, now)
	j.give(x.name, o)
	return pushed
}

// unresponsive explains a backend none of whose endpoints serves while
// some answer nothing.
func unresponsive(name string, silent []string, outs map[string]*endpointOut) string {
	if len(silent) == 1 && len(outs) == 1 {
		return outs[silent[0]].why
	}
	return fmt.Sprintf("no endpoint of %s serves: %s answer nothing", name, strings.Join(silent, ", "))
}

// track adds to the backend's excluded totals the outcomes its left-out
// endpoints (left) had since the previous evaluation, and remembers the
// totals.
func (j *endpointJudge) track(x *backendInput, left func(string) bool) {
	prev := j.last[x.name]
	ex := j.excluded[x.name]
	for ep, hw := range x.hosts {
		if left == nil || !left(ep) {
			continue
		}
		old, ok := prev[ep]
		if !ok || hw.TotalRequests < old.TotalRequests || hw.TotalErrors < old.TotalErrors {
			continue // first sight, or Envoy restarted: no increase known
		}
		ex.Total += hw.TotalRequests - old.TotalRequests
		ex.Errors += hw.TotalErrors - old.TotalErrors
	}
	j.excluded[x.name] = ex
	j.last[x.name] = x.hosts
}

// exclude takes the left-out endpoints' outcomes off o: their window
// counts from the window figures, everything excluded so far from the
// monotonic totals (which the state machine reads as increases).
func (j *endpointJudge) exclude(x *backendInput, o *health.Observation, outs map[string]*endpointOut, now time.Time) {
	var req, errs uint64
	for ep, hw := range x.hosts {
		e := outs[ep]
		if !hw.Ejected && (e == nil || !now.Before(e.exclude)) {
			continue
		}
		req += hw.Requests
		errs += hw.Errors
	}
	o.Requests -= min(req, o.Requests)
	o.Errors -= min(errs, o.Errors)
	o.Errors = min(o.Errors, o.Requests)
	// Failures are per minute, the endpoints' counts per window.
	perMinute := uint64(math.Ceil(float64(time.Minute) / float64(max(o.Window, time.Second))))
	o.Failures -= min(errs*perMinute, o.Failures)
	ex := j.excluded[x.name]
	o.TotalRequests -= min(ex.Total, o.TotalRequests)
	o.TotalErrors -= min(ex.Errors, o.TotalErrors)
}

// give keeps the totals handed to the state machine from going down.
func (j *endpointJudge) give(name string, o *health.Observation) {
	g := j.given[name]
	o.TotalRequests = max(o.TotalRequests, g.Total)
	o.TotalErrors = max(o.TotalErrors, g.Errors)
	j.given[name] = signals.HostCounters{Total: o.TotalRequests, Errors: o.TotalErrors}
}

// out lists backend's endpoints out of service at now, for the view.
func (j *endpointJudge) out(backend string, now time.Time) []healthview.EndpointOut {
	var l []healthview.EndpointOut
	outs := j.outs[backend]
	for _, ep := range sortedKeys(outs) {
		if e := outs[ep]; now.Before(e.until) {
			l = append(l, healthview.EndpointOut{Endpoint: ep, Reason: e.why, Since: e.since, Until: e.until})
		}
	}
	return l
}
