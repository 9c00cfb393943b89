package demote

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/detourhq/detour/route"
)

// play is a clock and a tracker for the tests.
type play struct {
	now     time.Time
	t       *Tracker
	seq     int
	demoted []string // Demoted events, by backend
}

func newPlay() *play { return &play{now: time.Unix(1_000_000, 0), t: New()} }

func (p *play) observe(id, routed, cluster string) {
	if ev := p.t.Observe(p.now, id, routed, cluster); ev.Kind == Demoted {
		p.demoted = append(p.demoted, ev.Backend)
	}
}

// attempts plays n requests routed to from: each first attempt on from,
// then, for moved of them spread evenly, a retry on to (its headers no
// longer name the routed backend), spaced by gap.
func (p *play) attempts(from, to string, n, moved int, gap time.Duration) {
	for i := range n {
		p.seq++
		id := fmt.Sprintf("req-%d", p.seq)
		p.observe(id, from, from)
		if (i+1)*moved/n != i*moved/n {
			p.observe(id, "", to)
		}
		p.now = p.now.Add(gap)
	}
}

// testRouter has the quickstart's four backends, fast first.
func testRouter(t testing.TB) *route.Router {
	t.Helper()
	var tb route.Table
	for _, name := range []string{"fast", "fast-b", "long", "vision"} {
		tb.Backends = append(tb.Backends, route.Backend{Name: name, Model: name + "-model", Caps: route.Capabilities{ContextWindow: 8192}})
	}
	r, err := route.New(tb)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestTracker(t *testing.T) {
	r := testRouter(t)
	fast, _ := r.BackendIndex("fast")
	const gap = 20 * time.Millisecond
	tests := []struct {
		name    string
		play    func(p *play)
		view    []uint8 // the controller's ranks; nil: all HEALTHY
		demoted bool
		counted int
	}{
		{"every attempt retried elsewhere", func(p *play) {
			p.attempts("fast", "fast-b", 5, 5, gap)
		}, nil, true, 1},
		{"four retries are not enough evidence", func(p *play) {
			p.attempts("fast", "fast-b", 4, 4, gap)
		}, nil, false, 0},
		{"a brownout (a quarter retried) is the controller's to judge", func(p *play) {
			p.attempts("fast", "fast-b", 40, 10, gap)
		}, nil, false, 0},
		{"half retried", func(p *play) {
			p.attempts("fast", "fast-b", 10, 5, gap)
		}, nil, true, 1},
		{"retries spread over more than the window", func(p *play) {
			p.attempts("fast", "fast-b", 10, 10, 400*time.Millisecond)
		}, nil, false, 0},
		{"retries to the same backend (another region) move nothing", func(p *play) {
			p.attempts("fast", "fast", 10, 10, gap)
		}, nil, false, 0},
		{"a retry of an unknown request is ignored", func(p *play) {
			for i := range 10 {
				p.observe(fmt.Sprint("never-seen-", i), "", "fast-b")
			}
		}, nil, false, 0},
		{"a retry whose headers still name the routed backend", func(p *play) {
			for i := range 5 {
				p.observe(fmt.Sprint("r", i), "fast", "fast")
				p.observe(fmt.Sprint("r", i), "fast", "fast-b")
			}
		}, nil, true, 1},
		{"ends when its hold passes", func(p *play) {
			p.attempts("fast", "fast-b", 5, 5, gap)
			p.now = p.now.Add(Hold)
		}, nil, false, 1},
		{"ends once the controller ranks the backend below HEALTHY", func(p *play) {
			p.attempts("fast", "fast-b", 5, 5, gap)
		}, []uint8{1, 0, 0, 0}, false, 1},
		{"nothing to demote when the view already ranks it below HEALTHY", func(p *play) {
			p.t.Viewed = func(b string) bool { return b == "fast" }
			p.attempts("fast", "fast-b", 10, 10, gap)
		}, nil, false, 0},
		{"ends when its trials are no longer retried away (another region serves)", func(p *play) {
			p.attempts("fast", "fast-b", 5, 5, gap)
			p.attempts("fast", "", TrialsToEnd, 0, gap)
		}, nil, false, 1},
		{"a trial retried away keeps it demoted", func(p *play) {
			p.attempts("fast", "fast-b", 5, 5, gap)
			p.attempts("fast", "fast-b", 1, 1, gap) // a trial, retried away
			p.attempts("fast", "", TrialsToEnd-1, 0, gap)
		}, nil, true, 1},
		{"a throttling backend's clean trials in a row do not end it", func(p *play) {
			p.attempts("fast", "fast-b", 5, 5, gap)
			for range 5 { // a third of the trials retried away
				p.attempts("fast", "fast-b", 1, 1, gap)
				p.attempts("fast", "", TrialsToEnd, 0, gap)
			}
		}, nil, true, 1},
		{"one demotion per hold", func(p *play) {
			p.attempts("fast", "fast-b", 30, 30, gap)
		}, nil, true, 1},
		{"demoted again after its hold when the evidence is new", func(p *play) {
			p.attempts("fast", "fast-b", 5, 5, gap)
			p.now = p.now.Add(Hold)
			p.t.Overlay(p.now, testRouter(t), nil, nil) // ends the expired one
			p.attempts("fast", "fast-b", 5, 5, gap)
		}, nil, true, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPlay()
			tt.play(p)
			got, _ := p.t.Overlay(p.now, r, tt.view, nil)
			if demoted := got != nil && got[fast] == route.TrialRank; demoted != tt.demoted {
				t.Errorf("ranks %v: fast demoted %v, want %v", got, demoted, tt.demoted)
			}
			if len(p.demoted) != tt.counted || tt.counted > 0 && p.demoted[0] != "fast" {
				t.Errorf("demotions %v, want %d of fast", p.demoted, tt.counted)
			}
			if !tt.demoted && p.t.Active() != 0 {
				t.Errorf("%d demotions still active", p.t.Active())
			}
		})
	}
}

