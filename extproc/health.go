package extproc

import (
	"sync"
	"sync/atomic"

	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/route"
)

// HeaderPriority carries a request's priority (critical, standard,
// sheddable); without it the route's default applies.
const HeaderPriority = route.HeaderPriorityName

// HealthSource gives the controller's latest view of the backends; nil
// means none yet (every backend healthy, nothing shed).
// *viewhttp.Watcher is one.
type HealthSource interface {
	View() *healthview.Snapshot
}

// healthRanks is a view turned into what one router needs, built once per
// view version and router (a policy reload makes a new router).
type healthRanks struct {
	version uint64
	router  *route.Router
	healthview.Ranks
}

// healthState holds the ranks cache, the trial counter and this
// processor's own demotions.
type healthState struct {
	src    HealthSource
	cache  atomic.Pointer[healthRanks]
	trials atomic.Uint64
	draws  sync.Map // route → *atomic.Uint64: shedding's draws (healthview.Draw)
	local  *demotions
}

// forRequest returns the health to route this request with (nil: all
// healthy) and the view it came from. buf holds the ranks when local
// demotions change the view's.
func (h *healthState) forRequest(r *route.Router, out *route.Health, buf *[]uint8) (*route.Health, *healthview.Snapshot) {
	if h == nil {
		return nil, nil
	}
	var v *healthview.Snapshot
	if h.src != nil {
		v = h.src.View()
	}
	var c *healthRanks
	if v != nil {
		c = h.cache.Load()
		if c == nil || c.version != v.Version || c.router != r {
			c = buildRanks(v, r)
			h.cache.Store(c)
		}
	}
	var rank []uint8
	if c != nil && c.Any {
		rank = c.Rank
	}
	if local, trial := h.local.overlay(r, rank, *buf); local != nil {
		*buf = local
		out.Rank, out.Trial = local, trial || c != nil && c.Trial && h.trials.Add(1)%c.TrialEvery == 0
		return out, v
	}
	if rank == nil {
		return nil, v
	}
	out.Rank = rank
	out.Trial = c.Trial && h.trials.Add(1)%c.TrialEvery == 0
	return out, v
}

// viewRanksLow reports whether the latest view used for routing ranks
// backend below HEALTHY.
func (h *healthState) viewRanksLow(backend string) bool {
	c := h.cache.Load()
	if c == nil {
		return false
	}
	i, ok := c.router.BackendIndex(backend)
	return ok && c.Low(i)
}

func buildRanks(v *healthview.Snapshot, r *route.Router) *healthRanks {
	bs := r.Backends()
	return &healthRanks{version: v.Version, router: r, Ranks: v.RanksFor(len(bs), func(i int) string { return bs[i].Name })}
}

// priorityOf validates a priority header value; "" is none.
func priorityOf(v string) (string, bool) { return v, healthview.ValidPriority(v) }

// draw is the route's next shedding draw. Each route has its own
// sequence, so that its requests get its admitted share however other
// routes' requests interleave.
func (h *healthState) draw(route string) float64 {
	c, ok := h.draws.Load(route)
	if !ok {
		c, _ = h.draws.LoadOrStore(route, new(atomic.Uint64))
	}
	return healthview.Draw(c.(*atomic.Uint64).Add(1))
}
