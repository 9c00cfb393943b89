package extproc

import (
	"testing"

	"github.com/detourhq/detour/healthview"
)

// fixedView is a HealthSource with a view set by the test.
type fixedView struct{ v *healthview.Snapshot }

func (f *fixedView) View() *healthview.Snapshot { return f.v }

func viewOf(version uint64, states map[string]string, routes map[string]healthview.Route) *healthview.Snapshot {
	v := &healthview.Snapshot{Version: version, Backends: map[string]healthview.Backend{}, Routes: routes, TrialShare: 0.25}
	for b, st := range states {
		v.Backends[b] = healthview.Backend{State: st}
	}
	return v
}

func TestRouteFollowsHealth(t *testing.T) {
	src := &fixedView{}
	h := newHarnessConfig(t, Config{Policy: quickstart(t, ""), Health: src})
	body := chat("auto", "hello", nil)
	tests := []struct {
		name    string
		view    *healthview.Snapshot
		backend string
		model   string
		reason  string
	}{
		{"no view: the objective decides", nil, "fast", "fast-8k", "cheapest"},
		{"all healthy", viewOf(1, map[string]string{"fast": healthview.Healthy}, nil), "fast", "fast-8k", "cheapest"},
		{"open cheapest: the next one", viewOf(2, map[string]string{"fast": healthview.Open}, nil), "fast-b", "fast-8k", "health"},
		{"degraded pair: a healthy dearer model", viewOf(3, map[string]string{"fast": healthview.Degraded, "fast-b": healthview.Open}, nil), "long", "long-200k", "health"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src.v = tt.view
			r := h.do(t, post("/v1/chat/completions", body))
			checkRouted(t, r, body, tt.backend, tt.model, "auto")
			if got := counter(t, h.metrics.Decisions.WithLabelValues("auto", tt.backend, tt.reason)); got == 0 {
				t.Errorf("no decision counted with reason %q", tt.reason)
			}
		})
	}
}

func TestRouteTrialsForRecoveringBackend(t *testing.T) {
	src := &fixedView{v: viewOf(1, map[string]string{"fast": healthview.HalfOpen}, nil)}
	h := newHarnessConfig(t, Config{Policy: quickstart(t, ""), Health: src})
	body := chat("auto", "hello", nil)
	got := map[string]int{}
	for range 40 {
		r := h.do(t, post("/v1/chat/completions", body))
		got[setHeaders(t, r.routed.HeaderMutation)[HeaderBackend]]++
	}
	// trial_share 0.25: one request in four tries the recovering backend.
	if got["fast"] != 10 || got["fast-b"] != 30 {
		t.Errorf("trial split = %v, want fast 10, fast-b 30", got)
	}
}

func TestShedByPriority(t *testing.T) {
	src := &fixedView{}
	p := quickstart(t, "")
	p.Routes[0].Priority = "sheddable" // auto's default
	h := newHarnessConfig(t, Config{Policy: p, Health: src})
	auto := chat("auto", "hello", nil)
	direct := chat("fast-8k", "hello", nil)
	shedSheddable := viewOf(1, map[string]string{"fast": healthview.Open}, map[string]healthview.Route{
		"auto":    {Shed: healthview.Sheddable, Reason: "healthy share 0.4 < 0.5", RetryAfter: 3},
		"fast-8k": {Shed: healthview.Sheddable, Reason: "healthy share 0.4 < 0.5", RetryAfter: 3},
	})
	shedStandard := viewOf(2, map[string]string{"fast": healthview.Open, "fast-b": healthview.Open}, map[string]healthview.Route{
		"fast-8k": {Shed: healthview.Standard, Reason: "every backend is OPEN", RetryAfter: 7},
	})
	tests := []struct {
		name     string
		view     *healthview.Snapshot
		body     []byte
		priority string
		status   int // 0: routed
		retry    string
	}{
		{"route default sheddable is shed", shedSheddable, auto, "", 429, "3"},
		{"header raises it to standard", shedSheddable, auto, "standard", 0, ""},
		{"model id defaults to standard", shedSheddable, direct, "", 0, ""},
		{"standard shed when nothing healthy", shedStandard, direct, "", 429, "7"},
		{"critical still flows to the last resort", shedStandard, direct, "critical", 0, ""},
		{"unknown priority is a 400", shedSheddable, direct, "urgent", 400, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src.v = tt.view
			c := post("/v1/chat/completions", tt.body)
			if tt.priority != "" {
				c.headers = map[string]string{HeaderPriority: tt.priority}
			}
			r := h.do(t, c)
			if tt.status == 0 {
				if r.routed == nil {
					t.Fatalf("want routed, got %d %s", r.imm.GetStatus().GetCode(), r.imm.GetBody())
				}
				return
			}
			kind := "shed"
			if tt.status == 400 {
				kind = "invalid_priority"
			}
			hdr := checkImmediate(t, r, tt.status, kind)
			if hdr["retry-after"] != tt.retry {
				t.Errorf("retry-after = %q, want %q", hdr["retry-after"], tt.retry)
			}
			e := decodeError(t, r.imm.Body)
			if tt.status == 429 && (e.Type != "rate_limit_error" || deref(e.Code) != "capacity_shed") {
				t.Errorf("error = %+v", e)
			}
		})
	}
}

