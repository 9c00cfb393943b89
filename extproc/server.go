// Package extproc is detour's ext_proc service: Envoy sends it each request's
// headers and buffered body; it picks the backend (route package), rewrites
// the body's model for that backend and tells Envoy where to send it.
package extproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/respcache"
	"github.com/detourhq/detour/route"
)

// Header names detour sets on the request (Envoy routes on
// HeaderBackend) and echoes to the client.
const (
	HeaderBackend = "x-detour-backend"
	HeaderModel   = "x-detour-model"
	HeaderRoute   = "x-detour-route"
	HeaderError   = "x-detour-error"
	// HeaderReason tells the client why its first choice was made
	// ("cheapest", "health", "trial", ...: route.Reason); Envoy adds it
	// to responses from the decision's dynamic metadata.
	HeaderReason = "x-detour-reason"
	// HeaderStream marks a streaming request, so Envoy routes it by the
	// route with the first-token deadline (see firsttoken.go).
	HeaderStream = "x-detour-stream"

	// MetadataNamespace carries the decision as dynamic metadata so Envoy
	// can log it and add it to responses.
	MetadataNamespace = "detour"
)

// Config configures a Server.
type Config struct {
	Policy  *policy.Policy
	Metrics *Metrics
	Logger  *slog.Logger
	// Tokenizer counts prompts exactly when the estimate could change the
	// decision; nil uses the estimate only.
	Tokenizer TokenCounter
	// Health is the controller's view of the backends (a
	// *viewhttp.Watcher); nil routes as if every backend were healthy.
	Health HealthSource
	// Cache is the response cache; nil: no cache, whatever the policy says.
	Cache *respcache.Cache
}

// Server implements envoy.service.ext_proc.v3.ExternalProcessor.
type Server struct {
	extprocv3.UnimplementedExternalProcessorServer

	state   atomic.Pointer[state]
	metrics *Metrics
	log     *slog.Logger
	tokens  TokenCounter
	work    sync.Pool
	health  *healthState
	cache   *respcache.Cache
	queue   *queue
	stop    context.CancelFunc
	// client sends continuations of stalled streams through Envoy.
	client *http.Client
}

// state is everything a policy decides; swapped whole on reload so one
// request never sees half of two policies.
type state struct {
	router     *route.Router
	maxBody    int64
	logPrompts bool
	modelsJSON []byte // the GET /v1/models answer
	attempts   int    // retry.attempts: the length of a request's backend order
	// creds are the backends' API keys by backend name; stripUpstream the
	// headers no provider may receive unless they are its own credentials:
	// detour's internal headers and every backend's credential header
	// (Envoy keeps one attempt's headers on the next).
	creds         map[string]credential
	stripUpstream []string
	// priorities are the routes' default priorities by name.
	priorities map[string]string
	// cache and queue settings.
	cache          cacheState
	messageTimeout time.Duration
	resume         resumeState
}

// work is the per-request scratch reused across requests.
type work struct {
	req      route.Request
	dec      route.Decision
	body     []byte
	out      []byte
	scratch  []byte
	kind     route.Kind
	priority string // from the request's header; "" for the route's default
	health   route.Health
	rankBuf  []uint8 // health's ranks when this processor's demotions apply
	path     string
	method   string
	gotBody  bool
	received time.Time
	// upstream marks a stream from the per-attempt filter of cluster.
	upstream bool
	cluster  string
	backend  *route.Backend // the attempt's backend; nil if the policy does not name it
	cache    cacheWork
	// closeAfter ends the stream once the answer is sent.
	closeAfter bool
	// resumeFrom is the backend whose stalled answer this request
	// continues (HeaderResumeFrom); continuation is the style the
	// upstream stage marks the attempt's body with.
	resumeFrom   string
	continues    bool // resumeFrom is a continuation, not a repeat
	continuation string
	// early sends an answer ahead of the one being prepared (a message
	// timeout extension before a queue wait).
	early func(*extprocv3.ProcessingResponse) error
}

