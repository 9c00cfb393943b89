package health

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Config holds every threshold of the state machine. Figures from the
// mission brief are marked; the others are detour's choices, explained in
// docs/decisions/0009-health-state-machine.md.
type Config struct {
	// HEALTHY → DEGRADED when any of these is broken. Zero disables a check.

	// SlowP95: upstream request time p95 above it degrades (brief: 2s).
	SlowP95 time.Duration
	// MinLatencySamples: a p95 from fewer responses is not judged, so one
	// slow request among three does not degrade a quiet backend. Default 10.
	MinLatencySamples uint64
	// SlowTTFT: time to first token above it degrades (brief: 500ms).
	SlowTTFT time.Duration
	// MinTokensPerSecond: a generation rate below it degrades (brief: 20).
	MinTokensPerSecond float64
	// SlowTotalTime: a completion time above it degrades (brief: 5s).
	SlowTotalTime time.Duration
	// DegradedErrorRate: an error rate above it, over at least MinRequests
	// requests, degrades (brief's health bar: 0.1 %).
	DegradedErrorRate float64
	// RecoveryMargin is the hysteresis: DEGRADED → HEALTHY only once every
	// signal is back under its threshold × RecoveryMargin (over it ÷ the
	// margin for tokens per second). In (0, 1]; default 0.8.
	RecoveryMargin float64

	// HEALTHY or DEGRADED → OPEN when either is broken. Both required.

	// OpenErrorRate: an error rate above it, over at least MinRequests
	// requests, opens the circuit (brief: 25 % in 30 s).
	OpenErrorRate float64
	// MinRequests in the window before an error rate is trusted. Default 20:
	// below that one error moves the rate by 5 points or more, and 6 errors
	// of 20 (30 %) is already a clear signal.
	MinRequests uint64
	// FailuresPerMinute: more failures than this in a minute open the
	// circuit whatever the rate, for a busy backend (brief: 50).
	FailuresPerMinute uint64

	// OPEN → HALF_OPEN → HEALTHY.

	// BaseCoolDown is how long a backend stays OPEN the first time; it
	// doubles with each re-opening, up to MaxCoolDown. Defaults 10s and 5m,
	// as Envoy's outlier ejection in detour's policy defaults.
	BaseCoolDown, MaxCoolDown time.Duration
	// ForgiveAfter: once a recovered backend has stayed out of OPEN this
	// long, its cool-down starts again from BaseCoolDown. Default 2m.
	ForgiveAfter time.Duration
	// HalfOpenSuccesses: successful requests or probes in HALF_OPEN, with
	// none failed, before it is HEALTHY again. Default 5.
	HalfOpenSuccesses uint64
	// HalfOpenDwell is the least time in HALF_OPEN before it is HEALTHY
	// again (in place of MinDwell, when shorter): the trial outcomes are
	// the evidence, and the cool-down that doubles with each re-opening
	// already bounds how often a flapping backend cycles. Default 2s.
	HalfOpenDwell time.Duration

	// MinDwell is the least time in a state before any transition other
	// than into OPEN (which is never delayed, and whose exit is governed by
	// the cool-down). Default 10s.
	MinDwell time.Duration
}

// DefaultConfig returns the thresholds of the mission brief and detour's
// defaults for the rest.
func DefaultConfig() Config {
	return Config{
		SlowP95:            2 * time.Second,
		MinLatencySamples:  10,
		SlowTTFT:           500 * time.Millisecond,
		MinTokensPerSecond: 20,
		SlowTotalTime:      5 * time.Second,
		DegradedErrorRate:  0.001,
		RecoveryMargin:     0.8,
		OpenErrorRate:      0.25,
		MinRequests:        20,
		FailuresPerMinute:  50,
		BaseCoolDown:       10 * time.Second,
		MaxCoolDown:        5 * time.Minute,
		ForgiveAfter:       2 * time.Minute,
		HalfOpenSuccesses:  5,
		HalfOpenDwell:      2 * time.Second,
		MinDwell:           10 * time.Second,
	}
}

// Validate reports every field out of range, one error each, naming the
// field and the range it needs.
func (c Config) Validate() error {
	var errs []error
	bad := func(field string, v any, want string) {
		errs = append(errs, fmt.Errorf("health: %s = %v: %s", field, v, want))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"SlowP95", c.SlowP95}, {"SlowTTFT", c.SlowTTFT}, {"SlowTotalTime", c.SlowTotalTime}, {"MinDwell", c.MinDwell}, {"HalfOpenDwell", c.HalfOpenDwell}} {
		if d.v < 0 {
			bad(d.name, d.v, "must not be negative (0 disables)")
		}
	}
	if c.SlowP95 > 0 && c.MinLatencySamples == 0 {
		bad("MinLatencySamples", c.MinLatencySamples, "must be at least 1 when SlowP95 is set")
	}
	if !(c.MinTokensPerSecond >= 0) || math.IsInf(c.MinTokensPerSecond, 0) {
		bad("MinTokensPerSecond", c.MinTokensPerSecond, "must be a finite number >= 0 (0 disables)")
	}
	if !(c.OpenErrorRate > 0 && c.OpenErrorRate <= 1) {
		bad("OpenErrorRate", c.OpenErrorRate, "must be in (0, 1]")
	}
	if !(c.DegradedErrorRate >= 0 && c.DegradedErrorRate < 1) {
		bad("DegradedErrorRate", c.DegradedErrorRate, "must be in [0, 1) (0 disables)")
	} else if c.DegradedErrorRate >= c.OpenErrorRate && c.OpenErrorRate > 0 {
		bad("DegradedErrorRate", c.DegradedErrorRate, fmt.Sprintf("must be below OpenErrorRate (%v)", c.OpenErrorRate))
	}
	if !(c.RecoveryMargin > 0 && c.RecoveryMargin <= 1) {
		bad("RecoveryMargin", c.RecoveryMargin, "must be in (0, 1]")
	}
	if c.MinRequests == 0 {
		bad("MinRequests", c.MinRequests, "must be at least 1")
	}
	if c.FailuresPerMinute == 0 {
		bad("FailuresPerMinute", c.FailuresPerMinute, "must be at least 1")
	}
	if c.BaseCoolDown <= 0 {
		bad("BaseCoolDown", c.BaseCoolDown, "must be > 0")
	}
	if c.MaxCoolDown < c.BaseCoolDown {
		bad("MaxCoolDown", c.MaxCoolDown, fmt.Sprintf("must be at least BaseCoolDown (%v)", c.BaseCoolDown))
	}
	if c.ForgiveAfter <= 0 {
		bad("ForgiveAfter", c.ForgiveAfter, "must be > 0")
	}
	if c.HalfOpenSuccesses == 0 {
		bad("HalfOpenSuccesses", c.HalfOpenSuccesses, "must be at least 1")
	}
	return errors.Join(errs...)
}

// coolDown is how long the n-th consecutive opening (n >= 1) lasts.
func (c *Config) coolDown(n int) time.Duration {
	d := c.BaseCoolDown
	for i := 1; i < n && d < c.MaxCoolDown; i++ {
		d *= 2
	}
	return min(d, c.MaxCoolDown)
}