// A route admitting a fraction of its edge priority: that share of the
// requests goes, spread evenly; the others are shed with the route's
// Retry-After, and critical ones all go.
func TestShedAFraction(t *testing.T) {
	src := &fixedView{v: viewOf(1, map[string]string{"fast": healthview.Healthy}, map[string]healthview.Route{
		"fast-8k": {Shed: healthview.Standard, Admit: 0.25, Reason: "backends turning requests away", RetryAfter: 2},
	})}
	h := newHarnessConfig(t, Config{Policy: quickstart(t, ""), Health: src})
	body := chat("fast-8k", "hello", nil)
	for _, tc := range []struct {
		priority string
		routed   int // of 40
	}{
		{"standard", 10},
		{"sheddable", 0},
		{"critical", 40},
	} {
		routed := 0
		for range 40 {
			c := post("/v1/chat/completions", body)
			c.headers = map[string]string{HeaderPriority: tc.priority}
			r := h.do(t, c)
			if r.routed != nil {
				routed++
				continue
			}
			if hdr := checkImmediate(t, r, 429, "shed"); hdr["retry-after"] != "2" {
				t.Fatalf("retry-after %q", hdr["retry-after"])
			}
		}
		if d := routed - tc.routed; d < -1 || d > 1 {
			t.Errorf("%s: %d of 40 routed, want %d ± 1", tc.priority, routed, tc.routed)
		}
	}
}

// Each route draws from its own sequence: interleaved with another
// route's requests, a route still admits its share of any run.
func TestShedAFractionPerRoute(t *testing.T) {
	src := &fixedView{v: viewOf(1, map[string]string{"fast": healthview.Healthy}, map[string]healthview.Route{
		"fast-8k": {Shed: healthview.Standard, Admit: 0.25, RetryAfter: 2},
		"auto":    {Shed: healthview.Standard, Admit: 0.75, RetryAfter: 2},
	})}
	h := newHarnessConfig(t, Config{Policy: quickstart(t, ""), Health: src})
	routed := map[string]int{}
	for i := range 80 {
		target := "fast-8k"
		if i%5 != 0 { // four of every five requests go to auto
			target = "auto"
		}
		c := post("/v1/chat/completions", chat(target, "hello", nil))
		c.headers = map[string]string{HeaderPriority: "standard"}
		if h.do(t, c).routed != nil {
			routed[target]++
		}
	}
	if d := routed["fast-8k"] - 4; d < -1 || d > 1 {
		t.Errorf("fast-8k: %d of 16 routed, want 4 ± 1", routed["fast-8k"])
	}
	if d := routed["auto"] - 48; d < -1 || d > 1 {
		t.Errorf("auto: %d of 64 routed, want 48 ± 1", routed["auto"])
	}
}
