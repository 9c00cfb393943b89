// Package demote is local demotion: a router's own, immediate answer to a
// hard fault, before the live-metrics controller's next view.
//
// The controller judges backends on Envoy's statistics every
// controller.interval, so a backend that starts refusing every connection
// keeps receiving new requests for one to one and a half seconds; Envoy
// retries each on the next backend, so no client fails, but every such
// request pays a failed first attempt. A per-attempt filter (the ext_proc
// service's upstream stage, or the wasm plugin's upstream role) sees those
// retries as they happen: an attempt for another backend than the
// request's previous one means that backend failed it. When, within
// Window, at least MinMoves attempts moved away from a backend and they
// are at least half of the attempts it was routed, the router ranks it as
// recovering (route.TrialRank) in its own decisions: after every healthy
// backend, first only for one request in TrialEvery, a trial. The
// demotion ends when the controller's view ranks the backend anything but
// HEALTHY (the controller has taken over), when TrialsToEnd trials in a
// row start with none retried away between them (a backend whose
// failures end quickly, as these do, has answered the earlier one) and
// under a quarter of its trials were (a lost region whose endpoint Envoy
// has since ejected, the backend's other region serving; not a backend
// throttling 60 % of its requests, whose lucky trials would otherwise end
// and restart the demotion every second), or after Hold (the controller
// disagrees).
//
// The package uses the standard library and package route only: the wasm
// plugin compiles it too. A Tracker is not safe for concurrent use; the
// ext_proc service locks around it, the plugin's VM runs one callback at
// a time. See docs/decisions/0016-local-demotion-and-silence-check.md.
package demote

import (
	"time"

	"github.com/detourhq/detour/route"
)

// The rule's constants.
const (
	Window      = time.Second
	MinMoves    = 5
	Hold        = 5 * time.Second
	TrialEvery  = 3
	TrialsToEnd = 2
	// memory: how long a request's last attempt is remembered, at least;
	// beyond the retry back-off cap (1.2 s) plus a slow failure.
	memory = 5 * time.Second
	// maxNames bounds the backend names interned.
	maxNames = 1024
)

// Tracker holds the per-backend counts and the demotions in force.
type Tracker struct {
	by     map[string]*entry
	active int    // entries with until set
	trials uint64 // decisions made with a demotion in force
	// last is the cluster of each request's latest attempt, by a 64-bit
	// hash of its x-request-id, in two generations swapped every memory:
	// a retry's headers no longer carry the routed backend (the first
	// attempt removed detour's headers, and Envoy keeps them removed), so
	// the backend it moves away from is found here. Hashed keys and
	// interned names keep no request's strings alive: the plugin's GC
	// runs inside a request's callback.
	last, older map[uint64]string
	names       map[string]string
	swapped     time.Time
	// Viewed reports whether the controller's view already ranks a
	// backend below HEALTHY: nothing to demote then (nil: never).
	Viewed func(backend string) bool
}

// entry counts one backend's attempts in two half-window buckets ([0]:
// the current half, from start) and when its demotion ends.
type entry struct {
	start         time.Time
	routed, moved [2]int
	until         time.Time
	// clean counts the attempts routed to the backend while demoted
	// (trials) since the last one retried away from it; trials and failed
	// count them, and those retried away, since the demotion began.
	clean, trials, failed int
}

// New returns an empty tracker.
func New() *Tracker {
	return &Tracker{by: map[string]*entry{}, last: map[uint64]string{}, older: map[uint64]string{}, names: map[string]string{}}
}

// EventKind says what an observed attempt changed.
type EventKind uint8

const (
	// Nothing changed.
	Nothing EventKind = iota
	// Demoted: the attempt's evidence demoted Event.Backend.
	Demoted
	// Answers: the demoted Event.Backend's trials succeed again; its
	// demotion ended.
	Answers
)

// Event is what one observed attempt changed, for the caller to log and
// count. Moved and Routed are the evidence of a demotion: attempts moved
// away from the backend, of those routed to it, within Window.
type Event struct {
	Kind          EventKind
	Backend       string
	Moved, Routed int
}

// Active is the number of demotions in force (some may have expired;
// Overlay ends those).
func (t *Tracker) Active() int { return t.active }

// roll moves the buckets on to now.
func (e *entry) roll(now time.Time) {
	const half = Window / 2
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
func (t *Tracker) entry(backend string, now time.Time) *entry {
	e := t.by[backend]
	if e == nil {
		e = &entry{start: now}
		t.by[backend] = e
	}
	e.roll(now)
	return e
}

// Observe records one upstream attempt of request id at now: cluster is
// where it goes, routed the backend its request was routed to if the
// attempt's headers still say so ("" on a retry).
func (t *Tracker) Observe(now time.Time, id, routed, cluster string) Event {
	if cluster == "" {
		return Event{}
	}
	if now.Sub(t.swapped) >= memory {
		t.older, t.last = t.last, t.older
		clear(t.last)
		t.swapped = now
	}
	key := idKey(id)
	from := routed
	if from == "" && id != "" {
		if from = t.last[key]; from == "" {
			from = t.older[key]
		}
	}
	if id != "" {
		t.last[key] = t.intern(cluster)
	}
	switch {
	case from == "":
		return Event{}
	case from == cluster:
		if routed == "" {
			return Event{} // a retry on the same backend (another region)
		}
		// A first attempt (or a hedge of it).
		e := t.entry(from, now)
		e.routed[0]++
		if !e.until.IsZero() {
			e.trials++
			if e.clean++; e.clean >= TrialsToEnd && 4*e.failed < e.trials {
				t.end(e)
				return Event{Kind: Answers, Backend: from}
			}
		}
		return Event{}
	}
	e := t.entry(from, now)
	e.moved[0]++
	e.clean = 0
	if !e.until.IsZero() {
		e.failed++
		return Event{}
	}
	moved, tried := e.moved[0]+e.moved[1], e.routed[0]+e.routed[1]
	if moved < MinMoves || 2*moved < tried || t.Viewed != nil && t.Viewed(from) {
		return Event{}
	}
	e.until, e.clean, e.trials, e.failed = now.Add(Hold), 0, 0, 0
	t.active++
	return Event{Kind: Demoted, Backend: from, Moved: moved, Routed: tried}
}

// idKey is the FNV-1a hash of a request id.
func idKey(id string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(id); i++ {
		h ^= uint64(id[i])
		h *= 1099511628211
	}
	return h
}

// intern returns the tracker's copy of name (name itself past maxNames).
func (t *Tracker) intern(name string) string {
	if v, ok := t.names[name]; ok {
		return v
	}
	if len(t.names) < maxNames {
		t.names[name] = name
	}
	return name
}

// end ends e's demotion.
func (t *Tracker) end(e *entry) {
	e.until = time.Time{}
	t.active--
}

// Overlay returns the ranks to decide with at now: rank (the view's, nil
// for all HEALTHY) with every backend demoted here ranked recovering,
// written into buf; nil when no demotion applies. A demotion ends when it
// expires or the view already ranks its backend below HEALTHY. trial says
// whether this decision is one of the demoted backends' trials.
func (t *Tracker) Overlay(now time.Time, r *route.Router, rank, buf []uint8) (out []uint8, trial bool) {
	if t.active == 0 {
		return nil, false
	}
	for name, e := range t.by {
		if e.until.IsZero() {
			continue
		}
		i, known := r.BackendIndex(name)
		if !now.Before(e.until) || !known || i < len(rank) && rank[i] > 0 {
			t.end(e)
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
	t.trials++
	return out, t.trials%TrialEvery == 0
}
