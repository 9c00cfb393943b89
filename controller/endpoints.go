package controller

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
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
	// p95 the bound is the policy's total-time threshold (5 s).
	unansweredFactor      = 3
	minUnanswered         = 500 * time.Millisecond
	minUnansweredAttempts = 5
	// reachTimeout bounds the check an endpoint must pass, once its
	// cool-down is over, before it takes traffic again.
	reachTimeout = 2 * time.Second
	// After a failed check the next one comes recheckAfter later,
	// doubling with each failure up to maxRecheckAfter: a check costs one
	// GET and no tokens, and the endpoint takes no traffic meanwhile, so
	// there is no reason to wait out a longer cool-down for the outage's
	// end (the cool-down doubles with each outing instead).
	recheckAfter    = time.Second
	maxRecheckAfter = 5 * time.Second
)

// Reacher checks that an endpoint answers HTTP at all (*probe.Prober):
// an endpoint out of service takes traffic again only once it does, so a
// black hole is not sent a second round of requests to find out.
type Reacher interface {
	Reach(ctx context.Context, backend, endpoint string) error
}

// endpointJudge takes single endpoints out of service: one that answers
// nothing (a black hole, a lost region, a stalled server: no error is
// ever counted for it) or, in a backend of several, one whose own error
// rate opens the circuit. An endpoint out of service is pushed UNHEALTHY
// over EDS while its backend's other endpoints serve, and its outcomes are
// left out of its backend's figures, so one bad region does not open a
// backend that still has a good one. When every endpoint of a backend is
// out, the backend itself is judged: unanswering, it opens.
type endpointJudge struct {
	log   *slog.Logger
	reach Reacher // nil: an endpoint comes back when its cool-down ends
	// addrs are each backend's endpoints as the policy writes them,
	// which the reacher knows them by.
	addrs  map[string][]string
	mu     sync.Mutex                         // guards checks, written by the checks' goroutines
	checks map[string]error                   // finished checks by backend and endpoint; nil error: reachable
	outc   *prometheus.CounterVec             // Metrics.EndpointOuts
	outs   map[string]map[string]*endpointOut // by backend and endpoint
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
	// after is each backend's silence bound at the last judgement, for
	// the silence watch between evaluations (silenceDue).
	after map[string]time.Duration
}

// endpointOut is one endpoint taken out of service.
type endpointOut struct {
	since, until time.Time // pushed UNHEALTHY over [since, until)
	times        int       // outings in a row, each cool-down twice the last
	why          string
	silent       bool   // taken out for answering nothing
	cause        string // why it was taken out (why may say more since)
	// checking: the cool-down is over and a reachability check runs;
	// the endpoint stays out until it passes; reached: one has passed
	// since it was last taken out; failed: checks failed since.
	checking, reached bool
	failed            int
	// back is when it last came back, with its counters then.
	back       time.Time
	backCounts signals.HostCounters
}

func newEndpointJudge(log *slog.Logger, outc *prometheus.CounterVec) *endpointJudge {
	return &endpointJudge{log: log, outc: outc, outs: map[string]map[string]*endpointOut{},
		excluded: map[string]signals.HostCounters{}, last: map[string]map[string]signals.HostWindow{},
		given: map[string]signals.HostCounters{}, raw: map[string]signals.HostCounters{},
		addrs: map[string][]string{}, checks: map[string]error{}, after: map[string]time.Duration{}}
}

// setPolicy learns the policy's endpoint addresses.
func (j *endpointJudge) setPolicy(p *policy.Policy) {
	j.addrs = map[string][]string{}
	for _, b := range p.Backends {
		for _, ep := range b.Endpoints {
			j.addrs[b.Name] = append(j.addrs[b.Name], ep.Address)
		}
	}
}

// forget drops a backend removed from the policy.
func (j *endpointJudge) forget(backend string) {
	delete(j.outs, backend)
	delete(j.excluded, backend)
	delete(j.last, backend)
	delete(j.given, backend)
	delete(j.raw, backend)
	delete(j.after, backend)
}

// unansweredAfter is how long an endpoint of a backend observed as o may
// stay silent with work in flight.
func unansweredAfter(p *policy.Policy, o *health.Observation, minSamples uint64) time.Duration {
	if o.LatencySamples >= minSamples && o.P95 > 0 {
		return max(minUnanswered, unansweredFactor*o.P95)
	}
	// Nothing measured (a backend that just got its first traffic): the
	// policy's bound on a whole answer.
	return max(minUnanswered, p.Health.TotalTime.D())
}

