package main

import (
	"context"
	"fmt"
	"time"
)

// faultSpan is what runFault did, in durations from the run's start.
type faultSpan struct {
	// FaultAt: the fault went on; ClearAt: it was cleared for good.
	FaultAt, ClearAt time.Duration
	// Windows are the spans it was on (several when it flapped).
	Windows [][2]time.Duration
	// Flips counts its changes before the final clear (1: on once).
	Flips int
}

// runFault puts a fault on (on) now, keeps it for d, turning it off and
// on again every flap meanwhile when flap > 0, and clears it (off) at the
// end. The controller benchmark and the chaos suite share it.
func runFault(ctx context.Context, start time.Time, d, flap time.Duration, on, off func() error) (faultSpan, error) {
	s := faultSpan{FaultAt: time.Since(start)}
	if err := on(); err != nil {
		return s, fmt.Errorf("set the fault: %w", err)
	}
	s.Flips = 1
	end := start.Add(s.FaultAt + d)
	onSince, isOn := s.FaultAt, true
	for flap > 0 {
		next := time.Now().Add(flap)
		if next.After(end) {
			next = end
		}
		if err := sleepCtx(ctx, time.Until(next)); err != nil {
			return s, err
		}
		if !next.Before(end) {
			break
		}
		isOn = !isOn
		f := off
		if isOn {
			f, onSince = on, time.Since(start)
		} else {
			s.Windows = append(s.Windows, [2]time.Duration{onSince, time.Since(start)})
		}
		if err := f(); err != nil {
			return s, fmt.Errorf("flap the fault: %w", err)
		}
		s.Flips++
	}
	if flap <= 0 {
		if err := sleepCtx(ctx, time.Until(end)); err != nil {
			return s, err
		}
	}
	s.ClearAt = time.Since(start)
	if isOn {
		s.Windows = append(s.Windows, [2]time.Duration{onSince, s.ClearAt})
	}
	if err := off(); err != nil {
		return s, fmt.Errorf("clear the fault: %w", err)
	}
	return s, nil
}
