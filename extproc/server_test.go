package extproc

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/detourhq/detour/examples"
	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/route"
)

// ---- fixtures ---------------------------------------------------------

// quickstart parses the embedded quickstart policy, with extra YAML
// (top-level keys) appended.
func quickstart(t testing.TB, extra string) *policy.Policy {
	t.Helper()
	src := append(append([]byte(nil), examples.QuickstartPolicy...), extra...)
	p, err := policy.Parse("quickstart", src)
	if err != nil {
		t.Fatalf("parse quickstart policy: %v", err)
	}
	return p
}

// soloPolicy is a one-backend policy, different enough from the quickstart
// to tell the two apart.
func soloPolicy(t testing.TB) *policy.Policy {
	t.Helper()
	p, err := policy.Parse("solo", []byte(`version: 1
backends:
  - name: solo
    model: solo-1
    endpoints: [{address: "127.0.0.1:8200"}]
    capabilities: {context_window: 32000, tools: true}
routes:
  - name: auto
`))
	if err != nil {
		t.Fatalf("parse solo policy: %v", err)
	}
	return p
}

var (
	tiktokenOnce sync.Once
	tiktokenTC   TokenCounter
	tiktokenErr  error
)

// realTokenizer is the production tokenizer, loaded once per test binary.
func realTokenizer(t testing.TB) TokenCounter {
	t.Helper()
	tiktokenOnce.Do(func() { tiktokenTC, tiktokenErr = NewTokenizer() })
	if tiktokenErr != nil {
		t.Fatalf("NewTokenizer: %v", tiktokenErr)
	}
	return tiktokenTC
}

// prose is English-like ASCII text of n*4 bytes: about n tokens by the
// router's estimate.
func prose(n int) string {
	const s = "the quick brown fox jumps over the lazy dog. "
	return strings.Repeat(s, n*4/len(s)+1)[:n*4]
}

type obj = map[string]any

func user(content any) obj { return obj{"role": "user", "content": content} }

// chat is a chat completion body for model with one user message.
func chat(model string, content any, fields obj) []byte {
	o := obj{"model": model, "messages": []any{obj{"role": "system", "content": "be brief"}, user(content)}}
	for k, v := range fields {
		o[k] = v
	}
	return mustJSON(o)
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

var weatherTool = []any{obj{"type": "function", "function": obj{
	"name":        "get_weather",
	"description": "current weather for a city",
	"parameters": obj{"type": "object", "properties": obj{
		"city": obj{"type": "string"}, "unit": obj{"type": "string", "enum": []string{"c", "f"}},
	}, "required": []string{"city"}},
}}}

func imageContent() []any {
	return []any{
		obj{"type": "text", "text": "what is in this picture?"},
		obj{"type": "image_url", "image_url": obj{"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"}},
	}
}

// ---- harness: the real gRPC server over bufconn, a client playing Envoy ----

type harness struct {
	srv     *Server
	metrics *Metrics
	client  extprocv3.ExternalProcessorClient
	conn    *grpc.ClientConn
}

func newHarness(t testing.TB, p *policy.Policy, tc TokenCounter) *harness {
	t.Helper()
	return newHarnessConfig(t, Config{Policy: p, Tokenizer: tc})
}

// newHarnessConfig serves cfg with fresh metrics and a debug logger.
func newHarnessConfig(t testing.TB, cfg Config) *harness {
	t.Helper()
	p := cfg.Policy
	m := NewMetrics(prometheus.NewRegistry())
	// Debug logging on, to a discard sink: the "routed" log line is built.
	log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.Metrics, cfg.Logger = m, log
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	lis := bufconn.Listen(1 << 20)
	g, _ := NewGRPCServer(srv, int(p.Limits.MaxBodyBytes)+1<<20)
	go func() { _ = g.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)),
	)
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() {
		conn.Close()
		g.Stop()
	})
	return &harness{srv: srv, metrics: m, client: extprocv3.NewExternalProcessorClient(conn), conn: conn}
}

// call is one HTTP request as Envoy presents it to the processor.
type call struct {
	path, method string // method defaults to POST
	headersEOS   bool   // the request has no body
	chunks       [][]byte
	headers      map[string]string // extra request headers
}

func post(path string, body []byte) call { return call{path: path, chunks: [][]byte{body}} }

// reply is what the processor answered.
type reply struct {
	// Exactly one of imm and routed is set: the immediate response, or the
	// common response of the final body answer.
	imm      *extprocv3.ImmediateResponse
	routed   *extprocv3.CommonResponse
	metadata *structpb.Struct
	// partial counts the empty body answers to chunks before the last.
	partial int
}

func headerMap(c call) *extprocv3.HttpHeaders {
	method := c.method
	if method == "" {
		method = "POST"
	}
	// Envoy sends values in raw_value.
	hs := []*corev3.HeaderValue{
		{Key: ":authority", RawValue: []byte("localhost:10000")},
		{Key: ":path", RawValue: []byte(c.path)},
		{Key: ":method", RawValue: []byte(method)},
		{Key: ":scheme", RawValue: []byte("http")},
		{Key: "content-type", RawValue: []byte("application/json")},
	}
	for k, v := range c.headers {
		hs = append(hs, &corev3.HeaderValue{Key: k, RawValue: []byte(v)})
	}
	return &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: hs}, EndOfStream: c.headersEOS}
}

func headersMsg(c call) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: headerMap(c)}}
}

func bodyMsg(b []byte, eos bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: b, EndOfStream: eos}}}
}

