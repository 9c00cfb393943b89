package controller

import (
	"fmt"
	"math"
	"time"

	"github.com/detourhq/detour/health"
	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/policy"
)

const (
	// shedBelow: a route whose healthy share falls under it sheds
	// sheddable requests. Half: losing half of a route's capacity is when
	// the rest is likely to be overrun by the whole demand.
	shedBelow = 0.5
	// While a route's backends throttle, its shed level moves each
	// evaluation on the share of requests its live backends take: up by
	// shedStep while it is under shedBelow, down by shedStep while it is
	// over shedEase, by shedClearStep over shedClear (the overload has
	// passed: give capacity back at once).
	// Between shedBelow and shedEase it holds: shedding is what brought
	// the share up, so the share alone cannot say it is no longer needed.
	shedStep      = 0.25
	shedEase      = 0.6
	shedClear     = 0.9
	shedClearStep = 1.0
	// Levels: 0 nothing shed, 1 every sheddable request, 2 every standard
	// one too; fractions between.
	levelSheddable, levelStandard = 1.0, 2.0
)

// shareOf is a backend's contribution to a route's healthy capacity: its
// state's weight times taken, the share of its recent requests it did
// not answer with 429 (1 when it is not throttling). A full backend that
// turns away a few of its requests still serves most of them; one that
// turns away most is little capacity, whatever its state.
func shareOf(s health.State, taken float64) float64 {
	w := 0.0
	switch s {
	case health.Healthy:
		w = 1
	case health.Degraded:
		w = 0.5
	case health.HalfOpen:
		w = 0.25
	}
	return w * min(max(taken, 0), 1)
}

// targets are the names clients send and the backends behind each.
func targets(p *policy.Policy) map[string][]string {
	out := map[string][]string{}
	for _, b := range p.Backends {
		out[b.Model] = append(out[b.Model], b.Name)
	}
	for _, r := range p.Routes {
		if len(r.Backends) > 0 {
			out[r.Name] = append([]string(nil), r.Backends...)
			continue
		}
		for _, b := range p.Backends {
			out[r.Name] = append(out[r.Name], b.Name)
		}
	}
	return out
}

// shedder decides what each route refuses, remembering each route's
// shed level between evaluations.
type shedder struct {
	level map[string]float64
}

func newShedder() *shedder { return &shedder{level: map[string]float64{}} }

// shed decides what each route refuses.
//   - Every backend OPEN (nothing else can serve): refuse standard and
//     sheddable; critical requests still go, to the OPEN backends as a
//     last resort. Retry-After: until the first cool-down ends.
//   - Healthy share by state alone under shedBelow (capacity lost to
//     failures): refuse sheddable requests.
//   - Some backend throttling (demand past what the providers take): the
//     level moves a step at a time on the share of the requests the
//     route's live backends take (state weighted), sheddable requests
//     first, then standard ones, never critical ones; a fraction of the
//     priority at the edge is admitted (Route.Admit). Capacity lost to
//     failures is left out of that share: a route with one backend OPEN
//     and the other turning away a few requests is not overloaded.
//
// taken holds, for each throttling backend, the share of its recent
// requests it did not answer with 429; backends not in it are not
// throttling.
func (s *shedder) shed(p *policy.Policy, now time.Time, st map[string]health.Status, taken map[string]float64) map[string]healthview.Route {
	out := map[string]healthview.Route{}
	all := targets(p)
	for name := range s.level {
		if _, ok := all[name]; !ok {
			delete(s.level, name) // the policy dropped the route
		}
	}
	for name, backends := range all {
		total, byState, open, throttling := 0.0, 0.0, 0, false
		var retryAt time.Time
		for _, b := range backends {
			t, ok := taken[b]
			if ok {
				throttling = true
			} else {
				t = 1
			}
			bs := st[b]
			total += shareOf(bs.State, t)
			byState += shareOf(bs.State, 1)
			if bs.State == health.Open {
				open++
				if retryAt.IsZero() || bs.RetryAt.Before(retryAt) {
					retryAt = bs.RetryAt
				}
			}
		}
		r := healthview.Route{HealthyShare: total / float64(len(backends))}
		floor := 0.0
		if byState/float64(len(backends)) < shedBelow {
			floor = levelSheddable
		}
		level := s.level[name]
		if throttling && byState > 0 {
			switch load := total / byState; {
			case load < shedBelow:
				level += shedStep
			case load > shedClear:
				level -= shedClearStep
			case load > shedEase:
				level -= shedStep
			}
		} else {
			level = floor
		}
		level = min(max(level, floor), levelStandard)
		s.level[name] = level
		switch {
		case open == len(backends):
			r.Shed = healthview.Standard
			r.Reason = fmt.Sprintf("all %d backends are OPEN", open)
			r.RetryAfter = max(1, int(math.Ceil(retryAt.Sub(now).Seconds())))
		case level > levelSheddable:
			r.Shed, r.Admit = healthview.Standard, levelStandard-level
		case level > 0:
			r.Shed, r.Admit = healthview.Sheddable, levelSheddable-level
		}
		if r.Shed != "" && open < len(backends) {
			r.RetryAfter = 2
			if level > floor {
				r.Reason = fmt.Sprintf("backends turning requests away: they take %.0f%% of them", 100*total/byState)
			} else {
				r.Reason = fmt.Sprintf("healthy capacity share %.2f < %.2f", byState/float64(len(backends)), shedBelow)
			}
			if r.Admit > 0 {
				r.Reason += fmt.Sprintf("; admitting %.0f%% of %s requests", 100*r.Admit, r.Shed)
			}
		}
		out[name] = r
	}
	return out
}
