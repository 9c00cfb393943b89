package sim

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// maxBodyBytes bounds request bodies on the serving listener.
const maxBodyBytes = 16 << 20

// endpoint is a serving-listener route.
type endpoint uint8

const (
	epUnknown endpoint = iota
	epChat
	epCompletions
	epEmbeddings
	epModels
	epModel // GET /v1/models/{id}
)

// route maps a path to its endpoint, the method it takes and, for
// /v1/models/{id}, the model id.
func route(path string) (ep endpoint, method, id string) {
	switch path {
	case "/v1/chat/completions":
		return epChat, http.MethodPost, ""
	case "/v1/completions":
		return epCompletions, http.MethodPost, ""
	case "/v1/embeddings":
		return epEmbeddings, http.MethodPost, ""
	case "/v1/models":
		return epModels, http.MethodGet, ""
	}
	if id, ok := strings.CutPrefix(path, "/v1/models/"); ok && id != "" {
		return epModel, http.MethodGet, id
	}
	return epUnknown, "", ""
}

// statusWriter remembers the status written through it.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach Flush and Hijack.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// exchange is one request on the serving listener.
type exchange struct {
	s        *Server
	w        *statusWriter
	r        *http.Request
	start    time.Time
	rec      RequestRecord
	known    bool     // the path is an API endpoint
	applied  []string // fault effects applied, in order
	reset    bool     // the connection was reset: no response
	recorded bool
}

func (s *Server) handleAPI(w http.ResponseWriter, r *http.Request) {
	s.inflight.add()
	defer s.inflight.done()
	w.Header().Set(HeaderName, s.cfg.Name)
	x := &exchange{s: s, w: &statusWriter{ResponseWriter: w}, r: r, start: time.Now()}
	path := r.URL.Path
	if len(path) > maxRecordedValue {
		path = path[:maxRecordedValue]
	}
	x.rec = RequestRecord{ContinuedFrom: -1,
		Time:    x.start.UTC(),
		Method:  r.Method,
		Path:    path,
		Auth:    authFingerprint(r.Header),
		Headers: recordedHeaders(r.Header),
	}
	defer x.record() // also runs when a drop aborts the handler
	x.serve(w)
}

// record adds the request to the stats once.
func (x *exchange) record() {
	if x.recorded {
		return
	}
	x.recorded = true
	switch {
	case x.reset:
		x.rec.Status = 0
	case x.w.status != 0:
		x.rec.Status = x.w.status
	case x.r.Context().Err() != nil:
		x.rec.Status = 499 // client closed the request
	default:
		x.rec.Status = http.StatusOK
	}
	x.rec.Fault = strings.Join(x.applied, ",")
	x.rec.DurationMS = float64(time.Since(x.start).Microseconds()) / 1000
	x.s.obs.add(x.rec, x.known, len(x.applied) > 0)
	x.s.log.Debug("request",
		"method", x.rec.Method, "path", x.rec.Path, "model", x.rec.Model, "stream", x.rec.Stream,
		"status", x.rec.Status, "fault", x.rec.Fault, "duration_ms", x.rec.DurationMS)
}

func (x *exchange) fail(e *apiError) { writeError(x.w, e) }