// New builds a server on cfg.Policy.
func New(cfg Config) (*Server, error) {
	if cfg.Metrics == nil {
		return nil, errors.New("extproc: Config.Metrics is required")
	}
	s := &Server{metrics: cfg.Metrics, log: cfg.Logger, tokens: cfg.Tokenizer, health: &healthState{src: cfg.Health}, cache: cfg.Cache}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.health.local = newDemotions(s.log, func(b string) { s.metrics.LocalDemotions.WithLabelValues(b).Inc() })
	s.health.local.t.Viewed = s.health.viewRanksLow
	s.queue = newQueue(cfg.Metrics)
	s.client = &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true, // the events are passed on as they are
	}}
	ctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	go s.queue.run(ctx)
	s.work.New = func() any { return new(work) }
	if err := s.SetPolicy(cfg.Policy); err != nil {
		return nil, err
	}
	return s, nil
}

// SetPolicy swaps in a new policy; streams already open finish on the old one.
func (s *Server) SetPolicy(p *policy.Policy) error {
	if p == nil {
		return errors.New("extproc: no policy")
	}
	r, err := route.New(p.RouteTable())
	if err != nil {
		return fmt.Errorf("extproc: build router: %w", err)
	}
	creds, credHeaders, err := loadCredentials(p)
	if err != nil {
		return fmt.Errorf("extproc: %w", err)
	}
	strip := append([]string{HeaderBackend, HeaderModel, HeaderRoute, HeaderStream, HeaderPriority, HeaderResumeFrom, HeaderRedoFrom, HeaderResumed}, credHeaders...)
	stripLists(creds, strip)
	priorities := make(map[string]string, len(p.Routes))
	for _, rt := range p.Routes {
		priorities[rt.Name] = rt.Priority
	}
	s.state.Store(&state{
		router:         r,
		maxBody:        int64(p.Limits.MaxBodyBytes),
		logPrompts:     p.ExtProc.LogPrompts,
		modelsJSON:     route.ModelsList(r.Known()),
		attempts:       p.Retry.Attempts,
		creds:          creds,
		stripUpstream:  strip,
		priorities:     priorities,
		cache:          newCacheState(p),
		messageTimeout: p.ExtProc.MessageTimeout.D(),
		resume:         newResumeState(p, r),
	})
	s.metrics.PolicyVersion.SetToCurrentTime()
	return nil
}

// HealthChanged wakes the queue: the controller's view changed, so some
// waiting requests may have a backend again.
func (s *Server) HealthChanged() { s.queue.Notify() }

// Close stops the queue's dispatcher.
func (s *Server) Close() { s.stop() }

// Process serves one HTTP request's ext_proc stream.
func (s *Server) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	s.metrics.StreamsActive.Inc()
	defer s.metrics.StreamsActive.Dec()
	st := s.state.Load()
	w := s.work.Get().(*work)
	w.reset()
	defer s.work.Put(w)
	ctx := stream.Context()
	if isResumeStage(ctx) {
		return s.serveResume(stream, st)
	}
	w.early = stream.Send
	for {
		msg, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("extproc: receive: %w", err)
		}
		if h := msg.GetResponseHeaders(); h != nil {
			if cluster, ok := upstreamCluster(msg); ok {
				// Only the first-token filter sends response headers with
				// the cluster's name; it answers at its own pace.
				return s.holdFirstToken(stream, st, w, cluster, h)
			}
		}
		resp := s.handleSafely(ctx, st, w, msg)
		if err := stream.Send(resp); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("extproc: send: %w", err)
		}
		if w.closeAfter {
			// Nothing more to do for this request: closing the stream
			// tells Envoy so (it skips the response phases the cache
			// asked for), and a replica that dies later costs the
			// request nothing.
			return nil
		}
	}
}

func (w *work) reset() {
	w.req.Reset()
	w.body = w.body[:0]
	w.kind, w.path, w.method, w.gotBody, w.priority = route.KindUnknown, "", "", false, ""
	w.upstream, w.cluster, w.backend = false, "", nil
	w.cache.reset()
	w.early = nil
	w.closeAfter = false
	w.resumeFrom, w.continuation, w.continues = "", "", false
	// Very large bodies are not kept for the next request.
	if cap(w.body) > 1<<20 {
		w.body = nil
	}
	if cap(w.out) > 1<<20 {
		w.out = nil
	}
	if cap(w.scratch) > 1<<20 {
		w.scratch = nil
	}
}

// handleSafely turns a panic while handling one message into a 500 for
// that request: one bad body must not take every other request down.
func (s *Server) handleSafely(ctx context.Context, st *state, w *work, msg *extprocv3.ProcessingRequest) (resp *extprocv3.ProcessingResponse) {
	defer func() {
		if r := recover(); r != nil {
			s.metrics.Panics.Inc()
			s.log.Error("panic while routing a request", "panic", fmt.Sprint(r), "path", w.path, "body_bytes", len(w.body))
			resp = s.reject(w, route.ErrInternal("internal error"))
		}
	}()
	return s.handle(ctx, st, w, msg)
}