// stream is one open ext_proc stream.
type stream struct {
	t      testing.TB
	s      extprocv3.ExternalProcessor_ProcessClient
	cancel context.CancelFunc
}

func (h *harness) open(t testing.TB) *stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	s, err := h.client.Process(ctx)
	if err != nil {
		cancel()
		t.Fatalf("open stream: %v", err)
	}
	return &stream{t: t, s: s, cancel: cancel}
}

func (s *stream) exchange(m *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	s.t.Helper()
	if err := s.s.Send(m); err != nil {
		s.t.Fatalf("send: %v", err)
	}
	r, err := s.s.Recv()
	if err != nil {
		s.t.Fatalf("recv: %v", err)
	}
	return r
}

// close ends the stream as Envoy does and checks the server ends it cleanly.
func (s *stream) close() {
	s.t.Helper()
	defer s.cancel()
	if err := s.s.CloseSend(); err != nil {
		s.t.Fatalf("close send: %v", err)
	}
	if r, err := s.s.Recv(); !errors.Is(err, io.EOF) {
		s.t.Fatalf("after close: got %v, %v; want io.EOF", r, err)
	}
}

// sendBody sends the chunks, the last with end_of_stream, and returns the
// answer to the last one sent (an immediate response ends it early).
func (s *stream) sendBody(chunks [][]byte) reply {
	s.t.Helper()
	var rep reply
	for i, c := range chunks {
		last := i == len(chunks)-1
		r := s.exchange(bodyMsg(c, last))
		if imm := r.GetImmediateResponse(); imm != nil {
			rep.imm, rep.metadata = imm, r.DynamicMetadata
			return rep
		}
		br := r.GetRequestBody()
		if br == nil {
			s.t.Fatalf("chunk %d: got %T, want a body response", i, r.Response)
		}
		if !last {
			if br.Response != nil || r.DynamicMetadata != nil {
				s.t.Fatalf("chunk %d of %d: want an empty body response, got %v", i, len(chunks), r)
			}
			rep.partial++
			continue
		}
		rep.routed, rep.metadata = br.Response, r.DynamicMetadata
	}
	return rep
}

// do plays one whole request.
func (h *harness) do(t testing.TB, c call) reply {
	t.Helper()
	s := h.open(t)
	defer s.close()
	r := s.exchange(headersMsg(c))
	if imm := r.GetImmediateResponse(); imm != nil {
		return reply{imm: imm, metadata: r.DynamicMetadata}
	}
	hr := r.GetRequestHeaders()
	if hr == nil {
		t.Fatalf("headers: got %T, want a headers response", r.Response)
	}
	if hr.Response != nil {
		t.Fatalf("headers: want an empty headers response (continue), got %v", hr.Response)
	}
	if c.headersEOS {
		t.Fatalf("headers with end_of_stream: the processor continued instead of answering")
	}
	return s.sendBody(c.chunks)
}

// ---- checks -----------------------------------------------------------

func setHeaders(t testing.TB, hm *extprocv3.HeaderMutation) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, h := range hm.GetSetHeaders() {
		k := h.GetHeader().GetKey()
		if _, dup := out[k]; dup {
			t.Errorf("header %s set twice", k)
		}
		if h.AppendAction != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
			t.Errorf("header %s: append action %v, want OVERWRITE_IF_EXISTS_OR_ADD", k, h.AppendAction)
		}
		out[k] = headerValue(h.GetHeader())
	}
	return out
}

func metadataFields(t testing.TB, md *structpb.Struct) map[string]any {
	t.Helper()
	ns := md.GetFields()[MetadataNamespace].GetStructValue()
	if ns == nil {
		t.Fatalf("dynamic metadata has no %q namespace: %v", MetadataNamespace, md)
	}
	return ns.AsMap()
}

// openAIError is the OpenAI error body; fields are pointers to tell null
// from absent.
type openAIError = route.WireError

