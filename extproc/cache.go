package extproc

import (
	"context"
	"encoding/json"
	"mime"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/respcache"
	"github.com/detourhq/detour/route"
)

// The response cache in the ext_proc service (decision 0012).
//
//   - Request headers: when the cache is on and the client did not send
//     cache-control: no-store, detour asks (mode_override) for the response
//     headers too. It cannot know yet whether the request is reusable
//     (temperature is in the body), and Envoy honours a mode override only
//     in an answer to headers.
//   - Request body: a reusable request (temperature 0, or the opt-in
//     header) gets its key. A fresh entry within the route's TTL is served
//     at once (x-detour-cache: hit); when every candidate backend is OPEN
//     in the controller's view a stored answer is served before anything is
//     tried (x-detour-cache: stale); otherwise the request may wait in the
//     queue, then goes on as usual.
//   - Response headers: a 5xx or 429 after Envoy's retries is replaced by a
//     stored answer when there is one (stale); a 200 JSON or event-stream
//     answer asks (mode_override) for the response body, streamed, so the
//     answer is stored once complete. Only reusable requests pay for the
//     body phase.

// Header names of the cache.
const (
	// HeaderCache says a response came from the cache: hit or stale.
	HeaderCache = "x-detour-cache"
	// HeaderCacheable is the client's opt-in: "true" lets detour reuse an
	// answer to a request whose temperature is not 0.
	HeaderCacheable = "x-detour-cacheable"
)

// Outcomes of serving from the cache (why label of detour_cache_served_total).
const (
	servedTTL    = "ttl"    // fresh, within the route's TTL
	servedOpen   = "open"   // every candidate OPEN in the controller's view
	servedFailed = "failed" // every attempt failed
)

// cacheState is the part of a policy the cache and the queue read.
type cacheState struct {
	on           bool
	staleIfError bool
	retention    time.Duration
	tenantHeader string
	maxEntry     int
	ttl          map[string]time.Duration
	queues       map[string]policy.Queue
	queueDefault policy.Queue
}

func newCacheState(p *policy.Policy) cacheState {
	cs := cacheState{
		on:           p.CacheOn(),
		staleIfError: p.Cache.StaleIfError != nil && *p.Cache.StaleIfError,
		retention:    p.Cache.Retention.D(),
		tenantHeader: p.Cache.TenantHeader,
		maxEntry:     int(p.Cache.MaxEntryBytes),
		ttl:          map[string]time.Duration{},
		queues:       map[string]policy.Queue{},
		queueDefault: p.Queue,
	}
	for _, r := range p.Routes {
		if r.Cache.TTL > 0 {
			cs.ttl[r.Name] = r.Cache.TTL.D()
		}
		cs.queues[r.Name] = r.Queue
	}
	return cs
}

func (c *cacheState) queueFor(target string) policy.Queue {
	if q, ok := c.queues[target]; ok {
		return q
	}
	return c.queueDefault
}

// cacheWork is the per-request cache state.
type cacheWork struct {
	cred    string // tenant credential from the headers (hashed into the key, never kept)
	noStore bool
	noCache bool
	optIn   bool
	key     string // "" when the request is not reusable
	stream  bool
	// includeUsage: the streaming request asked for the usage chunk.
	includeUsage bool
	kind         string
	target       string
	capture      bool // the response body is being collected
	sse          bool
	tooBig       bool
	respBody     []byte
	respLimit    int
}

func (c *cacheWork) reset() {
	*c = cacheWork{respBody: c.respBody[:0]}
	if cap(c.respBody) > 1<<20 {
		c.respBody = nil
	}
}

// readCacheHeader notes a request header the cache cares about.
func (c *cacheWork) readHeader(tenantHeader, k, v string) {
	switch k {
	case "cache-control":
		c.noStore = c.noStore || respcache.NoStore(v)
		c.noCache = c.noCache || respcache.NoCache(v)
	case HeaderCacheable:
		c.optIn = strings.EqualFold(strings.TrimSpace(v), "true")
	case "authorization", "x-api-key", "api-key":
		c.cred += "\x00" + k + "=" + v
	default:
		if tenantHeader != "" && k == tenantHeader {
			c.cred += "\x00tenant=" + v
		}
	}
}

