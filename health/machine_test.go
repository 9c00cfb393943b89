package health

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// obs is a fresh observation over a 30 s window.
func obs(requests, errors uint64) Observation {
	return Observation{Backend: "b", Window: 30 * time.Second, Requests: requests, Errors: errors}
}

// with sets the monotonic totals.
func (o Observation) with(totalReq, totalErr uint64) Observation {
	o.TotalRequests, o.TotalErrors = totalReq, totalErr
	return o
}

// reach sets the verdict of a reachability check.
func reach(o Observation, r Reach) Observation {
	o.Reach = r
	return o
}

// unresponsive marks every endpoint silent.
func unresponsive(o Observation) Observation {
	o.Unresponsive = "no answer"
	return o
}

type step struct {
	after  time.Duration // advance the clock by this first
	obs    Observation
	want   string // "" for no transition, else "FROM→TO"
	reason string // a part of the reason, when want is set
}

// run feeds the steps to a fresh Machine and checks each outcome.
func run(t *testing.T, cfg Config, steps []step) *Machine {
	t.Helper()
	clk := &fakeClock{t: t0}
	m, err := New(cfg, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range steps {
		clk.t = clk.t.Add(s.after)
		if s.obs.Backend == "" {
			s.obs.Backend = "b"
		}
		tr, ok := m.Observe(s.obs)
		got := ""
		if ok {
			got = tr.From.String() + "→" + tr.To.String()
			if !tr.At.Equal(clk.t) || tr.Backend != s.obs.Backend {
				t.Errorf("step %d: transition %+v at %v", i, tr, clk.t)
			}
		}
		if got != s.want {
			t.Fatalf("step %d (t=%v): got %q (%s), want %q", i, clk.t.Sub(t0), got, tr.Reason, s.want)
		}
		if ok && !strings.Contains(tr.Reason, s.reason) {
			t.Errorf("step %d: reason %q does not contain %q", i, tr.Reason, s.reason)
		}
	}
	return m
}

func slow(p95 time.Duration, n uint64) Observation {
	o := obs(100, 0)
	o.P95, o.LatencySamples = p95, n
	return o
}

func stale(o Observation, age time.Duration) Observation {
	o.Stale, o.Age = true, age
	return o
}

// openBackend is the steps that open b at t0 (first cool-down 10 s).
func openBackend() []step {
	return []step{{obs: obs(100, 60).with(100, 60), want: "HEALTHY→OPEN"}}
}

func TestTransitions(t *testing.T) {
	def := DefaultConfig()
	ttft := obs(100, 0)
	ttft.TTFT = 800 * time.Millisecond
	tps := obs(100, 0)
	tps.TokensPerSecond = 12
	total := obs(100, 0)
	total.TotalTime = 6200 * time.Millisecond
	fastTTFT := obs(100, 0)
	fastTTFT.TTFT = 350 * time.Millisecond

	tests := []struct {
		name  string
		cfg   func(*Config)
		steps []step
	}{
		{name: "healthy stays healthy", steps: []step{{obs: obs(500, 0)}, {after: time.Minute, obs: obs(500, 0)}}},
		{name: "error rate opens", steps: []step{
			{obs: obs(120, 38), want: "HEALTHY→OPEN", reason: "error rate 31.7% > 25% over 30s (n=120); cool-down 10s"},
		}},
		{name: "error rate at the threshold does not open", steps: []step{{obs: obs(100, 25), want: "HEALTHY→DEGRADED", reason: "error rate 25% > 0.1%"}}},
		{name: "too few requests are not judged", steps: []step{{obs: obs(19, 19)}}},
		{name: "failures per minute open a busy backend", steps: []step{
			{obs: func() Observation { o := obs(2000, 60); o.Failures = 51; return o }(), want: "HEALTHY→OPEN", reason: "51 failures in the last minute > 50"},
		}},
		{name: "an unresponsive backend opens without any error", steps: []step{
			{obs: func() Observation { o := obs(100, 0); o.Unresponsive = "no answer for 3s"; return o }(), want: "HEALTHY→OPEN", reason: "no answer for 3s; cool-down 10s"},
		}},
		{name: "an unresponsive backend stays OPEN past its cool-down", steps: append(openBackend(),
			step{after: 10 * time.Second, obs: func() Observation { o := obs(100, 60); o.Unresponsive = "unreachable"; return o }()},
			step{after: 5 * time.Second, obs: obs(100, 60), want: "OPEN→HALF_OPEN"},
		)},
		{name: "an unresponsive backend in HALF_OPEN opens again", steps: append(openBackend(),
			step{after: 10 * time.Second, obs: obs(100, 60).with(100, 60), want: "OPEN→HALF_OPEN"},
			step{after: time.Second, obs: func() Observation { o := obs(100, 60).with(102, 60); o.Unresponsive = "no answer"; return o }(), want: "HALF_OPEN→OPEN", reason: "no answer in HALF_OPEN"},
		)},
		{name: "slow p95 degrades", steps: []step{{obs: slow(2500*time.Millisecond, 50), want: "HEALTHY→DEGRADED", reason: "p95 2.5s > 2s over 30s (n=50)"}}},
		{name: "slow p95 from too few samples is not judged", steps: []step{{obs: slow(9*time.Second, 9)}}},
		{name: "slow TTFT degrades", steps: []step{{obs: ttft, want: "HEALTHY→DEGRADED", reason: "TTFT 800ms > 500ms"}}},
		{name: "slow generation degrades", steps: []step{{obs: tps, want: "HEALTHY→DEGRADED", reason: "12 tokens/s < 20"}}},
		{name: "slow completion degrades", steps: []step{{obs: total, want: "HEALTHY→DEGRADED", reason: "total time 6.2s > 5s"}}},
		{name: "a few errors degrade", steps: []step{{obs: obs(400, 2), want: "HEALTHY→DEGRADED", reason: "error rate 0.5% > 0.1% over 30s (n=400)"}}},
		{name: "a disabled check is not judged", cfg: func(c *Config) { c.SlowTTFT = 0; c.DegradedErrorRate = 0 }, steps: []step{{obs: ttft}, {obs: obs(400, 2)}}},
		{name: "degraded judged on its trickle alone", steps: []step{
			// A few errors among much good traffic degrade; the window
			// stays mostly good, but the trickle a degraded backend gets
			// fails 30 %: opened once it has MinRequests outcomes.
			{obs: obs(400, 2).with(400, 2), want: "HEALTHY→DEGRADED"},
			{after: time.Second, obs: obs(410, 5).with(410, 5)},
			{after: time.Second, obs: obs(420, 8).with(420, 8), want: "DEGRADED→OPEN", reason: "error rate 30% > 25% since DEGRADED 2s ago (n=20)"},
		}},
		{name: "a degraded backend's good trickle does not open it", steps: []step{
			{obs: obs(400, 2).with(400, 2), want: "HEALTHY→DEGRADED"},
			{after: time.Second, obs: obs(430, 3).with(430, 3)},
		}},
		{name: "degraded opens at once", steps: []step{
			{obs: slow(3*time.Second, 50), want: "HEALTHY→DEGRADED"},
			{after: time.Second, obs: obs(100, 50), want: "DEGRADED→OPEN"},
		}},
		{name: "hysteresis: under the threshold but not under threshold × margin stays degraded", steps: []step{
			{obs: slow(3*time.Second, 50), want: "HEALTHY→DEGRADED"},
			{after: time.Minute, obs: slow(1900*time.Millisecond, 50)},
			{after: time.Minute, obs: slow(1500*time.Millisecond, 50), want: "DEGRADED→HEALTHY", reason: "under its threshold × 0.8"},
		}},
		{name: "hysteresis on the token rate", steps: []step{
			{obs: tps, want: "HEALTHY→DEGRADED"},
			{after: time.Minute, obs: func() Observation { o := obs(100, 0); o.TokensPerSecond = 22; return o }()},
			{after: time.Minute, obs: func() Observation { o := obs(100, 0); o.TokensPerSecond = 26; return o }(), want: "DEGRADED→HEALTHY"},
		}},
		{name: "dwell delays recovery", steps: []step{
			{obs: ttft, want: "HEALTHY→DEGRADED"},
			{after: 9 * time.Second, obs: fastTTFT},
			{after: time.Second, obs: fastTTFT, want: "DEGRADED→HEALTHY"},
		}},
		{name: "dwell delays degrading after a transition, not opening", steps: []step{
			{obs: ttft, want: "HEALTHY→DEGRADED"},
			{after: 10 * time.Second, obs: fastTTFT, want: "DEGRADED→HEALTHY"},
			{after: 5 * time.Second, obs: ttft},
			{after: 5 * time.Second, obs: ttft, want: "HEALTHY→DEGRADED"},
			{after: 10 * time.Second, obs: fastTTFT, want: "DEGRADED→HEALTHY"},
			{after: time.Second, obs: obs(100, 90), want: "HEALTHY→OPEN"},
		}},
		{name: "no traffic is no evidence of slowness", steps: []step{
			{obs: ttft, want: "HEALTHY→DEGRADED"},
			{after: 10 * time.Second, obs: obs(0, 0), want: "DEGRADED→HEALTHY"},
		}},
		{name: "open waits out its cool-down", steps: append(openBackend(),
			step{after: 9 * time.Second, obs: obs(0, 0).with(100, 60)},
			step{after: time.Second, obs: obs(0, 0).with(100, 60), want: "OPEN→HALF_OPEN", reason: "cool-down 10s elapsed (opening 1 in a row)"},
		)},
		{name: "half-open fails: open again for twice as long", steps: append(openBackend(),
			step{after: 10 * time.Second, obs: obs(0, 0).with(100, 60), want: "OPEN→HALF_OPEN"},
			step{after: time.Second, obs: obs(2, 1).with(102, 61), want: "HALF_OPEN→OPEN", reason: "1 of 2 trial requests failed in HALF_OPEN; cool-down 20s"},
			step{after: 19 * time.Second, obs: obs(2, 1).with(102, 61)},
			step{after: time.Second, obs: obs(2, 1).with(102, 61), want: "OPEN→HALF_OPEN", reason: "cool-down 20s elapsed (opening 2 in a row)"},
		)},
		{name: "half-open succeeds after enough trial requests and its dwell", steps: append(openBackend(),
			step{after: 10 * time.Second, obs: obs(0, 0).with(130, 60), want: "OPEN→HALF_OPEN"}, // the 30 while OPEN do not count
			step{after: time.Second, obs: obs(4, 0).with(134, 60)},
			step{after: 500 * time.Millisecond, obs: obs(9, 0).with(139, 60)}, // enough successes, 1.5s in HALF_OPEN
			step{after: 500 * time.Millisecond, obs: obs(9, 0).with(139, 60), want: "HALF_OPEN→HEALTHY", reason: "9 trial requests succeeded"},
		)},
		{name: "half-open does not close while attempts hang", steps: append(openBackend(),
			step{after: 10 * time.Second, obs: obs(0, 0).with(100, 60), want: "OPEN→HALF_OPEN"},
			step{after: 3 * time.Second, obs: func() Observation { o := obs(5, 0).with(105, 60); o.Hanging = "3 in flight"; return o }()},
			step{after: time.Second, obs: obs(5, 0).with(105, 60), want: "HALF_OPEN→HEALTHY"},
		)},
		{name: "half-open counts as successes only what is not still in flight", steps: append(openBackend(),
			step{after: 10 * time.Second, obs: obs(0, 0).with(100, 60), want: "OPEN→HALF_OPEN"},
			step{after: 3 * time.Second, obs: func() Observation { o := obs(8, 0).with(108, 60); o.InFlight = 4; return o }()},
			step{after: time.Second, obs: func() Observation { o := obs(8, 0).with(108, 60); o.InFlight = 3; return o }(), want: "HALF_OPEN→HEALTHY", reason: "5 trial requests succeeded"},
		)},
		{name: "half-open dwells no longer than the dwell", cfg: func(c *Config) { c.MinDwell = time.Second }, steps: append(openBackend(),
			step{after: 10 * time.Second, obs: obs(0, 0).with(100, 60), want: "OPEN→HALF_OPEN"},
			step{after: time.Second, obs: obs(5, 0).with(105, 60), want: "HALF_OPEN→HEALTHY"},
		)},
		{name: "reachable again after a long outage: the rest of the doubled cool-down is waived", steps: append(openBackend(),
			step{after: time.Second, obs: reach(obs(0, 0).with(100, 60), Unreachable)},
			step{after: 9 * time.Second, obs: obs(0, 0).with(100, 60), want: "OPEN→HALF_OPEN"},
			step{after: time.Second, obs: obs(1, 1).with(101, 61), want: "HALF_OPEN→OPEN", reason: "cool-down 20s"},
			step{after: time.Second, obs: reach(obs(1, 1).with(101, 61), Unreachable)},
			step{after: 2 * time.Second, obs: reach(obs(1, 1).with(101, 61), Reachable), want: "OPEN→HALF_OPEN",
				reason: "reachable again after 13s unreachable: the rest of the cool-down (17s) waived"},
			step{after: 2 * time.Second, obs: obs(5, 0).with(106, 61), want: "HALF_OPEN→HEALTHY"},
		)},
		{name: "reachable again after a short outage: the cool-down runs its course", steps: append(openBackend(),
			step{after: time.Second, obs: reach(obs(0, 0).with(100, 60), Unreachable)},
			step{after: 3 * time.Second, obs: reach(obs(0, 0).with(100, 60), Reachable)},
			step{after: 5 * time.Second, obs: reach(obs(0, 0).with(100, 60), Unreachable)},
			step{after: 500 * time.Millisecond, obs: reach(obs(0, 0).with(100, 60), Reachable)}, // the outage started again
			step{after: 500 * time.Millisecond, obs: obs(0, 0).with(100, 60), want: "OPEN→HALF_OPEN", reason: "cool-down 10s elapsed"},
		)},
		{name: "reachable but answering nothing: no waiver", steps: append(openBackend(),
			step{after: time.Second, obs: reach(obs(0, 0).with(100, 60), Unreachable)},
			step{after: 11 * time.Second, obs: reach(unresponsive(obs(0, 0).with(100, 60)), Reachable)},
			step{after: time.Second, obs: obs(0, 0).with(100, 60), want: "OPEN→HALF_OPEN", reason: "cool-down 10s elapsed"},
		)},
		{name: "a recovered backend is judged on its traffic since recovery", steps: append(openBackend(),
			step{after: 10 * time.Second, obs: obs(0, 0).with(100, 60), want: "OPEN→HALF_OPEN"},
			step{after: 10 * time.Second, obs: obs(5, 0).with(105, 60), want: "HALF_OPEN→HEALTHY"},
			// The window still holds the failures that opened it.
			step{after: time.Second, obs: obs(65, 60).with(125, 60)},
			step{after: 9 * time.Second, obs: obs(200, 60).with(300, 60)},
			// Then it fails again, and only that counts.
			step{after: time.Second, obs: obs(300, 160).with(420, 160), want: "HEALTHY→OPEN", reason: "error rate 31.7% > 25% since recovery 11s ago (n=315)"},
		)},
		{name: "a restarted total is new outcomes, not a negative delta", steps: append(openBackend(),
			step{after: 10 * time.Second, obs: obs(0, 0).with(100, 60), want: "OPEN→HALF_OPEN"},
			step{after: 10 * time.Second, obs: obs(5, 0).with(6, 0), want: "HALF_OPEN→HEALTHY", reason: "6 trial requests"},
		)},
		{name: "cool-down grows, and is forgiven after a healthy stretch", steps: append(openBackend(),
			step{after: 10 * time.Second, obs: obs(0, 0).with(100, 60), want: "OPEN→HALF_OPEN"},
			step{after: time.Second, obs: obs(1, 1).with(101, 61), want: "HALF_OPEN→OPEN", reason: "cool-down 20s"},
			step{after: 20 * time.Second, obs: obs(0, 0).with(101, 61), want: "OPEN→HALF_OPEN"},
			step{after: 10 * time.Second, obs: obs(5, 0).with(106, 61), want: "HALF_OPEN→HEALTHY"},
			step{after: 2 * time.Minute, obs: obs(500, 0).with(606, 61)},
			step{after: time.Second, obs: obs(500, 200).with(806, 261), want: "HEALTHY→OPEN", reason: "cool-down 10s"},
		)},
		{name: "without the healthy stretch the cool-down keeps growing", steps: append(openBackend(),
			step{after: 10 * time.Second, obs: obs(0, 0).with(100, 60), want: "OPEN→HALF_OPEN"},
			step{after: 10 * time.Second, obs: obs(5, 0).with(105, 60), want: "HALF_OPEN→HEALTHY"},
			step{after: time.Minute, obs: obs(500, 200).with(605, 260), want: "HEALTHY→OPEN", reason: "cool-down 20s"},
		)},
		{name: "stale signals degrade a healthy backend", steps: []step{
			{obs: obs(500, 0)},
			{after: 20 * time.Second, obs: stale(obs(500, 0), 20*time.Second), want: "HEALTHY→DEGRADED", reason: "signals stale: 20s old"},
		}},
		{name: "stale signals neither recover nor open", steps: []step{
			{obs: stale(obs(500, 0), 15*time.Second), want: "HEALTHY→DEGRADED"},
			{after: time.Minute, obs: stale(obs(500, 0), 75*time.Second)},
			{after: time.Minute, obs: stale(obs(500, 400), 135*time.Second)},
			{after: time.Second, obs: obs(500, 0), want: "DEGRADED→HEALTHY"},
		}},
		{name: "stale signals keep a half-open backend half-open", steps: append(openBackend(),
			step{after: 10 * time.Second, obs: obs(0, 0).with(100, 60), want: "OPEN→HALF_OPEN"},
			step{after: 10 * time.Second, obs: stale(obs(5, 0).with(105, 60), 11*time.Second)},
			step{after: time.Second, obs: obs(5, 0).with(105, 60), want: "HALF_OPEN→HEALTHY"},
		)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := def
			if tt.cfg != nil {
				tt.cfg(&cfg)
			}
			run(t, cfg, tt.steps)
		})
	}
}

