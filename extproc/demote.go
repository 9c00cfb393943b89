package extproc

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/detourhq/detour/demote"
	"github.com/detourhq/detour/route"
)

// demotions is the processor's local demotion (package demote): the
// upstream stage observes every attempt, each routing decision overlays
// the demotions in force. The hot path (every routing decision) reads
// only active while nothing is demoted.
type demotions struct {
	mu     sync.Mutex
	t      *demote.Tracker
	active atomic.Int32 // t.Active(), read without the lock
	now    func() time.Time
	count  func(backend string)
	log    *slog.Logger
}

func newDemotions(log *slog.Logger, count func(backend string)) *demotions {
	return &demotions{t: demote.New(), now: time.Now, count: count, log: log}
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
	ev := d.t.Observe(now, id, routed, cluster)
	if ev.Kind != demote.Nothing { // only events change the count
		d.active.Store(int32(d.t.Active()))
	}
	d.mu.Unlock()
	switch ev.Kind {
	case demote.Demoted:
		if d.count != nil {
			d.count(ev.Backend)
		}
		d.log.Warn("backend demoted locally: its attempts are being retried elsewhere", "backend", ev.Backend,
			"moved", ev.Moved, "routed", ev.Routed, "within", demote.Window, "until_controller_or", demote.Hold)
	case demote.Answers:
		d.log.Info("locally demoted backend answers again", "backend", ev.Backend, "trials", demote.TrialsToEnd)
	}
}

// overlay returns the ranks to decide with (demote.Tracker.Overlay): rank
// (the view's, nil for all HEALTHY) with every backend demoted here
// ranked recovering, written into buf; nil when no demotion applies.
func (d *demotions) overlay(r *route.Router, rank, buf []uint8) (out []uint8, trial bool) {
	if d == nil || d.active.Load() == 0 {
		return nil, false
	}
	now := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	out, trial = d.t.Overlay(now, r, rank, buf)
	d.active.Store(int32(d.t.Active()))
	return out, trial
}
