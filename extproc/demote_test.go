package extproc

import (
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/detourhq/detour/route"
)

// clock is a settable time for the demotion tests.
type clock struct{ t time.Time }

func (c *clock) now() time.Time      { return c.t }
func (c *clock) add(d time.Duration) { c.t = c.t.Add(d) }
func newTestDemotions(c *clock, counted *[]string) *demotions {
	d := newDemotions(slog.New(slog.DiscardHandler), func(b string) { *counted = append(*counted, b) })
	d.now = c.now
	return d
}

// attempts plays n requests routed to from: each first attempt on from,
// then, for moved of them spread evenly, a retry on to (its headers no
// longer name the routed backend), spaced by gap.
func attempts(c *clock, d *demotions, seq *int, from, to string, n, moved int, gap time.Duration) {
	for i := range n {
		*seq++
		id := fmt.Sprintf("req-%d", *seq)
		d.observe(id, from, from)
		if (i+1)*moved/n != i*moved/n {
			d.observe(id, "", to)
		}
		c.add(gap)
	}
}

func TestLocalDemotion(t *testing.T) {
	r := quickstartRouter(t)
	fast, _ := r.BackendIndex("fast")
	tests := []struct {
		name    string
		play    func(c *clock, d *demotions, seq *int)
		view    []uint8 // the controller's ranks; nil: all HEALTHY
		demoted bool
		counted int
	}{
		{"every attempt retried elsewhere", func(c *clock, d *demotions, seq *int) {
			attempts(c, d, seq, "fast", "fast-b", 5, 5, 20*time.Millisecond)
		}, nil, true, 1},
		{"four retries are not enough evidence", func(c *clock, d *demotions, seq *int) {
			attempts(c, d, seq, "fast", "fast-b", 4, 4, 20*time.Millisecond)
		}, nil, false, 0},
		{"a brownout (a quarter retried) is the controller's to judge", func(c *clock, d *demotions, seq *int) {
			attempts(c, d, seq, "fast", "fast-b", 40, 10, 20*time.Millisecond)
		}, nil, false, 0},
		{"half retried", func(c *clock, d *demotions, seq *int) {
			attempts(c, d, seq, "fast", "fast-b", 10, 5, 20*time.Millisecond)
		}, nil, true, 1},
		{"retries spread over more than the window", func(c *clock, d *demotions, seq *int) {
			attempts(c, d, seq, "fast", "fast-b", 10, 10, 400*time.Millisecond)
		}, nil, false, 0},
		{"retries to the same backend (another region) move nothing", func(c *clock, d *demotions, seq *int) {
			attempts(c, d, seq, "fast", "fast", 10, 10, 20*time.Millisecond)
		}, nil, false, 0},
		{"a retry of an unknown request is ignored", func(c *clock, d *demotions, seq *int) {
			for i := range 10 {
				d.observe(fmt.Sprint("never-seen-", i), "", "fast-b")
			}
		}, nil, false, 0},
		{"a retry whose headers still name the routed backend", func(c *clock, d *demotions, seq *int) {
			for i := range 5 {
				d.observe(fmt.Sprint("r", i), "fast", "fast")
				d.observe(fmt.Sprint("r", i), "fast", "fast-b")
			}
		}, nil, true, 1},
		{"ends when its hold passes", func(c *clock, d *demotions, seq *int) {
			attempts(c, d, seq, "fast", "fast-b", 5, 5, 20*time.Millisecond)
			c.add(demoteHold)
		}, nil, false, 1},
		{"ends once the controller ranks the backend below HEALTHY", func(c *clock, d *demotions, seq *int) {
			attempts(c, d, seq, "fast", "fast-b", 5, 5, 20*time.Millisecond)
		}, []uint8{1, 0, 0, 0}, false, 1},
		{"nothing to demote when the view already ranks it below HEALTHY", func(c *clock, d *demotions, seq *int) {
			d.viewed = func(b string) bool { return b == "fast" }
			attempts(c, d, seq, "fast", "fast-b", 10, 10, 20*time.Millisecond)
		}, nil, false, 0},
		{"ends when its trials are no longer retried away (another region serves)", func(c *clock, d *demotions, seq *int) {
			attempts(c, d, seq, "fast", "fast-b", 5, 5, 20*time.Millisecond)
			attempts(c, d, seq, "fast", "", demoteTrialsToEnd, 0, 20*time.Millisecond)
		}, nil, false, 1},
		{"a trial retried away keeps it demoted", func(c *clock, d *demotions, seq *int) {
			attempts(c, d, seq, "fast", "fast-b", 5, 5, 20*time.Millisecond)
			attempts(c, d, seq, "fast", "fast-b", 1, 1, 20*time.Millisecond) // a trial, retried away
			attempts(c, d, seq, "fast", "", demoteTrialsToEnd-1, 0, 20*time.Millisecond)
		}, nil, true, 1},
		{"a throttling backend's clean trials in a row do not end it", func(c *clock, d *demotions, seq *int) {
			attempts(c, d, seq, "fast", "fast-b", 5, 5, 20*time.Millisecond)
			for range 5 { // a third of the trials retried away
				attempts(c, d, seq, "fast", "fast-b", 1, 1, 20*time.Millisecond)
				attempts(c, d, seq, "fast", "", demoteTrialsToEnd, 0, 20*time.Millisecond)
			}
		}, nil, true, 1},
		{"one demotion per hold", func(c *clock, d *demotions, seq *int) {
			attempts(c, d, seq, "fast", "fast-b", 30, 30, 20*time.Millisecond)
		}, nil, true, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &clock{t: time.Unix(1_000_000, 0)}
			var counted []string
			d := newTestDemotions(c, &counted)
			seq := 0
			tt.play(c, d, &seq)
			got, _ := d.overlay(r, tt.view, nil)
			if demoted := got != nil && got[fast] == route.TrialRank; demoted != tt.demoted {
				t.Errorf("ranks %v: fast demoted %v, want %v", got, demoted, tt.demoted)
			}
			if len(counted) != tt.counted || tt.counted > 0 && counted[0] != "fast" {
				t.Errorf("demotions counted %v, want %d of fast", counted, tt.counted)
			}
			if !tt.demoted && d.active.Load() != 0 {
				t.Errorf("%d demotions still active", d.active.Load())
			}
		})
	}
}