// decodeError checks b is exactly {"error":{"message","type","param","code"}}.
func decodeError(t testing.TB, b []byte) openAIError {
	t.Helper()
	e, err := route.DecodeAPIError(b)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// checkImmediate checks the invariants of every immediate response and
// returns its headers.
func checkImmediate(t testing.TB, r reply, status int, errKind string) map[string]string {
	t.Helper()
	if r.imm == nil {
		t.Fatalf("want an immediate %d, got a routed answer %v", status, r.routed)
	}
	if got := int(r.imm.GetStatus().GetCode()); got != status {
		t.Errorf("status %d, want %d (body %s)", got, status, r.imm.Body)
	}
	h := setHeaders(t, r.imm.Headers)
	if h["content-type"] != "application/json" {
		t.Errorf("content-type %q, want application/json", h["content-type"])
	}
	if got, ok := h[HeaderError]; errKind == "" && ok {
		t.Errorf("%s set to %q on a successful reply", HeaderError, got)
	} else if got != errKind {
		t.Errorf("%s = %q, want %q", HeaderError, got, errKind)
	}
	if !json.Valid(r.imm.Body) {
		t.Errorf("body is not valid JSON: %q", r.imm.Body)
	}
	if md := metadataFields(t, r.metadata); md["reply"] != true {
		t.Errorf("dynamic metadata %v: want detour.reply=true", md)
	}
	if r.imm.GrpcStatus != nil {
		t.Errorf("grpc_status set: %v", r.imm.GrpcStatus)
	}
	return h
}

// checkRouted checks a routing answer and returns the rewritten body.
func checkRouted(t testing.TB, r reply, in []byte, backend, model, target string) []byte {
	t.Helper()
	if r.routed == nil {
		if r.imm != nil {
			t.Fatalf("want routed to %s, got immediate %d: %s", backend, r.imm.GetStatus().GetCode(), r.imm.Body)
		}
		t.Fatalf("want routed to %s, got nothing", backend)
	}
	h := setHeaders(t, r.routed.HeaderMutation)
	want := map[string]string{HeaderBackend: backend, HeaderModel: model, HeaderRoute: target}
	for k, v := range want {
		if h[k] != v {
			t.Errorf("header %s = %q, want %q", k, h[k], v)
		}
	}
	if len(r.routed.HeaderMutation.GetRemoveHeaders()) != 0 {
		t.Errorf("headers removed: %v", r.routed.HeaderMutation.GetRemoveHeaders())
	}
	body := r.routed.GetBodyMutation().GetBody()
	if body == nil {
		t.Fatalf("no body mutation: %v", r.routed.GetBodyMutation())
	}
	if h["content-length"] != strconv.Itoa(len(body)) {
		t.Errorf("content-length %q, body is %d bytes", h["content-length"], len(body))
	}
	if !r.routed.ClearRouteCache {
		t.Error("clear_route_cache is false: Envoy would route on the stale match")
	}
	if r.routed.Status != extprocv3.CommonResponse_CONTINUE {
		t.Errorf("status %v, want CONTINUE", r.routed.Status)
	}
	var got, orig map[string]any
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("rewritten body is not JSON: %v\n%s", err, body)
	}
	if err := json.Unmarshal(in, &orig); err != nil {
		t.Fatalf("test body is not JSON: %v", err)
	}
	if got["model"] != model {
		t.Errorf("rewritten model %v, want %q", got["model"], model)
	}
	orig["model"] = model
	if !reflect.DeepEqual(got, orig) {
		t.Errorf("rewriting changed more than the model:\n got %.300s\nwant %.300s", mustJSON(got), mustJSON(orig))
	}
	md := metadataFields(t, r.metadata)
	if reason, _ := md["reason"].(string); reason == "" {
		t.Errorf("dynamic metadata %v: no reason", md)
	}
	delete(md, "reason")
	wantMD := map[string]any{"backend": backend, "model": model, "route": target}
	if !reflect.DeepEqual(md, wantMD) {
		t.Errorf("dynamic metadata %v, want %v", md, wantMD)
	}
	return body
}

func counter(t testing.TB, c prometheus.Collector) float64 {
	t.Helper()
	return testutil.ToFloat64(c)
}

// ---- routing ------------------------------------------------------------

