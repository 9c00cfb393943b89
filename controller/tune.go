package controller

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/detourhq/detour/health"
	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/signals"
	"github.com/detourhq/detour/xds"
)

// Tuning constants. Each is a judgement, explained where it is used.
const (
	// littleHeadroom multiplies measured concurrency into a limit: bursts
	// of four times the average concurrency pass.
	littleHeadroom = 4
	// stickyChange: a computed limit or deadline is pushed again only when
	// it moves by more than this share, so noise does not rebuild clusters.
	stickyChange = 0.25
	// ttftDeadlineFactor times the healthy backends' TTFT p95 is the
	// first-token deadline: far enough above normal that only a stalled
	// provider reaches it.
	ttftDeadlineFactor = 4
	// minTTFTSamples before a TTFT p95 moves the deadline.
	minTTFTSamples = 20
	// responseDeadlineFactor times the slowest healthy backend's response
	// p95 is the hedged deadline of non-streaming attempts (at least
	// bounds.response_timeout.min): only a black hole or a far tail
	// reaches it. minResponseSamples responses before a p95 counts.
	responseDeadlineFactor = 4
	minResponseSamples     = 20
	// Widespread errors (retry budget shrinks) when this share of the
	// backends with traffic is not HEALTHY; back to normal below half of it.
	widespreadEnter, widespreadLeave = 0.5, 0.25
	// Throttled: a backend answering this share of its requests with 429
	// (over at least minThrottleRequests, some of them since the last
	// evaluation) ranks as degraded until the share falls under
	// throttleLeave or cleanRunToLeave requests in a row were not 429s:
	// ranked low it gets little traffic, and its window would take about
	// its whole length to clear.
	throttleEnter, throttleLeave = 0.10, 0.02
	minThrottleRequests          = 20
	cleanRunToLeave              = 10
	// recentHalfLife: the recent request and 429 counts lose half their
	// weight in this time. Shedding reads the recent share, not the
	// window's, so it follows demand within seconds both ways.
	recentHalfLife = time.Second
	// minHostRequests before an endpoint's error rate moves its weight;
	// weightStep: a weight is pushed again only when it moves this much.
	minHostRequests = 20
	weightStep      = 10
)

// tuner turns states and signals into pushed settings, remembering what it
// pushed for hysteresis.
type tuner struct {
	widespread  bool
	weights     map[string]map[string]uint32 // pushed, by backend and endpoint
	maxRequests map[string]uint32
	firstToken  time.Duration
	response    time.Duration
	throttled   map[string]*throttle
}

// throttle is what the tuner knows of one backend's 429s.
type throttle struct {
	on bool
	// seen: the totals below are from an earlier evaluation; clean:
	// requests since the last 429 (as far as the totals tell).
	seen              bool
	requests, tooMany uint64
	clean             uint64
	// recentReq, recent429: the requests and 429s of the last few
	// seconds, older ones decayed (recentHalfLife), as of at.
	recentReq, recent429 float64
	at                   time.Time
	why                  string
	fresh                bool // updated by the last evaluation's read
}

// load is a throttling backend's recent traffic, for shedding.
type load struct {
	// taken is the share of its recent requests it did not answer with
	// 429; requests is how many (decayed) that share is over; stale: the
	// last read brought nothing new.
	taken, requests float64
	stale           bool
}

func (th *throttle) load() load {
	if th == nil || th.recentReq < 1 {
		return load{taken: 1, stale: th != nil && !th.fresh}
	}
	return load{taken: min(max(1-th.recent429/th.recentReq, 0), 1), requests: th.recentReq, stale: !th.fresh}
}

func newTuner() *tuner {
	return &tuner{maxRequests: map[string]uint32{}, throttled: map[string]*throttle{}, weights: map[string]map[string]uint32{}}
}

// backendInput is what is known of one backend at an evaluation.
type backendInput struct {
	name   string
	status health.Status
	stats  signals.Stats
	// hosts are the backend's endpoints' outcomes over the window;
	// endpoints is how many the policy gives it.
	hosts     map[string]signals.HostWindow
	endpoints int
	// out are endpoints out of service on their own, with why.
	out map[string]string
}

