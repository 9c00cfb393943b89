package route

import (
	"errors"
	"slices"
	"testing"
)

func TestDecideHealth(t *testing.T) {
	r := mustRouter(t, quickstartTable()) // fast, fast-b, long, vision
	req := Request{Kind: KindChat, Model: "auto", PromptTokens: 100}
	tests := []struct {
		name   string
		h      *Health
		want   []string
		reason Reason
	}{
		{"nil health keeps the objective", nil, []string{"fast", "fast-b", "long", "vision"}, ReasonCheapest},
		{"all healthy keeps the objective", &Health{Rank: []uint8{0, 0, 0, 0}}, []string{"fast", "fast-b", "long", "vision"}, ReasonCheapest},
		{"short rank slice counts the rest healthy", &Health{Rank: []uint8{0}}, []string{"fast", "fast-b", "long", "vision"}, ReasonCheapest},
		{"open backend goes last, not away", &Health{Rank: []uint8{3, 0, 0, 0}}, []string{"fast-b", "long", "vision", "fast"}, ReasonHealth},
		{"degraded after healthy, before open", &Health{Rank: []uint8{1, 3, 0, 0}}, []string{"long", "vision", "fast", "fast-b"}, ReasonHealth},
		{"recovering between degraded and open", &Health{Rank: []uint8{2, 1, 3, 0}}, []string{"vision", "fast-b", "fast", "long"}, ReasonHealth},
		{"trial puts the recovering backend first", &Health{Rank: []uint8{0, 2, 0, 0}, Trial: true}, []string{"fast-b", "fast", "long", "vision"}, ReasonTrial},
		{"trial also tests a degraded backend", &Health{Rank: []uint8{1, 0, 0, 0}, Trial: true}, []string{"fast", "fast-b", "long", "vision"}, ReasonTrial},
		{"trial without a recovering backend changes nothing", &Health{Rank: []uint8{0, 0, 0, 0}, Trial: true}, []string{"fast", "fast-b", "long", "vision"}, ReasonCheapest},
		{"all open: objective order, last resort", &Health{Rank: []uint8{3, 3, 3, 3}}, []string{"fast", "fast-b", "long", "vision"}, ReasonCheapest},
		{"a worse-ranked loser is not an overrule", &Health{Rank: []uint8{0, 0, 0, 3}}, []string{"fast", "fast-b", "long", "vision"}, ReasonCheapest},
		{"skipped backends are left out", &Health{Skip: []bool{true, false, true}}, []string{"fast-b", "vision"}, ReasonCheapest},
		{"skip and rank together", &Health{Rank: []uint8{0, 3, 0, 0}, Skip: []bool{true}}, []string{"long", "vision", "fast-b"}, ReasonHealth},
	}
	var d Decision
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := r.DecideHealth(&req, &d, tt.h); err != nil {
				t.Fatal(err)
			}
			if got := names(r, &d); !slices.Equal(got, tt.want) {
				t.Errorf("order = %v, want %v", got, tt.want)
			}
			if d.Reason != tt.reason {
				t.Errorf("reason = %v, want %v", d.Reason, tt.reason)
			}
			if d.UpstreamModel != r.Backend(d.Backend).Model {
				t.Errorf("upstream model %q is not the chosen backend's", d.UpstreamModel)
			}
		})
	}
}

// Skipping every candidate leaves nothing to route to: an error, not a
// panic or an empty decision.
func TestDecideHealthAllSkipped(t *testing.T) {
	r := mustRouter(t, quickstartTable())
	req := Request{Kind: KindChat, Model: "auto", PromptTokens: 100}
	var d Decision
	var ue *UnsatisfiableError
	if err := r.DecideHealth(&req, &d, &Health{Skip: []bool{true, true, true, true}}); !errors.As(err, &ue) {
		t.Fatalf("error %v, want an UnsatisfiableError", err)
	}
}

func TestDecideHealthBeatsPriorityTier(t *testing.T) {
	tab := quickstartTable()
	tab.Backends[2].Priority = 1 // long is a backup tier
	r := mustRouter(t, tab)
	req := Request{Kind: KindChat, Model: "auto", PromptTokens: 100}
	var d Decision
	// The primaries are open, the degraded backup tier still beats them.
	h := &Health{Rank: []uint8{3, 3, 1, 3}}
	if err := r.DecideHealth(&req, &d, h); err != nil {
		t.Fatal(err)
	}
	if got := names(r, &d); !slices.Equal(got, []string{"long", "fast", "fast-b", "vision"}) {
		t.Errorf("order = %v", got)
	}
}

func TestDecideHealthAllocs(t *testing.T) {
	r := mustRouter(t, quickstartTable())
	req := Request{Kind: KindChat, Model: "auto", PromptTokens: 100}
	h := &Health{Rank: []uint8{3, 1, 0, 2}, Trial: true}
	var d Decision
	_ = r.DecideHealth(&req, &d, h)
	if n := testing.AllocsPerRun(100, func() { _ = r.DecideHealth(&req, &d, h) }); n != 0 {
		t.Errorf("DecideHealth allocates %v times", n)
	}
}