func TestRoute(t *testing.T) {
	tc := realTokenizer(t)
	big := prose(50_000)
	tests := []struct {
		name                   string
		call                   call
		backend, model, target string
		reason                 string
		check                  func(t *testing.T, out []byte)
	}{
		{
			name:    "short chat auto goes to the cheapest",
			call:    post("/v1/chat/completions", chat("auto", "hello", nil)),
			backend: "fast", model: "fast-8k", target: "auto", reason: "cheapest",
		},
		{
			name:    "50k-token prompt needs the long context",
			call:    post("/v1/chat/completions", chat("auto", big, nil)),
			backend: "long", model: "long-200k", target: "auto", reason: "cheapest",
		},
		{
			name:    "image part needs vision",
			call:    post("/v1/chat/completions", chat("auto", imageContent(), nil)),
			backend: "vision", model: "vision-128k", target: "auto", reason: "only_candidate",
		},
		{
			name:    "tools and 20k tokens need vision",
			call:    post("/v1/chat/completions", chat("auto", prose(20_000), obj{"tools": weatherTool, "tool_choice": "auto"})),
			backend: "vision", model: "vision-128k", target: "auto", reason: "only_candidate",
		},
		{
			name:    "explicit model id",
			call:    post("/v1/chat/completions", chat("long-200k", "hello", nil)),
			backend: "long", model: "long-200k", target: "long-200k", reason: "only_candidate",
		},
		{
			name:    "explicit model with two backends takes the cheaper",
			call:    post("/v1/chat/completions", chat("fast-8k", "hello", nil)),
			backend: "fast", model: "fast-8k", target: "fast-8k", reason: "cheapest",
		},
		{
			name:    "streaming keeps stream true",
			call:    post("/v1/chat/completions", chat("auto", "hello", obj{"stream": true, "stream_options": obj{"include_usage": true}})),
			backend: "fast", model: "fast-8k", target: "auto", reason: "cheapest",
			check: func(t *testing.T, out []byte) {
				var b struct {
					Stream *bool `json:"stream"`
				}
				if err := json.Unmarshal(out, &b); err != nil || b.Stream == nil || !*b.Stream {
					t.Errorf("rewritten body lost stream:true: %s", out)
				}
			},
		},
		{
			name:    "json mode and max_tokens",
			call:    post("/v1/chat/completions", chat("auto", "list three colours", obj{"response_format": obj{"type": "json_object"}, "max_tokens": 200})),
			backend: "fast", model: "fast-8k", target: "auto", reason: "cheapest",
		},
		{
			name:    "max_tokens beyond fast's output limit",
			call:    post("/v1/chat/completions", chat("auto", "write a long story", obj{"max_tokens": 6000})),
			backend: "long", model: "long-200k", target: "auto", reason: "cheapest",
		},
		{
			name:    "query string on the path",
			call:    post("/v1/chat/completions?api-version=1", chat("auto", "query string on the path", nil)),
			backend: "fast", model: "fast-8k", target: "auto", reason: "cheapest",
		},
		{
			name:    "completions endpoint",
			call:    post("/v1/completions", mustJSON(obj{"model": "auto", "prompt": "once upon a time", "max_tokens": 16})),
			backend: "fast", model: "fast-8k", target: "auto", reason: "cheapest",
		},
		{
			name:    "embeddings endpoint",
			call:    post("/v1/embeddings", mustJSON(obj{"model": "auto", "input": []string{"a", "b"}})),
			backend: "fast", model: "fast-8k", target: "auto", reason: "cheapest",
		},
		{
			name:    "body in several chunks",
			call:    call{path: "/v1/chat/completions", chunks: split(chat("auto", prose(300), nil), 3)},
			backend: "fast", model: "fast-8k", target: "auto", reason: "cheapest",
		},
		{
			name:    "escaped model name and unicode text",
			call:    post("/v1/chat/completions", []byte(`{"messages":[{"role":"user","content":"h\u00e9llo \"w\" — 世界"}],"model":"l\u006fng-200k","temperature":0.2}`)),
			backend: "long", model: "long-200k", target: "long-200k", reason: "only_candidate",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, quickstart(t, ""), tc)
			r := h.do(t, tt.call)
			out := checkRouted(t, r, joinChunks(tt.call.chunks), tt.backend, tt.model, tt.target)
			if tt.check != nil {
				tt.check(t, out)
			}
			if want := len(tt.call.chunks) - 1; r.partial != want {
				t.Errorf("%d empty answers to partial chunks, want %d", r.partial, want)
			}
			m := h.metrics
			if got := counter(t, m.Decisions.WithLabelValues(tt.target, tt.backend, tt.reason)); got != 1 {
				t.Errorf("decisions_total{route=%q,backend=%q,reason=%q} = %v, want 1", tt.target, tt.backend, tt.reason, got)
			}
			if n := testutil.CollectAndCount(m.Decisions); n != 1 {
				t.Errorf("%d decision series, want 1", n)
			}
			if n := testutil.CollectAndCount(m.Errors); n != 0 {
				t.Errorf("%d error series, want none", n)
			}
			method := countMethod(t, h, tt.call.path, joinChunks(tt.call.chunks))
			if got := counter(t, m.TokenCounts.WithLabelValues(method)); got != 1 {
				t.Errorf("prompt_token_counts_total{method=%s} = %v, want 1", method, got)
			}
			if n := testutil.CollectAndCount(m.TokenCounts); n != 1 {
				t.Errorf("%d token count series, want 1", n)
			}
			if got := testutil.CollectAndCount(m.DecisionTime); got != 1 {
				t.Errorf("decision duration series %d", got)
			}
		})
	}
}

// countMethod is how the server should measure body's prompt: "exact"
// when it has a tokenizer and the router finds the estimate uncertain.
func countMethod(t testing.TB, h *harness, path string, body []byte) string {
	t.Helper()
	var req route.Request
	if err := route.ParseRequest(route.KindFromPath(path), body, &req); err != nil {
		t.Fatalf("parse test body: %v", err)
	}
	if h.srv.tokens != nil && h.srv.state.Load().router.Uncertain(&req) {
		return "exact"
	}
	return "estimate"
}

func split(b []byte, n int) [][]byte {
	var out [][]byte
	size := (len(b) + n - 1) / n
	for len(b) > size {
		out = append(out, b[:size])
		b = b[size:]
	}
	return append(out, b)
}

func joinChunks(c [][]byte) []byte {
	var out []byte
	for _, b := range c {
		out = append(out, b...)
	}
	return out
}

// ---- errors -------------------------------------------------------------