// tune computes the control for every backend, with explanations.
func (t *tuner) tune(p *policy.Policy, in []backendInput) (*xds.Control, map[string][]healthview.Setting, string) {
	b := p.Controller.Bounds
	// Widespread errors: how many backends with traffic are not healthy.
	busy, unwell := 0, 0
	for _, x := range in {
		if x.stats.Requests > 0 || x.status.State != health.Healthy {
			busy++
			if x.status.State != health.Healthy {
				unwell++
			}
		}
	}
	share := 0.0
	if busy > 0 {
		share = float64(unwell) / float64(busy)
	}
	switch {
	case !t.widespread && share >= widespreadEnter && unwell >= 2:
		t.widespread = true
	case t.widespread && share < widespreadLeave:
		t.widespread = false
	}
	c := &xds.Control{Backends: map[string]xds.BackendControl{}}
	why := map[string][]healthview.Setting{}
	for _, x := range in {
		var bc xds.BackendControl
		var sets []healthview.Setting
		add := func(name, value, reason string) {
			sets = append(sets, healthview.Setting{Name: name, Value: value, Why: reason})
		}

		bc.Health = edsHealth(x.status.State)
		add("endpoint_health", bc.Health.String(), "backend is "+x.status.State.String())
		if len(x.out) > 0 {
			bc.EndpointsOut = map[string]bool{}
			for _, ep := range sortedKeys(x.out) {
				bc.EndpointsOut[ep] = true
				add("endpoint_health "+ep, corev3.HealthStatus_UNHEALTHY.String(), "out of service: "+x.out[ep])
			}
		}

		base := p.OutlierDetection.ConsecutiveErrors
		n := b.OutlierConsecutiveErrors.Clamp(base - x.status.Opens)
		bc.ConsecutiveErrors = uint32(n)
		if x.status.Opens > 0 {
			add("consecutive_errors", strconv.Itoa(n), fmt.Sprintf("opened %d time(s) in a row: %d − %d, clamped to [%d, %d]", x.status.Opens, base, x.status.Opens, b.OutlierConsecutiveErrors.Min, b.OutlierConsecutiveErrors.Max))
		} else {
			add("consecutive_errors", strconv.Itoa(n), "policy value: no recent opening")
		}

		if t.widespread {
			bc.RetryBudgetPercent = b.RetryBudgetPercent.Min
			bc.MinRetryConcurrency = uint32(b.MinRetryConcurrency.Min)
			add("retry_budget", fmt.Sprintf("%g%% (min %d)", bc.RetryBudgetPercent, bc.MinRetryConcurrency),
				fmt.Sprintf("errors widespread: %d of %d busy backends not HEALTHY; retries shrunk so they cannot become a storm", unwell, busy))
		} else {
			bc.RetryBudgetPercent = b.RetryBudgetPercent.Max
			bc.MinRetryConcurrency = uint32(b.MinRetryConcurrency.Max)
			add("retry_budget", fmt.Sprintf("%g%% (min %d)", bc.RetryBudgetPercent, bc.MinRetryConcurrency), "errors not widespread: the policy's budget")
		}

		conc := concurrency(x.stats)
		want := uint32(b.MaxRequests.Clamp(int(math.Ceil(conc * littleHeadroom))))
		if prev, ok := t.maxRequests[x.name]; ok && !moved(float64(prev), float64(want)) {
			want = prev
		}
		t.maxRequests[x.name] = want
		bc.MaxRequests, bc.MaxPending = want, want
		add("max_requests", strconv.Itoa(int(want)), fmt.Sprintf("measured concurrency %.1f (%.1f req/s × %v mean) × %d headroom, clamped to [%d, %d]",
			conc, rate(x.stats), x.stats.MeanLatency.Round(time.Millisecond), littleHeadroom, b.MaxRequests.Min, b.MaxRequests.Max))

		if w, reason := t.endpointWeights(x); w != nil {
			bc.EndpointWeights = w
			add("endpoint_weights", weightsText(w), reason)
		}

		c.Backends[x.name] = bc
		why[x.name] = sets
	}
	firstWhy := t.tuneFirstToken(p, in, c)
	t.tuneResponse(p, in, c)
	return c, why, firstWhy
}