// wantsResponse: ask Envoy for the response headers of this request.
func (c *cacheWork) wantsResponse(cs *cacheState) bool { return cs.on && !c.noStore }

// responseHeadersMode keeps the configured request phases and adds the
// response headers.
func responseHeadersMode() *extprocfilterv3.ProcessingMode {
	return &extprocfilterv3.ProcessingMode{
		RequestHeaderMode:   extprocfilterv3.ProcessingMode_SEND,
		RequestBodyMode:     extprocfilterv3.ProcessingMode_BUFFERED,
		RequestTrailerMode:  extprocfilterv3.ProcessingMode_SKIP,
		ResponseHeaderMode:  extprocfilterv3.ProcessingMode_SEND,
		ResponseBodyMode:    extprocfilterv3.ProcessingMode_NONE,
		ResponseTrailerMode: extprocfilterv3.ProcessingMode_SKIP,
	}
}

// responseBodyMode asks for the response body, chunk by chunk as it comes
// (never buffered: a stream must flow to the client as before).
func responseBodyMode() *extprocfilterv3.ProcessingMode {
	m := responseHeadersMode()
	m.ResponseBodyMode = extprocfilterv3.ProcessingMode_STREAMED
	return m
}

// prepareKey decides whether the routed request is reusable and gives it
// its key.
func (s *Server) prepareKey(st *state, w *work) {
	c := &w.cache
	if !st.cache.on || s.cache == nil || c.noStore {
		return
	}
	if c.cred == "" {
		// No credential and no tenant header: clients cannot be told
		// apart, so one would be served another's answers.
		return
	}
	if !c.optIn && !w.req.TemperatureZero {
		// Not reusable: the routing parse already read the temperature,
		// so most requests never pay for the canonical form.
		return
	}
	rq, err := respcache.Parse(w.body)
	if err != nil {
		return
	}
	if !(c.optIn || (rq.HasTemperature && rq.Temperature == 0)) {
		return
	}
	c.stream, c.includeUsage, c.kind, c.target = rq.Stream, rq.IncludeUsage, w.req.Kind.String(), w.dec.Target
	if w.req.Kind == route.KindEmbedding && c.stream {
		return
	}
	c.key = respcache.Key(respcache.Scope(c.cred), w.dec.Target, c.kind, rq.Canonical)
}

// candidatesOpen reports whether every backend of the decision is OPEN in
// view.
func candidatesOpen(view *healthview.Snapshot, r *route.Router, d *route.Decision) bool {
	if view == nil {
		return false
	}
	open := func(i int) bool { return view.Backends[r.Backend(i).Name].State == healthview.Open }
	if !open(d.Backend) {
		return false
	}
	for _, i := range d.Fallbacks {
		if !open(i) {
			return false
		}
	}
	return true
}

// lookup serves the request from the cache when it may: a fresh entry
// within the route's TTL, or (stale) any entry when allOpen. nil: go on.
func (s *Server) lookup(ctx context.Context, st *state, w *work, allOpen bool) *extprocv3.ProcessingResponse {
	c := &w.cache
	if c.key == "" {
		return nil
	}
	ttl := st.cache.ttl[c.target]
	fresh := ttl > 0 && !c.noCache
	stale := allOpen && st.cache.staleIfError
	if !fresh && !stale {
		return nil
	}
	e, ok, err := s.cache.Get(ctx, c.key)
	if err != nil {
		return nil
	}
	now := s.cache.Now()
	age := e.Age(now)
	switch {
	case ok && fresh && age < ttl:
		return s.serveCached(w, e, respcache.ResultHit, servedTTL, age)
	case ok && stale && age < st.cache.retention:
		return s.serveCached(w, e, respcache.ResultStale, servedOpen, age)
	}
	s.cache.Count(respcache.ResultMiss)
	return nil
}

