package plugin

import (
	"errors"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/route"
	"github.com/detourhq/detour/wasm/proxywasm"
)

// routerStream decides one request: the wasm twin of the ext_proc
// service's router stage, with the same answers and errors.
type routerStream struct {
	types.DefaultHttpContext
	p       *Plugin
	measure measure
	kind    route.Kind
	path    string
	routing bool // a body is being collected to decide on
	decided bool // dec chose the backend: responses carry its reason
	req     route.Request
	dec     route.Decision
	// priority is the request's x-detour-priority ("" for the route's
	// default).
	priority string
}

func (s *routerStream) OnHttpRequestHeaders(_ int, endOfStream bool) (a types.Action) {
	defer s.guard(&a, "request headers")
	s.path, _ = proxywasm.GetHttpRequestHeader(":path")
	method, _ := proxywasm.GetHttpRequestHeader(":method")
	s.kind = route.KindFromPath(s.path)
	if method == "GET" && route.IsModelsPath(s.path) {
		return s.reply(200, s.p.models, "")
	}
	if s.kind == route.KindUnknown {
		return s.reject(route.ErrUnsupportedPath(s.path))
	}
	s.priority, _ = proxywasm.GetHttpRequestHeader(HeaderPriority)
	if !healthview.ValidPriority(s.priority) {
		return s.reject(route.ErrBadPriority(s.priority))
	}
	if endOfStream {
		return s.reject(route.ErrEmptyBody())
	}
	// The body may change length; the buffer filter sets content-length
	// again once it holds the final body.
	_ = proxywasm.RemoveHttpRequestHeader("content-length")
	s.routing = true
	s.measure.start(s.p.vm.clock())
	// The headers go on to the buffer filter that detour's configuration
	// places between this filter and the router: it holds them until the
	// body is complete, so the route is chosen after this filter has
	// decided. Pausing here would not do: proxy-wasm turns a pause of the
	// headers into StopAllIteration, and the body would never reach us.
	return types.ActionContinue
}

func (s *routerStream) OnHttpRequestBody(size int, endOfStream bool) (a types.Action) {
	defer s.guard(&a, "request body")
	s.p.vm.injected("request body")
	if !s.routing {
		return types.ActionContinue
	}
	if max := s.p.cfg.MaxBodyBytes; max > 0 && size > max {
		return s.reject(route.ErrBodyTooLarge(int64(max)))
	}
	if !endOfStream {
		return types.ActionPause // keep buffering
	}
	s.routing = false
	body, err := proxywasm.GetHttpRequestBody(0, size)
	if err != nil && !errors.Is(err, types.ErrorStatusNotFound) {
		return s.fail("read request body: " + err.Error())
	}
	if len(body) == 0 {
		return s.reject(route.ErrEmptyBody())
	}
	if err := route.ParseRequest(s.kind, body, &s.req); err != nil {
		return s.reject(route.ErrInvalidJSON(err.Error()))
	}
	if s.p.leftToExtProc(s.req.Model) {
		return types.ActionContinue // the ext_proc filter decides this one
	}
	r := s.p.router
	if err := r.DecideHealth(&s.req, &s.dec, s.p.healthFor()); err != nil {
		return s.reject(route.DecisionError(err, s.req.Kind))
	}
	// Shedding: only while the view has a route that sheds, and then
	// only for its requests.
	if rt := s.p.health.shedding(s.dec.Target); rt != nil {
		prio := s.priority
		if prio == "" {
			prio = s.p.cfg.Priorities[s.dec.Target]
		}
		if prio == "" {
			prio = healthview.Standard
		}
		draw := 0.0
		if rt.AtEdge(prio) {
			draw = s.p.health.draw(s.dec.Target)
		}
		if rt.Refuses(prio, draw) {
			return s.shed(route.ErrShed(s.dec.Target, prio, rt.Reason), rt.RetryAfter)
		}
	}
	b := r.Backend(s.dec.Backend)
	// Room for the widest model of the request's order: each attempt's
	// upstream filter rewrites the model in place, because by the time it
	// sees the body the headers, content-length included, have gone.
	width := route.ModelWidth(b.Model)
	for i, f := range s.dec.Fallbacks {
		if i+1 >= s.p.cfg.Attempts {
			break
		}
		width = max(width, route.ModelWidth(r.Backend(f).Model))
	}
	out := route.RewriteModelPadded(nil, body, &s.req, s.dec.UpstreamModel, width)
	if err := proxywasm.ReplaceHttpRequestBody(out); err != nil {
		return s.fail("replace request body: " + err.Error())
	}
	// The decision travels as filter state (wasm.detour_*): Envoy lets a
	// filter change request headers only while it holds them, and a wasm
	// filter cannot write dynamic metadata (which the ext_proc path feeds
	// to the priority-group cluster specifier). The routes match on it, and
	// their matcher cluster specifier reads wasm.detour_try_N on attempt N
	// (refresh_cluster_on_retry re-runs it); attempts past the order reuse
	// its last backend, as the priority groups do.
	set := func(k, v string) {
		if err == nil {
			err = proxywasm.SetProperty([]string{k}, []byte(v))
		}
	}
	set(StateBackend, b.Name)
	set(StateModel, s.dec.UpstreamModel)
	set(StateRoute, s.dec.Target)
	if s.req.Stream {
		set(StateStream, "1")
	}
	last := b.Name
	for n := 1; n <= s.p.cfg.Attempts; n++ {
		if n >= 2 && n-2 < len(s.dec.Fallbacks) {
			last = r.Backend(s.dec.Fallbacks[n-2]).Name
		}
		set(StateTryPrefix+itoa(n), last)
	}
	if err != nil {
		return s.fail("set filter state: " + err.Error())
	}
	// The buffer filter looked the route up before the decision existed.
	if _, err := proxywasm.CallForeignFunction("clear_route_cache", nil); err != nil {
		return s.fail("clear route cache: " + err.Error())
	}
	s.p.vm.metrics.decided(b.Name)
	s.decided = true
	return types.ActionContinue
}