func TestErrors(t *testing.T) {
	tc := realTokenizer(t)
	small := "limits:\n  max_body_bytes: 2KiB\n"
	// A chat body of exactly n bytes.
	sized := func(n int) []byte {
		b := chat("auto", "", nil)
		return chat("auto", strings.Repeat("x", n-len(b)), nil)
	}
	tests := []struct {
		name    string
		policy  string // extra YAML for the quickstart
		call    call
		status  int
		kind    string // x-detour-error and errors_total{kind}
		code    string // error.code; "" for null
		param   string // error.param; "" for null
		message []string
		partial int // empty answers to chunks before the answer
	}{
		{
			name:   "malformed JSON",
			call:   post("/v1/chat/completions", []byte(`{"model":"auto","messages":[{"role":"user","content":"hi"}`)),
			status: 400, kind: "invalid_body", code: "invalid_request_body",
			message: []string{"could not parse the request body", "invalid JSON at byte"},
		},
		{
			name:   "not an object",
			call:   post("/v1/chat/completions", []byte(`["model","auto"]`)),
			status: 400, kind: "invalid_body", code: "invalid_request_body",
			message: []string{"JSON object"},
		},
		{
			name:   "no model",
			call:   post("/v1/chat/completions", []byte(`{"messages":[{"role":"user","content":"hi"}]}`)),
			status: 400, kind: "invalid_body", code: "invalid_request_body",
			message: []string{"model is required"},
		},
		{
			name:   "wrong field type",
			call:   post("/v1/chat/completions", []byte(`{"model":"auto","messages":"hi"}`)),
			status: 400, kind: "invalid_body", code: "invalid_request_body",
			message: []string{"messages must be an array"},
		},
		{
			name:   "body over max_body_bytes in chunks",
			policy: small,
			call:   call{path: "/v1/chat/completions", chunks: [][]byte{[]byte(`{"model":"auto","messages":[{"role":"user","content":"` + strings.Repeat("a", 1500)), []byte(strings.Repeat("b", 1000) + `"}]}`)}},
			status: 413, kind: "body_too_large", code: "request_too_large",
			message: []string{"2048 bytes"}, partial: 1,
		},
		{
			name:   "body over max_body_bytes by one byte",
			policy: small,
			call:   post("/v1/chat/completions", sized(2049)),
			status: 413, kind: "body_too_large", code: "request_too_large",
			message: []string{"2048 bytes"},
		},
		{
			name:   "unknown model",
			call:   post("/v1/chat/completions", chat("gpt-9", "hi", nil)),
			status: 404, kind: "unknown_model", code: "model_not_found", param: "model",
			message: []string{`"gpt-9"`, "auto, fast-8k, long-200k, vision-128k"},
		},
		{
			name:   "300k-token prompt exceeds every context window",
			call:   post("/v1/chat/completions", chat("auto", prose(300_000), nil)),
			status: 400, kind: "unsatisfiable", code: "context_length_exceeded", param: "messages",
			message: []string{`"auto"`, "prompt tokens", "context window is 200,000 tokens", "long"},
		},
		{
			name:   "completion prompt of 210k token ids",
			call:   post("/v1/completions", mustJSON(obj{"model": "auto", "prompt": make([]int, 210_000)})),
			status: 400, kind: "unsatisfiable", code: "context_length_exceeded", param: "prompt",
			message: []string{"210,000 prompt tokens", "context window is 200,000 tokens"},
		},
		{
			name:   "embedding input of 210k token ids",
			call:   post("/v1/embeddings", mustJSON(obj{"model": "long-200k", "input": [][]int{make([]int, 105_000), make([]int, 105_000)}})),
			status: 400, kind: "unsatisfiable", code: "context_length_exceeded", param: "input",
			message: []string{"210,000 input tokens"},
		},
		{
			name:   "image sent to a model without vision",
			call:   post("/v1/chat/completions", chat("fast-8k", imageContent(), nil)),
			status: 400, kind: "unsatisfiable", code: "unsupported_request", param: "messages",
			message: []string{"does not accept images"},
		},
		{
			name:   "max_tokens above every backend",
			call:   post("/v1/chat/completions", chat("auto", "hi", obj{"max_tokens": 100_000})),
			status: 400, kind: "unsatisfiable", code: "max_tokens_exceeded", param: "max_tokens",
			message: []string{"100,000 output tokens", "writes at most"},
		},
		{
			name:   "tools on a backend without tools",
			call:   post("/v1/chat/completions", chat("long-200k", "hi", obj{"tools": weatherTool})),
			status: 400, kind: "unsatisfiable", code: "unsupported_request", param: "tools",
			message: []string{"does not support tools"},
		},
		{
			name:   "unknown path",
			call:   post("/v1/foo", chat("auto", "hi", nil)),
			status: 404, kind: "unknown_path", code: "unknown_url",
			message: []string{"/v1/foo", "/v1/chat/completions"},
		},
		{
			name:   "unknown path with quotes and bad UTF-8",
			call:   post("/v1/\"x\"\n\xff", chat("auto", "hi", nil)),
			status: 404, kind: "unknown_path", code: "unknown_url",
			message: []string{`/v1/"x"`},
		},
		{
			name:   "headers end the stream: no body",
			call:   call{path: "/v1/chat/completions", headersEOS: true},
			status: 400, kind: "invalid_body", code: "invalid_request_body",
			message: []string{"no body"},
		},
		{
			name:   "empty body",
			call:   post("/v1/chat/completions", nil),
			status: 400, kind: "invalid_body", code: "invalid_request_body",
			message: []string{"no body"},
		},
		{
			name:   "whitespace body",
			call:   post("/v1/chat/completions", []byte(" \n")),
			status: 400, kind: "invalid_body", code: "invalid_request_body",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, quickstart(t, tt.policy), tc)
			r := h.do(t, tt.call)
			checkImmediate(t, r, tt.status, tt.kind)
			e := decodeError(t, r.imm.Body)
			if got := deref(e.Code); got != tt.code || (tt.code == "") != (e.Code == nil) {
				t.Errorf("code %v, want %q", got, tt.code)
			}
			if got := deref(e.Param); got != tt.param || (tt.param == "") != (e.Param == nil) {
				t.Errorf("param %q, want %q", got, tt.param)
			}
			if e.Type != "invalid_request_error" {
				t.Errorf("type %q, want invalid_request_error", e.Type)
			}
			for _, s := range tt.message {
				if !strings.Contains(e.Message, s) {
					t.Errorf("message %q does not mention %q", e.Message, s)
				}
			}
			if r.partial != tt.partial {
				t.Errorf("%d partial answers, want %d", r.partial, tt.partial)
			}
			if got := counter(t, h.metrics.Errors.WithLabelValues(tt.kind)); got != 1 {
				t.Errorf("errors_total{kind=%q} = %v, want 1", tt.kind, got)
			}
			if n := testutil.CollectAndCount(h.metrics.Errors); n != 1 {
				t.Errorf("%d error series, want 1", n)
			}
			if n := testutil.CollectAndCount(h.metrics.Decisions); n != 0 {
				t.Errorf("%d decision series, want none", n)
			}
			wantRejections := 0
			if tt.kind == "unsatisfiable" {
				wantRejections = 1
			}
			if n := testutil.CollectAndCount(h.metrics.Rejections); n != wantRejections {
				t.Errorf("%d unsatisfiable series, want %d", n, wantRejections)
			}
		})
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func TestBodyLimitBoundary(t *testing.T) {
	h := newHarness(t, quickstart(t, "limits:\n  max_body_bytes: 2KiB\n"), realTokenizer(t))
	b := chat("auto", "", nil)
	b = chat("auto", strings.Repeat("x", 2048-len(b)), nil)
	if len(b) != 2048 {
		t.Fatalf("body is %d bytes", len(b))
	}
	// Exactly at the limit is accepted, however it is chunked.
	checkRouted(t, h.do(t, post("/v1/chat/completions", b)), b, "fast", "fast-8k", "auto")
	checkRouted(t, h.do(t, call{path: "/v1/chat/completions", chunks: split(b, 4)}), b, "fast", "fast-8k", "auto")
	// A stream that was rejected for size is not reused with stale state.
	r := h.do(t, post("/v1/chat/completions", append(b, ' ')))
	checkImmediate(t, r, 413, "body_too_large")
	checkRouted(t, h.do(t, post("/v1/chat/completions", b)), b, "fast", "fast-8k", "auto")
}

