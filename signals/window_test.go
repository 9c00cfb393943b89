package signals

import (
	"bufio"
	"bytes"
	"strconv"
	"strings"
	"testing"
	"time"
)

type recorded struct {
	scrape *Scrape
	phase  string
}

// loadSequence reads the filtered scrapes testdata/capture.sh took once a
// second: healthy traffic on fast, a 40 % 503 brownout on fast (retried on
// fast-b), fast slowed to 700 ms, a fault tour, then an Envoy restart.
func loadSequence(t testing.TB) []recorded {
	t.Helper()
	var seq []recorded
	sc := bufio.NewScanner(bytes.NewReader(readTestdata(t, "seq/times.txt")))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 {
			t.Fatalf("times.txt: bad line %q", sc.Text())
		}
		ms, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		backends, up, err := Parse(bytes.NewReader(readTestdata(t, "seq/"+f[0]+".prom")), quickstart)
		if err != nil {
			t.Fatalf("seq/%s.prom: %v", f[0], err)
		}
		seq = append(seq, recorded{&Scrape{At: time.UnixMilli(ms), Uptime: up, Backends: backends}, f[2]})
	}
	if len(seq) < 30 {
		t.Fatalf("only %d scrapes", len(seq))
	}
	return seq
}

// lastOf is the index of the last scrape of a phase.
func lastOf(t *testing.T, seq []recorded, phase string) int {
	t.Helper()
	last := -1
	for i, r := range seq {
		if r.phase == phase {
			last = i
		}
	}
	if last < 0 {
		t.Fatalf("no phase %q", phase)
	}
	return last
}

