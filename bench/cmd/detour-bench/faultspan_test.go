package main

import (
	"context"
	"testing"
	"time"
)

func TestRunFault(t *testing.T) {
	for _, tc := range []struct {
		name    string
		d, flap time.Duration
	}{
		{"steady", 60 * time.Millisecond, 0},
		{"flapping", 250 * time.Millisecond, 50 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ons, offs int
			start := time.Now()
			s, err := runFault(context.Background(), start, tc.d, tc.flap,
				func() error { ons++; return nil }, func() error { offs++; return nil })
			if err != nil {
				t.Fatal(err)
			}
			if ons != len(s.Windows) || ons+offs != s.Flips+1 {
				t.Errorf("%d on, %d off calls; %d windows, %d flips", ons, offs, len(s.Windows), s.Flips)
			}
			if s.ClearAt-s.FaultAt < tc.d {
				t.Errorf("fault lasted %v, want ≥ %v", s.ClearAt-s.FaultAt, tc.d)
			}
			if tc.flap > 0 && len(s.Windows) < 2 {
				t.Errorf("flapping gave %d windows", len(s.Windows))
			}
			for i, w := range s.Windows {
				if w[1] < w[0] || (i > 0 && w[0] < s.Windows[i-1][1]) || w[0] < s.FaultAt || w[1] > s.ClearAt {
					t.Errorf("windows out of order: %v", s.Windows)
				}
			}
		})
	}
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := runFault(ctx, time.Now(), time.Second, 0, func() error { return nil }, func() error { return nil }); err == nil {
			t.Error("no error from a cancelled run")
		}
	})
}