func TestUnsatisfiableMetrics(t *testing.T) {
	h := newHarness(t, quickstart(t, ""), nil)
	checkImmediate(t, h.do(t, post("/v1/chat/completions", chat("auto", prose(300_000), nil))), 400, "unsatisfiable")
	checkImmediate(t, h.do(t, post("/v1/chat/completions", chat("fast-8k", imageContent(), nil))), 400, "unsatisfiable")
	for _, c := range []struct {
		route, req string
	}{{"auto", "context_window"}, {"fast-8k", "vision"}} {
		if got := counter(t, h.metrics.Rejections.WithLabelValues(c.route, c.req)); got != 1 {
			t.Errorf("unsatisfiable_total{route=%q,requirement=%q} = %v, want 1", c.route, c.req, got)
		}
	}
	if got := counter(t, h.metrics.Errors.WithLabelValues("unsatisfiable")); got != 2 {
		t.Errorf("errors_total{kind=unsatisfiable} = %v, want 2", got)
	}
}

func TestModelsList(t *testing.T) {
	h := newHarness(t, quickstart(t, ""), nil)
	for _, path := range []string{"/v1/models", "/models", "/v1/models?limit=10"} {
		r := h.do(t, call{path: path, method: "GET", headersEOS: true})
		checkImmediate(t, r, 200, "")
		var list struct {
			Object string `json:"object"`
			Data   []struct {
				ID     string `json:"id"`
				Object string `json:"object"`
			} `json:"data"`
		}
		if err := json.Unmarshal(r.imm.Body, &list); err != nil {
			t.Fatalf("%s: %v: %s", path, err, r.imm.Body)
		}
		var ids []string
		for _, d := range list.Data {
			if d.Object != "model" {
				t.Errorf("%s: entry %q has object %q", path, d.ID, d.Object)
			}
			ids = append(ids, d.ID)
		}
		if want := []string{"auto", "fast-8k", "long-200k", "vision-128k"}; list.Object != "list" || !reflect.DeepEqual(ids, want) {
			t.Errorf("%s: %s %v, want list %v", path, list.Object, ids, want)
		}
	}
	if n := testutil.CollectAndCount(h.metrics.Errors); n != 0 {
		t.Errorf("the models list counted as an error (%d series)", n)
	}
	// Any other method on /v1/models is not routed.
	r := h.do(t, post("/v1/models", []byte(`{}`)))
	checkImmediate(t, r, 404, "unknown_path")
}

func TestModelsListEscapes(t *testing.T) {
	b := route.ModelsList([]string{`a"b`, "c\\d", "e\nf", "\xff"})
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &list); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	if len(list.Data) != 4 || list.Data[0].ID != `a"b` || list.Data[2].ID != "e\nf" || list.Data[3].ID != "\uFFFD" {
		t.Errorf("got %+v", list.Data)
	}
	if !json.Valid(route.ModelsList(nil)) {
		t.Errorf("empty list: %s", route.ModelsList(nil))
	}
}

// ---- protocol details ----------------------------------------------------

func TestResponsePhasesPassThrough(t *testing.T) {
	h := newHarness(t, quickstart(t, ""), nil)
	s := h.open(t)
	defer s.close()
	msgs := []*extprocv3.ProcessingRequest{
		{Request: &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: &extprocv3.HttpTrailers{}}},
		{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{}}},
		{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: []byte("x"), EndOfStream: true}}},
		{Request: &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: &extprocv3.HttpTrailers{}}},
	}
	for _, m := range msgs {
		r := s.exchange(m)
		var ok bool
		switch m.Request.(type) {
		case *extprocv3.ProcessingRequest_RequestTrailers:
			ok = r.GetRequestTrailers() != nil
		case *extprocv3.ProcessingRequest_ResponseHeaders:
			ok = r.GetResponseHeaders() != nil && r.GetResponseHeaders().Response == nil
		case *extprocv3.ProcessingRequest_ResponseBody:
			ok = r.GetResponseBody() != nil && r.GetResponseBody().Response == nil
		case *extprocv3.ProcessingRequest_ResponseTrailers:
			ok = r.GetResponseTrailers() != nil
		}
		if !ok {
			t.Errorf("%T answered with %v", m.Request, r)
		}
	}
	// A message with no request set is answered, not dropped.
	r := s.exchange(&extprocv3.ProcessingRequest{})
	if imm := r.GetImmediateResponse(); imm == nil || imm.GetStatus().GetCode() != 500 {
		t.Errorf("empty message answered with %v", r)
	}
}