func (x *exchange) serve(raw http.ResponseWriter) {
	s, r := x.s, x.r
	ep, method, id := route(r.URL.Path)
	if ep == epUnknown {
		x.fail(&apiError{status: http.StatusNotFound, Type: "invalid_request_error",
			Message: fmt.Sprintf("Invalid URL (%s %s)", r.Method, r.URL.Path)})
		return
	}
	x.known = true
	if r.Method != method {
		x.w.Header().Set("Allow", method)
		x.fail(&apiError{status: http.StatusMethodNotAllowed, Type: "invalid_request_error",
			Message: fmt.Sprintf("Method %s is not allowed for %s; use %s.", r.Method, r.URL.Path, method)})
		return
	}
	ov, err := parseOverrides(r.Header, s.cfg.Name)
	if err != nil {
		x.fail(invalidRequest(err.Error()))
		return
	}
	if e := x.authorize(); e != nil {
		x.fail(e)
		return
	}

	var body []byte
	if method == http.MethodPost {
		body, err = io.ReadAll(http.MaxBytesReader(raw, r.Body, maxBodyBytes))
		if err != nil {
			if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
				x.fail(&apiError{status: http.StatusRequestEntityTooLarge, Type: "invalid_request_error",
					Message: fmt.Sprintf("Request body too large: the limit is %d bytes.", maxBodyBytes)})
			} else {
				x.fail(invalidRequest("Could not read the request body."))
			}
			return
		}
	}

	// Parse the body before faults so records of faulted requests still
	// show the model; a parse error is answered after the faults.
	var (
		gen  genRequest
		emb  embeddingRequest
		perr *apiError
	)
	switch ep {
	case epChat, epCompletions:
		if perr = decodeBody(body, &gen); perr == nil {
			x.rec.Model, x.rec.Stream = gen.Model, gen.Stream
			if p := cmp(gen.MaxCompletionTokens, gen.MaxTokens); p != nil {
				x.rec.MaxTokens = *p
			}
		}
	case epEmbeddings:
		if perr = decodeBody(body, &emb); perr == nil {
			x.rec.Model = emb.Model
		}
	case epModel:
		x.rec.Model = id
	}

	f := s.pickFault(ov)
	ctx := r.Context()
	if f.LatencyMS > 0 {
		x.applied = append(x.applied, "latency")
		if sleep(ctx, f.latency()) != nil {
			return
		}
	}
	if f.Reset {
		x.applied = append(x.applied, "reset")
		x.resetConn()
		return
	}
	if f.Status != 0 {
		x.applied = append(x.applied, "status")
		if f.RetryAfterS > 0 {
			x.w.Header().Set("Retry-After", strconv.Itoa(f.RetryAfterS))
		}
		x.fail(faultError(f.Status))
		return
	}
	if perr != nil {
		x.fail(perr)
		return
	}
	switch ep {
	case epChat, epCompletions:
		if c := s.cfg.Capacity; c > 0 {
			defer s.working.Add(-1)
			if s.working.Add(1) > int64(c) {
				x.applied = append(x.applied, "capacity")
				x.w.Header().Set("Retry-After", "1")
				x.fail(faultError(http.StatusTooManyRequests))
				return
			}
		}
		x.generate(ep == epChat, &gen, ov, f)
	case epEmbeddings:
		x.embeddings(&emb)
	case epModels:
		x.models()
	case epModel:
		x.model(id)
	}
}

// cmp returns the first non-nil pointer.
func cmp(ps ...*int) *int {
	for _, p := range ps {
		if p != nil {
			return p
		}
	}
	return nil
}

// pickFault decides the fault for one request: the x-sim-* headers when a
// fault header is present, else the global fault; then the rate draw.
func (s *Server) pickFault(ov overrides) Fault {
	f := *s.fault.Load()
	if ov.hasFault {
		f = ov.fault
	}
	f.Refuse = false // listener-level, not per request
	if f.IsZero() {
		return Fault{}
	}
	if f.Rate < 1 {
		if f.Even {
			// Request n is hit when the running count of hits due,
			// floor(n × rate), goes up.
			n := s.evenCount.Add(1)
			if uint64(float64(n)*f.Rate) == uint64(float64(n-1)*f.Rate) {
				return Fault{}
			}
		} else if s.rng.Float64() >= f.Rate {
			return Fault{}
		}
	}
	return f
}

func (x *exchange) authorize() *apiError {
	key := x.s.cfg.APIKey
	if key == "" {
		return nil
	}
	e := &apiError{status: http.StatusUnauthorized, Type: "authentication_error", Code: ptr("invalid_api_key")}
	v := x.r.Header.Get("Authorization")
	if v == "" {
		e.Message = "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
		return e
	}
	const scheme = "bearer "
	if len(v) <= len(scheme) || !strings.EqualFold(v[:len(scheme)], scheme) ||
		subtle.ConstantTimeCompare([]byte(strings.TrimSpace(v[len(scheme):])), []byte(key)) != 1 {
		e.Message = "Incorrect API key provided."
		return e
	}
	return nil
}

