package policy

import (
	"fmt"
	"net/url"
	"time"
)

// Controller tunes detour's live-metrics controller, which runs in
// `detour xds`: it reads what Envoy measures, decides each backend's
// state (HEALTHY, DEGRADED, OPEN, HALF_OPEN) with the thresholds under
// health and circuit_breaker, and pushes the settings that follow.
type Controller struct {
	// Disabled turns the controller off: Envoy keeps the settings written
	// in this file and every backend counts as healthy. Default false.
	Disabled bool `yaml:"disabled,omitempty"`
	// Interval between two evaluations (read signals, decide, push).
	// Default 1s.
	Interval Duration `yaml:"interval,omitempty"`
	// SilenceCheck: between evaluations, endpoints are checked this often
	// for silence (attempts in flight, none answered: a lost region, a
	// black hole), one read of each Envoy's admin /clusters; a silent one
	// brings the next evaluation forward. Default 250ms; not shorter than
	// interval turns the check off.
	SilenceCheck Duration `yaml:"silence_check,omitempty"`
	// Source of the signals: "envoy" scrapes each Envoy's admin
	// /stats/prometheus; "prometheus" queries a Prometheus server that
	// scrapes them, so many Envoys and several xds replicas share one
	// view. Default envoy.
	Source string `yaml:"source,omitempty" jsonschema:"enum=envoy,enum=prometheus,default=envoy"`
	// Envoys are the admin addresses (host:port) scraped when source is
	// envoy. Default: envoy.admin.
	Envoys []string `yaml:"envoys,omitempty"`
	// Prometheus is the server queried when source is prometheus.
	Prometheus PrometheusSource `yaml:"prometheus,omitempty"`
	// StaleAfter: signals older than this are treated as bad news, never
	// as health. Default 10s.
	StaleAfter Duration `yaml:"stale_after,omitempty"`
	// Dwell is the least time a backend stays in a state before any change
	// other than opening its circuit (which is immediate) or closing it
	// from HALF_OPEN (after half_open_successes and 2s, or the dwell if
	// shorter). Default 10s.
	Dwell Duration `yaml:"dwell,omitempty"`
	// CoolDown is how long a backend stays OPEN before it is tried again
	// (HALF_OPEN); it doubles each time the backend fails again, up to
	// MaxCoolDown. Defaults 10s and 5m. An OPEN backend is also checked
	// every evaluation for reachability (GET /v1/models, no tokens): one
	// that answers again after an outage of at least CoolDown is tried at
	// once, the rest of its cool-down waived.
	CoolDown    Duration `yaml:"cool_down,omitempty"`
	MaxCoolDown Duration `yaml:"max_cool_down,omitempty"`
	// HalfOpenSuccesses closes the circuit again: trial requests or probes
	// that succeeded in HALF_OPEN, none failed. Default 5.
	HalfOpenSuccesses int `yaml:"half_open_successes,omitempty" jsonschema:"minimum=1"`
	// TrialShare is the share of a route's requests sent first to a
	// HALF_OPEN backend (a failed trial is retried on the next backend,
	// so clients do not see it). Default 0.05.
	TrialShare float64 `yaml:"trial_share,omitempty" jsonschema:"minimum=0,maximum=1"`
	// Hedging gives non-streaming requests a response deadline
	// (bounds.response_timeout, from the measured response time): an
	// attempt that outlives it is raced by another to the same backend's
	// endpoint in another region (a lost region, a black hole); the
	// first whole answer wins, so a long answer is never cut, but one
	// longer than the deadline may be generated more than once (up to
	// retry.attempts times). Default false: on Envoy 1.40 a route with a
	// hedge policy retries a reset on the same backend instead of the
	// next one, so a backend down in every region would fail requests it
	// otherwise loses none of. retry.per_try_timeout, when set, is a hard
	// timeout instead.
	Hedging bool `yaml:"hedging,omitempty"`
	// Bounds clamp every value the controller computes and pushes.
	Bounds ControllerBounds `yaml:"bounds,omitempty"`
}

// PrometheusSource is a Prometheus server's HTTP API.
type PrometheusSource struct {
	// URL of the server, e.g. http://127.0.0.1:9090.
	URL string `yaml:"url,omitempty"`
	// Selector narrows every query to the Envoys that matter, as PromQL
	// label matchers without braces, e.g. job="envoy". Default: none.
	Selector string `yaml:"selector,omitempty"`
	// Timeout of one query. Default 2s.
	Timeout Duration `yaml:"timeout,omitempty"`
}

