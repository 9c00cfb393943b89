package xds

import (
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/detourhq/detour/extproc"
	"github.com/detourhq/detour/policy"
)

// The first-token deadline for streaming requests (decision 0006). Envoy
// retries an attempt only while its router has no response headers, and a
// provider that accepts a stream sends them at once, before its first token.
// So streaming requests take their own route, whose per_try_timeout is
// retry.first_token_timeout and which enables, in every backend cluster, a
// per-attempt ext_proc filter that holds the response headers until the
// body carries a first token (extproc/firsttoken.go). A stalled attempt is
// then still one the router can abandon for the next backend.

const (
	// FirstTokenFilter names the holding filter in each backend cluster;
	// the stream route enables it by this name.
	FirstTokenFilter   = "detour.first_token"
	streamRouteName    = "detour_routed_stream"
	firstTokenStatName = "detour_first_token"
)

// FirstTokenFilterConfig is the holding filter as the clusters carry it:
// off (no message, no gRPC stream) unless the route enables it.
func FirstTokenFilterConfig(p *policy.Policy) *extprocfilterv3.ExternalProcessor {
	c := extProcBase(p, firstTokenStatName)
	c.ProcessingMode.RequestHeaderMode = extprocfilterv3.ProcessingMode_SKIP
	// Body chunks go to detour while it holds the headers: it must see
	// them to find the first token. (Envoy 1.40 then ignores mode
	// overrides, hence a filter of its own rather than a mode the
	// per-attempt rewrite filter switches on.)
	c.SendBodyWithoutWaitingForHeaderResponse = true
	c.ResponseAttributes = []string{extproc.AttrClusterName}
	// Holding is an optimisation for failover: if detour cannot be
	// reached or does not answer, the stream goes on rather than fail.
	c.FailureModeAllow = true
	// Each answer may wait up to the deadline. The route's per-try timer
	// starts first (at the request), so it always fires before this one
	// while detour holds; this only releases a stream detour forgot.
	c.MessageTimeout = durationpb.New(p.Retry.FirstTokenTimeout.D() + p.ExtProc.MessageTimeout.D())
	return c
}

// firstTokenFilter is FirstTokenFilterConfig as an upstream HTTP filter.
func firstTokenFilter(p *policy.Policy) (*hcmv3.HttpFilter, error) {
	a, err := pack(FirstTokenFilterConfig(p))
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpFilter{Name: FirstTokenFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}}, nil
}

// firstTokenPerRoute enables the holding filter on a route: response
// headers, and the body streamed (detour closes the stream once it has
// released the headers, so only the first chunks cost a round trip).
func firstTokenPerRoute() (map[string]*anypb.Any, error) {
	a, err := pack(&extprocfilterv3.ExtProcPerRoute{Override: &extprocfilterv3.ExtProcPerRoute_Overrides{Overrides: &extprocfilterv3.ExtProcOverrides{
		ProcessingMode: &extprocfilterv3.ProcessingMode{
			RequestHeaderMode:   extprocfilterv3.ProcessingMode_SKIP,
			RequestBodyMode:     extprocfilterv3.ProcessingMode_NONE,
			RequestTrailerMode:  extprocfilterv3.ProcessingMode_SKIP,
			ResponseHeaderMode:  extprocfilterv3.ProcessingMode_SEND,
			ResponseBodyMode:    extprocfilterv3.ProcessingMode_STREAMED,
			ResponseTrailerMode: extprocfilterv3.ProcessingMode_SKIP,
		},
	}}})
	if err != nil {
		return nil, err
	}
	return map[string]*anypb.Any{FirstTokenFilter: a}, nil
}

// streamRetryPolicy is retryPolicy with the first-token deadline as the
// per-try timeout. It bounds an attempt only until its response starts
// (Envoy ignores the per-try timer once it has sent headers downstream),
// so a long generation is never cut by it. No per-try idle timeout: a
// stream that stalls after its first token cannot move to another backend
// (the client has part of an answer), and cutting it would only turn a
// slow answer into a broken one; the connection manager's stream idle
// timeout (envoy.request_timeout) still ends a dead stream.
func streamRetryPolicy(p *policy.Policy) *routev3.RetryPolicy {
	rp := retryPolicy(p)
	rp.PerTryTimeout = durationpb.New(p.Retry.FirstTokenTimeout.D())
	return rp
}

// streamRoute is routed (the route for requests detour's processor routed)
// for streaming ones, which the processor marks with extproc.HeaderStream:
// matched first, with the first-token deadline and the holding filter on.
func streamRoute(p *policy.Policy, routed *routev3.Route) (*routev3.Route, error) {
	r := proto.Clone(routed).(*routev3.Route)
	r.Name = streamRouteName
	r.Match.Headers = append(r.Match.Headers, &routev3.HeaderMatcher{
		Name:                 extproc.HeaderStream,
		HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true},
	})
	r.GetRoute().RetryPolicy = streamRetryPolicy(p)
	// Never hedged (hedge.go): whatever routed carries, a stream's late
	// attempt is abandoned, not raced.
	r.GetRoute().HedgePolicy = nil
	cfg, err := firstTokenPerRoute()
	if err != nil {
		return nil, err
	}
	if p.ResumeOn() {
		if cfg[ResumeFilter], err = resumePerRoute(true); err != nil {
			return nil, err
		}
	}
	r.TypedPerFilterConfig = cfg
	return r, nil
}
