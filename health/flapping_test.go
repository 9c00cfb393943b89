package health

import (
	"slices"
	"testing"
	"time"
)

// sim plays a backend and the traffic detour would send it, once a second:
// 10 requests while HEALTHY or DEGRADED, 1 trial request while HALF_OPEN,
// none while OPEN. Each request fails while the backend is down, and takes
// latency ms. Observations are built over a 30 s window and a minute, as
// package signals builds them.
type sim struct {
	m      *Machine
	clk    *fakeClock
	secs   []second // one per simulated second, newest last
	total  second
	trans  []Transition
	states map[State]time.Duration
	// checks: while OPEN, each observation carries a reachability check
	// (unreachable while down), as the controller's are.
	checks bool
}

type second struct {
	req, err uint64
	slow     uint64 // requests slower than the p95 threshold
}

func newSim(t *testing.T, cfg Config) *sim {
	t.Helper()
	clk := &fakeClock{t: t0}
	m, err := New(cfg, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	return &sim{m: m, clk: clk, states: map[State]time.Duration{}}
}

// tick runs one second: traffic according to the current state, then one
// observation.
func (s *sim) tick(down bool, latency time.Duration) {
	state := Healthy
	if st, ok := s.m.Status("b"); ok {
		state = st.State
	}
	s.states[state] += time.Second
	var n uint64
	switch state {
	case Healthy, Degraded:
		n = 10
	case HalfOpen:
		n = 1
	}
	sec := second{req: n}
	if down {
		sec.err = n
	}
	if latency > 2*time.Second {
		sec.slow = n - sec.err
	}
	s.secs = append(s.secs, sec)
	s.total.req += sec.req
	s.total.err += sec.err
	s.clk.t = s.clk.t.Add(time.Second)

	o := Observation{Backend: "b", TotalRequests: s.total.req, TotalErrors: s.total.err}
	if s.checks && state == Open {
		o.Reach = Reachable
		if down {
			o.Reach = Unreachable
		}
	}
	var slow uint64
	for i, x := range slices.Backward(s.secs) {
		age := len(s.secs) - 1 - i
		if age < 30 {
			o.Requests += x.req
			o.Errors += x.err
			slow += x.slow
			o.Window = time.Duration(age+1) * time.Second
		}
		if age < 60 {
			o.Failures += x.err
		}
	}
	// Latency from the responses (errors answer fast): p95 is slow when
	// over 5 % of them are.
	ok := o.Requests - o.Errors
	o.LatencySamples = ok
	o.P95 = 300 * time.Millisecond
	if ok > 0 && float64(slow) > 0.05*float64(ok) {
		o.P95 = 3 * time.Second
	}
	if t, moved := s.m.Observe(o); moved {
		s.trans = append(s.trans, t)
	}
}

// maxOpens is the most OPEN entries possible in d: the k-th opening comes
// after at least the first k-1 cool-downs have run out.
func maxOpens(cfg Config, d time.Duration) int {
	n, spent := 1, time.Duration(0)
	for {
		spent += cfg.coolDown(n)
		if spent >= d {
			return n
		}
		n++
	}
}

// A backend that fails completely for 5 s, then works for 5 s, for five
// minutes.
//
// The bound: every OPEN lasts its cool-down, 10 s doubling to 20, 40, 80,
// 160 s, so the 6th opening could only come after 310 s: at most 5 in 300
// s. Between two openings the backend can make at most three other
// transitions (OPEN→HALF_OPEN, HALF_OPEN→HEALTHY, HEALTHY→DEGRADED), and as
// many after the last one, plus one before the first: at most 4 × 5 = 20
// transitions, each one config push. With a fixed 10 s cool-down the same
// backend would be allowed 4 × 30.
func TestFlappingErrorsAreBounded(t *testing.T) {
	const dur = 5 * time.Minute
	run := func(cfg Config, checks bool) *sim {
		s := newSim(t, cfg)
		s.checks = checks
		for i := range int(dur / time.Second) {
			s.tick(i/5%2 == 1, 300*time.Millisecond)
		}
		return s
	}
	cfg := DefaultConfig()
	bound := 4 * maxOpens(cfg, dur)
	if maxOpens(cfg, dur) != 5 || bound != 20 {
		t.Fatalf("bound %d from %d openings, want 20 from 5", bound, maxOpens(cfg, dur))
	}
	var s *sim
	// Reachability checks change nothing here: a 5 s outage is shorter
	// than the base cool-down, so none waives the rest of one.
	for _, checks := range []bool{false, true} {
		s = run(cfg, checks)
		opens := 0
		for _, tr := range s.trans {
			if tr.To == Open {
				opens++
			}
		}
		t.Logf("growing cool-down, reachability checks %v: %d transitions (%d openings; bound %d); time per state %v", checks, len(s.trans), opens, bound, s.states)
		for _, tr := range s.trans {
			t.Logf("  %6v %v", tr.At.Sub(t0), tr)
		}
		if opens > 5 || len(s.trans) > bound {
			t.Errorf("checks %v: %d transitions, %d openings: over the bound of %d", checks, len(s.trans), opens, bound)
		}
		if s.states[Open] < 4*time.Minute {
			t.Errorf("checks %v: OPEN for only %v of a flapping backend's 5 minutes", checks, s.states[Open])
		}
	}

	fixed := cfg
	fixed.MaxCoolDown = fixed.BaseCoolDown
	f := run(fixed, false)
	t.Logf("fixed 10s cool-down: %d transitions", len(f.trans))
	if len(f.trans) <= 2*len(s.trans) {
		t.Errorf("the growing cool-down should at least halve the transitions: %d vs %d fixed", len(s.trans), len(f.trans))
	}
}

// A backend down for two minutes comes back: with reachability checks
// it is HEALTHY again within seconds; without, it waits out a cool-down
// that doubled while the outage lasted.
func TestRecoveryAfterALongOutage(t *testing.T) {
	const outage = 2 * time.Minute
	recovery := func(checks bool) time.Duration {
		s := newSim(t, DefaultConfig())
		s.checks = checks
		for i := 0; i < 600; i++ {
			down := i >= 10 && time.Duration(i-10)*time.Second < outage
			s.tick(down, 300*time.Millisecond)
			if st, _ := s.m.Status("b"); !down && i > 10 && st.State == Healthy {
				return time.Duration(i-10)*time.Second - outage
			}
		}
		t.Fatalf("checks %v: not HEALTHY 8 minutes after a 2-minute outage", checks)
		return 0
	}
	with, without := recovery(true), recovery(false)
	t.Logf("HEALTHY again %v after the outage with reachability checks, %v without", with, without)
	if with > 10*time.Second {
		t.Errorf("with reachability checks: HEALTHY %v after the outage, want within 10s", with)
	}
	if without <= with {
		t.Errorf("without checks (%v) should take longer than with (%v)", without, with)
	}
}

// A backend whose responses are slow (3 s) for 5 s, then fast for 5 s, for
// five minutes. Over a 30 s window more than 5 % of the responses are
// always slow, so p95 stays over the threshold: one transition, to
// DEGRADED, and it stays there.
func TestFlappingLatencyIsBounded(t *testing.T) {
	s := newSim(t, DefaultConfig())
	for i := range 300 {
		lat := 300 * time.Millisecond
		if i/5%2 == 1 {
			lat = 3 * time.Second
		}
		s.tick(false, lat)
	}
	for _, tr := range s.trans {
		t.Logf("  %6v %v", tr.At.Sub(t0), tr)
	}
	if len(s.trans) != 1 || s.trans[0].To != Degraded {
		t.Errorf("%d transitions, want 1 to DEGRADED", len(s.trans))
	}
}

// A signal that flips every 5 s with no window to smooth it (say TTFT
// measured per second) moves the state at most once per MinDwell: at most
// 300 s / 10 s + 1 = 31 transitions in five minutes; hysteresis makes no
// difference here since the values are far from the thresholds.
func TestFlappingSignalIsBoundedByDwell(t *testing.T) {
	cfg := DefaultConfig()
	clk := &fakeClock{t: t0}
	m, err := New(cfg, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	for i := range 300 {
		clk.t = clk.t.Add(time.Second)
		o := obs(100, 0)
		o.TTFT = 200 * time.Millisecond
		if i/5%2 == 1 {
			o.TTFT = 800 * time.Millisecond
		}
		if _, ok := m.Observe(o); ok {
			n++
		}
	}
	bound := int(5*time.Minute/cfg.MinDwell) + 1
	t.Logf("%d transitions (bound %d)", n, bound)
	if n > bound || n == 0 {
		t.Errorf("%d transitions, bound %d", n, bound)
	}
}
