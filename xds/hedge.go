package xds

import (
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/detourhq/detour/policy"
)

// The response deadline for non-streaming requests: a deadline that races
// instead of cuts. A whole answer has no first token to wait for, so its
// only per-attempt bound is the whole generation, and a hard per-try
// timeout would have to exceed the longest answer expected (which is why
// retry.per_try_timeout defaults to none, and why an attempt sent to a
// black hole, a backend that accepts the connection and never answers,
// then waits for the client to give up). The controller's deadline
// (Control.ResponseTimeout) is instead set as the non-stream routed
// routes' per_try_timeout with hedge_on_per_try_timeout: when an attempt
// outlives it, Envoy starts another attempt while the first keeps
// running; the first complete answer wins and the other is reset.
//
// What Envoy 1.40 does with it (e2e TestResponseDeadlineHedgeOnEnvoy,
// TestRetryAvoidsAttemptedRegions):
//   - The race works: a late answer is not cut, and the loser is reset.
//   - The hedged attempt goes to the SAME backend: refresh_cluster_on_retry
//     re-runs the cluster specifier for a retry after a failure or a hard
//     per-try timeout, not for a hedge (priority-group and wasm matcher
//     alike). But it does take the retry priority (avoidAttemptedRegions,
//     resources.go): it goes to that backend's endpoints in another region
//     (priority level) than the late attempt's. So a black hole is rescued
//     when the backend has endpoints in another region (measured: a 200
//     from the other region 20-80 ms after a 500 ms deadline), not
//     when all its endpoints are in one region: there the hedge goes back
//     to the same endpoints.
//   - Every attempt arms its own per-try timer: hedges cascade, one per
//     deadline, up to retry.attempts attempts in flight, all on that
//     backend (an answer longer than the deadline can cost up to
//     retry.attempts generations); once every region has been tried, the
//     next hedge goes back to the first.
//   - Soft timeouts count in no cluster stat (upstream_rq_per_try_timeout
//     stays 0; a hedge shows as upstream_rq_retry), and each is reported
//     to outlier detection as a local-origin timeout.
//   - With a hedge policy on the route, a retry after a reset (a backend
//     killed, or refusing) stays on the same backend too (its other
//     region, then the first again) instead of going to the next backend
//     of the request's order: measured, e2e "hedging keeps a reset's
//     retries on the same backend"; the chaos suite's hard-down lost 21
//     requests of 1,742 with hedging on, none without.
// So the controller sets Control.ResponseTimeout (4 × the measured
// response p95, at least 10 s) only with controller.hedging on: it
// rescues requests stuck in a lost region for backends with endpoints
// elsewhere, at the price of that reset behaviour.
//
// The stream routes never hedge: they have the first-token deadline
// (firsttoken.go), whose holding filter already tells a stalled attempt
// from a started one.

// responseDeadline is the hedged per-attempt deadline for non-streaming
// requests, or 0 for none: a retry.per_try_timeout the policy sets stays a
// hard timeout, and the controller's value is then ignored.
func (c *Control) responseDeadline(p *policy.Policy) time.Duration {
	if c == nil || c.ResponseTimeout <= 0 || p.Retry.PerTryTimeout.D() > 0 {
		return 0
	}
	return c.ResponseTimeout
}

// hedgeOnDeadline gives a non-stream route's attempts deadline d, on which
// Envoy starts the next attempt beside the late one instead of resetting
// it; d <= 0 leaves the route as it is.
func hedgeOnDeadline(ra *routev3.RouteAction, d time.Duration) {
	if d <= 0 {
		return
	}
	if ra.RetryPolicy == nil {
		return
	}
	ra.RetryPolicy.PerTryTimeout = durationpb.New(d)
	ra.HedgePolicy = &routev3.HedgePolicy{HedgeOnPerTryTimeout: true}
}