func (s *routerStream) OnHttpResponseHeaders(_ int, endOfStream bool) (a types.Action) {
	defer s.guard(&a, "response headers")
	s.p.vm.injected("response headers")
	s.measure.responseHeaders(s.p.vm.clock(), endOfStream)
	if s.decided {
		// As the ext_proc path does (there through dynamic metadata,
		// which a wasm filter cannot write).
		_ = proxywasm.ReplaceHttpResponseHeader(HeaderReason, s.dec.Reason.String())
	}
	return types.ActionContinue
}

func (s *routerStream) OnHttpResponseBody(size int, endOfStream bool) (a types.Action) {
	defer s.guard(&a, "response body")
	s.measure.responseBody(s.p.vm.clock(), size, endOfStream)
	return types.ActionContinue
}

func (s *routerStream) OnHttpStreamDone() {
	defer func() {
		if r := recover(); r != nil {
			s.p.recovered(r, "stream done")
		}
	}()
	s.measure.done(s.p.vm.clock())
	s.p.streamDone()
}

// reject answers the client with an OpenAI-shaped error.
func (s *routerStream) reject(e *route.APIError) types.Action {
	s.routing = false
	s.p.vm.metrics.rejected(e.Kind)
	return s.reply(uint32(e.Status), e.JSON(), e.Kind)
}

// shed refuses a request its route cannot take now: 429 with Retry-After.
func (s *routerStream) shed(e *route.APIError, retryAfter int) types.Action {
	s.routing = false
	s.p.vm.metrics.rejected(e.Kind)
	return s.reply(uint32(e.Status), e.JSON(), e.Kind, [2]string{"retry-after", itoa(max(1, retryAfter))})
}

func (s *routerStream) reply(status uint32, body []byte, kind string, extra ...[2]string) types.Action {
	h := [][2]string{{"content-type", "application/json"}}
	if kind != "" {
		h = append(h, [2]string{HeaderError, kind})
	}
	h = append(h, extra...)
	// The details mark the reply as detour's, so Envoy's local reply
	// mappers leave its OpenAI-shaped body alone.
	details := "detour_answer"
	if kind != "" {
		details = "detour_" + kind
	}
	if err := proxywasm.SendHttpResponseDetails(status, details, h, body, -1); err != nil {
		proxywasm.LogError("detour: send local response: " + err.Error())
	}
	return types.ActionPause
}

// fail handles the plugin's own failure (not the request's): the request
// goes on undecided to Envoy's fallback route when the policy fails open,
// and gets a 500 otherwise.
func (s *routerStream) fail(why string) types.Action {
	s.routing = false
	s.p.vm.metrics.failures.Increment(1)
	proxywasm.LogError("detour: " + why)
	if s.p.cfg.FailOpen {
		return types.ActionContinue
	}
	return s.reject(route.ErrInternal(why))
}

// guard recovers a panic in a callback and turns it into fail's answer.
func (s *routerStream) guard(a *types.Action, where string) {
	if r := recover(); r != nil {
		s.p.recovered(r, where)
		if s.routing || where == "request headers" {
			*a = s.fail("panic in " + where)
			return
		}
		*a = types.ActionContinue
	}
}
