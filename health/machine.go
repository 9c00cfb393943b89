package health

import (
	"fmt"
	"strconv"
	"time"
)

// Machine holds the state of every backend. It is pure logic: no
// goroutines, no I/O, time from the injected clock. It is not safe for
// concurrent use.
type Machine struct {
	cfg      Config
	now      func() time.Time
	backends map[string]*backend
}

type backend struct {
	state   State
	since   time.Time
	reason  string
	initial bool // no transition yet: the first one waits for no dwell

	opens     int       // consecutive openings not yet forgiven
	openUntil time.Time // OPEN: when it goes HALF_OPEN
	recovered time.Time // last HALF_OPEN → HEALTHY; zero if never
	// unreachable: since when reachability checks have found it
	// unreachable, without one passing since; zero if not known so.
	unreachable time.Time

	seen             bool
	lastReq, lastErr uint64 // totals at the previous observation
	// Outcomes since entering HALF_OPEN, then since recovering.
	req, err uint64
	// Outcomes since entering DEGRADED. (Not seeded with the observation
	// that degraded it: at a fault's onset that one is mostly the good
	// requests before it.) A degraded backend is ranked after the healthy ones
	// and gets only a trickle of traffic, so its window fills slowly with
	// the new evidence: judged alone, the trickle can open it well within
	// the window.
	degReq, degErr uint64
}

// New returns a Machine with cfg, which it validates. clock nil means
// time.Now.
func New(cfg Config, clock func() time.Time) (*Machine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if clock == nil {
		clock = time.Now
	}
	return &Machine{cfg: cfg, now: clock, backends: make(map[string]*backend)}, nil
}

// Observe evaluates one backend and returns the transition it made, if
// any (at most one per observation). A backend observed for the first
// time starts HEALTHY.
func (m *Machine) Observe(o Observation) (Transition, bool) {
	return m.observe(m.now(), &o)
}

// ObserveAll evaluates a batch at one clock reading and appends the
// transitions to dst. With room in dst it does not allocate unless a
// backend is new or changes state.
func (m *Machine) ObserveAll(obs []Observation, dst []Transition) []Transition {
	now := m.now()
	for i := range obs {
		if t, ok := m.observe(now, &obs[i]); ok {
			dst = append(dst, t)
		}
	}
	return dst
}

// Status reports a backend's standing; false if it was never observed.
func (m *Machine) Status(backend string) (Status, bool) {
	b := m.backends[backend]
	if b == nil {
		return Status{}, false
	}
	s := Status{Backend: backend, State: b.state, Since: b.since, Reason: b.reason, Opens: b.opens}
	if b.state == Open {
		s.RetryAt = b.openUntil
	}
	return s, true
}

// Forget drops a backend removed from the policy.
func (m *Machine) Forget(backend string) { delete(m.backends, backend) }