// tuneResponse sets the hedged deadline of non-streaming attempts from
// the healthy backends' response p95: before any is measured, the lower
// bound (a black hole is then raced after it all the same).
func (t *tuner) tuneResponse(p *policy.Policy, in []backendInput, c *xds.Control) {
	if !p.Controller.Hedging || p.Retry.PerTryTimeout.D() > 0 {
		t.response = 0
		return
	}
	var worst time.Duration
	for _, x := range in {
		if x.status.State == health.Healthy && x.stats.LatencySamples >= minResponseSamples && !x.stats.Stale && x.stats.P95 > worst {
			worst = x.stats.P95
		}
	}
	bounds := p.Controller.Bounds.ResponseTimeout
	want := bounds.Clamp(worst * responseDeadlineFactor).Round(time.Second)
	if t.response != 0 && !moved(float64(t.response), float64(want)) {
		want = t.response
	}
	t.response = want
	c.ResponseTimeout = want
}

// responseWhy explains the response deadline pushed.
func responseWhy(p *policy.Policy, d time.Duration) string {
	switch {
	case p.Retry.PerTryTimeout.D() > 0:
		return fmt.Sprintf("retry.per_try_timeout %v: a hard per-attempt timeout, not hedged", p.Retry.PerTryTimeout.D())
	case !p.Controller.Hedging:
		return "none: controller.hedging is off"
	}
	b := p.Controller.Bounds.ResponseTimeout
	return fmt.Sprintf("%v: %d × the slowest healthy backend's response p95 (from %d responses), clamped to [%v, %v]; an attempt that outlives it is raced by another",
		d, responseDeadlineFactor, minResponseSamples, b.Min.D(), b.Max.D())
}

// tuneFirstToken sets the stream deadline from the healthy backends' TTFT.
func (t *tuner) tuneFirstToken(p *policy.Policy, in []backendInput, c *xds.Control) string {
	var worst time.Duration
	var from []string
	for _, x := range in {
		if x.status.State == health.Healthy && x.stats.TTFTSamples >= minTTFTSamples && !x.stats.Stale {
			if x.stats.TTFT > worst {
				worst = x.stats.TTFT
			}
			from = append(from, x.name)
		}
	}
	bounds := p.Controller.Bounds.FirstTokenTimeout
	if worst == 0 {
		t.firstToken = 0
		return fmt.Sprintf("policy value %v: no healthy backend with %d measured first tokens", p.Retry.FirstTokenTimeout.D(), minTTFTSamples)
	}
	want := bounds.Clamp(worst * ttftDeadlineFactor).Round(100 * time.Millisecond)
	want = min(want, p.Retry.FirstTokenTimeout.D())
	if t.firstToken != 0 && !moved(float64(t.firstToken), float64(want)) {
		want = t.firstToken
	}
	t.firstToken = want
	c.FirstTokenTimeout = want
	slices.Sort(from)
	return fmt.Sprintf("%d × TTFT p95 %v of the healthy backends (%v), clamped to [%v, %v]",
		ttftDeadlineFactor, worst.Round(time.Millisecond), from, bounds.Min.D(), bounds.Max.D())
}

// throttledNow updates and reports whether a backend counts as throttled.
func (t *tuner) throttledNow(name string, s signals.Stats, now time.Time) (bool, string) {
	share := 0.0
	if s.Requests > 0 {
		share = float64(s.TooManyRequests) / float64(s.Requests)
	}
	th := t.throttled[name]
	if th == nil {
		th = &throttle{}
		t.throttled[name] = th
	}
	if s.Stale || th.seen && s.TotalRequests == 0 && s.Requests == 0 {
		// No fresh read (the source failed, or the backend left the
		// scrape): what was known stands. Read as news, empty stats would
		// end the throttling and reset the recent counts.
		th.fresh = false
		return th.on, th.why
	}
	th.fresh = true
	// New 429s since the last evaluation; unknown at first sight or
	// when the totals restarted.
	known := th.seen && s.TotalRequests >= th.requests && s.TotalTooManyRequests >= th.tooMany
	var newReq, new429 uint64
	if known {
		newReq, new429 = s.TotalRequests-th.requests, s.TotalTooManyRequests-th.tooMany
	}
	th.seen, th.requests, th.tooMany = true, s.TotalRequests, s.TotalTooManyRequests
	if known {
		keep := math.Exp2(-now.Sub(th.at).Seconds() / recentHalfLife.Seconds())
		th.recentReq = th.recentReq*keep + float64(newReq)
		th.recent429 = th.recent429*keep + float64(new429)
	} else if s.Span > 0 {
		// Nothing recent to go on: the window stands in, at the weight
		// steady traffic at its rate would have in the recent counts.
		scale := recentHalfLife.Seconds() / math.Ln2 / s.Span.Seconds()
		th.recentReq, th.recent429 = float64(s.Requests)*scale, float64(s.TooManyRequests)*scale
	} else {
		th.recentReq, th.recent429 = 0, 0
	}
	th.at = now
	if new429 > 0 {
		th.clean = 0
	} else {
		th.clean += newReq
	}
	switch {
	case !th.on && s.Requests >= minThrottleRequests && share > throttleEnter && (!known || new429 > 0):
		th.on, th.clean = true, 0
	case th.on && (share < throttleLeave || th.clean >= cleanRunToLeave):
		th.on = false
	}
	th.why = ""
	if th.on {
		th.why = fmt.Sprintf("throttling: %d of %d requests answered 429 (%.0f%%) over %v, %.0f%% lately", s.TooManyRequests, s.Requests, 100*share, s.Span.Round(time.Second), 100*(1-th.load().taken))
	}
	return th.on, th.why
}