// The overlay keeps the view's other ranks, writes into the buffer it is
// given and leaves the view's slice alone.
func TestLocalDemotionOverlay(t *testing.T) {
	r := quickstartRouter(t)
	c := &clock{t: time.Unix(1_000_000, 0)}
	var counted []string
	d := newTestDemotions(c, &counted)
	seq := 0
	attempts(c, d, &seq, "fast", "fast-b", 5, 5, time.Millisecond)
	view := []uint8{0, 0, 2, 0}
	buf := make([]uint8, 0, 8)
	got, _ := d.overlay(r, view, buf)
	if !slices.Equal(got, []uint8{2, 0, 2, 0}) || &got[0] != &buf[:1][0] {
		t.Errorf("overlay %v (in the buffer: %v), want [2 0 2 0] in it", got, &got[0] == &buf[:1][0])
	}
	if !slices.Equal(view, []uint8{0, 0, 2, 0}) {
		t.Errorf("the view's ranks changed: %v", view)
	}
	if got, _ := d.overlay(r, nil, nil); !slices.Equal(got, []uint8{2, 0, 0, 0}) {
		t.Errorf("overlay on no view %v, want [2 0 0 0]", got)
	}
	// One decision in demoteTrialEvery is a trial (this is the third).
	trials := 0
	for range 10 * demoteTrialEvery {
		if _, trial := d.overlay(r, nil, nil); trial {
			trials++
		}
	}
	if trials != 10 {
		t.Errorf("%d trials in %d decisions, want 10", trials, 10*demoteTrialEvery)
	}
}

