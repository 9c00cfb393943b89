package healthview

import (
	"slices"
	"testing"
)

func TestRanksFor(t *testing.T) {
	names := []string{"a", "b", "c", "d", "e", "unknown"}
	s := &Snapshot{TrialShare: 0.25, Backends: map[string]Backend{
		"a": {State: Healthy}, "b": {State: Degraded}, "c": {State: HalfOpen},
		"d": {State: Open}, "e": {State: Healthy, Throttled: true},
	}}
	r := s.RanksFor(len(names), func(i int) string { return names[i] })
	if want := []uint8{0, 1, 2, 3, 1, 0}; !slices.Equal(r.Rank, want) {
		t.Errorf("ranks %v, want %v", r.Rank, want)
	}
	if !r.Any || !r.Trial || r.TrialEvery != 4 {
		t.Errorf("any %v trial %v every %d", r.Any, r.Trial, r.TrialEvery)
	}
	healthy := (&Snapshot{Backends: map[string]Backend{"a": {State: Healthy}}}).RanksFor(1, func(int) string { return "a" })
	if healthy.Any || healthy.Trial || healthy.TrialEvery != 20 {
		t.Errorf("all healthy: %+v", healthy)
	}
	open := (&Snapshot{Backends: map[string]Backend{"a": {State: Open}}}).RanksFor(1, func(int) string { return "a" })
	if !open.Any || open.Trial {
		t.Errorf("an OPEN backend takes no trials before its cool-down: %+v", open)
	}
}

func TestValidPriority(t *testing.T) {
	for v, want := range map[string]bool{"": true, Critical: true, Standard: true, Sheddable: true, "urgent": false, "Critical": false} {
		if got := ValidPriority(v); got != want {
			t.Errorf("ValidPriority(%q) = %v", v, got)
		}
	}
}

func TestRanksLow(t *testing.T) {
	r := Ranks{Rank: []uint8{0, 1, 2, 3}}
	for i, want := range map[int]bool{-1: false, 0: false, 1: true, 2: true, 3: true, 4: false} {
		if got := r.Low(i); got != want {
			t.Errorf("Low(%d) = %v, want %v", i, got, want)
		}
	}
}
