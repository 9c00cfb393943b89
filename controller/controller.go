// Package controller is detour's live-metrics controller. Every interval
// it reads what Envoy measured (package signals), folds in its own health
// probes, decides each backend's state (package health), computes the
// settings that follow (endpoint health, outlier sensitivity, retry
// budget, concurrency limits, first-token deadline, which priorities each
// route sheds), pushes them over xDS and publishes the whole view, with
// the reason for every state and value, for the ext_proc service and for
// `detour status`.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/detourhq/detour/health"
	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/healthview/viewhttp"
	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/signals"
	"github.com/detourhq/detour/xds"
)

// Pusher applies computed settings to the Envoys (*xds.Server).
type Pusher interface {
	SetControl(ctx context.Context, c *xds.Control) error
}

// ProbeResult is one health probe's outcome as the controller counts it.
type ProbeResult struct {
	Backend, Name string
	// OK: the answer passed its validation rule. A failed probe counts as
	// a failed request.
	OK bool
	// Slow: it passed but broke a performance threshold.
	Slow            bool
	Reason          string
	TTFT, Total     time.Duration
	TokensPerSecond float64
	At              time.Time
}

// Prober runs the contextual health probes.
type Prober interface {
	// Due reports whether backend should be probed now; busy says it had
	// traffic in the window.
	Due(backend string, state health.State, busy bool, now time.Time) bool
	// Probe sends backend's probes and returns their results.
	Probe(ctx context.Context, backend string) []ProbeResult
}

// SourceFunc builds the signal source for a policy.
type SourceFunc func(p *policy.Policy) (signals.Source, error)

// HostSource gives each backend's endpoints' outcomes over the window
// (*signals.HostSource: Envoy's /clusters).
type HostSource interface {
	Collect(ctx context.Context, now time.Time) (map[string]map[string]signals.HostWindow, error)
}

// HostSourceFunc builds the endpoint source for a policy; it may return
// nil (none: no endpoint weights, as with a Prometheus source).
type HostSourceFunc func(p *policy.Policy) (HostSource, error)

// Config assembles a Controller.
type Config struct {
	Policy    *policy.Policy
	NewSource SourceFunc
	// NewHosts is optional: without it endpoints keep equal weights.
	NewHosts HostSourceFunc
	Pusher   Pusher
	// Prober is optional: without it only traffic is judged.
	Prober Prober
	// Reacher is optional: without it an endpoint out of service takes
	// traffic again when its cool-down ends, unchecked.
	Reacher   Reacher
	Publisher *viewhttp.Publisher
	Metrics   *Metrics
	Log       *slog.Logger
	// Clock defaults to time.Now.
	Clock func() time.Time
}

// keep bounds the history shown per backend.
const (
	keepTransitions = 10
	keepProbes      = 8
)

// Controller runs the loop. Step is called from one goroutine (Run's);
// SetPolicy may be called from another.
type Controller struct {
	cfg Config
	log *slog.Logger
	now func() time.Time

	mu        sync.Mutex // guards pending
	pending   *policy.Policy
	policy    *policy.Policy
	source    signals.Source
	hosts     HostSource
	sourceKey string
	machine   *health.Machine
	healthCfg health.Config
	tuner     *tuner
	shedder   *shedder
	endpoints *endpointJudge
	reachable *reachWatch

	started     time.Time
	lastGood    time.Time
	pushed      *xds.Control
	routingSig  string
	transitions map[string][]healthview.Transition
	probes      map[string]*probeBook
	probing     map[string]bool
	results     chan probeRun
}

// New builds a controller on cfg.Policy.
func New(cfg Config) (*Controller, error) {
	if cfg.Policy == nil || cfg.NewSource == nil || cfg.Pusher == nil || cfg.Publisher == nil || cfg.Metrics == nil {
		return nil, errors.New("controller: Policy, NewSource, Pusher, Publisher and Metrics are required")
	}
	c := &Controller{
		cfg: cfg, log: cfg.Log, now: cfg.Clock,
		tuner:       newTuner(),
		shedder:     newShedder(),
		endpoints:   newEndpointJudge(cfg.Log, cfg.Metrics.EndpointOuts),
		reachable:   newReachWatch(cfg.Metrics.ReachChecks),
		transitions: map[string][]healthview.Transition{},
		probes:      map[string]*probeBook{},
		probing:     map[string]bool{},
		results:     make(chan probeRun, 64),
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
		c.endpoints.log = c.log
	}
	if c.now == nil {
		c.now = time.Now
	}
	c.endpoints.reach = cfg.Reacher
	c.reachable.reach = cfg.Reacher
	if err := c.apply(cfg.Policy); err != nil {
		return nil, err
	}
	c.started = c.now()
	return c, nil
}