// ControllerBounds are the ranges computed settings are clamped to.
type ControllerBounds struct {
	// OutlierConsecutiveErrors: the controller tightens outlier detection
	// for a backend that keeps failing. Default min 2, max
	// outlier_detection.consecutive_errors.
	OutlierConsecutiveErrors IntRange `yaml:"outlier_consecutive_errors,omitempty"`
	// RetryBudgetPercent: the retry budget shrinks when errors are
	// widespread, so retries never become a storm. Default min 20, max
	// retry.budget_percent.
	RetryBudgetPercent FloatRange `yaml:"retry_budget_percent,omitempty"`
	// MinRetryConcurrency shrinks with the budget. Default min 10, max
	// retry.min_retry_concurrency.
	MinRetryConcurrency IntRange `yaml:"min_retry_concurrency,omitempty"`
	// MaxRequests is each backend's concurrency limit (Envoy's circuit
	// breaker), from measured concurrency by Little's law with headroom.
	// Default min 1024 (Envoy's own default), max 100000.
	MaxRequests IntRange `yaml:"max_requests,omitempty"`
	// FirstTokenTimeout follows the measured time to first token. Default
	// min 1s, max retry.first_token_timeout.
	FirstTokenTimeout DurationRange `yaml:"first_token_timeout,omitempty"`
	// ResponseTimeout is the deadline after which a non-streaming attempt
	// is raced by another (hedged: the late one keeps running, the first
	// whole answer wins), from the measured response time. Default min
	// 10s, max envoy.request_timeout.
	ResponseTimeout DurationRange `yaml:"response_timeout,omitempty"`
}

// IntRange is an inclusive range; zero fields take their defaults.
type IntRange struct {
	Min int `yaml:"min,omitempty" jsonschema:"minimum=0"`
	Max int `yaml:"max,omitempty" jsonschema:"minimum=0"`
}

// FloatRange is an inclusive range; zero fields take their defaults.
type FloatRange struct {
	Min float64 `yaml:"min,omitempty" jsonschema:"minimum=0"`
	Max float64 `yaml:"max,omitempty" jsonschema:"minimum=0"`
}

// DurationRange is an inclusive range; zero fields take their defaults.
type DurationRange struct {
	Min Duration `yaml:"min,omitempty"`
	Max Duration `yaml:"max,omitempty"`
}

// EnvoyAdmins are the admin addresses the controller scrapes:
// controller.envoys, or else envoy.admin.
func (p *Policy) EnvoyAdmins() []string {
	if len(p.Controller.Envoys) > 0 {
		return p.Controller.Envoys
	}
	return []string{p.Envoy.Admin}
}

// Clamp bounds n to r.
func (r IntRange) Clamp(n int) int { return min(max(n, r.Min), r.Max) }

// Clamp bounds x to r.
func (r FloatRange) Clamp(x float64) float64 { return min(max(x, r.Min), r.Max) }

// Clamp bounds d to r.
func (r DurationRange) Clamp(d time.Duration) time.Duration {
	return min(max(d, r.Min.D()), r.Max.D())
}

// Signal sources.
const (
	SourceEnvoy      = "envoy"
	SourcePrometheus = "prometheus"
)

// Request priorities, highest first.
const (
	PriorityCritical  = "critical"
	PriorityStandard  = "standard"
	PrioritySheddable = "sheddable"
)

// Controller defaults.
const (
	DefaultControllerInterval = time.Second
	DefaultSilenceCheck       = 250 * time.Millisecond
	DefaultStaleAfter         = 10 * time.Second
	DefaultDwell              = 10 * time.Second
	DefaultCoolDown           = 10 * time.Second
	DefaultMaxCoolDown        = 5 * time.Minute
	DefaultHalfOpenSuccesses  = 5
	DefaultTrialShare         = 0.05
	DefaultPrometheusTimeout  = 2 * time.Second
)

func (p *Policy) applyControllerDefaults() {
	c := &p.Controller
	setDur(&c.Interval, DefaultControllerInterval)
	setDur(&c.SilenceCheck, DefaultSilenceCheck)
	setStr(&c.Source, SourceEnvoy)
	setDur(&c.Prometheus.Timeout, DefaultPrometheusTimeout)
	setDur(&c.StaleAfter, DefaultStaleAfter)
	setDur(&c.Dwell, DefaultDwell)
	setDur(&c.CoolDown, DefaultCoolDown)
	setDur(&c.MaxCoolDown, DefaultMaxCoolDown)
	setInt(&c.HalfOpenSuccesses, DefaultHalfOpenSuccesses)
	setFloat(&c.TrialShare, DefaultTrialShare)
	b := &c.Bounds
	// Derived from settings that may themselves be invalid (reported
	// there): kept in range so one mistake gives one problem.
	setInt(&b.OutlierConsecutiveErrors.Max, max(1, p.OutlierDetection.ConsecutiveErrors))
	setInt(&b.OutlierConsecutiveErrors.Min, min(2, b.OutlierConsecutiveErrors.Max))
	setFloat(&b.RetryBudgetPercent.Max, min(max(p.Retry.BudgetPercent, 1), 100))
	setFloat(&b.RetryBudgetPercent.Min, min(20, b.RetryBudgetPercent.Max))
	setInt(&b.MinRetryConcurrency.Max, max(0, p.Retry.MinRetryConcurrency))
	setInt(&b.MinRetryConcurrency.Min, min(10, b.MinRetryConcurrency.Max))
	setInt(&b.MaxRequests.Min, 1024)
	setInt(&b.MaxRequests.Max, 100000)
	setDur(&b.FirstTokenTimeout.Min, min(time.Second, p.Retry.FirstTokenTimeout.D()))
	setDur(&b.FirstTokenTimeout.Max, p.Retry.FirstTokenTimeout.D())
	setDur(&b.ResponseTimeout.Max, p.Envoy.RequestTimeout.D())
	setDur(&b.ResponseTimeout.Min, min(10*time.Second, b.ResponseTimeout.Max.D()))
	for i := range p.Routes {
		setStr(&p.Routes[i].Priority, PriorityStandard)
	}
}