// Nothing demoted: the routing hot path does no work and allocates
// nothing.
func TestLocalDemotionIdle(t *testing.T) {
	r := quickstartRouter(t)
	d := newDemotions(slog.New(slog.DiscardHandler), nil)
	if n := testing.AllocsPerRun(100, func() { d.overlay(r, nil, nil) }); n != 0 {
		t.Errorf("%v allocations per idle overlay", n)
	}
}

func quickstartRouter(t *testing.T) *route.Router {
	t.Helper()
	r, err := route.New(quickstart(t, "").RouteTable())
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// Through the server: retries seen by the upstream stage move the next
// routing decisions, with no controller view at all.
func TestLocalDemotionRoutes(t *testing.T) {
	h := newHarnessConfig(t, Config{Policy: quickstart(t, "")})
	body := chat("auto", "hello", nil)
	attemptOf := func(id, cluster string, first bool) {
		m := upstreamHeaders("/v1/chat/completions", cluster, "fast-8k")
		hm := m.GetRequestHeaders().Headers
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: "x-request-id", RawValue: []byte(id)})
		if first {
			hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: HeaderBackend, RawValue: []byte(cluster)})
		}
		s := h.open(t)
		defer s.close()
		if r := s.exchange(m); r.GetRequestHeaders() == nil {
			t.Fatalf("attempt answered %v", r)
		}
	}
	routed := func() string {
		r := h.do(t, post("/v1/chat/completions", body))
		return setHeaders(t, r.routed.HeaderMutation)[HeaderBackend]
	}
	if got := routed(); got != "fast" {
		t.Fatalf("before: routed to %s, want fast", got)
	}
	for i := range demoteMinMoves {
		id := fmt.Sprint("req-", i)
		attemptOf(id, "fast", true)
		attemptOf(id, "fast-b", false)
	}
	if got := routed(); got != "fast-b" {
		t.Errorf("after %d retries away from fast: routed to %s, want fast-b", demoteMinMoves, got)
	}
	if n := counter(t, h.metrics.LocalDemotions.WithLabelValues("fast")); n != 1 {
		t.Errorf("local_demotions_total{fast} = %v, want 1", n)
	}
	if n := counter(t, h.metrics.Decisions.WithLabelValues("auto", "fast-b", "health")); n != 1 {
		t.Errorf("decisions{fast-b, health} = %v, want 1", n)
	}
}

// BenchmarkLocalDemotionObserve is the per-attempt cost of counting: a
// first attempt and, for one request in ten, its retry elsewhere.
func BenchmarkLocalDemotionObserve(b *testing.B) {
	d := newDemotions(slog.New(slog.DiscardHandler), nil)
	ids := make([]string, 4096)
	for i := range ids {
		ids[i] = fmt.Sprintf("6f1c2d0e-0000-4000-8000-%012d", i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		id := ids[i%len(ids)]
		d.observe(id, "fast", "fast")
		if i%10 == 0 {
			d.observe(id, "", "fast-b")
		}
	}
}

// BenchmarkLocalDemotionOverlay is the per-decision cost with nothing
// demoted (the usual case) and with one backend demoted.
func BenchmarkLocalDemotionOverlay(b *testing.B) {
	r, err := route.New(quickstart(b, "").RouteTable())
	if err != nil {
		b.Fatal(err)
	}
	b.Run("idle", func(b *testing.B) {
		d := newDemotions(slog.New(slog.DiscardHandler), nil)
		b.ReportAllocs()
		for b.Loop() {
			d.overlay(r, nil, nil)
		}
	})
	b.Run("one demoted", func(b *testing.B) {
		d := newDemotions(slog.New(slog.DiscardHandler), nil)
		for i := range demoteMinMoves {
			d.observe(fmt.Sprint(i), "fast", "fast")
			d.observe(fmt.Sprint(i), "", "fast-b")
		}
		buf := make([]uint8, 0, 8)
		b.ReportAllocs()
		for b.Loop() {
			buf, _ = d.overlay(r, nil, buf)
		}
	})
}