// SetPolicy takes a new policy from the next evaluation on. Backends
// keep their states unless the thresholds changed.
func (c *Controller) SetPolicy(p *policy.Policy) {
	c.mu.Lock()
	c.pending = p
	c.mu.Unlock()
}

func healthConfig(p *policy.Policy) health.Config {
	h := health.DefaultConfig()
	h.SlowP95 = p.CircuitBreaker.SlowResponse.D()
	h.SlowTTFT = p.Health.TTFT.D()
	h.MinTokensPerSecond = p.Health.TokensPerSecond
	h.SlowTotalTime = p.Health.TotalTime.D()
	h.DegradedErrorRate = p.Health.ErrorRate
	h.OpenErrorRate = p.CircuitBreaker.ErrorRate
	h.MinRequests = uint64(p.CircuitBreaker.MinRequests)
	h.FailuresPerMinute = uint64(p.CircuitBreaker.FailuresPerMinute)
	h.BaseCoolDown = p.Controller.CoolDown.D()
	h.MaxCoolDown = p.Controller.MaxCoolDown.D()
	h.HalfOpenSuccesses = uint64(p.Controller.HalfOpenSuccesses)
	h.MinDwell = p.Controller.Dwell.D()
	return h
}

// sourceKey is what the signal source is built from: a reload that keeps
// it keeps the windows' history.
func sourceKey(p *policy.Policy) string {
	names := make([]string, len(p.Backends))
	for i, b := range p.Backends {
		names[i] = b.Name
	}
	return fmt.Sprint(p.Controller.Source, p.EnvoyAdmins(), p.Controller.Prometheus, p.CircuitBreaker.Window, p.Controller.StaleAfter, names)
}

func (c *Controller) apply(p *policy.Policy) error {
	hc := healthConfig(p)
	if c.machine == nil || !reflect.DeepEqual(hc, c.healthCfg) {
		m, err := health.New(hc, c.now)
		if err != nil {
			return fmt.Errorf("controller: %w", err)
		}
		if c.machine != nil {
			c.log.Info("controller thresholds changed: every backend starts again from HEALTHY")
		}
		c.machine, c.healthCfg = m, hc
	}
	if k := sourceKey(p); k != c.sourceKey {
		src, err := c.cfg.NewSource(p)
		if err != nil {
			return fmt.Errorf("controller: signal source: %w", err)
		}
		var hosts HostSource
		if c.cfg.NewHosts != nil {
			if hosts, err = c.cfg.NewHosts(p); err != nil {
				return fmt.Errorf("controller: endpoint source: %w", err)
			}
		}
		c.source, c.hosts, c.sourceKey = src, hosts, k
	}
	if c.policy != nil {
		for _, b := range c.policy.Backends {
			if !slices.ContainsFunc(p.Backends, func(n policy.Backend) bool { return n.Name == b.Name }) {
				c.machine.Forget(b.Name)
				c.endpoints.forget(b.Name)
				c.reachable.forget(b.Name)
				delete(c.probes, b.Name)
				delete(c.transitions, b.Name)
				c.tuner.forget(b.Name)
			}
		}
	}
	c.policy = p
	c.endpoints.setPolicy(p)
	return nil
}

// Run evaluates every interval until ctx ends.
func (c *Controller) Run(ctx context.Context) {
	c.log.Info("controller running", "source", c.policy.Controller.Source, "interval", c.policy.Controller.Interval.D(),
		"envoys", c.policy.EnvoyAdmins(), "probes", c.cfg.Prober != nil)
	for {
		if err := c.Step(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("controller evaluation failed", "err", err)
		}
		if !c.wait(ctx, c.policy.Controller.Interval.D()) {
			return
		}
	}
}