func (m *Machine) observe(now time.Time, o *Observation) (Transition, bool) {
	b := m.backends[o.Backend]
	if b == nil {
		b = &backend{state: Healthy, since: now, initial: true, reason: "first observation"}
		m.backends[o.Backend] = b
	}
	dReq, dErr := b.outcomes(o)
	b.req += dReq
	b.err += dErr
	b.degReq += dReq
	b.degErr += dErr

	downFor := time.Duration(0) // how long it was unreachable, when a check just found it back
	switch o.Reach {
	case Unreachable:
		if b.unreachable.IsZero() {
			b.unreachable = now
		}
	case Reachable:
		if !b.unreachable.IsZero() {
			downFor = now.Sub(b.unreachable)
		}
		b.unreachable = time.Time{}
	}

	switch b.state {
	case Open:
		// Back from an outage at least a base cool-down long: the rest of
		// a cool-down doubled while it lasted is waived, so recovery is
		// not held up by what the outage's length alone made long.
		if downFor >= m.cfg.BaseCoolDown && now.Before(b.openUntil) && o.Unresponsive == "" {
			b.req, b.err = 0, 0
			return m.move(b, o.Backend, HalfOpen, now,
				fmt.Sprintf("reachable again after %v unreachable: the rest of the cool-down (%v) waived", round(downFor), round(b.openUntil.Sub(now))))
		}
		// A backend still answering nothing stays OPEN past its cool-down
		// rather than take trial traffic into a black hole.
		if !now.Before(b.openUntil) && o.Unresponsive == "" {
			b.req, b.err = 0, 0 // what happened while OPEN does not count
			return m.move(b, o.Backend, HalfOpen, now,
				fmt.Sprintf("cool-down %v elapsed (opening %d in a row)", m.cfg.coolDown(b.opens), b.opens))
		}
	case HalfOpen:
		if o.Unresponsive != "" {
			return m.open(b, o.Backend, now, o.Unresponsive+" in HALF_OPEN")
		}
		if b.err > 0 {
			return m.open(b, o.Backend, now, fmt.Sprintf("%d of %d trial requests failed in HALF_OPEN", b.err, b.req))
		}
		if ok := b.req - min(o.InFlight, b.req); ok >= m.cfg.HalfOpenSuccesses && !o.Stale && o.Hanging == "" && (b.initial || now.Sub(b.since) >= min(m.cfg.HalfOpenDwell, m.cfg.MinDwell)) {
			b.recovered = now
			b.req, b.err = 0, 0
			return m.move(b, o.Backend, Healthy, now, fmt.Sprintf("%d trial requests succeeded in HALF_OPEN", ok))
		}
	case Healthy, Degraded:
		if !b.recovered.IsZero() && b.opens > 0 && now.Sub(b.recovered) >= m.cfg.ForgiveAfter {
			b.opens = 0 // stayed out of OPEN long enough: cool-downs start over
		}
		if o.Stale {
			if b.state == Healthy && m.dwelt(b, now) {
				return m.move(b, o.Backend, Degraded, now, fmt.Sprintf("signals stale: %v old", round(o.Age)))
			}
			return Transition{}, false // no verdict on stale data
		}
		if o.Unresponsive != "" {
			return m.open(b, o.Backend, now, o.Unresponsive)
		}
		req, errs, fails, since := m.counts(b, o, now)
		if req >= m.cfg.MinRequests && ratio(errs, req) > m.cfg.OpenErrorRate {
			return m.open(b, o.Backend, now, fmt.Sprintf("error rate %s > %s %s (n=%d)",
				pct(ratio(errs, req)), pct(m.cfg.OpenErrorRate), scope(b, o, now, since), req))
		}
		if fails > m.cfg.FailuresPerMinute {
			return m.open(b, o.Backend, now, fmt.Sprintf("%d failures in the last minute > %d", fails, m.cfg.FailuresPerMinute))
		}
		if b.state == Degraded && b.degReq >= m.cfg.MinRequests && ratio(b.degErr, b.degReq) > m.cfg.OpenErrorRate {
			return m.open(b, o.Backend, now, fmt.Sprintf("error rate %s > %s since DEGRADED %v ago (n=%d)",
				pct(ratio(b.degErr, b.degReq)), pct(m.cfg.OpenErrorRate), round(now.Sub(b.since)), b.degReq))
		}
		if !m.dwelt(b, now) {
			return Transition{}, false
		}
		if b.state == Healthy {
			if check := m.degraded(o, req, errs, 1); check != fine {
				return m.move(b, o.Backend, Degraded, now, m.reason(check, o, req, errs, scope(b, o, now, since)))
			}
		} else if m.degraded(o, req, errs, m.cfg.RecoveryMargin) == fine {
			return m.move(b, o.Backend, Healthy, now, "every signal under its threshold × "+strconv.FormatFloat(m.cfg.RecoveryMargin, 'g', -1, 64))
		}
	}
	return Transition{}, false
}

// outcomes is the increase of the observation's totals since the previous
// one; nothing on the first.
func (b *backend) outcomes(o *Observation) (req, errs uint64) {
	if b.seen {
		if o.TotalRequests >= b.lastReq && o.TotalErrors >= b.lastErr {
			req, errs = o.TotalRequests-b.lastReq, o.TotalErrors-b.lastErr
		} else { // the count restarted
			req, errs = o.TotalRequests, o.TotalErrors
		}
	}
	b.seen, b.lastReq, b.lastErr = true, o.TotalRequests, o.TotalErrors
	return req, errs
}

