package controller

import (
	"fmt"
	"math"
	"time"

	"github.com/detourhq/detour/health"
	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/policy"
)

// shedBelow: a route whose healthy share falls under it sheds sheddable
// requests. Half: losing half of a route's capacity is when the rest is
// likely to be overrun by the whole demand.
const shedBelow = 0.5

// shareOf is a backend's contribution to a route's healthy capacity:
// by its state, and at most the share of its recent requests it did not
// answer with 429 (taken, 1 when it is not throttling). A full backend
// that turns away a few of its requests still serves most of them; one
// that turns away most is no capacity, whatever its state.
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
	return min(w, max(taken, 0))
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

// shed decides what each route refuses.
//   - Every backend OPEN (nothing else can serve): refuse standard and
//     sheddable; critical requests still go, to the OPEN backends as a
//     last resort. Retry-After: until the first cool-down ends.
//   - Healthy share under shedBelow: refuse sheddable.
//
// taken is per backend the share of its recent requests not answered 429
// (missing: 1).
func shed(p *policy.Policy, now time.Time, st map[string]health.Status, taken map[string]float64) map[string]healthview.Route {
	out := map[string]healthview.Route{}
	for name, backends := range targets(p) {
		total, open := 0.0, 0
		var retryAt time.Time
		for _, b := range backends {
			s := st[b]
			t, ok := taken[b]
			if !ok {
				t = 1
			}
			total += shareOf(s.State, t)
			if s.State == health.Open {
				open++
				if retryAt.IsZero() || s.RetryAt.Before(retryAt) {
					retryAt = s.RetryAt
				}
			}
		}
		r := healthview.Route{HealthyShare: total / float64(len(backends))}
		switch {
		case open == len(backends):
			r.Shed = healthview.Standard
			r.Reason = fmt.Sprintf("all %d backends are OPEN", open)
			r.RetryAfter = max(1, int(math.Ceil(retryAt.Sub(now).Seconds())))
		case r.HealthyShare < shedBelow:
			r.Shed = healthview.Sheddable
			r.Reason = fmt.Sprintf("healthy capacity share %.2f < %.2f", r.HealthyShare, shedBelow)
			r.RetryAfter = 2
		}
		out[name] = r
	}
	return out
}