// wait waits for the next evaluation, interval from now or sooner if the
// silence check finds an endpoint gone silent; false when ctx ends.
func (c *Controller) wait(ctx context.Context, interval time.Duration) bool {
	timer := time.NewTimer(interval)
	defer timer.Stop()
	var check <-chan time.Time
	if every := c.policy.Controller.SilenceCheck.D(); c.hosts != nil && every < interval {
		t := time.NewTicker(every)
		defer t.Stop()
		check = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return false
		case <-timer.C:
			return true
		case <-check:
			if c.silenceSeen(ctx) {
				c.cfg.Metrics.SilenceWakeups.Inc()
				return true
			}
		}
	}
}

// silenceSeen reads every Envoy's endpoints once and reports whether one
// in service has gone silent since the last evaluation.
func (c *Controller) silenceSeen(ctx context.Context) bool {
	now := c.now()
	hctx, cancel := context.WithTimeout(ctx, c.policy.Controller.SilenceCheck.D())
	win, _ := c.hosts.Collect(hctx, now)
	cancel()
	b, ep, due := c.endpoints.silenceDue(win, now)
	if due {
		c.log.Debug("endpoint silent: evaluating now", "backend", b, "endpoint", ep)
	}
	return due
}

// Step is one evaluation: read, decide, push, publish.
func (c *Controller) Step(ctx context.Context) error {
	start := time.Now()
	defer func() {
		c.cfg.Metrics.Evaluations.Inc()
		c.cfg.Metrics.EvalTime.Observe(time.Since(start).Seconds())
	}()
	c.mu.Lock()
	next := c.pending
	c.pending = nil
	c.mu.Unlock()
	if next != nil {
		if err := c.apply(next); err != nil {
			return err
		}
	}
	p := c.policy
	now := c.now()
	cctx, cancel := context.WithTimeout(ctx, max(p.Controller.Interval.D(), time.Second))
	stats, serr := c.source.Collect(cctx, now)
	cancel()
	if serr != nil {
		c.cfg.Metrics.SignalErrors.Inc()
		c.log.Warn("controller signals incomplete", "err", serr)
	}
	if serr == nil || len(stats) > 0 {
		c.lastGood = now
	}
	c.drainProbes(now)
	var hostWin map[string]map[string]signals.HostWindow
	if c.hosts != nil {
		hctx, hcancel := context.WithTimeout(ctx, max(p.Controller.Interval.D(), time.Second))
		var herr error
		hostWin, herr = c.hosts.Collect(hctx, now)
		hcancel()
		if herr != nil {
			c.log.Debug("controller endpoint signals incomplete", "err", herr)
		}
	}

	inputs := make([]backendInput, 0, len(p.Backends))
	obs := make([]health.Observation, 0, len(p.Backends))
	for _, b := range p.Backends {
		s, ok := stats[b.Name]
		if !ok {
			// Not in the scrape: no traffic yet, or no signals at all.
			s = signals.Stats{Backend: b.Name, Stale: len(stats) == 0 && serr != nil}
		}
		if s.Stale {
			// A signal is as old as the last good read, and none can be
			// older than the controller.
			from := c.lastGood
			if from.IsZero() {
				from = c.started
			}
			s.Age = min(max(s.Age, now.Sub(from)), now.Sub(c.started))
			// Envoy starting beside a new controller is not bad news yet.
			if c.lastGood.IsZero() && s.Age <= p.Controller.StaleAfter.D() {
				s.Stale = false
			}
		}
		o := c.observation(b.Name, s, now)
		x := backendInput{name: b.Name, stats: s, hosts: hostWin[b.Name], endpoints: len(b.Endpoints)}
		x.out = c.endpoints.judge(ctx, p, &c.healthCfg, &x, &o, now)
		o.Reach = c.reachable.take(b.Name)
		c.cfg.Metrics.EndpointsOut.WithLabelValues(b.Name).Set(float64(len(x.out)))
		obs = append(obs, o)
		inputs = append(inputs, x)
	}
	for _, t := range c.machine.ObserveAll(obs, nil) {
		c.record(t)
	}
	states := map[string]health.Status{}
	throttled := map[string]bool{}
	throttledWhy := map[string]string{}
	loads := map[string]load{}
	for i := range inputs {
		st, _ := c.machine.Status(inputs[i].name)
		inputs[i].status = st
		if st.State == health.Open {
			c.reachable.start(ctx, inputs[i].name, c.endpoints.addrs[inputs[i].name])
		}
		states[inputs[i].name] = st
		throttled[inputs[i].name], throttledWhy[inputs[i].name] = c.tuner.throttledNow(inputs[i].name, inputs[i].stats, now)
		if throttled[inputs[i].name] {
			loads[inputs[i].name] = c.tuner.load(inputs[i].name)
		}
	}
	control, why, firstWhy := c.tuner.tune(p, inputs)
	if err := c.push(ctx, control); err != nil {
		return err
	}
	routes := c.shedder.shed(p, now, states, loads)
	c.publish(p, now, serr, inputs, obs, why, firstWhy, throttled, throttledWhy, routes)
	c.probe(ctx, p, inputs, now)
	return nil
}

