package plugin

import (
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/detourhq/detour/route"
	"github.com/detourhq/detour/wasm/proxywasm"
)

// upstreamStream is one attempt to the plugin's backend. It never answers
// the client itself: an upstream filter's local reply is not retried, and
// the router stage has already validated the request.
//
// It cannot hold the request headers to look at the body first: proxy-wasm
// turns a paused header callback into StopAllIteration, after which Envoy
// delivers no body to the filter. So the headers go on at once and the
// body is rewritten in place, within the padding the router left after
// the model (route.RewriteModelPadded), keeping content-length true.
type upstreamStream struct {
	types.DefaultHttpContext
	p              *Plugin
	req            route.Request
	backend, model string // this attempt's
}

func (s *upstreamStream) OnHttpRequestHeaders(int, bool) (a types.Action) {
	defer s.p.guard("upstream request headers")
	if s.p.cfg.ObserveOnly {
		s.p.observeAttempt(s.p.cfg.Backend)
		return types.ActionContinue
	}
	s.backend, s.model = s.p.cfg.Backend, s.p.cfg.Model
	if s.backend == "" {
		if c, err := proxywasm.GetProperty([]string{"xds", "cluster_name"}); err == nil {
			s.backend = string(c)
			s.model = s.p.cfg.Models[s.backend]
		}
	}
	// Before the strip: the ext_proc router names the routed backend in a
	// header (observeAttempt).
	s.p.observeAttempt(s.backend)
	for _, h := range s.p.strip {
		_ = proxywasm.RemoveHttpRequestHeader(h)
	}
	return types.ActionContinue
}

func (s *upstreamStream) OnHttpRequestBody(size int, endOfStream bool) (a types.Action) {
	defer s.p.guard("upstream request body")
	if s.model == "" || s.p.cfg.ObserveOnly {
		return types.ActionContinue // not a backend of the policy
	}
	if !endOfStream {
		return types.ActionPause // buffer: the model may sit anywhere
	}
	body, err := proxywasm.GetHttpRequestBody(0, size)
	outcome := outcomeUnchanged
	switch {
	case err != nil || route.ParseRequest(route.KindUnknown, body, &s.req) != nil:
		outcome = outcomeUnreadable
	case s.req.Model == s.model:
	case !route.RewriteModelInPlace(body, &s.req, s.model):
		outcome = outcomeNoRoom
		proxywasm.LogWarn("detour: backend " + s.backend + ": model id " + s.model + " does not fit the request's padding; sent unchanged")
	case proxywasm.ReplaceHttpRequestBody(body) != nil:
		outcome = outcomeUnreadable
	default:
		outcome = outcomeRewritten
	}
	s.p.vm.metrics.attempt(s.backend, outcome)
	return types.ActionContinue
}

func (s *upstreamStream) OnHttpStreamDone() {
	defer s.p.guard("upstream stream done")
	s.p.streamDone()
}

// Outcomes of an attempt's rewrite, a label of detour_upstream_attempts_total.
const (
	outcomeUnchanged  = "unchanged"
	outcomeRewritten  = "rewritten"
	outcomeNoRoom     = "no_room"
	outcomeUnreadable = "unreadable"
)
