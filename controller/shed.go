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
	// While a route's backends throttle, its shed level moves on the
	// share of requests its live backends take: up by shedStep a second
	// while it is under shedBelow, down by shedStep a second while it is
	// over shedEase, by shedClearStep a second over shedClear (the
	// overload has passed: a whole level a second). Between shedBelow and
	// shedEase it holds: shedding is what brought the share up, so the
	// share alone cannot say it is no longer needed. With the throttling
	// backends' recent requests fewer than minThrottleRequests (a 429 or
	// two is no evidence) it only goes down, by shedStep a second; it
	// holds when a read of the signals brought nothing new.
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
	last  time.Time // the previous evaluation
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
//     and the other turning away a few requests is not overloaded. The
//     throttling over (tuner.throttledNow), the level is the state rule's.
//
// loads holds the recent traffic of each throttling backend; backends
// not in it are not throttling.
func (s *shedder) shed(p *policy.Policy, now time.Time, st map[string]health.Status, loads map[string]load) map[string]healthview.Route {
	// Steps are per second, whatever the interval; the first evaluation
	// counts as one second.
	secs := 1.0
	if !s.last.IsZero() {
		secs = min(max(now.Sub(s.last).Seconds(), 0), 10)
	}
	s.last = now
	out := map[string]healthview.Route{}
	all := targets(p)
	for name := range s.level {
		if _, ok := all[name]; !ok {
			delete(s.level, name) // the policy dropped the route
		}
	}
	for name, backends := range all {
		if len(backends) == 0 {
			continue // policy validation forbids it; no share to divide
		}
		total, byState, requests, open, throttling, stale := 0.0, 0.0, 0.0, 0, false, false
		var retryAt time.Time
		for _, b := range backends {
			l, ok := loads[b]
			if ok {
				throttling = true
				requests += l.requests
				stale = stale || l.stale
			} else {
				l.taken = 1
			}
			bs := st[b]
			total += shareOf(bs.State, l.taken)
			byState += shareOf(bs.State, 1)
			if bs.State == health.Open {
				open++
				if retryAt.IsZero() || bs.RetryAt.Before(retryAt) {
					retryAt = bs.RetryAt
				}
			}
		}
		n := float64(len(backends))
		r := healthview.Route{HealthyShare: total / n}
		floor := 0.0
		if byState/n < shedBelow {
			floor = levelSheddable
		}
		level := s.level[name]
		switch {
		case !throttling || byState == 0:
			level = floor
		case stale:
			// Nothing new: holds.
		case requests < minThrottleRequests:
			// Too few requests to tell: never up on a 429 or two, but
			// down, as when they take most: the route may be quiet
			// because it sheds (after an overload, throttling backends
			// that get nothing stay throttled, having no clean run).
			level -= shedStep * secs
		default:
			switch taken := total / byState; {
			case taken < shedBelow:
				level += shedStep * secs
			case taken > shedClear:
				level -= shedClearStep * secs
			case taken > shedEase:
				level -= shedStep * secs
			}
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
				r.Reason = fmt.Sprintf("healthy capacity share %.2f < %.2f", byState/n, shedBelow)
			}
			if r.Admit > 0 {
				r.Reason += fmt.Sprintf("; admitting %.0f%% of %s requests", 100*r.Admit, r.Shed)
			}
		}
		out[name] = r
	}
	return out
}