func TestStatusAndForget(t *testing.T) {
	m := run(t, DefaultConfig(), openBackend())
	st, ok := m.Status("b")
	if !ok || st.State != Open || !st.Since.Equal(t0) || st.Opens != 1 || !st.RetryAt.Equal(t0.Add(10*time.Second)) ||
		!strings.Contains(st.Reason, "error rate 60%") {
		t.Errorf("Status = %+v", st)
	}
	if _, ok := m.Status("other"); ok {
		t.Error("Status of an unknown backend: ok")
	}
	m.Forget("b")
	if _, ok := m.Status("b"); ok {
		t.Error("Status after Forget: ok")
	}
}

func TestObserveAll(t *testing.T) {
	clk := &fakeClock{t: t0}
	m, err := New(DefaultConfig(), clk.now)
	if err != nil {
		t.Fatal(err)
	}
	batch := []Observation{obs(100, 0), obs(100, 90), obs(100, 0)}
	batch[0].Backend, batch[1].Backend, batch[2].Backend = "a", "b", "c"
	got := m.ObserveAll(batch, nil)
	if len(got) != 1 || got[0].Backend != "b" || got[0].To != Open || !got[0].At.Equal(t0) {
		t.Fatalf("ObserveAll = %v", got)
	}
	if s := got[0].String(); s != "b: HEALTHY → OPEN: error rate 90% > 25% over 30s (n=100); cool-down 10s" {
		t.Errorf("String = %q", s)
	}
}

