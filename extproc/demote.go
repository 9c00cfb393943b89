package extproc

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/detourhq/detour/route"
)

// Local demotion: the processor's own, immediate answer to a hard fault.
//
// The controller judges backends on Envoy's statistics every
// controller.interval, so a backend that starts refusing every connection
// keeps receiving new requests for one to one and a half seconds; Envoy
// retries each on the next backend, so no client fails, but every such
// request pays a failed first attempt. The per-attempt stage sees those
// retries as they happen: an attempt for another backend than the
// request's previous one means that backend failed it. When, within
// demoteWindow, at least demoteMinMoves attempts moved away from a backend
// and they are at least half of the attempts it was routed, this processor
// ranks it as recovering (route.TrialRank) in its own decisions: after
// every healthy backend, first only for one request in demoteTrialEvery,
// a trial. The demotion ends when the controller's view ranks the backend
// anything but HEALTHY (the controller has taken over), when
// demoteTrialsToEnd trials in a row start with none retried away between
// them (a backend whose failures end quickly, as these do, has answered
// the earlier one) and under a quarter of its trials were (a lost region
// whose endpoint Envoy has since ejected, the backend's other region
// serving; not a backend throttling 60 % of its requests, whose lucky
// trials would otherwise end and restart the demotion every second), or
// after demoteHold (the controller disagrees).
const (
	demoteWindow      = time.Second
	demoteMinMoves    = 5
	demoteHold        = 5 * time.Second
	demoteTrialEvery  = 3
	demoteTrialsToEnd = 2
	// demoteMemory: how long a request's last attempt is remembered, at
	// least; beyond the retry back-off cap (1.2 s) plus a slow failure.
	demoteMemory = 5 * time.Second
)

// demotions holds the per-backend counts and the demotions in force. The
// hot path (every routing decision) reads only active while nothing is
// demoted.
type demotions struct {
	mu     sync.Mutex
	by     map[string]*demotion
	active atomic.Int32  // entries with until set
	trials atomic.Uint64 // decisions made with a demotion in force
	// last is the cluster of each request's latest attempt, by
	// x-request-id, in two generations swapped every demoteMemory: a
	// retry's headers no longer carry the routed backend (the first
	// attempt removed detour's headers, and Envoy keeps them removed), so
	// the backend it moves away from is found here.
	last, older map[string]string
	swapped     time.Time
	now         func() time.Time
	count       func(backend string)
	log         *slog.Logger
	// viewed reports whether the controller's view already ranks a
	// backend below HEALTHY: nothing to demote then (nil: never).
	viewed func(backend string) bool
}

// demotion counts one backend's attempts in two half-window buckets
// ([0]: the current half, from start) and when its demotion ends.
type demotion struct {
	start         time.Time
	routed, moved [2]int
	until         time.Time
	// clean counts the attempts routed to the backend while demoted
	// (trials) since the last one retried away from it; trials and failed
	// count them, and those retried away, since the demotion began.
	clean, trials, failed int
}

func newDemotions(log *slog.Logger, count func(backend string)) *demotions {
	return &demotions{by: map[string]*demotion{}, last: map[string]string{}, older: map[string]string{},
		now: time.Now, count: count, log: log}
}

// roll moves the buckets on to now.
func (e *demotion) roll(now time.Time) {
	const half = demoteWindow / 2
	switch d := now.Sub(e.start); {
	case d < half:
		return
	case d < 2*half:
		e.routed[1], e.moved[1] = e.routed[0], e.moved[0]
	default:
		e.routed[1], e.moved[1] = 0, 0
	}
	e.routed[0], e.moved[0] = 0, 0
	e.start = now
}

// entry is backend's counts, rolled on to now.
func (d *demotions) entry(backend string, now time.Time) *demotion {
	e := d.by[backend]
	if e == nil {
		e = &demotion{start: now}
		d.by[backend] = e
	}
	e.roll(now)
	return e
}

// observe records one upstream attempt of request id: cluster is where it
// goes, routed the backend its request was routed to if the attempt's
// headers still say so ("" on a retry).
func (d *demotions) observe(id, routed, cluster string) {
	if d == nil || cluster == "" {
		return
	}
	now := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if now.Sub(d.swapped) >= demoteMemory {
		d.older, d.last = d.last, d.older
		clear(d.last)
		d.swapped = now
	}
	from := routed
	if from == "" {
		if from = d.last[id]; from == "" {
			from = d.older[id]
		}
	}
	if id != "" {
		d.last[id] = cluster
	}
	switch {
	case from == "":
		return
	case from == cluster:
		if routed == "" {
			return // a retry on the same backend (another region)
		}
		// A first attempt (or a hedge of it).
		e := d.entry(from, now)
		e.routed[0]++
		if !e.until.IsZero() {
			e.trials++
			if e.clean++; e.clean >= demoteTrialsToEnd && 4*e.failed < e.trials {
				d.end(e)
				d.log.Info("locally demoted backend answers again", "backend", from, "trials", demoteTrialsToEnd)
			}
		}
		return
	}
	e := d.entry(from, now)
	e.moved[0]++
	e.clean = 0
	if !e.until.IsZero() {
		e.failed++
		return
	}
	moved, tried := e.moved[0]+e.moved[1], e.routed[0]+e.routed[1]
	if moved < demoteMinMoves || 2*moved < tried || d.viewed != nil && d.viewed(from) {
		return
	}
	e.until, e.clean, e.trials, e.failed = now.Add(demoteHold), 0, 0, 0
	d.active.Add(1)
	if d.count != nil {
		d.count(from)
	}
	d.log.Warn("backend demoted locally: its attempts are being retried elsewhere", "backend", from,
		"moved", moved, "routed", tried, "within", demoteWindow, "until_controller_or", demoteHold)
}

// end ends e's demotion.
func (d *demotions) end(e *demotion) {
	e.until = time.Time{}
	d.active.Add(-1)
}

// overlay returns the ranks to decide with: rank (the view's, nil for all
// HEALTHY) with every backend demoted here ranked recovering, written into
// buf; nil when no demotion applies. A demotion ends when it expires or
// the view already ranks its backend below HEALTHY. trial says whether
// this decision is one of the demoted backends' trials.
func (d *demotions) overlay(r *route.Router, rank, buf []uint8) (out []uint8, trial bool) {
	if d == nil || d.active.Load() == 0 {
		return nil, false
	}
	now := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	for name, e := range d.by {
		if e.until.IsZero() {
			continue
		}
		i, known := r.BackendIndex(name)
		if !now.Before(e.until) || !known || i < len(rank) && rank[i] > 0 {
			d.end(e)
			continue
		}
		if out == nil {
			n := len(r.Backends())
			out = append(buf[:0], rank...)
			for len(out) < n {
				out = append(out, 0)
			}
		}
		out[i] = route.TrialRank
	}
	if out == nil {
		return nil, false
	}
	return out, d.trials.Add(1)%demoteTrialEvery == 0
}