// When Envoy skips the headers phase it may send the path as an attribute.
func TestBodyWithoutHeaders(t *testing.T) {
	h := newHarness(t, quickstart(t, ""), nil)
	body := mustJSON(obj{"model": "auto", "input": "hello"})
	attrs := func(path string) map[string]*structpb.Struct {
		return map[string]*structpb.Struct{"envoy.filters.http.ext_proc": {Fields: map[string]*structpb.Value{
			"request.path": structpb.NewStringValue(path), "request.method": structpb.NewStringValue("POST"),
		}}}
	}
	for _, tt := range []struct {
		name  string
		attrs map[string]*structpb.Struct
		want  int // 0: routed
	}{
		{"path attribute", attrs("/v1/embeddings"), 0},
		{"no attributes: kind inferred from the body", nil, 0},
		{"unknown path attribute", attrs("/v2/other"), 404},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := h.open(t)
			defer s.close()
			m := bodyMsg(body, true)
			m.Attributes = tt.attrs
			r := s.exchange(m)
			rep := reply{metadata: r.DynamicMetadata, imm: r.GetImmediateResponse()}
			if rep.imm == nil {
				rep.routed = r.GetRequestBody().GetResponse()
			}
			if tt.want == 0 {
				checkRouted(t, rep, body, "fast", "fast-8k", "auto")
			} else {
				checkImmediate(t, rep, tt.want, "unknown_path")
			}
		})
	}
}

func TestHealthService(t *testing.T) {
	h := newHarness(t, quickstart(t, ""), nil)
	hc := healthpb.NewHealthClient(h.conn)
	for _, svc := range []string{"", extprocv3.ExternalProcessor_ServiceDesc.ServiceName} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		cancel()
		if err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health %q: %v, %v", svc, r, err)
		}
	}
}

// A body above gRPC's 4 MiB default crosses because the server options
// size messages for the policy's limit, and comes back rewritten.
func TestLargeBodyRoundTrip(t *testing.T) {
	h := newHarness(t, quickstart(t, ""), realTokenizer(t))
	img := "data:image/png;base64," + strings.Repeat("QUJD", (9<<20)/8)
	body := chat("auto", []any{obj{"type": "text", "text": "describe"}, obj{"type": "image_url", "image_url": obj{"url": img}}}, nil)
	if len(body) <= 4<<20 || int64(len(body)) > int64(h.srv.state.Load().maxBody) {
		t.Fatalf("body is %d bytes", len(body))
	}
	checkRouted(t, h.do(t, post("/v1/chat/completions", body)), body, "vision", "vision-128k", "auto")
	if n := testutil.CollectAndCount(h.metrics.BodyBytes); n != 1 {
		t.Errorf("body size histogram: %d series", n)
	}
}

func TestStreamsActiveGauge(t *testing.T) {
	h := newHarness(t, quickstart(t, ""), nil)
	s := h.open(t)
	s.exchange(headersMsg(call{path: "/v1/chat/completions"}))
	if got := counter(t, h.metrics.StreamsActive); got != 1 {
		t.Errorf("streams_active = %v with one open stream", got)
	}
	s.sendBody([][]byte{chat("auto", "hi", nil)})
	s.close()
	deadline := time.Now().Add(5 * time.Second)
	for counter(t, h.metrics.StreamsActive) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("streams_active = %v after the stream closed", counter(t, h.metrics.StreamsActive))
		}
		time.Sleep(time.Millisecond)
	}
}

// ---- policy swaps -------------------------------------------------------

func TestSetPolicy(t *testing.T) {
	h := newHarness(t, quickstart(t, ""), nil)
	body := chat("auto", "hello", nil)

	// A stream whose headers were answered before the swap routes its body
	// on the policy it started with.
	old := h.open(t)
	if r := old.exchange(headersMsg(call{path: "/v1/chat/completions"})); r.GetRequestHeaders() == nil {
		t.Fatalf("headers answered with %v", r)
	}
	if err := h.srv.SetPolicy(soloPolicy(t)); err != nil {
		t.Fatalf("SetPolicy: %v", err)
	}
	checkRouted(t, old.sendBody([][]byte{body}), body, "fast", "fast-8k", "auto")
	old.close()

	// New streams see the new policy.
	checkRouted(t, h.do(t, post("/v1/chat/completions", body)), body, "solo", "solo-1", "auto")
	r := h.do(t, post("/v1/chat/completions", chat("fast-8k", "hi", nil)))
	checkImmediate(t, r, 404, "unknown_model")
	if e := decodeError(t, r.imm.Body); !strings.Contains(e.Message, "known models: auto, solo-1") {
		t.Errorf("message %q does not list the new policy's models", e.Message)
	}
	r = h.do(t, call{path: "/v1/models", method: "GET", headersEOS: true})
	if !strings.Contains(string(r.imm.Body), `"solo-1"`) || strings.Contains(string(r.imm.Body), "fast-8k") {
		t.Errorf("models list after the swap: %s", r.imm.Body)
	}

	// A small body limit takes effect for new streams.
	if err := h.srv.SetPolicy(quickstart(t, "limits:\n  max_body_bytes: 1KiB\n")); err != nil {
		t.Fatal(err)
	}
	checkImmediate(t, h.do(t, post("/v1/chat/completions", chat("auto", prose(400), nil))), 413, "body_too_large")

	if err := h.srv.SetPolicy(nil); err == nil {
		t.Error("SetPolicy(nil) succeeded")
	}
	// The failed swap left the last good policy in force.
	checkImmediate(t, h.do(t, post("/v1/chat/completions", chat("auto", prose(400), nil))), 413, "body_too_large")
}