// serveCached answers with a stored entry: as JSON, or replayed as
// server-sent events for a streaming request.
func (s *Server) serveCached(w *work, e respcache.Entry, result, why string, age time.Duration) *extprocv3.ProcessingResponse {
	c := &w.cache
	body, ctype := e.Body, "application/json"
	if c.stream {
		replay, err := respcache.ReplaySSE(c.kind, e.Body, c.includeUsage)
		if err != nil {
			s.cache.Count(respcache.ResultMiss)
			return nil
		}
		body, ctype = replay, "text/event-stream"
	}
	s.cache.Count(result)
	s.metrics.CacheServed.WithLabelValues(c.target, result, why).Inc()
	s.log.Info("answered from the cache", "route", c.target, "result", result, "why", why, "age", age.Round(time.Second))
	headers := []*corev3.HeaderValueOption{
		setHeader("content-type", ctype),
		setHeader(HeaderCache, result),
		setHeader("age", strconv.Itoa(int(age/time.Second))),
		setHeader(HeaderRoute, c.target),
	}
	if c.stream {
		headers = append(headers, setHeader("cache-control", "no-cache"))
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{
		ImmediateResponse: &extprocv3.ImmediateResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode_OK},
			Headers: &extprocv3.HeaderMutation{SetHeaders: headers},
			Body:    body,
			Details: "detour_cache_" + result,
		},
	}, DynamicMetadata: replyMetadata}
}

// onResponseHeaders: replace a failed answer with a stored one, or ask for
// a good answer's body to store it.
func (s *Server) onResponseHeaders(ctx context.Context, st *state, w *work, h *extprocv3.HttpHeaders) *extprocv3.ProcessingResponse {
	pass := &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}
	c := &w.cache
	if c.key == "" || s.cache == nil {
		return pass
	}
	var code int
	var ctype, encoding string
	for _, hv := range h.GetHeaders().GetHeaders() {
		switch hv.Key {
		case ":status":
			code, _ = strconv.Atoi(headerValue(hv))
		case "content-type":
			ctype = headerValue(hv)
		case "content-encoding":
			encoding = headerValue(hv)
		case HeaderCache:
			return pass // already an answer from the cache
		}
	}
	if (code >= 500 || code == 429) && st.cache.staleIfError {
		e, ok, err := s.cache.Get(ctx, c.key)
		if err == nil && ok && e.Age(s.cache.Now()) < st.cache.retention {
			s.log.Info("every attempt failed; answering from the cache", "route", c.target, "status", code)
			if r := s.serveCached(w, e, respcache.ResultStale, servedFailed, e.Age(s.cache.Now())); r != nil {
				return r
			}
		} else if err == nil {
			s.cache.Count(respcache.ResultMiss)
		}
		return pass
	}
	media, _, _ := mime.ParseMediaType(ctype)
	if code != 200 || h.EndOfStream || (encoding != "" && !strings.EqualFold(encoding, "identity")) {
		return pass
	}
	switch {
	case media == "application/json" && !c.stream:
	case media == "text/event-stream" && c.stream:
		c.sse = true
	default:
		return pass
	}
	c.capture = true
	c.respLimit = st.cache.maxEntry
	if c.sse {
		// The events repeat ids and field names around each token.
		c.respLimit *= 8
	}
	pass.ModeOverride = responseBodyMode()
	return pass
}

// onResponseBody collects the answer and stores it once complete.
func (s *Server) onResponseBody(w *work, b *extprocv3.HttpBody) *extprocv3.ProcessingResponse {
	resp := &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}}
	c := &w.cache
	if !c.capture || c.tooBig {
		return resp
	}
	if len(c.respBody)+len(b.Body) > c.respLimit {
		c.tooBig = true
		c.respBody = c.respBody[:0]
		return resp
	}
	c.respBody = append(c.respBody, b.Body...)
	if !b.EndOfStream {
		return resp
	}
	answer := c.respBody
	if c.sse {
		a, err := respcache.AssembleSSE(c.kind, c.respBody)
		if err != nil {
			return resp
		}
		answer = a
	} else {
		if !json.Valid(answer) {
			return resp
		}
		answer = append([]byte(nil), answer...)
	}
	// Stored in the background: the last chunk goes on at once.
	key := c.key
	go func() { _ = s.cache.Put(context.Background(), key, answer) }()
	return resp
}

// extendTimeout asks Envoy to wait up to d for the answer in progress
// (sent once, before a queue wait).
func extendTimeout(d time.Duration) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{OverrideMessageTimeout: durationpb.New(d)}
}
