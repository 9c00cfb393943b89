package extproc

import (
	"sync/atomic"

	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/route"
)

// HeaderPriority carries a request's priority (critical, standard,
// sheddable); without it the route's default applies.
const HeaderPriority = route.HeaderPriorityName

// HealthSource gives the controller's latest view of the backends; nil
// means none yet (every backend healthy, nothing shed).
// *healthview.Watcher is one.
type HealthSource interface {
	View() *healthview.Snapshot
}

// healthRanks is a view turned into what one router needs, built once per
// view version and router (a policy reload makes a new router).
type healthRanks struct {
	version uint64
	router  *route.Router
	ranks   []uint8
	any     bool // some backend is not HEALTHY
	trial   bool // some backend is HALF_OPEN
	// trialEvery: one request in this many is a trial for a recovering
	// backend (from the controller's trial_share).
	trialEvery uint64
	view       *healthview.Snapshot
}

// healthState holds the ranks cache and the trial counter.
type healthState struct {
	src    HealthSource
	cache  atomic.Pointer[healthRanks]
	trials atomic.Uint64
}

// forRequest returns the health to route this request with (nil: all
// healthy) and the view it came from.
func (h *healthState) forRequest(r *route.Router, out *route.Health) (*route.Health, *healthview.Snapshot) {
	if h == nil || h.src == nil {
		return nil, nil
	}
	v := h.src.View()
	if v == nil {
		return nil, nil
	}
	c := h.cache.Load()
	if c == nil || c.version != v.Version || c.router != r {
		c = buildRanks(v, r)
		h.cache.Store(c)
	}
	if !c.any {
		return nil, v
	}
	out.Rank = c.ranks
	out.Trial = c.trial && h.trials.Add(1)%c.trialEvery == 0
	return out, v
}

func buildRanks(v *healthview.Snapshot, r *route.Router) *healthRanks {
	c := &healthRanks{version: v.Version, router: r, view: v, trialEvery: 20}
	if v.TrialShare > 0 {
		c.trialEvery = max(1, uint64(1/v.TrialShare+0.5))
	}
	bs := r.Backends()
	c.ranks = make([]uint8, len(bs))
	for i := range bs {
		b, ok := v.Backends[bs[i].Name]
		if !ok {
			continue
		}
		c.ranks[i] = healthview.Rank(b.State)
		if b.Throttled && c.ranks[i] == 0 {
			c.ranks[i] = 1 // full: after the backends with room
		}
		if c.ranks[i] != 0 {
			c.any = true
		}
		if c.ranks[i] == 1 || c.ranks[i] == route.TrialRank {
			c.trial = true
		}
	}
	return c
}

// priorityOf validates a priority header value; "" is none.
func priorityOf(v string) (string, bool) {
	switch v {
	case "", policy.PriorityCritical, policy.PriorityStandard, policy.PrioritySheddable:
		return v, true
	}
	return "", false
}