func TestNewRequiresMetricsAndPolicy(t *testing.T) {
	if _, err := New(Config{Policy: quickstart(t, "")}); err == nil {
		t.Error("New without metrics succeeded")
	}
	if _, err := New(Config{Metrics: NewMetrics(prometheus.NewRegistry())}); err == nil {
		t.Error("New without a policy succeeded")
	}
}

// ---- panics ----------------------------------------------------------------

type panicCounter struct{}

func (panicCounter) CountTokens(string) int { panic("tokenizer exploded") }

// uncertainPrompt is a chat body whose estimate puts it near fast-8k's
// limit, so the router asks for an exact count.
func uncertainPrompt(t testing.TB, p *policy.Policy, text string) []byte {
	t.Helper()
	body := chat("auto", text, nil)
	r, err := route.New(p.RouteTable())
	if err != nil {
		t.Fatal(err)
	}
	var req route.Request
	if err := route.ParseRequest(route.KindChat, body, &req); err != nil {
		t.Fatal(err)
	}
	if !r.Uncertain(&req) {
		t.Fatalf("test prompt of about %d tokens is not uncertain", req.PromptTokens)
	}
	return body
}

func TestPanicRecovery(t *testing.T) {
	p := quickstart(t, "")
	h := newHarness(t, p, panicCounter{})
	body := uncertainPrompt(t, p, prose(8000))

	r := h.do(t, post("/v1/chat/completions", body))
	checkImmediate(t, r, 500, "internal")
	e := decodeError(t, r.imm.Body)
	if e.Type != "server_error" || deref(e.Code) != "internal_error" {
		t.Errorf("panic answered with %+v", e)
	}
	if strings.Contains(e.Message, "tokenizer exploded") {
		t.Errorf("the panic value leaked to the client: %q", e.Message)
	}
	if got := counter(t, h.metrics.Panics); got != 1 {
		t.Errorf("detour_extproc_panics_total = %v, want 1", got)
	}
	if got := counter(t, h.metrics.Errors.WithLabelValues("internal")); got != 1 {
		t.Errorf("errors_total{kind=internal} = %v, want 1", got)
	}

	// The server keeps serving: the next streams (which reuse the pooled
	// scratch of the one that panicked) route normally.
	for i := 0; i < 3; i++ {
		small := chat("auto", "hello", nil)
		checkRouted(t, h.do(t, post("/v1/chat/completions", small)), small, "fast", "fast-8k", "auto")
	}
	// And another panic is again a 500, not a dead stream.
	checkImmediate(t, h.do(t, post("/v1/chat/completions", body)), 500, "internal")
	if got := counter(t, h.metrics.Panics); got != 2 {
		t.Errorf("detour_extproc_panics_total = %v, want 2", got)
	}
}

// ---- concurrency -----------------------------------------------------------

func TestConcurrentStreams(t *testing.T) {
	h := newHarness(t, quickstart(t, ""), realTokenizer(t))
	type job struct {
		body    []byte
		backend string
		status  int
	}
	jobs := []job{
		{chat("auto", "hello", nil), "fast", 0},
		{chat("long-200k", prose(20_000), nil), "long", 0},
		{chat("auto", imageContent(), nil), "vision", 0},
		{chat("nope", "hello", nil), "", 404},
		{[]byte(`{"model":`), "", 400},
		{uncertainPrompt(t, quickstart(t, ""), strings.Repeat("hello world ", 1000)), "fast", 0}, // exact count
	}
	const workers, each = 12, 6
	var wg sync.WaitGroup
	var failed atomic.Bool
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				j := jobs[(w+i)%len(jobs)]
				r := h.do(t, post("/v1/chat/completions", j.body))
				switch {
				case j.status != 0 && (r.imm == nil || int(r.imm.GetStatus().GetCode()) != j.status):
					failed.Store(true)
					t.Errorf("worker %d: want %d, got %v %v", w, j.status, r.imm, r.routed)
				case j.status == 0 && (r.routed == nil || setHeaders(t, r.routed.HeaderMutation)[HeaderBackend] != j.backend):
					failed.Store(true)
					t.Errorf("worker %d: want %s, got %v %v", w, j.backend, r.imm, r.routed)
				case j.status == 0:
					var b struct{ Model string }
					if err := json.Unmarshal(r.routed.GetBodyMutation().GetBody(), &b); err != nil || b.Model == "" {
						failed.Store(true)
						t.Errorf("worker %d: body %v", w, err)
					}
				}
			}
		}(w)
	}
	wg.Wait()
	if failed.Load() {
		return
	}
	total := 0.0
	for _, kind := range []string{"estimate", "exact"} {
		total += counter(t, h.metrics.TokenCounts.WithLabelValues(kind))
	}
	if want := float64(workers * each * 5 / 6); total != want {
		t.Errorf("token counts %v, want %v (every parsed request)", total, want)
	}
}