func (p *Policy) validateController(v *validator) {
	c := &p.Controller
	if c.Interval.D() < 100*time.Millisecond || c.Interval.D() > time.Minute {
		v.add("controller.interval", fmt.Sprintf("%s is out of range", c.Interval.D()), "between 100ms and 1m; 1s moves traffic within about a second")
	}
	if c.SilenceCheck.D() < 50*time.Millisecond {
		v.add("controller.silence_check", fmt.Sprintf("%s is too short", c.SilenceCheck.D()), "at least 50ms; each check reads every Envoy's /clusters")
	}
	switch c.Source {
	case SourceEnvoy:
		for i, e := range c.Envoys {
			if msg := checkAddress(e); msg != "" {
				v.add(fmt.Sprintf("controller.envoys[%d]", i), msg, "an Envoy admin address, e.g. 127.0.0.1:9901")
			}
		}
	case SourcePrometheus:
		if u, err := url.Parse(c.Prometheus.URL); c.Prometheus.URL == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			v.add("controller.prometheus.url", fmt.Sprintf("%q is not an http(s) URL", c.Prometheus.URL), "e.g. http://127.0.0.1:9090")
		}
	default:
		v.add("controller.source", fmt.Sprintf("unknown source %q", c.Source), `"envoy" or "prometheus"`)
	}
	if c.StaleAfter.D() < 2*c.Interval.D() {
		v.add("controller.stale_after", fmt.Sprintf("%s is less than two intervals (%s)", c.StaleAfter.D(), 2*c.Interval.D()), "e.g. 10s")
	}
	if c.MaxCoolDown < c.CoolDown {
		v.add("controller.max_cool_down", fmt.Sprintf("%s is shorter than cool_down %s", c.MaxCoolDown.D(), c.CoolDown.D()), "")
	}
	if c.HalfOpenSuccesses < 1 {
		v.add("controller.half_open_successes", "must be at least 1", "")
	}
	if !(c.TrialShare > 0 && c.TrialShare <= 1) {
		v.add("controller.trial_share", fmt.Sprintf("%g is not a share in (0, 1]", c.TrialShare), "0.05 sends 5 % of a route's requests first to a recovering backend")
	}
	b := &c.Bounds
	if r := b.OutlierConsecutiveErrors; r.Min < 1 || r.Min > r.Max {
		v.add("controller.bounds.outlier_consecutive_errors", fmt.Sprintf("[%d, %d] is not a range of positive counts", r.Min, r.Max), "")
	}
	if r := b.RetryBudgetPercent; !(r.Min > 0 && r.Min <= r.Max && r.Max <= 100) {
		v.add("controller.bounds.retry_budget_percent", fmt.Sprintf("[%g, %g] is not a range of percentages in (0, 100]", r.Min, r.Max), "")
	}
	if r := b.MinRetryConcurrency; r.Min > r.Max {
		v.add("controller.bounds.min_retry_concurrency", fmt.Sprintf("min %d exceeds max %d", r.Min, r.Max), "")
	}
	if r := b.MaxRequests; r.Min < 1 || r.Min > r.Max {
		v.add("controller.bounds.max_requests", fmt.Sprintf("[%d, %d] is not a range of positive counts", r.Min, r.Max), "")
	}
	if r := b.FirstTokenTimeout; r.Min <= 0 || r.Min > r.Max {
		v.add("controller.bounds.first_token_timeout", fmt.Sprintf("[%s, %s] is not a range of positive durations", r.Min.D(), r.Max.D()), "the controller never pushes more than retry.first_token_timeout")
	}
	if r := b.ResponseTimeout; r.Min <= 0 || r.Min > r.Max {
		v.add("controller.bounds.response_timeout", fmt.Sprintf("[%s, %s] is not a range of positive durations", r.Min.D(), r.Max.D()), "")
	}
	if u := p.ExtProc.ControllerURL; u != "" {
		if pu, err := url.Parse(u); err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			v.add("extproc.controller_url", fmt.Sprintf("%q is not an http(s) URL", u), "e.g. http://127.0.0.1:9191/v1/status")
		}
	}
	for i, r := range p.Routes {
		switch r.Priority {
		case "", PriorityCritical, PriorityStandard, PrioritySheddable:
		default:
			v.add(fmt.Sprintf("routes[%d].priority", i), fmt.Sprintf("unknown priority %q", r.Priority), "critical, standard or sheddable")
		}
	}
}