// judge updates the endpoints of backend x at now and adjusts its
// observation o: outcomes of endpoints out of service (or ejected by
// Envoy) are taken off while another endpoint serves; a backend whose
// every endpoint is unanswering is marked Unresponsive. It returns the
// endpoints to push UNHEALTHY, with why.
func (j *endpointJudge) judge(ctx context.Context, p *policy.Policy, h *health.Config, x *backendInput, o *health.Observation, now time.Time) map[string]string {
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
	j.after[x.name] = after
	// inService: endpoints neither out nor ejected; serving: those of
	// them with answers in the window to show for it.
	inService, serving := 0, 0
	for _, ep := range sortedKeys(x.hosts) {
		hw := x.hosts[ep]
		e := outs[ep]
		if e != nil && now.Before(e.until) && !e.checking {
			continue // out: judged again once back in service
		}
		if e != nil && j.held(ctx, x.name, ep, e, now) {
			continue // its cool-down is over, but it has not been reached yet
		}
		if e != nil && e.back.Before(e.until) {
			e.back, e.backCounts = now, signals.HostCounters{Total: hw.TotalRequests, Errors: hw.TotalErrors}
		}
		why, silent := "", false
		// Back from an outing, an endpoint is judged on what it did since:
		// the window still holds the failures that took it out.
		req, errs := hw.Requests, hw.Errors
		if e != nil && !e.back.IsZero() && now.Sub(e.back) < p.CircuitBreaker.Window.D() &&
			hw.TotalRequests >= e.backCounts.Total && hw.TotalErrors >= e.backCounts.Errors {
			req, errs = hw.TotalRequests-e.backCounts.Total, hw.TotalErrors-e.backCounts.Errors
		}
		switch {
		case hw.Active > 0 && hw.Started >= minUnansweredAttempts && hw.Unanswered >= after:
			why = fmt.Sprintf("no answer for %v to %d attempts (%d in flight; bound %v)",
				hw.Unanswered.Round(100*time.Millisecond), hw.Started, hw.Active, after.Round(10*time.Millisecond))
			silent = true
		case x.endpoints >= 2 && req >= minHostRequests && float64(errs) > h.OpenErrorRate*float64(req):
			why = fmt.Sprintf("error rate %.1f%% > %.0f%% (n=%d)", 100*float64(errs)/float64(req), 100*h.OpenErrorRate, req)
		}
		if why == "" && hw.Active > 0 && hw.Unanswered >= after && o.Hanging == "" {
			o.Hanging = fmt.Sprintf("%s: %d attempts in flight, none finished for %v (bound %v)",
				ep, hw.Active, hw.Unanswered.Round(100*time.Millisecond), after.Round(10*time.Millisecond))
		}
		if why == "" {
			o.InFlight += hw.Active
			if !hw.Ejected {
				inService++
				if hw.Requests > hw.Errors {
					serving++
				}
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
		e.since, e.until, e.why, e.cause, e.silent, e.reached, e.failed = now, now.Add(cd), why, why, silent, false, 0
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
	// out: the endpoints whose new outcomes are left out of the backend's
	// figures (out of service, or ejected by Envoy); nil: none are.
	var out func(ep string) bool
	switch {
	case inService == 0:
		// Nothing of this backend serves: it is judged whole, by its own
		// figures, and opens when nothing of it answers.
		if len(silent) > 0 {
			o.Unresponsive = unresponsive(x.name, silent, outs)
		}
		pushed = nil
	case serving == 0 && !onlySilent(outs, now):
		// The others have shown nothing yet (a region that took no
		// traffic while the first served it all): the erring endpoints
		// go out, so traffic moves there, but the backend is still judged
		// on everything until one of them answers; were they dead too (a
		// backend killed everywhere), it must not look healthy meanwhile.
		// Silent ones are left out at once: a lost region's attempts end
		// in timeouts only, and judging the backend on them would send
		// its traffic to other backends in that same region.
	default:
		out = func(ep string) bool {
			e := outs[ep]
			return x.hosts[ep].Ejected || (e != nil && (now.Before(e.until) || e.checking))
		}
	}
	j.track(x, out)
	if out != nil {
		j.excludeWindow(x, o, outs, out, p.CircuitBreaker.Window.D(), now)
	}
	j.excludeTotals(x.name, o)
	j.give(x.name, o)
	return pushed
}

// silenceDue reports whether an endpoint in service has become silent by
// the bound of its backend's last judgement: the silence watch then
// brings the next evaluation forward, so a lost region is taken out of
// service within a fraction of controller.interval of the bound.
func (j *endpointJudge) silenceDue(hosts map[string]map[string]signals.HostWindow, now time.Time) (backend, endpoint string, due bool) {
	for b, eps := range hosts {
		after, known := j.after[b]
		if !known {
			continue
		}
		for ep, hw := range eps {
			if hw.Active == 0 || hw.Started < minUnansweredAttempts || hw.Unanswered < after {
				continue
			}
			if e := j.outs[b][ep]; e != nil && (now.Before(e.until) || e.checking) {
				continue // already out
			}
			return b, ep, true
		}
	}
	return "", "", false
}

// held keeps endpoint ep of backend, whose cool-down e has just ended,
// out of service until a reachability check passes: it starts one, or
// reads the one that finished. After a failed one the next comes soon.
func (j *endpointJudge) held(ctx context.Context, backend, ep string, e *endpointOut, now time.Time) bool {
	if j.reach == nil || e.reached {
		return false
	}
	addr := j.policyAddress(backend, ep)
	if addr == "" {
		return false // not known by an address the reacher can use
	}
	key := backend + " " + ep
	if !e.checking {
		e.checking = true
		e.until = now.Add(reachTimeout) // out while the check runs
		go func() {
			cctx, cancel := context.WithTimeout(ctx, reachTimeout)
			err := j.reach.Reach(cctx, backend, addr)
			cancel()
			j.mu.Lock()
			j.checks[key] = err
			j.mu.Unlock()
		}()
		return true
	}
	j.mu.Lock()
	err, done := j.checks[key]
	if done {
		delete(j.checks, key)
	}
	j.mu.Unlock()
	if !done {
		e.until = now.Add(reachTimeout)
		return true
	}
	e.checking = false
	if err == nil {
		e.until, e.reached = now, true
		j.log.Info("endpoint back in service", "backend", backend, "endpoint", ep, "after", now.Sub(e.since).Round(time.Second))
		return false
	}
	e.failed++
	next := min(recheckAfter<<min(e.failed-1, 16), maxRecheckAfter)
	e.until = now.Add(next)
	e.why = fmt.Sprintf("unreachable after its cool-down (%v); taken out for: %s", err, e.cause)
	if e.failed == 1 {
		j.log.Info("endpoint still out of service", "backend", backend, "endpoint", ep, "reason", err, "next_check_in", next)
	} else {
		j.log.Debug("endpoint still out of service", "backend", backend, "endpoint", ep, "reason", err, "checks_failed", e.failed, "next_check_in", next)
	}
	return true
}

// policyAddress is the policy's address of the endpoint Envoy reports as
// ep (an IP and port): itself when the policy writes it so, the only
// endpoint of a backend of one, else "".
func (j *endpointJudge) policyAddress(backend, ep string) string {
	addrs := j.addrs[backend]
	for _, a := range addrs {
		if a == ep {
			return a
		}
	}
	if len(addrs) == 1 {
		return addrs[0]
	}
	return ""
}

// onlySilent reports whether every endpoint out at now went out for
// answering nothing.
func onlySilent(outs map[string]*endpointOut, now time.Time) bool {
	for _, e := range outs {
		if now.Before(e.until) && !e.silent {
			return false
		}
	}
	return true
}

// unresponsive explains a backend none of whose endpoints serves while
// some answer nothing.
func unresponsive(name string, silent []string, outs map[string]*endpointOut) string {
	if len(silent) == 1 && len(outs) == 1 {
		return outs[silent[0]].why
	}
	return fmt.Sprintf("no endpoint of %s serves: %s answer nothing", name, strings.Join(silent, ", "))
}

// track adds to the backend's excluded totals the outcomes its endpoints
// out of service (out) had since the previous evaluation, and remembers
// the totals.
func (j *endpointJudge) track(x *backendInput, out func(string) bool) {
	prev := j.last[x.name]
	ex := j.excluded[x.name]
	for ep, hw := range x.hosts {
		if out == nil || !out(ep) {
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

// excludeWindow takes off o's window counts those of the endpoints out of
// service and, for an endpoint back within the window, what it did before
// it came back: the failures that took it out must not count against the
// backend once it serves again, and what it does since must.
func (j *endpointJudge) excludeWindow(x *backendInput, o *health.Observation, outs map[string]*endpointOut, out func(string) bool,
	window time.Duration, now time.Time) {
	var req, errs uint64
	for ep, hw := range x.hosts {
		if out(ep) {
			req += hw.Requests
			errs += hw.Errors
			continue
		}
		e := outs[ep]
		if e == nil || e.back.IsZero() || now.Sub(e.back) >= window ||
			hw.TotalRequests < e.backCounts.Total || hw.TotalErrors < e.backCounts.Errors {
			continue
		}
		req += hw.Requests - min(hw.TotalRequests-e.backCounts.Total, hw.Requests)
		errs += hw.Errors - min(hw.TotalErrors-e.backCounts.Errors, hw.Errors)
	}
	o.Requests -= min(req, o.Requests)
	o.Errors -= min(errs, o.Errors)
	o.Errors = min(o.Errors, o.Requests)
	// Failures are per minute, the endpoints' counts per window.
	perMinute := uint64(math.Ceil(float64(time.Minute) / float64(max(o.Window, time.Second))))
	o.Failures -= min(errs*perMinute, o.Failures)
}

// excludeTotals takes off o's monotonic totals everything excluded so far
// (which the state machine reads as increases): always, or the end of an
// outing would hand it every outcome excluded during it as new.
func (j *endpointJudge) excludeTotals(backend string, o *health.Observation) {
	ex := j.excluded[backend]
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