// resetConn closes the connection with an RST and no response.
func (x *exchange) resetConn() {
	x.reset = true
	x.record() // before the client can observe the reset
	conn, _, err := http.NewResponseController(x.w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// abort cuts the response off: the server closes the connection without
// finishing the body.
func (x *exchange) abort() {
	x.record()
	panic(http.ErrAbortHandler)
}

// checkModel validates the model parameter and remembers it for
// GET /v1/models.
func (x *exchange) checkModel(model string) *apiError {
	if model == "" {
		return invalidRequest("you must provide a model parameter")
	}
	if len(x.s.cfg.Models) > 0 && !slices.Contains(x.s.cfg.Models, model) {
		return modelNotFound(model)
	}
	x.s.lastModel.Store(&model)
	return nil
}

// completionLength works out the completion tokens and finish reason:
// the natural length (x-sim-tokens, else Config.DefaultTokens) capped by
// max_tokens / max_completion_tokens.
func (x *exchange) completionLength(req *genRequest, ov overrides, minMax int) (int, string, *apiError) {
	natural := x.s.cfg.DefaultTokens
	if ov.hasTokens {
		natural = ov.tokens
	}
	limit := -1
	for _, p := range []struct {
		name string
		v    *int
	}{{"max_tokens", req.MaxTokens}, {"max_completion_tokens", req.MaxCompletionTokens}} {
		if p.v == nil {
			continue
		}
		if *p.v < minMax {
			return 0, "", invalidParam(p.name, "integer_below_min_value", fmt.Sprintf(
				"Invalid '%s': integer below minimum value. Expected a value >= %d, but got %d instead.", p.name, minMax, *p.v))
		}
		if limit < 0 || *p.v < limit {
			limit = *p.v
		}
	}
	if limit >= 0 && limit < natural {
		return limit, "length", nil
	}
	return natural, "stop", nil
}

// output is a chat or text completion being produced.
type output struct {
	chat         bool
	id           string
	created      int64
	model        string
	promptTokens int
	n            int // completion tokens
	finish       string
	includeUsage bool
	// pieces, when set, are the content chunks of a structured answer
	// (JSON content, or a tool call's arguments when tool is set) in place
	// of the n token texts.
	pieces []string
	tool   *toolCall
	// start is the first token's number in a continuation.
	start int
}

// piece is the text of completion chunk i.
func (o *output) piece(i int) string {
	if o.pieces != nil {
		return o.pieces[i]
	}
	return tokenText(o.start + i)
}

// text is the whole answer text (a tool call's arguments with a tool).
func (o *output) text() string {
	if o.pieces != nil {
		return strings.Join(o.pieces, "")
	}
	if o.start > 0 {
		var b strings.Builder
		for i := range o.n {
			b.WriteString(o.piece(i))
		}
		return b.String()
	}
	return completionText(o.n)
}

func (o *output) usage() usage {
	return usage{PromptTokens: o.promptTokens, CompletionTokens: o.n, TotalTokens: o.promptTokens + o.n}
}

func (x *exchange) generate(chat bool, req *genRequest, ov overrides, f Fault) {
	if e := x.checkModel(req.Model); e != nil {
		x.fail(e)
		return
	}
	o := output{chat: chat, created: time.Now().Unix(), model: req.Model}
	if chat {
		texts, e := chatPromptText(req.Messages)
		if e != nil {
			x.fail(e)
			return
		}
		for _, t := range texts {
			o.promptTokens += textTokens(t)
		}
		o.id = "chatcmpl-sim" + strconv.FormatUint(x.s.ids.Add(1), 10)
	} else {
		ins, e := parseInputs(req.Prompt, "prompt")
		if e != nil {
			x.fail(e)
			return
		}
		for _, in := range ins {
			o.promptTokens += in.tokenCount()
		}
		o.id = "cmpl-sim" + strconv.FormatUint(x.s.ids.Add(1), 10)
	}
	minMax := 1
	if !chat {
		minMax = 0 // the legacy API allows max_tokens 0
	}
	var e *apiError
	if o.n, o.finish, e = x.completionLength(req, ov, minMax); e != nil {
		x.fail(e)
		return
	}
	if k, ok := continuedTokens(req); chat && ok {
		// A continuation: the rest of the answer the partial one began,
		// within what the request still allows.
		o.start = k
		if o.finish == "stop" {
			o.n = max(0, o.n-k)
		}
		x.rec.ContinuedFrom = k
	}
	o.includeUsage = x.s.cfg.AlwaysUsage || (req.StreamOptions != nil && req.StreamOptions.IncludeUsage)
	if chat {
		x.structure(req, &o)
		if o.pieces != nil {
			o.n = len(o.pieces)
		}
	}
	if f.TTFTMS > 0 {
		x.applied = append(x.applied, "ttft")
	}
	if f.TokensPerSecond > 0 {
		x.applied = append(x.applied, "tokens_per_second")
	}
	if f.DropAfterTokens > 0 {
		x.applied = append(x.applied, "drop_after_tokens")
	}
	if f.StallAfterTokens > 0 {
		x.applied = append(x.applied, "stall_after_tokens")
	}
	if req.Stream {
		x.stream(&o, f)
	} else {
		x.respond(&o, f)
	}
}

// pace is how long producing the first k tokens takes: ttft for the
// first, the interval for each after it.
func pace(f Fault, k int) time.Duration {
	d := float64(f.ttft())
	if k > 1 {
		d += float64(k-1) * float64(f.interval())
	}
	return time.Duration(min(d, float64(maxPace)))
}

// maxPace bounds any single computed wait.
const maxPace = 24 * time.Hour

func (x *exchange) respond(o *output, f Fault) {
	k := o.n
	if f.DropAfterTokens > 0 {
		k = min(k, f.DropAfterTokens)
	}
	if f.StallAfterTokens > 0 {
		k = min(k, f.StallAfterTokens)
	}
	if sleep(x.r.Context(), pace(f, k)) != nil {
		return
	}
	text := o.text()
	var v any
	if o.chat {
		msg := chatMessage{Role: "assistant", Content: text}
		if o.tool != nil {
			msg.Content = nil
			msg.ToolCalls = []toolCallMessage{{ID: o.tool.id, Type: "function",
				Function: toolCallFunction{Name: o.tool.name, Arguments: text}}}
		}
		v = chatCompletion{
			ID: o.id, Object: "chat.completion", Created: o.created, Model: o.model,
			SystemFingerprint: "fp_sim",
			Choices: []chatChoice{{
				Message:      msg,
				FinishReason: o.finish,
			}},
			Usage: o.usage(),
		}
	} else {
		u, _ := json.Marshal(o.usage())
		v = textCompletion{
			ID: o.id, Object: "text_completion", Created: o.created, Model: o.model,
			SystemFingerprint: "fp_sim",
			Choices:           []textChoice{{Text: text, FinishReason: &o.finish}},
			Usage:             u,
		}
	}
	// A response no longer than the stall point completes.
	stall := f.StallAfterTokens > 0 && o.n > f.StallAfterTokens
	if f.DropAfterTokens == 0 && !stall {
		writeJSON(x.w, http.StatusOK, v)
		return
	}
	// Promise the whole body, send half of it, then hang up (drop) or
	// hang (stall).
	body, _ := json.Marshal(v)
	body = append(body, '\n')
	h := x.w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	x.w.WriteHeader(http.StatusOK)
	_, _ = x.w.Write(body[:len(body)/2])
	_ = http.NewResponseController(x.w).Flush()
	if f.DropAfterTokens == 0 {
		if f.StallMS > 0 && sleep(x.r.Context(), time.Duration(f.StallMS)*time.Millisecond) == nil {
			_, _ = x.w.Write(body[len(body)/2:]) // a pause, not a hang
			return
		}
		<-x.r.Context().Done()
		return
	}
	x.abort()
}

// stream answers with server-sent events, flushing every chunk.
func (x *exchange) stream(o *output, f Fault) {
	ctx := x.r.Context()
	h := x.w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	x.w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(x.w)
	var buf []byte
	send := func(v any) bool {
		b, err := json.Marshal(v)
		if err != nil {
			panic(err)
		}
		buf = append(append(append(buf[:0], "data: "...), b...), "\n\n"...)
		if _, err := x.w.Write(buf); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	var usageNull json.RawMessage // OpenAI sends "usage": null on every chunk when asked for usage
	if o.includeUsage {
		usageNull = json.RawMessage("null")
	}
	named := false // the tool call's name went out
	chunk := func(text *string, role string, finish *string) any {
		if o.chat {
			d := chatDelta{Role: role, Content: text}
			if o.tool != nil && text != nil {
				// A tool call streams its arguments, not content; its
				// first piece (a token, paced by ttft) names the call.
				d.Content = nil
				if role == "" {
					tc := toolCallDelta{Function: toolCallFunction{Arguments: *text}}
					if !named {
						named = true
						tc.ID, tc.Type, tc.Function.Name = o.tool.id, "function", o.tool.name
					}
					d.ToolCalls = []toolCallDelta{tc}
				}
			}
			return chatChunk{
				ID: o.id, Object: "chat.completion.chunk", Created: o.created, Model: o.model,
				SystemFingerprint: "fp_sim",
				Choices:           []chatChunkChoice{{Delta: d, FinishReason: finish}},
				Usage:             usageNull,
			}
		}
		t := ""
		if text != nil {
			t = *text
		}
		return textCompletion{
			ID: o.id, Object: "text_completion", Created: o.created, Model: o.model,
			SystemFingerprint: "fp_sim",
			Choices:           []textChoice{{Text: t, FinishReason: finish}},
			Usage:             usageNull,
		}
	}

	// Headers (and, for chat, the role chunk) go out at once; ttft stalls
	// the first content chunk, as real providers do.
	if o.chat {
		empty := ""
		if !send(chunk(&empty, "assistant", nil)) {
			return
		}
	} else if rc.Flush() != nil {
		return
	}
	for i := range o.n {
		if f.DropAfterTokens > 0 && i >= f.DropAfterTokens {
			x.abort()
		}
		if f.StallAfterTokens > 0 && i == f.StallAfterTokens {
			if f.StallMS == 0 {
				<-ctx.Done()
				return
			}
			if sleep(ctx, time.Duration(f.StallMS)*time.Millisecond) != nil {
				return
			}
		}
		d := f.interval()
		if i == 0 {
			d = f.ttft()
		}
		if sleep(ctx, min(d, maxPace)) != nil {
			return
		}
		t := o.piece(i)
		if !send(chunk(&t, "", nil)) {
			return
		}
	}
	if f.DropAfterTokens > 0 { // the response was shorter than N tokens
		x.abort()
	}
	if o.n == 0 && sleep(ctx, f.ttft()) != nil {
		return
	}
	if !send(chunk(nil, "", &o.finish)) {
		return
	}
	if o.includeUsage {
		u, _ := json.Marshal(o.usage())
		var v any
		if o.chat {
			v = chatChunk{ID: o.id, Object: "chat.completion.chunk", Created: o.created, Model: o.model,
				SystemFingerprint: "fp_sim", Choices: []chatChunkChoice{}, Usage: u}
		} else {
			v = textCompletion{ID: o.id, Object: "text_completion", Created: o.created, Model: o.model,
				SystemFingerprint: "fp_sim", Choices: []textChoice{}, Usage: u}
		}
		if !send(v) {
			return
		}
	}
	if _, err := io.WriteString(x.w, "data: [DONE]\n\n"); err == nil {
		_ = rc.Flush()
	}
}

func (x *exchange) embeddings(req *embeddingRequest) {
	if e := x.checkModel(req.Model); e != nil {
		x.fail(e)
		return
	}
	ins, e := parseInputs(req.Input, "input")
	if e != nil {
		x.fail(e)
		return
	}
	for _, in := range ins {
		if !in.isTokens && in.text == "" {
			x.fail(invalidParam("input", "invalid_value", "'$.input' is invalid: an input string must not be empty."))
			return
		}
	}
	native := x.s.cfg.EmbeddingDims
	dims := native
	if req.Dimensions != nil {
		if *req.Dimensions < 1 || *req.Dimensions > native {
			x.fail(invalidParam("dimensions", "invalid_value", fmt.Sprintf(
				"Invalid 'dimensions': must be between 1 and %d, but got %d.", native, *req.Dimensions)))
			return
		}
		dims = *req.Dimensions
	}
	asBase64 := false
	switch req.EncodingFormat {
	case "", "float":
	case "base64":
		asBase64 = true
	default:
		x.fail(invalidParam("encoding_format", "invalid_value", fmt.Sprintf(
			"Invalid value for 'encoding_format': expected 'float' or 'base64', but got '%s'.", req.EncodingFormat)))
		return
	}
	out := embeddingList{Object: "list", Model: req.Model, Data: make([]embedding, len(ins))}
	for i, in := range ins {
		vec := embeddingVector(in, native, dims)
		var v any = vec
		if asBase64 {
			v = base64Floats(vec)
		}
		out.Data[i] = embedding{Object: "embedding", Index: i, Embedding: v}
		out.Usage.PromptTokens += in.tokenCount()
	}
	out.Usage.TotalTokens = out.Usage.PromptTokens
	writeJSON(x.w, http.StatusOK, out)
}

func (x *exchange) modelObject(id string) modelObject {
	return modelObject{ID: id, Object: "model", Created: x.s.created, OwnedBy: "detour-sim"}
}

func (x *exchange) models() {
	ids := x.s.cfg.Models
	if len(ids) == 0 {
		if last := x.s.lastModel.Load(); last != nil {
			ids = []string{*last}
		}
	}
	list := modelList{Object: "list", Data: make([]modelObject, 0, len(ids))}
	for _, id := range ids {
		list.Data = append(list.Data, x.modelObject(id))
	}
	writeJSON(x.w, http.StatusOK, list)
}

func (x *exchange) model(id string) {
	if len(x.s.cfg.Models) > 0 && !slices.Contains(x.s.cfg.Models, id) {
		x.fail(modelNotFound(id))
		return
	}
	writeJSON(x.w, http.StatusOK, x.modelObject(id))
}