// record logs and counts one transition.
func (c *Controller) record(t health.Transition) {
	c.log.Info("backend state changed", "backend", t.Backend, "from", t.From.String(), "to", t.To.String(), "reason", t.Reason)
	c.cfg.Metrics.Transitions.WithLabelValues(t.Backend, t.From.String(), t.To.String()).Inc()
	h := append(c.transitions[t.Backend], healthview.Transition{From: t.From.String(), To: t.To.String(), Reason: t.Reason, At: t.At})
	if len(h) > keepTransitions {
		h = h[len(h)-keepTransitions:]
	}
	c.transitions[t.Backend] = h
}

// push sends the control when it differs from what was pushed, counting
// which kinds of resource it changes.
func (c *Controller) push(ctx context.Context, next *xds.Control) error {
	prev := c.pushed
	if prev != nil && reflect.DeepEqual(prev, next) {
		return nil
	}
	if err := c.cfg.Pusher.SetControl(ctx, next); err != nil {
		return fmt.Errorf("push computed settings: %w", err)
	}
	c.pushed = next
	var endpoints, clusters bool
	for name, bc := range next.Backends {
		var old xds.BackendControl
		if prev != nil {
			old = prev.Backends[name]
		}
		if old.Health != bc.Health || !reflect.DeepEqual(old.EndpointWeights, bc.EndpointWeights) || !reflect.DeepEqual(old.EndpointsOut, bc.EndpointsOut) {
			endpoints = true
		}
		o, n := old, bc
		o.Health, o.EndpointWeights, o.EndpointsOut, n.Health, n.EndpointWeights, n.EndpointsOut = 0, nil, nil, 0, nil, nil
		if !reflect.DeepEqual(o, n) {
			clusters = true
		}
	}
	if endpoints {
		c.cfg.Metrics.Pushes.WithLabelValues("endpoint").Inc()
	}
	if clusters {
		c.cfg.Metrics.Pushes.WithLabelValues("cluster").Inc()
	}
	if prev == nil || prev.FirstTokenTimeout != next.FirstTokenTimeout || prev.ResponseTimeout != next.ResponseTimeout {
		c.cfg.Metrics.Pushes.WithLabelValues("route").Inc()
	}
	return nil
}

