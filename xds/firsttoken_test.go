package xds

import (
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"

	"github.com/detourhq/detour/examples"
	"github.com/detourhq/detour/extproc"
)

// Streams take the routed route with the first-token deadline, and only
// that route turns the holding filter on.
func TestStreamRoute(t *testing.T) {
	for _, tt := range []struct {
		name  string
		extra string
		want  time.Duration
	}{
		{"default deadline", "", 10 * time.Second},
		{"configured deadline", "retry: {first_token_timeout: 3s, per_try_timeout: 60s}\n", 3 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := parsePolicy(t, string(examples.QuickstartPolicy)+tt.extra)
			rc, err := RouteConfig(p)
			if err != nil {
				t.Fatal(err)
			}
			routes := rc.VirtualHosts[0].Routes
			stream, routed := routes[0], routes[1]
			if stream.Name != streamRouteName || routed.Name != routedRouteName {
				t.Fatalf("routes %s, %s: want the stream route before the routed one", stream.Name, routed.Name)
			}
			present := map[string]bool{}
			for _, h := range stream.GetMatch().GetHeaders() {
				present[h.Name] = h.GetPresentMatch()
			}
			if len(present) != 2 || !present[extproc.HeaderBackend] || !present[extproc.HeaderStream] {
				t.Errorf("stream route matches %v, want %s and %s present", stream.GetMatch().GetHeaders(), extproc.HeaderBackend, extproc.HeaderStream)
			}

			// Everything else as the routed route, the per-try timeout aside.
			sa, ra := proto.Clone(stream.GetRoute()).(*routev3.RouteAction), proto.Clone(routed.GetRoute()).(*routev3.RouteAction)
			if got := sa.GetRetryPolicy().GetPerTryTimeout().AsDuration(); got != tt.want {
				t.Errorf("stream per-try timeout %v, want %v", got, tt.want)
			}
			if got, want := ra.GetRetryPolicy().GetPerTryTimeout().AsDuration(), p.Retry.PerTryTimeout.D(); got != want {
				t.Errorf("routed per-try timeout %v, want retry.per_try_timeout %v", got, want)
			}
			if sa.GetRetryPolicy().GetPerTryIdleTimeout() != nil {
				t.Error("stream route has a per-try idle timeout: it would cut streams that pause after their first token")
			}
			sa.RetryPolicy.PerTryTimeout, ra.RetryPolicy.PerTryTimeout = nil, nil
			if !proto.Equal(sa, ra) {
				t.Errorf("stream route action differs from the routed one beyond the per-try timeout:\n%v\n%v", sa, ra)
			}
			if !proto.Equal(stream.RequestBodyBufferLimit, routed.RequestBodyBufferLimit) {
				t.Error("stream route lost the body limit")
			}

			// Only the stream route turns the holding filter on; both
			// turn the resume filter on.
			if _, on := routed.TypedPerFilterConfig[FirstTokenFilter]; on || len(routed.TypedPerFilterConfig) != 1 {
				t.Errorf("routed route has per-filter config %v, want the resume filter's alone", routed.TypedPerFilterConfig)
			}
			// Streams flow through detour; whole answers are held by
			// Envoy (a dead processor holds none of their bytes).
			for _, rt := range []struct {
				r            *routev3.Route
				body         extprocfilterv3.ProcessingMode_BodySendMode
				trailersWant extprocfilterv3.ProcessingMode_HeaderSendMode
			}{
				{r: stream, body: extprocfilterv3.ProcessingMode_FULL_DUPLEX_STREAMED, trailersWant: extprocfilterv3.ProcessingMode_SEND},
				{r: routed, body: extprocfilterv3.ProcessingMode_STREAMED, trailersWant: extprocfilterv3.ProcessingMode_SKIP},
			} {
				rm := unpack(t, rt.r.TypedPerFilterConfig[ResumeFilter], &extprocfilterv3.ExtProcPerRoute{}).GetOverrides().GetProcessingMode()
				if rm.GetResponseBodyMode() != rt.body || rm.GetResponseTrailerMode() != rt.trailersWant ||
					rm.GetRequestBodyMode() != extprocfilterv3.ProcessingMode_BUFFERED || rm.GetResponseHeaderMode() != extprocfilterv3.ProcessingMode_SEND {
					t.Errorf("route %s sets the resume filter's mode to %v", rt.r.Name, rm)
				}
			}
			pr := unpack(t, stream.TypedPerFilterConfig[FirstTokenFilter], &extprocfilterv3.ExtProcPerRoute{})
			m := pr.GetOverrides().GetProcessingMode()
			if m.GetRequestHeaderMode() != extprocfilterv3.ProcessingMode_SKIP || m.GetRequestBodyMode() != extprocfilterv3.ProcessingMode_NONE ||
				m.GetResponseHeaderMode() != extprocfilterv3.ProcessingMode_SEND || m.GetResponseBodyMode() != extprocfilterv3.ProcessingMode_STREAMED {
				t.Errorf("stream route sets the holding filter's mode to %v", m)
			}
		})
	}
}

// Every backend cluster carries the holding filter, off until a route
// enables it, failing open, with a message timeout past the deadline.
func TestFirstTokenFilter(t *testing.T) {
	for _, fma := range []bool{false, true} {
		p := parsePolicy(t, string(examples.QuickstartPolicy)+"retry: {first_token_timeout: 4s}\n")
		p.ExtProc.FailureModeAllow = fma
		r := mustBuild(t, p)
		for _, c := range r.Clusters[1:] {
			opts := unpack(t, c.TypedExtensionProtocolOptions["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"], &upstreamhttpv3.HttpProtocolOptions{})
			if len(opts.HttpFilters) == 0 || opts.HttpFilters[0].Name != FirstTokenFilter {
				t.Fatalf("%s: upstream filters %v, want %s first", c.Name, opts.HttpFilters, FirstTokenFilter)
			}
			ft := unpack(t, opts.HttpFilters[0].GetTypedConfig(), &extprocfilterv3.ExternalProcessor{})
			m := ft.GetProcessingMode()
			if m.GetRequestHeaderMode() != extprocfilterv3.ProcessingMode_SKIP || m.GetResponseHeaderMode() != extprocfilterv3.ProcessingMode_SKIP ||
				m.GetRequestBodyMode() != extprocfilterv3.ProcessingMode_NONE || m.GetResponseBodyMode() != extprocfilterv3.ProcessingMode_NONE {
				t.Errorf("%s: holding filter is on by default: %v", c.Name, m)
			}
			if !ft.SendBodyWithoutWaitingForHeaderResponse || !ft.FailureModeAllow {
				t.Errorf("%s: send_body_without_waiting %v, failure_mode_allow %v; want both", c.Name, ft.SendBodyWithoutWaitingForHeaderResponse, ft.FailureModeAllow)
			}
			if a := ft.ResponseAttributes; len(a) != 1 || a[0] != extproc.AttrClusterName {
				t.Errorf("%s: response attributes %v", c.Name, a)
			}
			if got, want := ft.GetMessageTimeout().AsDuration(), 4*time.Second+p.ExtProc.MessageTimeout.D(); got != want {
				t.Errorf("%s: message timeout %v, want %v", c.Name, got, want)
			}
		}
	}
}