// The events say what changed: the evidence of a demotion, and its end
// when the backend answers again.
func TestTrackerEvents(t *testing.T) {
	p := newPlay()
	var evs []Event
	for i := range MinMoves {
		id := fmt.Sprint("req-", i)
		evs = append(evs, p.t.Observe(p.now, id, "fast", "fast"), p.t.Observe(p.now, id, "", "fast-b"))
	}
	for i := range TrialsToEnd {
		evs = append(evs, p.t.Observe(p.now, fmt.Sprint("trial-", i), "fast", "fast"))
	}
	var got []Event
	for _, ev := range evs {
		if ev.Kind != Nothing {
			got = append(got, ev)
		}
	}
	want := []Event{{Kind: Demoted, Backend: "fast", Moved: MinMoves, Routed: MinMoves}, {Kind: Answers, Backend: "fast"}}
	if !slices.Equal(got, want) {
		t.Errorf("events %+v, want %+v", got, want)
	}
	if p.t.Active() != 0 {
		t.Errorf("%d active after the backend answered", p.t.Active())
	}
}

// The overlay keeps the view's other ranks, writes into the buffer it is
// given and leaves the view's slice alone; one decision in TrialEvery is
// a trial.
func TestTrackerOverlay(t *testing.T) {
	r := testRouter(t)
	p := newPlay()
	p.attempts("fast", "fast-b", 5, 5, time.Millisecond)
	view := []uint8{0, 0, 2, 0}
	buf := make([]uint8, 0, 8)
	got, _ := p.t.Overlay(p.now, r, view, buf)
	if !slices.Equal(got, []uint8{2, 0, 2, 0}) || &got[0] != &buf[:1][0] {
		t.Errorf("overlay %v (in the buffer: %v), want [2 0 2 0] in it", got, &got[0] == &buf[:1][0])
	}
	if !slices.Equal(view, []uint8{0, 0, 2, 0}) {
		t.Errorf("the view's ranks changed: %v", view)
	}
	if got, _ := p.t.Overlay(p.now, r, nil, nil); !slices.Equal(got, []uint8{2, 0, 0, 0}) {
		t.Errorf("overlay on no view %v, want [2 0 0 0]", got)
	}
	trials := 0
	for range 10 * TrialEvery {
		if _, trial := p.t.Overlay(p.now, r, nil, nil); trial {
			trials++
		}
	}
	if trials != 10 {
		t.Errorf("%d trials in %d decisions, want 10", trials, 10*TrialEvery)
	}
}

// Nothing demoted: the routing hot path does no work and allocates
// nothing.
func TestTrackerIdle(t *testing.T) {
	r := testRouter(t)
	tr := New()
	now := time.Unix(1_000_000, 0)
	if n := testing.AllocsPerRun(100, func() { tr.Overlay(now, r, nil, nil) }); n != 0 {
		t.Errorf("%v allocations per idle overlay", n)
	}
}

// BenchmarkObserve is the per-attempt cost of counting: a first attempt
// and, for one request in ten, its retry elsewhere.
func BenchmarkObserve(b *testing.B) {
	tr := New()
	ids := make([]string, 4096)
	for i := range ids {
		ids[i] = fmt.Sprintf("6f1c2d0e-0000-4000-8000-%012d", i)
	}
	now := time.Unix(1_000_000, 0)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		id := ids[i%len(ids)]
		tr.Observe(now, id, "fast", "fast")
		if i%10 == 0 {
			tr.Observe(now, id, "", "fast-b")
		}
	}
}

// BenchmarkOverlay is the per-decision cost with one backend demoted.
func BenchmarkOverlay(b *testing.B) {
	r := testRouter(b)
	tr := New()
	now := time.Unix(1_000_000, 0)
	for i := range MinMoves {
		tr.Observe(now, fmt.Sprint(i), "fast", "fast")
		tr.Observe(now, fmt.Sprint(i), "", "fast-b")
	}
	buf := make([]uint8, 0, 8)
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = tr.Overlay(now, r, nil, buf)
	}
}
