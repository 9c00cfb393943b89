package extproc

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/detourhq/detour/demote"
	"github.com/detourhq/detour/route"
)

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
	for i := range demote.MinMoves {
		id := fmt.Sprint("req-", i)
		attemptOf(id, "fast", true)
		attemptOf(id, "fast-b", false)
	}
	if got := routed(); got != "fast-b" {
		t.Errorf("after %d retries away from fast: routed to %s, want fast-b", demote.MinMoves, got)
	}
	if n := counter(t, h.metrics.LocalDemotions.WithLabelValues("fast")); n != 1 {
		t.Errorf("local_demotions_total{fast} = %v, want 1", n)
	}
	if n := counter(t, h.metrics.Decisions.WithLabelValues("auto", "fast-b", "health")); n != 1 {
		t.Errorf("decisions{fast-b, health} = %v, want 1", n)
	}
}

// BenchmarkLocalDemotionObserve is the per-attempt cost of counting,
// lock included: a first attempt and, for one request in ten, its retry
// elsewhere.
func BenchmarkLocalDemotionObserve(b *testing.B) {
	d := newDemotions(slog.New(slog.DiscardHandler), nil)
	ids := make([]string, 4096)
	for i := range ids {
		ids[i] = fmt.Sprintf("6f1c2d0e-0000-4000-8000-%012d", i)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		id := ids[i%len(ids)]
		d.observe(id, "fast", "fast")
		if i%10 == 0 {
			d.observe(id, "", "fast-b")
		}
	}
}

// BenchmarkLocalDemotionOverlay is the per-decision cost with nothing
// demoted (the usual case: one atomic load) and with one backend demoted.
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
		for i := range demote.MinMoves {
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

// The lock-free count the decision path reads follows the demotions: up
// on one, down when its trials answer again or its hold runs out.
func TestLocalDemotionActiveCount(t *testing.T) {
	r := quickstartRouter(t)
	now := time.Unix(1_000_000, 0)
	d := newDemotions(slog.New(slog.DiscardHandler), nil)
	d.now = func() time.Time { return now }
	demoteFast := func(prefix string) {
		for i := range demote.MinMoves {
			d.observe(fmt.Sprint(prefix, i), "fast", "fast")
			d.observe(fmt.Sprint(prefix, i), "", "fast-b")
		}
	}
	demoteFast("a")
	if n := d.active.Load(); n != 1 {
		t.Fatalf("active %d after a demotion, want 1", n)
	}
	for i := range demote.TrialsToEnd {
		d.observe(fmt.Sprint("trial", i), "fast", "fast")
	}
	if n := d.active.Load(); n != 0 {
		t.Errorf("active %d after clean trials, want 0", n)
	}
	now = now.Add(2 * demote.Window)
	demoteFast("b")
	now = now.Add(demote.Hold)
	if got, _ := d.overlay(r, nil, nil); got != nil {
		t.Errorf("ranks %v after the hold, want none", got)
	}
	if n := d.active.Load(); n != 0 {
		t.Errorf("active %d after the hold, want 0", n)
	}
}
