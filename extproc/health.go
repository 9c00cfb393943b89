package extproc

import (
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
	if !c.Any {
		return nil, v
	}
	out.Rank = c.Rank
	out.Trial = c.Trial && h.trials.Add(1)%c.TrialEvery == 0
	return out, v
}

func buildRanks(v *healthview.Snapshot, r *route.Router) *healthRanks {
	bs := r.Backends()
	return &healthRanks{version: v.Version, router: r, Ranks: v.RanksFor(len(bs), func(i int) string { return bs[i].Name })}
}

// priorityOf validates a priority header value; "" is none.
func priorityOf(v string) (string, bool) { return v, healthview.ValidPriority(v) }
