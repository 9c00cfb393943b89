package xds

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/detourhq/detour/extproc"
	"github.com/detourhq/detour/policy"
)

// The resume filter (decision 0015, extproc/resume.go): on the listener,
// after the routing filter, off unless the stream route enables it. There
// it sends detour the request (to repeat it) and the response body in
// FULL_DUPLEX_STREAMED mode: detour passes each chunk on and, when the
// provider stalls mid-answer, streams another backend's continuation in
// its place. Only where the processor routes (not routing.mode wasm: the
// continuation must be routed by the processor to skip the stalled
// backend).

const (
	// ResumeFilter names the resume filter; the stream route enables it
	// by this name.
	ResumeFilter   = "detour.resume"
	resumeStatName = "detour_resume"
)

// ResumeFilterConfig is the resume filter as the listener carries it.
func ResumeFilterConfig(p *policy.Policy) *extprocfilterv3.ExternalProcessor {
	c := extProcBase(p, resumeStatName)
	c.ProcessingMode.RequestHeaderMode = extprocfilterv3.ProcessingMode_SKIP
	// The processor tells this filter's streams from the routing filter's
	// by this metadata.
	c.GrpcService.InitialMetadata = []*corev3.HeaderValue{{Key: extproc.StageMetadataKey, Value: extproc.StageResume}}
	// A processor that cannot be reached when the stream starts, or dies
	// while Envoy holds a whole answer, costs the answer its resumption,
	// not the answer. (Once a stream's body flows through the processor,
	// Envoy 1.40 ends the response if the processor dies: measured, and
	// said in decision 0015.)
	c.FailureModeAllow = true
	// A whole answer's chunks (STREAMED) reach detour while it holds the
	// headers: it answers them all when the body ends, one round trip.
	c.SendBodyWithoutWaitingForHeaderResponse = true
	// Held headers wait through a stall (stall_timeout) before detour acts;
	// while another backend answers instead, detour extends the wait up to
	// the request's own timeout.
	c.MessageTimeout = durationpb.New(p.Resume.StallTimeout.D() + p.ExtProc.MessageTimeout.D())
	c.MaxMessageTimeout = durationpb.New(max(p.Envoy.RequestTimeout.D(), p.Resume.StallTimeout.D()+p.ExtProc.MessageTimeout.D()))
	return c
}

// withResume is filters, then the resume filter when the policy resumes
// streams, then the router.
func withResume(p *policy.Policy, filters []*hcmv3.HttpFilter, router *hcmv3.HttpFilter) ([]*hcmv3.HttpFilter, error) {
	if p.ResumeOn() {
		a, err := pack(ResumeFilterConfig(p))
		if err != nil {
			return nil, err
		}
		filters = append(filters, &hcmv3.HttpFilter{Name: ResumeFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}})
	}
	return append(filters, router), nil
}

// resumePerRoute enables the resume filter on a route. Streams pass
// through detour chunk by chunk (FULL_DUPLEX_STREAMED: it must add chunks
// while the provider is silent). Whole answers are STREAMED: Envoy keeps
// each chunk until detour answers it, so a processor that dies holds none
// of their bytes.
func resumePerRoute(stream bool) (*anypb.Any, error) {
	body, trailers := extprocfilterv3.ProcessingMode_STREAMED, extprocfilterv3.ProcessingMode_SKIP
	if stream {
		body, trailers = extprocfilterv3.ProcessingMode_FULL_DUPLEX_STREAMED, extprocfilterv3.ProcessingMode_SEND
	}
	return pack(&extprocfilterv3.ExtProcPerRoute{Override: &extprocfilterv3.ExtProcPerRoute_Overrides{Overrides: &extprocfilterv3.ExtProcOverrides{
		ProcessingMode: &extprocfilterv3.ProcessingMode{
			RequestHeaderMode:   extprocfilterv3.ProcessingMode_SEND,
			RequestBodyMode:     extprocfilterv3.ProcessingMode_BUFFERED,
			RequestTrailerMode:  extprocfilterv3.ProcessingMode_SKIP,
			ResponseHeaderMode:  extprocfilterv3.ProcessingMode_SEND,
			ResponseBodyMode:    body,
			ResponseTrailerMode: trailers,
		},
	}}})
}
