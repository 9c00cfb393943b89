package main

import (
	"slices"
	"strconv"
	"time"

	"github.com/detourhq/detour/bench/loadgen"
)

// reqRecord is what the failover load loop keeps of one scheduled request.
type reqRecord struct {
	// Sched is the request's scheduled send time, from the start of the run.
	Sched time.Duration
	// Status is the HTTP status answered; 0 when there was no response.
	Status int
	// Server is the x-sim-name header of the response: which simulated
	// provider answered.
	Server string
	// Latency is from the scheduled send time to the end of the body.
	Latency time.Duration
	// Err is "" or a short error kind; errDropped when the request was not
	// sent because too many were in flight.
	Err string
}

const errDropped = "dropped (too many in flight)"

// ok reports whether the client got a complete 2xx answer.
func (r reqRecord) ok() bool { return r.Err == "" && r.Status >= 200 && r.Status < 300 }

// sent reports whether the request went out (it was not dropped).
func (r reqRecord) sent() bool { return r.Err != errDropped }

// servedBy reports whether backend answered the request successfully.
func (r reqRecord) servedBy(backend string) bool { return r.ok() && r.Server == backend }

// Shift detection: the share of a sliding window's requests that the
// fallback must serve.
const (
	shiftWindow = 200 * time.Millisecond
	shiftShare  = 0.99
)

// shiftTime is how long after the fault the traffic had moved to the
// fallback for good: the scheduled time, from the fault, of the first
// request from which on every window of w (sliding one request at a time,
// over requests scheduled at or after the fault) has at least share of its
// requests answered 2xx by fallback. Only complete windows count (a later
// request exists beyond the window's end). ok is false when the last
// complete window still misses the share (the traffic never moved) or
// there is no complete window. recs must be in scheduled order.
func shiftTime(recs []reqRecord, fault time.Duration, fallback string, w time.Duration, share float64) (d time.Duration, ok bool) {
	first, _ := slices.BinarySearchFunc(recs, fault, func(r reqRecord, t time.Duration) int {
		return cmpDur(r.Sched, t)
	})
	post := recs[first:]
	n := len(post)
	// good[i]: the window starting at post[i] is complete and meets share;
	// complete[i]: it is complete.
	good := make([]bool, n)
	complete := make([]bool, n)
	j, served := 0, 0 // post[i:j] is the window of post[i]; served counts its fallback answers
	for i := range n {
		if j < i {
			j, served = i, 0
		}
		for j < n && post[j].Sched < post[i].Sched+w {
			if post[j].servedBy(fallback) {
				served++
			}
			j++
		}
		complete[i] = j < n
		good[i] = complete[i] && float64(served) >= share*float64(j-i)
		if post[i].servedBy(fallback) {
			served--
		}
	}
	k := -1 // index after the last complete window that misses the share
	last := -1
	for i := n - 1; i >= 0; i-- {
		if !complete[i] {
			continue
		}
		if last < 0 {
			last = i
		}
		if !good[i] {
			k = i + 1
			break
		}
	}
	switch {
	case last < 0:
		return 0, false // no complete window
	case k < 0:
		k = 0 // every window meets the share
	case k > last:
		return 0, false // the last window still misses it
	}
	return post[k].Sched - fault, true
}

func cmpDur(a, b time.Duration) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// failoverFigures summarise one side's run of the failover scenario.
type failoverFigures struct {
	Scheduled, Sent int
	// Failed counts scheduled requests without a complete 2xx answer
	// (dropped ones included), by kind in FailedBy ("HTTP 503", an error
	// kind, or errDropped); FailedAfter those scheduled at or after the
	// fault.
	Failed, FailedAfter int
	FailedBy            map[string]int
	// ServedBefore / ServedAfter count 2xx answers by the backend that
	// gave them (x-sim-name), for requests scheduled before / from the
	// fault on.
	ServedBefore, ServedAfter map[string]int
	// After is the number of requests scheduled at or after the fault.
	After int
	// Shift is shiftTime for the fallback; Shifted is false if the
	// traffic never moved.
	Shift   time.Duration
	Shifted bool
	// LatBefore / LatAfter: latency of the 2xx answers to requests
	// scheduled before / from the fault on (from the scheduled time).
	LatBefore, LatAfter loadgen.Summary
}

// summarizeFailover computes a side's figures from its records.
func summarizeFailover(recs []reqRecord, fault time.Duration, fallback string) failoverFigures {
	f := failoverFigures{
		Scheduled: len(recs), FailedBy: map[string]int{},
		ServedBefore: map[string]int{}, ServedAfter: map[string]int{},
	}
	var before, after []time.Duration
	for _, r := range recs {
		isAfter := r.Sched >= fault
		if isAfter {
			f.After++
		}
		if r.sent() {
			f.Sent++
		}
		if !r.ok() {
			f.Failed++
			if isAfter {
				f.FailedAfter++
			}
			f.FailedBy[failureKind(r)]++
			continue
		}
		if isAfter {
			f.ServedAfter[r.Server]++
			after = append(after, r.Latency)
		} else {
			f.ServedBefore[r.Server]++
			before = append(before, r.Latency)
		}
	}
	f.LatBefore, f.LatAfter = loadgen.Summarize(before), loadgen.Summarize(after)
	f.Shift, f.Shifted = shiftTime(recs, fault, fallback, shiftWindow, shiftShare)
	return f
}

func failureKind(r reqRecord) string {
	if r.Err != "" {
		return r.Err
	}
	return "HTTP " + strconv.Itoa(r.Status)
}

// timelineRow counts one interval's requests by outcome.
type timelineRow struct {
	Start  time.Duration
	Served map[string]int // 2xx answers by backend
	Failed int
}

// timeline buckets the records by scheduled time into intervals of step.
func timeline(recs []reqRecord, step time.Duration) []timelineRow {
	var rows []timelineRow
	for _, r := range recs {
		i := int(r.Sched / step)
		for len(rows) <= i {
			rows = append(rows, timelineRow{Start: time.Duration(len(rows)) * step, Served: map[string]int{}})
		}
		if r.ok() {
			rows[i].Served[r.Server]++
		} else {
			rows[i].Failed++
		}
	}
	return rows
}

// upstreamTotal sums the requests the simulated providers counted.
func upstreamTotal(byBackend map[string]int64) int64 {
	var n int64
	for _, v := range byBackend {
		n += v
	}
	return n
}