func TestWindowRecordedSequence(t *testing.T) {
	seq := loadSequence(t)
	cfg := DefaultWindowConfig()
	cfg.Length = 8 * time.Second // each phase of the capture lasts 8 to 12 s
	w, err := NewWindow(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stats := make([]map[string]Stats, len(seq))
	var prevTotal uint64
	for i, r := range seq {
		if err := w.Add(r.scrape); err != nil {
			t.Fatal(err)
		}
		stats[i] = map[string]Stats{}
		for _, b := range []string{"fast", "fast-b", "long", "vision"} {
			stats[i][b] = w.Stats(b, r.scrape.At)
		}
		st := stats[i]["fast"]
		if st.TotalRequests < prevTotal {
			t.Errorf("scrape %d: fast TotalRequests went from %d to %d", i, prevTotal, st.TotalRequests)
		}
		prevTotal = st.TotalRequests
		if st.Requests > 30*uint64(cfg.Length/time.Second+1) {
			t.Errorf("scrape %d: fast has %d requests in the window: more than the load sent", i, st.Requests)
		}
	}

	healthy := stats[lastOf(t, seq, "healthy")]["fast"]
	if healthy.Requests < 60 || healthy.Errors != 0 || healthy.Stale || healthy.Restarted {
		t.Errorf("healthy: %+v", healthy)
	}
	if healthy.LatencySamples == 0 || healthy.P95 > 5*time.Millisecond {
		t.Errorf("healthy: p95 %v from %d samples; the simulator answers in under a millisecond", healthy.P95, healthy.LatencySamples)
	}

	brown := stats[lastOf(t, seq, "brownout")]
	if f := brown["fast"]; f.ErrorRate < 0.25 || f.ErrorRate > 0.65 || f.Errors < 20 {
		t.Errorf("brownout: fast error rate %.2f (%d/%d), want about 0.4", f.ErrorRate, f.Errors, f.Requests)
	}
	if fb := brown["fast-b"]; fb.Retries == 0 || fb.Retries != fb.RetrySuccesses || fb.Errors != 0 {
		t.Errorf("brownout: fast-b took the retries: %+v", fb)
	}

	slow := stats[lastOf(t, seq, "slow")]["fast"]
	if slow.Errors != 0 || slow.P95 < 700*time.Millisecond || slow.P95 > time.Second {
		t.Errorf("slow: p95 %v (n=%d), errors %d; want 700ms..1s, no errors", slow.P95, slow.LatencySamples, slow.Errors)
	}
	if slow.Failures == 0 || slow.FailuresSpan < 20*time.Second {
		t.Errorf("slow: failures over the last minute %d over %v; the brownout's are still in it", slow.Failures, slow.FailuresSpan)
	}

	tourSt := stats[lastOf(t, seq, "tour")]
	if l := tourSt["long"]; l.EjectionsActive != 1 || l.Errors != 19 {
		t.Errorf("tour: long %+v", l)
	}
	if v := tourSt["vision"]; v.Requests != 10 || v.Errors != 10 || v.ErrorRate != 1 {
		t.Errorf("tour: vision %+v", v)
	}

	// After the restart every counter starts again from zero: the window
	// reports what the new Envoy counted, never a negative delta.
	first := lastOf(t, seq, "tour") + 1
	if r := stats[first]["fast"]; !r.Restarted {
		t.Errorf("first scrape after the restart: Restarted is false: %+v", r)
	}
	// Across the restart the restart-corrected totals grow by exactly what
	// the new Envoy counted.
	tour, last := lastOf(t, seq, "tour"), len(seq)-1
	raw := seq[last].scrape.Backends["fast"]
	if got := stats[last]["fast"].TotalRequests - stats[tour]["fast"].TotalRequests; got != raw.Requests() || got == 0 {
		t.Errorf("fast after restart: totals grew by %d, the new Envoy counted %d", got, raw.Requests())
	}
	if a, b := stats[tour]["long"], stats[last]["long"]; a.TotalRequests != b.TotalRequests || b.EjectionsActive != 0 {
		t.Errorf("long (no traffic after the restart): totals %d then %d, ejections %d", a.TotalRequests, b.TotalRequests, b.EjectionsActive)
	}
	end := seq[len(seq)-1].scrape.At
	if st := w.Stats("fast", end.Add(11*time.Second)); !st.Stale || st.Age != 11*time.Second {
		t.Errorf("11s after the last scrape: Stale %v, Age %v", st.Stale, st.Age)
	}
}

// scrape builds a Scrape of one backend "b" at second sec.
func scrape(sec int, uptime time.Duration, c *Counters) *Scrape {
	s := &Scrape{At: time.Unix(1_800_000_000+int64(sec), 0), Uptime: uptime, Backends: map[string]Counters{}}
	if c != nil {
		s.Backends["b"] = *c
	}
	return s
}

// ok2xx is n successes, e 5xx, and a latency histogram with n+e samples
// at under 10 ms.
func ok2xx(n, e uint64) *Counters {
	c := &Counters{}
	c.Final.Class[2], c.Final.Class[5] = n, e
	c.RequestTime = Histogram{Bounds: []float64{10, 100, 1000}, Cumulative: []uint64{n + e, n + e, n + e, n + e}}
	return c
}

func TestWindow(t *testing.T) {
	type step struct {
		sec    int
		uptime time.Duration
		c      *Counters // nil: backend absent
	}
	tests := []struct {
		name  string
		cfg   WindowConfig
		steps []step
		now   int // seconds
		want  func(t *testing.T, st Stats)
	}{
		{
			name:  "single scrape: no span, nothing counted",
			steps: []step{{0, 10, ok2xx(100, 5)}},
			want: func(t *testing.T, st Stats) {
				if st.Span != 0 || st.Requests != 0 || st.TotalRequests != 105 || st.Stale {
					t.Errorf("%+v", st)
				}
			},
		},
		{
			name:  "rate over the window only",
			steps: []step{{0, 10, ok2xx(0, 50)}, {10, 20, ok2xx(0, 50)}, {40, 50, ok2xx(100, 50)}, {45, 55, ok2xx(110, 80)}},
			now:   45,
			want: func(t *testing.T, st Stats) {
				// Window 30 s from 45: base is the scrape at 10 s (the newest at
				// or before 15 s). Failures: the minute reaches back past the
				// first scrape, so it counts from there.
				if st.Span != 35*time.Second || st.Requests != 140 || st.Errors != 30 || st.Failures != 30 || st.FailuresSpan != 45*time.Second {
					t.Errorf("%+v", st)
				}
				if st.ErrorRate != 30.0/140 {
					t.Errorf("error rate %v", st.ErrorRate)
				}
			},
		},
		{
			name:  "a counter going down is a restart, not a negative delta",
			steps: []step{{0, 100, ok2xx(1000, 10)}, {5, 105, ok2xx(1100, 10)}, {10, 2, ok2xx(20, 3)}, {15, 7, ok2xx(70, 3)}},
			now:   15,
			want: func(t *testing.T, st Stats) {
				if !st.Restarted || st.Requests != 100+23+50 || st.Errors != 3 || st.TotalRequests != 1010+100+23+50 {
					t.Errorf("%+v", st)
				}
				if st.LatencySamples != st.Requests {
					t.Errorf("latency samples %d, want %d", st.LatencySamples, st.Requests)
				}
			},
		},
		{
			name: "uptime going down is a restart even when counters grew past the old values",
			steps: []step{{0, 100, ok2xx(10, 0)}, {5, 105, ok2xx(20, 0)},
				{10, 3, ok2xx(500, 0)}},
			now: 10,
			want: func(t *testing.T, st Stats) {
				if !st.Restarted || st.Requests != 10+500 {
					t.Errorf("%+v", st)
				}
			},
		},
		{
			name:  "a backend that vanishes was reset to zero",
			steps: []step{{0, 0, ok2xx(10, 1)}, {5, 0, nil}, {10, 0, ok2xx(4, 0)}},
			now:   10,
			want: func(t *testing.T, st Stats) {
				if !st.Restarted || st.Requests != 4 || st.TotalRequests != 15 {
					t.Errorf("%+v", st)
				}
			},
		},
		{
			name:  "a backend that first shows up mid-way keeps its first requests",
			steps: []step{{0, 10, nil}, {5, 15, ok2xx(3, 1)}},
			now:   5,
			want: func(t *testing.T, st Stats) {
				if st.Restarted || st.Requests != 4 || st.Errors != 1 || st.Span != 5*time.Second {
					t.Errorf("%+v", st)
				}
			},
		},
		{
			name: "gauges are the newest, not summed",
			steps: []step{{0, 10, &Counters{EjectionsActive: 2, RqOpen: true}},
				{5, 15, &Counters{EjectionsActive: 1, PendingOpen: true}}},
			now: 5,
			want: func(t *testing.T, st Stats) {
				if st.EjectionsActive != 1 || st.RqOpen || !st.PendingOpen {
					t.Errorf("%+v", st)
				}
			},
		},
		{
			name:  "stale after StaleAfter",
			steps: []step{{0, 10, ok2xx(1, 0)}, {1, 11, ok2xx(2, 0)}},
			now:   12,
			want: func(t *testing.T, st Stats) {
				if !st.Stale || st.Age != 11*time.Second || st.Requests != 1 {
					t.Errorf("%+v", st)
				}
			},
		},
		{
			name: "p95 from bucket deltas",
			steps: []step{
				{0, 10, &Counters{RequestTime: Histogram{Bounds: []float64{10, 100, 1000}, Cumulative: []uint64{500, 500, 500, 500}}}},
				{10, 20, &Counters{RequestTime: Histogram{Bounds: []float64{10, 100, 1000}, Cumulative: []uint64{500, 500, 600, 600}}}},
			},
			now: 10,
			want: func(t *testing.T, st Stats) {
				// 100 new samples in (100, 1000]: p95 = 100 + 900*95/100 ms.
				if st.LatencySamples != 100 || st.P95 != 955*time.Millisecond {
					t.Errorf("p95 %v from %d", st.P95, st.LatencySamples)
				}
			},
		},
		{
			name: "other histogram bounds start the history over",
			steps: []step{
				{0, 10, &Counters{RequestTime: Histogram{Bounds: []float64{10}, Cumulative: []uint64{5, 5}}}},
				{5, 15, &Counters{RequestTime: Histogram{Bounds: []float64{10, 20}, Cumulative: []uint64{1, 2, 2}}}},
			},
			now: 5,
			want: func(t *testing.T, st Stats) {
				if st.Span != 0 || st.LatencySamples != 0 || st.TotalRequests != 0 {
					t.Errorf("%+v", st)
				}
			},
		},
		{
			name: "429s, retries and connect failures",
			steps: []step{{0, 10, &Counters{}}, {5, 15, &Counters{
				Final:           Codes{Class: [6]uint64{4: 7}, TooMany: 6},
				Retried:         Codes{Class: [6]uint64{4: 3, 5: 2}, TooMany: 3},
				ConnectFailures: 4, Resets: 1, PerTryTimeouts: 1,
				Retries: 9, RetrySuccesses: 5, RetryOverflows: 2,
			}}},
			now: 5,
			want: func(t *testing.T, st Stats) {
				if st.TooManyRequests != 9 || st.TotalTooManyRequests != 9 || st.Requests != 7+5+4+1+1 || st.Errors != 2+4+1+1 ||
					st.Retries != 9 || st.RetrySuccesses != 5 || st.RetryOverflows != 2 {
					t.Errorf("%+v", st)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			if cfg == (WindowConfig{}) {
				cfg = DefaultWindowConfig()
			}
			w, err := NewWindow(cfg)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range tt.steps {
				if err := w.Add(scrape(s.sec, s.uptime*time.Second, s.c)); err != nil {
					t.Fatal(err)
				}
			}
			tt.want(t, w.Stats("b", time.Unix(1_800_000_000+int64(tt.now), 0)))
		})
	}
}

func TestWindowUnknownBackendAndOrder(t *testing.T) {
	w, err := NewWindow(DefaultWindowConfig())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	if st := w.Stats("x", now); !st.Stale || st.Requests != 0 {
		t.Errorf("no scrape yet: %+v", st)
	}
	if err := w.Add(scrape(10, 0, ok2xx(1, 0))); err != nil {
		t.Fatal(err)
	}
	if st := w.Stats("x", now.Add(10*time.Second)); st.Stale || st.Requests != 0 {
		t.Errorf("fresh scrape without x: %+v", st)
	}
	if err := w.Add(scrape(10, 0, ok2xx(1, 0))); err == nil {
		t.Error("a scrape at the same time: no error")
	}
	if err := w.Add(scrape(5, 0, ok2xx(1, 0))); err == nil {
		t.Error("an older scrape: no error")
	}
	if got := w.Backends(); len(got) != 1 || got[0] != "b" {
		t.Errorf("Backends = %v", got)
	}
	w.Forget("b")
	if got := w.Backends(); len(got) != 0 {
		t.Errorf("after Forget: %v", got)
	}
}

// The history a Window keeps stays bounded however long it runs.
func TestWindowTrims(t *testing.T) {
	w, err := NewWindow(DefaultWindowConfig())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 1000 {
		if err := w.Add(scrape(i, time.Duration(i)*time.Second, ok2xx(uint64(i), 0))); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(w.series["b"].points); n > 62 {
		t.Errorf("%d points kept for a 1 minute span at 1 per second", n)
	}
	st := w.Stats("b", time.Unix(1_800_000_999, 0))
	if st.Requests != 30 || st.Failures != 0 || st.FailuresSpan != time.Minute {
		t.Errorf("%+v", st)
	}
}

func TestWindowConfigValidate(t *testing.T) {
	if err := DefaultWindowConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	err := WindowConfig{Length: -1}.Validate()
	for _, want := range []string{"Length", "FailureSpan", "StaleAfter"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
	if _, err := NewWindow(WindowConfig{}); err == nil {
		t.Error("NewWindow with a zero config: no error")
	}
}

func BenchmarkWindow1000Backends(b *testing.B) {
	w, err := NewWindow(DefaultWindowConfig())
	if err != nil {
		b.Fatal(err)
	}
	names := make([]string, 1000)
	for i := range names {
		names[i] = "backend-" + strconv.Itoa(i)
	}
	mk := func(sec int) *Scrape {
		s := &Scrape{At: time.Unix(1_800_000_000+int64(sec), 0), Uptime: time.Duration(sec) * time.Second, Backends: make(map[string]Counters, len(names))}
		for _, n := range names {
			s.Backends[n] = *ok2xx(uint64(sec*10), uint64(sec))
		}
		return s
	}
	for i := range 61 {
		if err := w.Add(mk(i)); err != nil {
			b.Fatal(err)
		}
	}
	next := mk(61)
	now := next.At
	b.ResetTimer()
	for b.Loop() {
		for _, n := range names {
			_ = w.Stats(n, now)
		}
	}
}

func BenchmarkWindowAdd1000Backends(b *testing.B) {
	w, err := NewWindow(DefaultWindowConfig())
	if err != nil {
		b.Fatal(err)
	}
	s := &Scrape{Backends: make(map[string]Counters, 1000)}
	for i := range 1000 {
		s.Backends["backend-"+strconv.Itoa(i)] = *ok2xx(0, 0)
	}
	sec := 0
	b.ReportAllocs()
	for b.Loop() {
		sec++
		s.At, s.Uptime = time.Unix(1_800_000_000+int64(sec), 0), time.Duration(sec)*time.Second
		if err := w.Add(s); err != nil {
			b.Fatal(err)
		}
	}
}

// testdata/capture-measure.sh took two scrapes 16 s apart; in between the
// simulated fast provider answered 40 requests (20 streamed) with a 150 ms
// first token, and long answered 5 streams at once.
func TestWindowDetourMeasurements(t *testing.T) {
	w, err := NewWindow(DefaultWindowConfig())
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1_800_000_000, 0)
	for i, f := range []string{"measure/00.prom", "measure/01.prom"} {
		b, up, err := Parse(bytes.NewReader(readTestdata(t, f)), quickstart)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if err := w.Add(&Scrape{At: t0.Add(time.Duration(i) * 16 * time.Second), Uptime: up, Backends: b}); err != nil {
			t.Fatal(err)
		}
	}
	now := t0.Add(16 * time.Second)
	tests := []struct {
		backend                          string
		ttft, total                      time.Duration
		ttftN, totalN, rateN, latencyN   uint64
		rate                             float64
		meanLatencyMin, meanLatencyLimit time.Duration
	}{
		// All 40 first tokens in the (100, 250] ms bucket: the p95 is
		// interpolated at 100 + 150 * 38/40 = 242.5 ms. The 20 streams'
		// rates are all in (50, 100] tokens/s: the median is 75.
		{backend: "fast", ttft: 242500 * time.Microsecond, total: 242500 * time.Microsecond, ttftN: 40, totalN: 40, rate: 75, rateN: 20, latencyN: 40,
			meanLatencyMin: 150 * time.Millisecond, meanLatencyLimit: 250 * time.Millisecond},
		// long's streams carried no usage, so no rate; all in (1, 5] ms.
		{backend: "long", ttft: 4800 * time.Microsecond, total: 4800 * time.Microsecond, ttftN: 5, totalN: 5, latencyN: 5,
			meanLatencyMin: 0, meanLatencyLimit: 5 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.backend, func(t *testing.T) {
			st := w.Stats(tt.backend, now)
			if st.TTFT != tt.ttft || st.TTFTSamples != tt.ttftN {
				t.Errorf("TTFT %v from %d, want %v from %d", st.TTFT, st.TTFTSamples, tt.ttft, tt.ttftN)
			}
			if st.TotalTime != tt.total || st.TotalSamples != tt.totalN {
				t.Errorf("TotalTime %v from %d, want %v from %d", st.TotalTime, st.TotalSamples, tt.total, tt.totalN)
			}
			if st.TokensPerSecond != tt.rate || st.RateSamples != tt.rateN {
				t.Errorf("TokensPerSecond %v from %d, want %v from %d", st.TokensPerSecond, st.RateSamples, tt.rate, tt.rateN)
			}
			if st.LatencySamples != tt.latencyN || st.MeanLatency <= tt.meanLatencyMin || st.MeanLatency > tt.meanLatencyLimit {
				t.Errorf("MeanLatency %v from %d, want in (%v, %v] from %d", st.MeanLatency, st.LatencySamples, tt.meanLatencyMin, tt.meanLatencyLimit, tt.latencyN)
			}
		})
	}
	// The exact mean: (9232.472 - 26.817) ms over 40 responses.
	if st := w.Stats("fast", now); st.MeanLatency.Round(time.Microsecond) != 230141*time.Microsecond {
		t.Errorf("fast MeanLatency = %v, want 230.141ms", st.MeanLatency)
	}
}

// The detour_* histograms are windowed like upstream_rq_time: deltas
// between scrapes, all of the new value after a restart, and a fresh start
// when the bounds change.
func TestWindowMeasureHistograms(t *testing.T) {
	hist := func(sum float64, cum ...uint64) Histogram {
		return Histogram{Bounds: []float64{10, 100, 1000}, Cumulative: cum, Sum: sum}
	}
	type step struct {
		sec    int
		uptime time.Duration
		c      *Counters
	}
	tests := []struct {
		name         string
		steps        []step
		ttft         time.Duration
		ttftN, rateN uint64
		rate         float64
		mean         time.Duration
		restarted    bool
	}{
		{
			name: "delta between two scrapes",
			steps: []step{
				{0, 10 * time.Second, &Counters{TTFT: hist(0, 0, 0, 0, 0), RequestTime: hist(100, 10, 10, 10, 10)}},
				{5, 15 * time.Second, &Counters{TTFT: hist(0, 0, 20, 20, 20), RequestTime: hist(1100, 10, 20, 20, 20), TokenRate: hist(0, 0, 0, 4, 4)}},
			},
			ttft: 95500 * time.Microsecond, ttftN: 20, rate: 550, rateN: 4, mean: 100 * time.Millisecond,
		},
		{
			name: "restart: the new values are the increase",
			steps: []step{
				{0, 10 * time.Second, &Counters{TTFT: hist(0, 50, 50, 50, 50)}},
				{5, 2 * time.Second, &Counters{TTFT: hist(0, 0, 0, 10, 10)}},
			},
			ttft: 955 * time.Millisecond, ttftN: 10, restarted: true,
		},
		{
			name: "a histogram that went back means a restart even with uptime going up",
			steps: []step{
				{0, 10 * time.Second, &Counters{TokenRate: hist(0, 0, 8, 8, 8)}},
				{5, 15 * time.Second, &Counters{TokenRate: hist(0, 0, 0, 2, 2)}},
			},
			rate: 550, rateN: 2, restarted: true,
		},
		{
			// The history before the change is dropped, so the window
			// starts at the first scrape with the new bounds.
			name: "other bounds: start over",
			steps: []step{
				{0, 10 * time.Second, &Counters{TTFT: hist(0, 5, 5, 5, 5)}},
				{5, 15 * time.Second, &Counters{TTFT: Histogram{Bounds: []float64{20, 200}, Cumulative: []uint64{0, 10, 10}}}},
				{10, 20 * time.Second, &Counters{TTFT: Histogram{Bounds: []float64{20, 200}, Cumulative: []uint64{0, 20, 20}}}},
			},
			ttft: 191 * time.Millisecond, ttftN: 10,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := NewWindow(DefaultWindowConfig())
			if err != nil {
				t.Fatal(err)
			}
			var last time.Time
			for _, s := range tt.steps {
				sc := scrape(s.sec, s.uptime, s.c)
				if err := w.Add(sc); err != nil {
					t.Fatal(err)
				}
				last = sc.At
			}
			st := w.Stats("b", last)
			if st.TTFT != tt.ttft || st.TTFTSamples != tt.ttftN || st.TokensPerSecond != tt.rate || st.RateSamples != tt.rateN ||
				st.MeanLatency != tt.mean || st.Restarted != tt.restarted {
				t.Errorf("got TTFT %v/%d, rate %v/%d, mean %v, restarted %v\nwant TTFT %v/%d, rate %v/%d, mean %v, restarted %v",
					st.TTFT, st.TTFTSamples, st.TokensPerSecond, st.RateSamples, st.MeanLatency, st.Restarted,
					tt.ttft, tt.ttftN, tt.rate, tt.rateN, tt.mean, tt.restarted)
			}
		})
	}
}