func (s *Server) handle(ctx context.Context, st *state, w *work, msg *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	switch m := msg.Request.(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		if cluster, ok := upstreamCluster(msg); ok {
			w.upstream, w.cluster = true, cluster
			return s.upstreamHeaders(st, w, m.RequestHeaders)
		}
		return s.onRequestHeaders(st, w, m.RequestHeaders)
	case *extprocv3.ProcessingRequest_RequestBody:
		if w.upstream {
			return s.upstreamBody(w, m.RequestBody)
		}
		if w.path == "" {
			w.fromAttributes(msg)
		}
		return s.onRequestBody(ctx, st, w, m.RequestBody)
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return s.onResponseHeaders(ctx, st, w, m.ResponseHeaders)
	case *extprocv3.ProcessingRequest_ResponseBody:
		return s.onResponseBody(w, m.ResponseBody)
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}
	}
	return s.reject(w, route.ErrInternal("unexpected ext_proc message"))
}

// fromAttributes reads the path when Envoy skipped the headers phase and
// sent it as a request attribute instead.
func (w *work) fromAttributes(msg *extprocv3.ProcessingRequest) {
	attrs := msg.GetAttributes()["envoy.filters.http.ext_proc"]
	if attrs == nil {
		return
	}
	if v := attrs.GetFields()["request.path"]; v != nil {
		w.path = v.GetStringValue()
		w.kind = route.KindFromPath(w.path)
	}
	if v := attrs.GetFields()["request.method"]; v != nil {
		w.method = v.GetStringValue()
	}
}

func (s *Server) onRequestHeaders(st *state, w *work, h *extprocv3.HttpHeaders) *extprocv3.ProcessingResponse {
	for _, hv := range h.GetHeaders().GetHeaders() {
		switch hv.Key {
		case ":path":
			w.path = headerValue(hv)
		case ":method":
			w.method = headerValue(hv)
		case HeaderPriority:
			w.priority = headerValue(hv)
		case HeaderResumeFrom:
			w.resumeFrom, w.continues = headerValue(hv), true
		case HeaderRedoFrom:
			w.resumeFrom = headerValue(hv)
		default:
			if st.cache.on {
				w.cache.readHeader(st.cache.tenantHeader, hv.Key, headerValue(hv))
			}
		}
	}
	w.kind = route.KindFromPath(w.path)
	if w.method == "GET" && route.IsModelsPath(w.path) {
		return immediate(200, st.modelsJSON, "")
	}
	if w.kind == route.KindUnknown {
		return s.reject(w, route.ErrUnsupportedPath(w.path))
	}
	if _, ok := priorityOf(w.priority); !ok {
		return s.reject(w, route.ErrBadPriority(w.priority))
	}
	if h.EndOfStream {
		return s.reject(w, route.ErrEmptyBody())
	}
	resp := &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}}
	if w.cache.wantsResponse(&st.cache) && s.cache != nil {
		resp.ModeOverride = responseHeadersMode()
	}
	return resp
}

func (s *Server) onRequestBody(ctx context.Context, st *state, w *work, b *extprocv3.HttpBody) *extprocv3.ProcessingResponse {
	if w.received.IsZero() || !w.gotBody {
		w.received = time.Now()
	}
	w.gotBody = true
	if int64(len(w.body)+len(b.Body)) > st.maxBody {
		return s.reject(w, route.ErrBodyTooLarge(st.maxBody))
	}
	w.body = append(w.body, b.Body...)
	if !b.EndOfStream {
		// Streamed mode: keep collecting; Envoy forwards nothing until the
		// final answer because the body is held by the filter.
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}}
	}
	return s.route(ctx, st, w)
}