func TestStateText(t *testing.T) {
	b, err := json.Marshal(map[string]State{"a": Healthy, "b": Degraded, "c": Open, "d": HalfOpen})
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"a":"HEALTHY","b":"DEGRADED","c":"OPEN","d":"HALF_OPEN"}` {
		t.Errorf("json = %s", b)
	}
	if s := State(9).String(); s != "State(9)" {
		t.Errorf("State(9) = %q", s)
	}
}

func TestCoolDown(t *testing.T) {
	c := DefaultConfig()
	want := []time.Duration{10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, 5 * time.Minute, 5 * time.Minute}
	for i, w := range want {
		if got := c.coolDown(i + 1); got != w {
			t.Errorf("coolDown(%d) = %v, want %v", i+1, got, w)
		}
	}
	if got := c.coolDown(1000); got != 5*time.Minute {
		t.Errorf("coolDown(1000) = %v", got)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("DefaultConfig: %v", err)
	}
	tests := []struct {
		name   string
		mutate func(*Config)
		want   []string
	}{
		{"zero config", func(c *Config) { *c = Config{} }, []string{"OpenErrorRate = 0", "RecoveryMargin", "MinRequests", "FailuresPerMinute", "BaseCoolDown", "ForgiveAfter", "HalfOpenSuccesses"}},
		{"negative durations", func(c *Config) { c.SlowP95, c.SlowTTFT, c.SlowTotalTime, c.MinDwell = -1, -1, -1, -1 }, []string{"SlowP95 = -1ns", "SlowTTFT", "SlowTotalTime", "MinDwell"}},
		{"rates out of range", func(c *Config) { c.OpenErrorRate, c.DegradedErrorRate, c.RecoveryMargin = 1.5, -0.1, 1.2 }, []string{"OpenErrorRate = 1.5: must be in (0, 1]", "DegradedErrorRate = -0.1", "RecoveryMargin = 1.2"}},
		{"degraded rate above the open rate", func(c *Config) { c.DegradedErrorRate = 0.3 }, []string{"DegradedErrorRate = 0.3: must be below OpenErrorRate (0.25)"}},
		{"cool-down cap below its base", func(c *Config) { c.MaxCoolDown = time.Second }, []string{"MaxCoolDown = 1s: must be at least BaseCoolDown (10s)"}},
		{"token rate NaN", func(c *Config) { c.MinTokensPerSecond = nan() }, []string{"MinTokensPerSecond = NaN"}},
		{"p95 without samples", func(c *Config) { c.MinLatencySamples = 0 }, []string{"MinLatencySamples = 0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.mutate(&c)
			err := c.Validate()
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if _, err := New(c, nil); err == nil {
				t.Error("New accepted the config")
			}
		})
	}
}

func nan() float64 { z := 0.0; return z / z }

func BenchmarkObserveAll1000(b *testing.B) {
	clk := &fakeClock{t: t0}
	m, err := New(DefaultConfig(), clk.now)
	if err != nil {
		b.Fatal(err)
	}
	batch := make([]Observation, 1000)
	for i := range batch {
		o := obs(600, 0)
		o.Backend = "backend-" + strconv.Itoa(i)
		o.P95, o.LatencySamples, o.TTFT, o.TokensPerSecond, o.TotalTime = 900*time.Millisecond, 600, 300*time.Millisecond, 45, 2*time.Second
		batch[i] = o
	}
	dst := make([]Transition, 0, len(batch))
	dst = m.ObserveAll(batch, dst[:0]) // first sight: allocates the backends
	b.ReportAllocs()
	for b.Loop() {
		clk.t = clk.t.Add(time.Second)
		for i := range batch {
			batch[i].TotalRequests += 20
		}
		dst = m.ObserveAll(batch, dst[:0])
	}
	if len(dst) != 0 {
		b.Fatalf("steady state made %d transitions: %v", len(dst), dst[0])
	}
}