// load is a backend's recent traffic (taken 1 with none yet).
func (t *tuner) load(name string) load { return t.throttled[name].load() }

// forget drops what the tuner knows of a backend the policy no longer has.
func (t *tuner) forget(name string) {
	delete(t.throttled, name)
	delete(t.maxRequests, name)
	delete(t.weights, name)
}

func edsHealth(s health.State) corev3.HealthStatus {
	switch s {
	case health.Degraded, health.HalfOpen:
		// Envoy sends traffic to degraded hosts only when healthy ones
		// run short; a recovering backend gets its trial traffic from the
		// router's order, not from Envoy's load balancer.
		return corev3.HealthStatus_DEGRADED
	case health.Open:
		return corev3.HealthStatus_UNHEALTHY
	}
	return corev3.HealthStatus_HEALTHY
}

func rate(s signals.Stats) float64 {
	if s.Span <= 0 {
		return 0
	}
	return float64(s.Requests) / s.Span.Seconds()
}

// concurrency is Little's law: arrival rate × mean time in the system.
func concurrency(s signals.Stats) float64 {
	return rate(s) * s.MeanLatency.Seconds()
}

func moved(prev, next float64) bool {
	if prev == 0 {
		return next != 0
	}
	return math.Abs(next-prev)/prev > stickyChange
}

// endpointWeights weighs a backend's endpoints by their own error rate
// over the window: FullWeight × (1 − 2 × rate), at least 1, so an endpoint
// failing 10 % of its requests takes 80 % of a healthy one's share and
// one failing half or more a token share (outlier detection ejects it
// outright after consecutive failures). Latency is the load balancer's:
// least request sends fewer requests to an endpoint that holds more. Nil
// when every endpoint is at full weight (nothing to push) or the backend
// has a single endpoint.
func (t *tuner) endpointWeights(x backendInput) (map[string]uint32, string) {
	if x.endpoints < 2 || len(x.hosts) == 0 {
		delete(t.weights, x.name)
		return nil, ""
	}
	prev := t.weights[x.name]
	w := map[string]uint32{}
	reduced := false
	var parts []string
	for _, h := range sortedKeys(x.hosts) {
		hw := x.hosts[h]
		want := uint32(xds.FullWeight)
		if hw.Requests >= minHostRequests {
			want = uint32(max(1, math.Round(xds.FullWeight*(1-2*hw.ErrorRate()))))
		}
		if p, ok := prev[h]; ok && absDiff(p, want) < weightStep && want != xds.FullWeight {
			want = p
		}
		w[h] = want
		if want != xds.FullWeight {
			reduced = true
			parts = append(parts, fmt.Sprintf("%s %.1f%% errors of %d", h, 100*hw.ErrorRate(), hw.Requests))
		}
	}
	if !reduced {
		delete(t.weights, x.name)
		return nil, ""
	}
	t.weights[x.name] = w
	return w, fmt.Sprintf("%d × (1 − 2 × error rate) over the window: %s; least request weighs latency", xds.FullWeight, strings.Join(parts, ", "))
}

func weightsText(w map[string]uint32) string {
	var parts []string
	for _, h := range sortedKeys(w) {
		parts = append(parts, fmt.Sprintf("%s=%d", h, w[h]))
	}
	return strings.Join(parts, " ")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func absDiff(a, b uint32) uint32 {
	if a > b {
		return a - b
	}
	return b - a
}