// route parses, decides and answers with the header and body mutations.
func (s *Server) route(ctx context.Context, st *state, w *work) *extprocv3.ProcessingResponse {
	start := w.received
	if len(w.body) == 0 {
		return s.reject(w, route.ErrEmptyBody())
	}
	s.metrics.BodyBytes.Observe(float64(len(w.body)))
	if w.kind == route.KindUnknown && w.path != "" {
		return s.reject(w, route.ErrUnsupportedPath(w.path))
	}
	if err := route.ParseRequest(w.kind, w.body, &w.req); err != nil {
		var pe *route.ParseError
		if errors.As(err, &pe) {
			return s.reject(w, route.ErrInvalidJSON(pe.Error()))
		}
		return s.reject(w, route.ErrInvalidJSON(err.Error()))
	}
	r := st.router
	method := "estimate"
	if s.tokens != nil && r.Uncertain(&w.req) {
		limit := r.CountLimit(&w.req)
		n, scratch := exactPromptTokens(s.tokens, &w.req, w.body, w.scratch, limit)
		w.scratch = scratch
		method = "exact"
		if n >= limit {
			// Counting stopped early: n is only a lower bound, and no
			// candidate fits either way.
			w.req.PromptTokens = max(n, w.req.PromptTokens)
		} else {
			w.req.PromptTokens, w.req.PromptTokensExact = n, true
		}
	}
	s.metrics.TokenCounts.WithLabelValues(method).Inc()
	h, view := s.health.forRequest(r, &w.health, &w.rankBuf)
	if w.resumeFrom != "" {
		h = st.resume.skipFor(r, w.resumeFrom, w.continues, h)
	}
	if err := r.DecideHealth(&w.req, &w.dec, h); err != nil {
		return s.rejectDecision(w, err)
	}
	if w.resumeFrom == "" {
		s.prepareKey(st, w)
	}
	allOpen := candidatesOpen(view, r, &w.dec)
	if resp := s.lookup(ctx, st, w, allOpen); resp != nil {
		return resp
	}
	released := false
	if allOpen {
		if q := st.cache.queueFor(w.dec.Target); q.MaxWait > 0 {
			resp, done := s.waitInQueue(ctx, st, w, q)
			defer done()
			if resp != nil {
				return resp
			}
			// A backend recovered: decide again on the new view. The
			// request waited its turn in priority order: it is not shed.
			released = true
			h, view = s.health.forRequest(r, &w.health, &w.rankBuf)
			if w.resumeFrom != "" {
				h = st.resume.skipFor(r, w.resumeFrom, w.continues, h)
			}
			if err := r.DecideHealth(&w.req, &w.dec, h); err != nil {
				return s.rejectDecision(w, err)
			}
		}
	}
	if view != nil && !released {
		if rt, ok := view.Routes[w.dec.Target]; ok && rt.Shed != "" {
			prio := w.priority
			if prio == "" {
				prio = st.priorities[w.dec.Target]
			}
			if prio == "" {
				prio = policy.PriorityStandard
			}
			draw := 0.0
			if rt.AtEdge(prio) {
				draw = s.health.draw(w.dec.Target)
			}
			if rt.Refuses(prio, draw) {
				s.metrics.Shed.WithLabelValues(w.dec.Target, prio).Inc()
				return s.shed(w, route.ErrShed(w.dec.Target, prio, rt.Reason), rt.RetryAfter)
			}
		}
	}
	b := r.Backend(w.dec.Backend)
	// Padded to the widest model of the request's order: where detour's
	// wasm plugin makes the per-attempt rewrite (routing.mode wasm beside
	// ext_proc routes), it rewrites in place, content-length being gone.
	width := route.ModelWidth(w.dec.UpstreamModel)
	for i, f := range w.dec.Fallbacks {
		if i+1 >= st.attempts {
			break
		}
		width = max(width, route.ModelWidth(r.Backend(f).Model))
	}
	w.out = route.RewriteModelPadded(w.out[:0], w.body, &w.req, w.dec.UpstreamModel, width)
	s.metrics.Decisions.WithLabelValues(w.dec.Target, b.Name, w.dec.Reason.String()).Inc()
	elapsed := time.Since(start)
	s.metrics.DecisionTime.Observe(elapsed.Seconds())
	if s.log.Enabled(ctx, slog.LevelDebug) {
		attrs := []slog.Attr{
			slog.String("route", w.dec.Target), slog.String("backend", b.Name),
			slog.String("model", w.dec.UpstreamModel), slog.String("reason", w.dec.Reason.String()),
			slog.Int("prompt_tokens", w.req.PromptTokens), slog.Bool("exact_tokens", w.req.PromptTokensExact),
			slog.Int("fallbacks", len(w.dec.Fallbacks)), slog.Duration("took", elapsed),
		}
		if st.logPrompts {
			attrs = append(attrs, slog.String("body", string(w.body)))
		}
		s.log.LogAttrs(ctx, slog.LevelDebug, "routed", attrs...)
	}
	// The body is copied into the response: w.out is reused after Send.
	body := append([]byte(nil), w.out...)
	w.closeAfter = w.cache.key == ""
	set := []*corev3.HeaderValueOption{
		setHeader(HeaderBackend, b.Name),
		setHeader(HeaderModel, w.dec.UpstreamModel),
		setHeader(HeaderRoute, w.dec.Target),
		setHeader("content-length", strconv.Itoa(len(body))),
	}
	if w.req.Stream {
		set = append(set, setHeader(HeaderStream, "1"))
	}
	return &extprocv3.ProcessingResponse{
		Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{
			Response: &extprocv3.CommonResponse{
				HeaderMutation:  &extprocv3.HeaderMutation{SetHeaders: set},
				BodyMutation:    &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: body}},
				ClearRouteCache: true,
			},
		}},
		DynamicMetadata: decisionMetadata(b.Name, w.dec.UpstreamModel, w.dec.Target, w.dec.Reason.String(),
			priorityGroups(r, &w.dec, st.attempts)),
	}
}

