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
	p   *Plugin
	req route.Request
}

func (s *upstreamStream) OnHttpRequestHeaders(int, bool) (a types.Action) {
	defer s.p.guard("upstream request headers")
	// Envoy keeps one attempt's header changes for the next; these are
	// only ever removed.
	for _, h := range s.p.strip {
		_ = proxywasm.RemoveHttpRequestHeader(h)
	}
	return types.ActionContinue
}

func (s *upstreamStream) OnHttpRequestBody(size int, endOfStream bool) (a types.Action) {
	defer s.p.guard("upstream request body")
	if !endOfStream {
		return types.ActionPause // buffer: the model may sit anywhere
	}
	body, err := proxywasm.GetHttpRequestBody(0, size)
	outcome := outcomeUnchanged
	switch {
	case err != nil || route.ParseRequest(route.KindUnknown, body, &s.req) != nil:
		outcome = outcomeUnreadable
	case s.req.Model == s.p.cfg.Model:
	case !route.RewriteModelInPlace(body, &s.req, s.p.cfg.Model):
		outcome = outcomeNoRoom
		proxywasm.LogWarn("detour: backend " + s.p.cfg.Backend + ": model id " + s.p.cfg.Model + " does not fit the request's padding; sent unchanged")
	case proxywasm.ReplaceHttpRequestBody(body) != nil:
		outcome = outcomeUnreadable
	default:
		outcome = outcomeRewritten
	}
	s.p.vm.metrics.attempt(s.p.cfg.Backend, outcome)
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