// publish builds the view; its version moves (waking the ext_proc
// services) only when something routing depends on changed.
func (c *Controller) publish(p *policy.Policy, now time.Time, serr error, in []backendInput, obs []health.Observation,
	why map[string][]healthview.Setting, firstWhy string, throttled map[string]bool, throttledWhy map[string]string, routes map[string]healthview.Route) {
	m := c.cfg.Metrics
	v := &healthview.Snapshot{
		At: now, Source: p.Controller.Source, Backends: map[string]healthview.Backend{}, Routes: routes,
		TrialShare: p.Controller.TrialShare, FirstTokenWhy: firstWhy,
	}
	if serr != nil {
		v.SignalError = serr.Error()
	}
	if c.pushed != nil {
		v.FirstTokenTimeout = healthview.Duration(c.pushed.FirstTokenTimeout)
	}
	if v.FirstTokenTimeout == 0 {
		v.FirstTokenTimeout = healthview.Duration(p.Retry.FirstTokenTimeout.D())
	}
	if c.pushed != nil {
		v.ResponseTimeout = healthview.Duration(c.pushed.ResponseTimeout)
	}
	v.ResponseWhy = responseWhy(p, time.Duration(v.ResponseTimeout))
	sig := []string{}
	for i, x := range in {
		st := x.status
		o := obs[i]
		b := healthview.Backend{
			State: st.State.String(), Since: st.Since, Reason: st.Reason, Opens: st.Opens,
			Throttled: throttled[x.name], ThrottledWhy: throttledWhy[x.name],
			Settings: why[x.name], Transitions: c.transitions[x.name],
			Signals: healthview.Signals{
				Stale: x.stats.Stale, Age: healthview.Duration(x.stats.Age), Window: healthview.Duration(o.Window),
				Requests: o.Requests, Errors: o.Errors, TooManyRequests: x.stats.TooManyRequests,
				FailuresPerMin: o.Failures, P95: healthview.Duration(o.P95),
				TTFT: healthview.Duration(o.TTFT), TokensPerSecond: o.TokensPerSecond, TotalTime: healthview.Duration(o.TotalTime),
				Concurrency: concurrency(x.stats), Retries: x.stats.Retries, RetryOverflows: x.stats.RetryOverflows,
				Ejected: x.stats.EjectionsActive,
			},
		}
		if o.Requests > 0 {
			b.Signals.ErrorRate = float64(o.Errors) / float64(o.Requests)
		}
		if st.State == health.Open {
			t := st.RetryAt
			b.RetryAt = &t
		}
		if pb := c.probes[x.name]; pb != nil {
			b.Probes = pb.recent
		}
		b.EndpointsOut = c.endpoints.out(x.name, now)
		v.Backends[x.name] = b
		sig = append(sig, fmt.Sprint(x.name, b.State, b.Throttled))

		for _, s := range []health.State{health.Healthy, health.Degraded, health.Open, health.HalfOpen} {
			val := 0.0
			if s == st.State {
				val = 1
			}
			m.State.WithLabelValues(x.name, s.String()).Set(val)
		}
		m.SignalAge.WithLabelValues(x.name).Set(x.stats.Age.Seconds())
		m.Requests.WithLabelValues(x.name).Set(float64(o.Requests))
		m.ErrorRate.WithLabelValues(x.name).Set(b.Signals.ErrorRate)
		m.P95.WithLabelValues(x.name).Set(o.P95.Seconds())
		m.TTFT.WithLabelValues(x.name).Set(o.TTFT.Seconds())
		m.Rate.WithLabelValues(x.name).Set(o.TokensPerSecond)
		m.Total.WithLabelValues(x.name).Set(o.TotalTime.Seconds())
		if c.pushed != nil {
			bc := c.pushed.Backends[x.name]
			m.Setting.WithLabelValues(x.name, "consecutive_errors").Set(float64(bc.ConsecutiveErrors))
			m.Setting.WithLabelValues(x.name, "retry_budget_percent").Set(bc.RetryBudgetPercent)
			m.Setting.WithLabelValues(x.name, "min_retry_concurrency").Set(float64(bc.MinRetryConcurrency))
			m.Setting.WithLabelValues(x.name, "max_requests").Set(float64(bc.MaxRequests))
		}
	}
	names := make([]string, 0, len(routes))
	for n := range routes {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		r := routes[n]
		level := 0.0
		switch r.Shed {
		case healthview.Sheddable:
			level = levelSheddable - r.Admit
		case healthview.Standard:
			level = levelStandard - r.Admit
		}
		m.Shed.WithLabelValues(n).Set(level)
		sig = append(sig, fmt.Sprintf("%s:%s:%.2f", n, r.Shed, r.Admit))
	}
	if c.pushed != nil {
		sig = append(sig, c.pushed.FirstTokenTimeout.String())
	}
	s := fmt.Sprint(sig)
	if s != c.routingSig {
		c.routingSig = s
		c.cfg.Publisher.Publish(v)
	} else {
		c.cfg.Publisher.Refresh(v)
	}
}
