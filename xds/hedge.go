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
// route's per_try_timeout with hedge_on_per_try_timeout: when an attempt
// outlives it, Envoy sends the next attempt (to the next backend of the
// request's order: refresh_cluster_on_retry re-runs the cluster
// specifier) while the first keeps running; the first complete answer
// wins and the other attempt is reset. A long answer is therefore never
// cut (at worst one duplicate attempt runs beside it) while a black hole
// is rescued.
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