func (s *Server) rejectDecision(w *work, err error) *extprocv3.ProcessingResponse {
	var ue *route.UnsatisfiableError
	if errors.As(err, &ue) {
		s.metrics.Rejections.WithLabelValues(ue.Target, ue.Requirement().String()).Inc()
	}
	return s.reject(w, route.DecisionError(err, w.req.Kind))
}

// reject answers the client directly with an OpenAI-shaped error.
func (s *Server) reject(w *work, e *route.APIError) *extprocv3.ProcessingResponse {
	s.metrics.Errors.WithLabelValues(e.Kind).Inc()
	s.log.Info("request rejected", "status", e.Status, "kind", e.Kind, "code", e.Code, "path", w.path)
	return immediate(e.Status, e.JSON(), e.Kind)
}

// shed refuses a request with 429 and a Retry-After.
func (s *Server) shed(w *work, e *route.APIError, retryAfter int) *extprocv3.ProcessingResponse {
	s.metrics.Errors.WithLabelValues(e.Kind).Inc()
	s.log.Info("request shed", "route", w.dec.Target, "priority", w.priority, "retry_after", retryAfter)
	resp := immediate(e.Status, e.JSON(), e.Kind)
	ir := resp.GetImmediateResponse()
	ir.Headers.SetHeaders = append(ir.Headers.SetHeaders, setHeader("retry-after", strconv.Itoa(max(1, retryAfter))))
	return resp
}

func immediate(code int, body []byte, errKind string) *extprocv3.ProcessingResponse {
	headers := []*corev3.HeaderValueOption{setHeader("content-type", "application/json")}
	if errKind != "" {
		headers = append(headers, setHeader(HeaderError, errKind))
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{
		ImmediateResponse: &extprocv3.ImmediateResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(code)},
			Headers: &extprocv3.HeaderMutation{SetHeaders: headers},
			Body:    body,
			Details: "detour_" + errKindOr(errKind, "answer"),
		},
	}, DynamicMetadata: replyMetadata}
}

// replyMetadata marks replies detour sends itself, so Envoy's local reply
// mappers leave their body alone. Read-only: shared by every reply.
var replyMetadata = &structpb.Struct{Fields: map[string]*structpb.Value{
	MetadataNamespace: structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
		"reply": structpb.NewBoolValue(true),
	}}),
}}

func errKindOr(k, d string) string {
	if k == "" {
		return d
	}
	return k
}

func setHeader(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: k, RawValue: []byte(v)},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

func headerValue(h *corev3.HeaderValue) string {
	if len(h.RawValue) > 0 {
		return string(h.RawValue)
	}
	return h.Value
}

func decisionMetadata(backend, model, target, reason string, groups *structpb.Value) *structpb.Struct {
	return &structpb.Struct{Fields: map[string]*structpb.Value{
		PriorityGroupsNamespace: groups,
		MetadataNamespace: structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
			"backend": structpb.NewStringValue(backend),
			"model":   structpb.NewStringValue(model),
			"route":   structpb.NewStringValue(target),
			"reason":  structpb.NewStringValue(reason),
		}}),
	}}
}
