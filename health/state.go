package health

import (
	"fmt"
	"time"
)

// State is a backend's health.
type State uint8

const (
	// Healthy backends take traffic as the routing policy says.
	Healthy State = iota
	// Degraded backends are slow or erring a little, or their signals are
	// stale: they take traffic only when healthy capacity runs short.
	Degraded
	// Open backends take no traffic; their fallbacks serve it.
	Open
	// HalfOpen backends take a trickle of traffic or probes that decide
	// between Healthy and Open.
	HalfOpen
)

var stateNames = [...]string{Healthy: "HEALTHY", Degraded: "DEGRADED", Open: "OPEN", HalfOpen: "HALF_OPEN"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", s)
}

// MarshalText writes the state's name, for JSON status output.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Observation is what is known of one backend at one evaluation. The
// window fields come from Envoy's stats (package signals), the performance
// fields from detour's own measurements; a zero performance field means
// "not measured" and is not judged.
type Observation struct {
	Backend string

	// Stale: the signals are older than their staleness bound (or there
	// are none yet). Age is how old they are, for the reason text.
	Stale bool
	Age   time.Duration

	// Window is the span the window counts cover (about 30 s).
	Window time.Duration
	// Requests and Errors over Window.
	Requests, Errors uint64
	// Failures over the last minute.
	Failures uint64
	// P95 upstream request time over Window, from LatencySamples responses.
	P95            time.Duration
	LatencySamples uint64

	// TTFT, TokensPerSecond and TotalTime are representative values over
	// the window (say the p95 of TTFT and total time and the median rate)
	// from detour's own observations. Zero: not measured.
	TTFT            time.Duration
	TokensPerSecond float64
	TotalTime       time.Duration

	// Unresponsive, when set, says why the backend as a whole is taking
	// requests and answering none (every endpoint silent): a black hole
	// or a stalled server produces no errors to count, so this opens the
	// circuit on its own, and keeps it OPEN past its cool-down.
	Unresponsive string
	// Hanging, when set, says which endpoint has attempts in flight none
	// of which finished for longer than normal, too few yet to call it
	// unresponsive: a stalled stream counts as a success when its headers
	// arrive, so until those attempts end, the successes counted may not
	// be the whole story, and HALF_OPEN does not close.
	Hanging string
	// InFlight is how many of the backend's attempts are in flight now
	// (Envoy's rq_active of its endpoints in service). A stream that
	// stalls after its headers counts as a success, so HALF_OPEN counts
	// as successes only the new outcomes beyond those still in flight.
	InFlight uint64

	// Reach is the verdict of a reachability check of the backend (does
	// any of its endpoints answer HTTP at all) that finished since the
	// previous observation, if any. An OPEN backend that turns reachable
	// after having been unreachable for at least BaseCoolDown is tried at
	// once (HALF_OPEN), the rest of its cool-down waived: the outage it
	// was waiting out has visibly ended.
	Reach Reach

	// TotalRequests and TotalErrors are monotonic counts of outcomes
	// (Envoy's, restart-corrected, plus probe results). The machine takes
	// their increase between two observations as the new outcomes, which
	// decide HALF_OPEN and judge a just-recovered backend on its traffic
	// since recovery only. A decrease is taken as a restart of the count.
	TotalRequests, TotalErrors uint64
}

// Reach is the outcome of a reachability check.
type Reach int8

const (
	ReachUnknown Reach = iota // no check finished since the last observation
	Unreachable               // no endpoint answered HTTP
	Reachable                 // an endpoint answered HTTP (any status)
)

// Transition is one change of state, for one structured log line and one
// metric increment.
type Transition struct {
	Backend  string
	From, To State
	// Reason is human-readable, such as
	// "error rate 31.2% > 25% over 30s (n=128)".
	Reason string
	At     time.Time
}

func (t Transition) String() string {
	return fmt.Sprintf("%s: %s → %s: %s", t.Backend, t.From, t.To, t.Reason)
}

// Status is a backend's current standing, for `detour status`.
type Status struct {
	Backend string
	State   State
	// Since is when it entered State; Reason is why.
	Since  time.Time
	Reason string
	// Opens counts consecutive openings not yet forgiven; it sets the
	// next cool-down.
	Opens int
	// RetryAt is when an OPEN backend goes HALF_OPEN; zero otherwise.
	RetryAt time.Time
}
