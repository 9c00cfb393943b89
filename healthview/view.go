// Package healthview is the controller's published view of the backends:
// each backend's state and why, the settings pushed to Envoy, and which
// routes shed which priorities, and the rules every router applies to it
// (Rank, Ranks, Route.Refuses). The control plane serves it as JSON on
// /v1/status (package viewhttp); the ext_proc service, the wasm router and
// `detour status` read it. Standard library only, without net/http: the
// proxy-wasm plugin compiles it.
package healthview

import (
	"math"
	"time"
)

// States, as the health package names them.
const (
	Healthy  = "HEALTHY"
	Degraded = "DEGRADED"
	Open     = "OPEN"
	HalfOpen = "HALF_OPEN"
)

// Priorities, highest first; a route's Shed names the highest priority it
// refuses (and every lower one).
const (
	Critical  = "critical"
	Standard  = "standard"
	Sheddable = "sheddable"
)

// Snapshot is the whole view at one moment. Version grows with every
// change, so a reader can wait for the next one.
type Snapshot struct {
	Version uint64    `json:"version"`
	At      time.Time `json:"at"`
	// Source says where the signals came from and whether they are
	// current: "envoy", "prometheus" or "disabled".
	Source      string `json:"source"`
	SignalError string `json:"signal_error,omitempty"`
	// Backends by name.
	Backends map[string]Backend `json:"backends"`
	// Routes by target (an alias or a model id clients send).
	Routes map[string]Route `json:"routes"`
	// TrialShare is the share of requests sent first to a HALF_OPEN
	// backend.
	TrialShare float64 `json:"trial_share,omitempty"`
	// FirstTokenTimeout is the stream deadline currently pushed.
	FirstTokenTimeout Duration `json:"first_token_timeout,omitempty"`
	FirstTokenWhy     string   `json:"first_token_why,omitempty"`
	// ResponseTimeout is the hedged deadline of non-streaming attempts
	// currently pushed (0: none).
	ResponseTimeout Duration `json:"response_timeout,omitempty"`
	ResponseWhy     string   `json:"response_why,omitempty"`
}

// Backend is one backend's standing.
type Backend struct {
	State  string    `json:"state"`
	Since  time.Time `json:"since"`
	Reason string    `json:"reason"`
	// Throttled: the backend answers many requests with 429; it keeps its
	// state but ranks with the DEGRADED ones until it stops.
	Throttled    bool   `json:"throttled,omitempty"`
	ThrottledWhy string `json:"throttled_why,omitempty"`
	// RetryAt is when an OPEN backend goes HALF_OPEN.
	RetryAt *time.Time `json:"retry_at,omitempty"`
	// Opens counts openings in a row not yet forgiven (drives the
	// cool-down and the outlier tightening).
	Opens int `json:"opens"`
	// Signals are what the last decision was made on.
	Signals Signals `json:"signals"`
	// Settings are the values pushed to Envoy for this backend, each with
	// why.
	Settings []Setting `json:"settings,omitempty"`
	// Transitions are the latest changes of state, newest last.
	Transitions []Transition `json:"transitions,omitempty"`
	// Probes are the latest probe results, newest last.
	Probes []Probe `json:"probes,omitempty"`
	// EndpointsOut are the backend's endpoints taken out of service on
	// their own (pushed UNHEALTHY while its others serve).
	EndpointsOut []EndpointOut `json:"endpoints_out,omitempty"`
}

// EndpointOut is one endpoint out of service, why, and until when.
type EndpointOut struct {
	Endpoint string    `json:"endpoint"`
	Reason   string    `json:"reason"`
	Since    time.Time `json:"since"`
	Until    time.Time `json:"until"`
}

