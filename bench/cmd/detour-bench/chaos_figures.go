package main

import (
	"slices"
	"time"

	"github.com/detourhq/detour/bench/loadgen"
	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/route"
)

// chaosFigures summarise one chaos run. Requests are placed by their start.
type chaosFigures struct {
	// Sent and Failed are over the whole run; FailedDuring over the fault.
	Sent, Failed, FailedDuring int
	// Detect: the first sign, at or after the fault, that something
	// noticed: the controller's view showing a backend of the target not
	// HEALTHY, or Envoy ejecting an endpoint of fast. DetectBy says which.
	Detected bool
	Detect   time.Duration
	DetectBy string
	// Shift: from the fault to the start of the first window (1 s, sliding
	// by 100 ms) from which on at most 1 % of the requests (+ one, for a
	// window's edge) went to the target in every window until the fault
	// ends, and at most 1 % of all of them from there on. Detour's
	// deliberate trial requests (x-detour-reason: trial) are left out:
	// they are its way of finding out when the target is back.
	Shifted bool
	Shift   time.Duration
	// Residual: the share of requests that went to the target from the
	// shift to the end of the fault (trials left out); Trials: the trials
	// during the fault.
	Residual float64
	Trials   int
	// Recover: from the fault's end to the start of the first window from
	// which on no request failed and the target has at least 90 % of its
	// share of traffic before the fault back.
	Recovered bool
	Recover   time.Duration
	// Attempts: Envoy's upstream attempts per client request during the
	// fault. Lat and TTFT: the 200 answers (to their end) and the 200
	// streams (to their first token) started during the fault.
	Attempts  float64
	Lat, TTFT loadgen.Summary
}

func (f chaosFigures) success() float64 {
	if f.Sent == 0 {
		return 0
	}
	return 1 - float64(f.Failed)/float64(f.Sent)
}

// wentTo reports whether o went to one of the target's endpoints: it
// failed, an endpoint of the target answered it, or it took more than one
// attempt (retried away from the fault).
func wentTo(o ctlOutcome, target []string) bool {
	return !o.ok() || slices.Contains(target, o.Sim) || o.Attempts > 1
}

func isTrial(o ctlOutcome) bool { return o.Reason == route.ReasonTrial.String() }

func chaosFiguresOf(sc chaosScenario, r *chaosRun) chaosFigures {
	f := chaosFigures{Sent: len(r.Outcomes)}
	var lat, ttft []time.Duration
	for _, o := range r.Outcomes {
		during := o.At >= r.FaultAt && o.At < r.ClearAt
		if !o.ok() {
			f.Failed++
			if during {
				f.FailedDuring++
			}
		}
		if !during {
			continue
		}
		if isTrial(o) {
			f.Trials++
		}
		if o.ok() {
			lat = append(lat, o.Total)
			if o.Stream {
				ttft = append(ttft, o.TTFT)
			}
		}
	}
	f.Lat, f.TTFT = loadgen.Summarize(lat), loadgen.Summarize(ttft)
	f.Attempts = ctlAttemptsPerRequest(r.Outcomes, r.FaultAt, r.ClearAt)
	f.Detect, f.DetectBy, f.Detected = chaosDetect(sc, r)
	if sc.Target != nil {
		f.Shift, f.Residual, f.Shifted = chaosShift(r.Outcomes, sc.Target, r.FaultAt, r.ClearAt)
	}
	f.Recover, f.Recovered = chaosRecover(r.Outcomes, sc.Target, r.FaultAt, r.ClearAt, r.End)
	return f
}

// chaosDetect is the first sign that the fault was noticed (see
// chaosFigures.Detect).
func chaosDetect(sc chaosScenario, r *chaosRun) (time.Duration, string, bool) {
	backends := map[string]bool{}
	for _, s := range chaosSims {
		if slices.Contains(sc.Target, s.Name) {
			backends[s.Backend] = true
		}
	}
	var at time.Duration
	var by string
	found := false
	for _, st := range r.States {
		if st.At < r.FaultAt {
			continue
		}
		for b := range backends {
			if s := st.States[b]; s != "" && s != healthview.Healthy {
				at, by, found = st.At-r.FaultAt, "controller: "+b+" "+s, true
				break
			}
		}
		if found {
			break
		}
	}
	if sc.Target == nil {
		return at, by, found
	}
	for _, g := range r.Ejections {
		if g.At >= r.FaultAt && g.Value > 0 {
			if d := g.At - r.FaultAt; !found || d < at {
				at, by, found = d, "Envoy outlier ejection", true
			}
			break
		}
	}
	return at, by, found
}