// counts are the requests, errors and failures-per-minute to judge. The
// windows of a backend that recovered recently still hold the failures
// that opened it; until they have slid past the recovery, only the
// outcomes since then count (sinceRecovery).
func (m *Machine) counts(b *backend, o *Observation, now time.Time) (req, errs, fails uint64, sinceRecovery bool) {
	req, errs, fails = o.Requests, o.Errors, o.Failures
	if b.recovered.IsZero() {
		return
	}
	if b.recovered.After(now.Add(-o.Age - o.Window)) {
		req, errs, sinceRecovery = b.req, b.err, true
	}
	if b.recovered.After(now.Add(-o.Age-time.Minute)) && b.err < fails {
		fails = b.err
	}
	return
}

// scope says what the counts cover, for a reason.
func scope(b *backend, o *Observation, now time.Time, sinceRecovery bool) string {
	if sinceRecovery {
		return "since recovery " + round(now.Sub(b.recovered)).String() + " ago"
	}
	return "over " + round(o.Window).String()
}

// Degradation checks, in the order they are tried.
const (
	fine = iota
	slowP95
	slowTTFT
	slowRate
	slowTotal
	erring
)

// degraded returns the first check over its threshold × margin (under the
// threshold ÷ margin for the token rate), or fine. Signals not measured
// are not judged. It does not allocate; reason formats the verdict.
func (m *Machine) degraded(o *Observation, req, errs uint64, margin float64) int {
	c := &m.cfg
	over := func(v, limit time.Duration) bool { return limit > 0 && v > 0 && float64(v) > float64(limit)*margin }
	switch {
	case c.SlowP95 > 0 && o.LatencySamples >= c.MinLatencySamples && over(o.P95, c.SlowP95):
		return slowP95
	case over(o.TTFT, c.SlowTTFT):
		return slowTTFT
	case c.MinTokensPerSecond > 0 && o.TokensPerSecond > 0 && o.TokensPerSecond < c.MinTokensPerSecond/margin:
		return slowRate
	case over(o.TotalTime, c.SlowTotalTime):
		return slowTotal
	case c.DegradedErrorRate > 0 && req >= c.MinRequests && ratio(errs, req) > c.DegradedErrorRate*margin:
		return erring
	}
	return fine
}

// reason explains a degradation check that fired.
func (m *Machine) reason(check int, o *Observation, req, errs uint64, scope string) string {
	c := &m.cfg
	switch check {
	case slowP95:
		return fmt.Sprintf("p95 %v > %v %s (n=%d)", round(o.P95), round(c.SlowP95), scope, o.LatencySamples)
	case slowTTFT:
		return fmt.Sprintf("TTFT %v > %v", round(o.TTFT), round(c.SlowTTFT))
	case slowRate:
		return fmt.Sprintf("%.3g tokens/s < %.3g", o.TokensPerSecond, c.MinTokensPerSecond)
	case slowTotal:
		return fmt.Sprintf("total time %v > %v", round(o.TotalTime), round(c.SlowTotalTime))
	case erring:
		return fmt.Sprintf("error rate %s > %s %s (n=%d)", pct(ratio(errs, req)), pct(c.DegradedErrorRate), scope, req)
	}
	return ""
}

func (m *Machine) open(b *backend, name string, now time.Time, why string) (Transition, bool) {
	b.opens++
	cd := m.cfg.coolDown(b.opens)
	b.openUntil = now.Add(cd)
	b.req, b.err = 0, 0
	return m.move(b, name, Open, now, fmt.Sprintf("%s; cool-down %v", why, cd))
}

func (m *Machine) move(b *backend, name string, to State, now time.Time, why string) (Transition, bool) {
	t := Transition{Backend: name, From: b.state, To: to, Reason: why, At: now}
	if to == Degraded {
		b.degReq, b.degErr = 0, 0
	}
	if to == Healthy || to == Degraded {
		// It served: an outage seen before is over, whatever follows.
		b.unreachable = time.Time{}
	}
	b.state, b.since, b.reason, b.initial = to, now, why, false
	return t, true
}

func (m *Machine) dwelt(b *backend, now time.Time) bool {
	return b.initial || now.Sub(b.since) >= m.cfg.MinDwell
}

func ratio(a, b uint64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// pct formats a ratio as a percentage with three significant digits:
// 0.25 → "25%", 0.3125 → "31.2%", 0.001 → "0.1%".
func pct(r float64) string { return strconv.FormatFloat(r*100, 'g', 3, 64) + "%" }

func round(d time.Duration) time.Duration {
	if d >= 10*time.Second {
		return d.Round(time.Second)
	}
	return d.Round(time.Millisecond)
}