// Signals are a backend's windowed measurements.
type Signals struct {
	Stale           bool     `json:"stale"`
	Age             Duration `json:"age"`
	Window          Duration `json:"window"`
	Requests        uint64   `json:"requests"`
	Errors          uint64   `json:"errors"`
	ErrorRate       float64  `json:"error_rate"`
	TooManyRequests uint64   `json:"too_many_requests"`
	FailuresPerMin  uint64   `json:"failures_per_minute"`
	P95             Duration `json:"p95,omitempty"`
	TTFT            Duration `json:"ttft,omitempty"`
	TokensPerSecond float64  `json:"tokens_per_second,omitempty"`
	TotalTime       Duration `json:"total_time,omitempty"`
	Concurrency     float64  `json:"concurrency"`
	Retries         uint64   `json:"retries"`
	RetryOverflows  uint64   `json:"retry_overflows"`
	Ejected         uint64   `json:"ejected"`
}

// Setting is one pushed value and its explanation.
type Setting struct {
	Name  string `json:"name"`
	Value string `json:"value"`
	Why   string `json:"why"`
}

// Transition is one change of state.
type Transition struct {
	From   string    `json:"from"`
	To     string    `json:"to"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

// Probe is one probe's outcome.
type Probe struct {
	Name   string    `json:"name"`
	OK     bool      `json:"ok"`
	Reason string    `json:"reason,omitempty"`
	At     time.Time `json:"at"`
}

// Route is what a route (target) admits.
type Route struct {
	// Shed is the highest priority refused ("", sheddable or standard):
	// "standard" refuses standard and sheddable requests.
	Shed string `json:"shed,omitempty"`
	// Admit is the share of Shed's requests still admitted (0: none):
	// shedding under overload moves a fraction at a time.
	Admit  float64 `json:"admit,omitempty"`
	Reason string  `json:"reason,omitempty"`
	// RetryAfter is what refused clients are told to wait, in seconds.
	RetryAfter int `json:"retry_after,omitempty"`
	// HealthyShare is the route's healthy capacity share (HEALTHY 1,
	// DEGRADED ½, HALF_OPEN ¼, OPEN 0, a throttling backend's weight times
	// the share of its recent requests it takes; averaged over its
	// backends).
	HealthyShare float64 `json:"healthy_share"`
}

// Refuses reports whether a request of priority prio is shed; draw, in
// [0, 1), decides for the priority Admit applies to (see Draw). Unknown
// priorities count as standard.
func (r Route) Refuses(prio string, draw float64) bool {
	prio = known(prio)
	switch {
	case r.Shed == "" || prio == Critical:
		return false
	case prio == r.Shed:
		return draw >= r.Admit
	}
	// Sheddable under a standard shed: refused; standard under a
	// sheddable shed: admitted.
	return r.Shed == Standard
}

// AtEdge reports whether requests of priority prio are admitted in part
// (Admit): those need a draw, from a sequence of the route's own.
func (r Route) AtEdge(prio string) bool {
	return r.Admit > 0 && r.Shed != "" && known(prio) == r.Shed
}

// known maps unknown priorities to standard.
func known(prio string) string {
	if prio != Critical && prio != Sheddable {
		return Standard
	}
	return prio
}

// Draw is the n-th of a sequence spread evenly over [0, 1) (multiples of
// the golden ratio's fraction): a counter of a route's edge requests
// turned into Refuses's draws admits Admit of any run of them, not only
// on average.
func Draw(n uint64) float64 {
	const phi = 0.6180339887498949
	_, f := math.Modf(float64(n%(1<<32)) * phi)
	return f
}

// Rank orders states for routing: lower is preferred. HALF_OPEN ranks
// after DEGRADED (its trial traffic is chosen apart) and OPEN last: it is
// kept as the last resort, never dropped.
func Rank(state string) uint8 {
	switch state {
	case Degraded:
		return 1
	case HalfOpen:
		return 2
	case Open:
		return 3
	}
	return 0
}

// Duration is a time.Duration written as text ("1.5s") in JSON.
type Duration time.Duration

// MarshalText writes the duration as Go's String form.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText reads Go's duration syntax.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}