// chaosShift: see chaosFigures.Shift. outcomes are sorted by start.
func chaosShift(outcomes []ctlOutcome, target []string, from, until time.Duration) (time.Duration, float64, bool) {
	count := func(lo, hi time.Duration) (mine, all int) {
		i, _ := slices.BinarySearchFunc(outcomes, lo, func(o ctlOutcome, t time.Duration) int { return cmpDur(o.At, t) })
		for _, o := range outcomes[i:] {
			if o.At >= hi {
				break
			}
			if isTrial(o) {
				continue
			}
			all++
			if wentTo(o, target) {
				mine++
			}
		}
		return mine, all
	}
	var good []bool
	for at := from; at+ctlShiftWindow <= until; at += ctlShiftStep {
		mine, all := count(at, at+ctlShiftWindow)
		good = append(good, mine <= int(chaosShiftShare*float64(all))+1)
	}
	k := len(good)
	for k > 0 && good[k-1] {
		k--
	}
	for ; k < len(good); k++ {
		at := from + time.Duration(k)*ctlShiftStep
		mine, all := count(at, until)
		if all > 0 && float64(mine) <= chaosShiftShare*float64(all) {
			return at - from, float64(mine) / float64(all), true
		}
	}
	return 0, 0, false
}

// chaosRecover: see chaosFigures.Recover.
func chaosRecover(outcomes []ctlOutcome, target []string, faultAt, clearAt, end time.Duration) (time.Duration, bool) {
	share := func(lo, hi time.Duration) (answered float64, failed, all int) {
		n := 0
		for _, o := range outcomes {
			if o.At < lo || o.At >= hi {
				continue
			}
			all++
			if !o.ok() {
				failed++
			} else if slices.Contains(target, o.Sim) {
				n++
			}
		}
		if all == 0 {
			return 0, 0, 0
		}
		return float64(n) / float64(all), failed, all
	}
	// The share before the fault, skipping the run's first quarter
	// (connections warming up).
	before, _, _ := share(faultAt/4, faultAt)
	for at := clearAt; at+ctlShiftWindow <= end; at += ctlShiftStep {
		ok := true
		for w := at; w+ctlShiftWindow <= end && ok; w += ctlShiftStep {
			s, failed, all := share(w, w+ctlShiftWindow)
			// A window without requests (the load generator stalled) judges
			// nothing.
			ok = failed == 0 && (all == 0 || target == nil || s >= chaosRecoverShare*before)
		}
		if ok {
			return at - clearAt, true
		}
	}
	return 0, false
}

// chaosSeries is one run's traffic in bins of chaosBin: per bin, the share
// of requests each provider answered and the share that failed.
type chaosSeries struct {
	At     []time.Duration // bin starts
	Share  map[string][]float64
	Failed []float64
}

func chaosSeriesOf(r *chaosRun) chaosSeries {
	n := int(r.End/chaosBin) + 1
	s := chaosSeries{Share: map[string][]float64{}, Failed: make([]float64, n)}
	for i := range n {
		s.At = append(s.At, time.Duration(i)*chaosBin)
	}
	for _, sm := range chaosSims {
		s.Share[sm.Name] = make([]float64, n)
	}
	all := make([]float64, n)
	for _, o := range r.Outcomes {
		i := int(o.At / chaosBin)
		if i >= n {
			continue
		}
		all[i]++
		switch {
		case !o.ok():
			s.Failed[i]++
		case s.Share[o.Sim] != nil:
			s.Share[o.Sim][i]++
		}
	}
	for i := range n {
		if all[i] == 0 {
			continue
		}
		s.Failed[i] /= all[i]
		for _, v := range s.Share {
			v[i] /= all[i]
		}
	}
	return s
}
