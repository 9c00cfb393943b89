package main

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// chaosTimeline is a run at 10 requests/s from 0 to end: who answers each
// request is given by at(t).
func chaosTimeline(end time.Duration, at func(t time.Duration) ctlOutcome) []ctlOutcome {
	var out []ctlOutcome
	for t := time.Duration(0); t < end; t += 100 * time.Millisecond {
		o := at(t)
		o.At = t
		out = append(out, o)
	}
	return out
}

func answered(sim string) ctlOutcome { return ctlOutcome{Status: http.StatusOK, Sim: sim, Attempts: 1} }

func TestChaosShift(t *testing.T) {
	target := []string{"fast-east"}
	s := func(d float64) time.Duration { return time.Duration(d * float64(time.Second)) }
	tests := []struct {
		name      string
		at        func(time.Duration) ctlOutcome
		want      time.Duration
		shifted   bool
		wantTrial bool
	}{
		{"moved at 2 s", func(t time.Duration) ctlOutcome {
			if t < s(2) {
				return answered("fast-east")
			}
			return answered("fastb-east")
		}, s(2), true, false},
		{"retried requests count as going to the fault", func(t time.Duration) ctlOutcome {
			o := answered("fastb-east")
			if t < s(3) {
				o.Attempts = 2
			}
			return o
		}, s(3), true, false},
		{"failures count as going to the fault", func(t time.Duration) ctlOutcome {
			if t < s(1) {
				return ctlOutcome{Status: 503}
			}
			return answered("fastb-east")
		}, s(1), true, false},
		{"trials are left out", func(t time.Duration) ctlOutcome {
			if int(t/(100*time.Millisecond))%5 == 0 {
				o := answered("fast-east")
				o.Reason = "trial"
				return o
			}
			return answered("fastb-east")
		}, 0, true, true},
		{"a fifth still going there never shifted", func(t time.Duration) ctlOutcome {
			if int(t/(100*time.Millisecond))%5 == 0 {
				return answered("fast-east")
			}
			return answered("fastb-east")
		}, 0, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := chaosTimeline(s(10), tc.at)
			got, residual, ok := chaosShift(out, target, 0, s(10))
			if ok != tc.shifted || (ok && got != tc.want) {
				t.Errorf("shift %v (%v), want %v (%v)", got, ok, tc.want, tc.shifted)
			}
			if ok && residual > chaosShiftShare {
				t.Errorf("residual %v", residual)
			}
			f := chaosFiguresOf(chaosScenario{Target: target}, &chaosRun{Outcomes: out, FaultAt: 0, ClearAt: s(10), End: s(10)})
			if (f.Trials > 0) != tc.wantTrial {
				t.Errorf("%d trials", f.Trials)
			}
		})
	}
}

func TestChaosRecover(t *testing.T) {
	target := []string{"fast-east"}
	s := func(d float64) time.Duration { return time.Duration(d * float64(time.Second)) }
	// Fault from 2 s to 4 s; the run ends at 10 s.
	tests := []struct {
		name   string
		target []string
		at     func(time.Duration) ctlOutcome
		want   time.Duration
		ok     bool
	}{
		{"traffic back 3 s after the fault", target, func(t time.Duration) ctlOutcome {
			if t >= s(2) && t < s(7) {
				return answered("fastb-east")
			}
			return answered("fast-east")
		}, s(2.9), true}, // the window from 6.9 s has 9 of 10 back: 90 %
		{"never back", target, func(t time.Duration) ctlOutcome {
			if t >= s(2) {
				return answered("fastb-east")
			}
			return answered("fast-east")
		}, 0, false},
		{"no target: the first window without failures", nil, func(t time.Duration) ctlOutcome {
			if t >= s(2) && t < s(5) {
				return ctlOutcome{Status: 503}
			}
			return answered("fast-east")
		}, s(1), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := chaosRecover(chaosTimeline(s(10), tc.at), tc.target, s(2), s(4), s(10))
			if ok != tc.ok || (ok && got != tc.want) {
				t.Errorf("recover %v (%v), want %v (%v)", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestJudge(t *testing.T) {
	hard := chaosScenario{Kind: kindHard, Target: []string{"fast-east"}}
	stat := chaosScenario{Kind: kindStatistical, Target: []string{"fast-east"}}
	infra := chaosScenario{Kind: kindInfra}
	tests := []struct {
		name   string
		sc     chaosScenario
		d, b   *chaosFigures
		missed string
		allMet bool
	}{
		{"hard, all met", hard, &chaosFigures{Shifted: true, Shift: 900 * time.Millisecond}, &chaosFigures{Failed: 600}, "", true},
		{"hard, shifted too late", hard, &chaosFigures{Shifted: true, Shift: 1200 * time.Millisecond}, &chaosFigures{Failed: 600}, "shift < 1s", false},
		{"statistical has 5 s", stat, &chaosFigures{Shifted: true, Shift: 4 * time.Second}, &chaosFigures{Failed: 10}, "", true},
		{"failures, but 100× fewer", stat, &chaosFigures{Failed: 2, Shifted: true}, &chaosFigures{Failed: 200}, "0 failed", false},
		{"failures, not 100× fewer", stat, &chaosFigures{Failed: 3, Shifted: true}, &chaosFigures{Failed: 200}, "100×", false},
		{"infrastructure: no shift, no baseline", infra, &chaosFigures{}, nil, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := judge(tc.sc, tc.d, tc.b)
			if v.allMet() != tc.allMet {
				t.Errorf("allMet %v, want %v (%+v)", v.allMet(), tc.allMet, v)
			}
			if tc.missed != "" && !strings.Contains(strings.Join(v.missed(), "; "), tc.missed) {
				t.Errorf("missed %v, want it to name %q", v.missed(), tc.missed)
			}
		})
	}
}

func TestSoakChecks(t *testing.T) {
	mib := float64(1 << 20)
	run := func(rssEnd, goroutinesAfter float64) *soakResult {
		r := &soakResult{Duration: 4 * time.Minute, Warmup: time.Minute, Samples: map[string][]soakSampleOf{}}
		ss := []soakSampleOf{{Phase: "idle-before", Goroutines: 20, FDs: 12}}
		for at := time.Duration(0); at <= 4*time.Minute; at += 10 * time.Second {
			rss := 40 * mib
			if at > 3*time.Minute {
				rss = rssEnd
			}
			ss = append(ss, soakSampleOf{At: at, Phase: "load", Goroutines: 200, FDs: 40, RSS: rss})
		}
		ss = append(ss, soakSampleOf{Phase: "idle-after", Goroutines: goroutinesAfter, FDs: 13})
		r.Samples["detour extproc"] = ss
		r.Checks = soakChecks(r)
		return r
	}
	if bad := run(42*mib, 25).failed(); len(bad) != 0 {
		t.Errorf("flat run failed: %v", bad)
	}
	if bad := run(48*mib, 25).failed(); len(bad) != 1 || !strings.Contains(bad[0], "RSS") {
		t.Errorf("growing RSS: %v", bad)
	}
	if bad := run(40*mib, 90).failed(); len(bad) != 1 || !strings.Contains(bad[0], "goroutines") {
		t.Errorf("leaked goroutines: %v", bad)
	}
}
