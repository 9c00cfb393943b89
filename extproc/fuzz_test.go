package extproc

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"testing"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/respcache"
	"github.com/detourhq/detour/route"
)

// fuzzPaths are the request paths FuzzProcess picks from; "" skips the
// headers phase, as an Envoy configured to send only the body would.
var fuzzPaths = []string{
	"/v1/chat/completions",
	"/v1/completions",
	"/v1/embeddings",
	"/chat/completions?api-version=2",
	"",
	"/v1/models",
	"/v1/foo",
}

// tinyPolicy has context windows small enough that short fuzzed prompts
// land in the band where the router asks for an exact count, so the
// tokenizer path sees fuzzed text too.
const tinyPolicy = `version: 1
backends:
  - name: tiny
    model: tiny-1
    endpoints: [{address: "127.0.0.1:8301"}]
    capabilities: {context_window: 64, max_output_tokens: 16, tools: true, json_mode: true}
    price: {input: 0.1, output: 0.1}
  - name: mid
    model: "mid\"1"
    endpoints: [{address: "127.0.0.1:8302"}]
    capabilities: {context_window: 512, vision: true, apis: [chat]}
    price: {input: 1, output: 1}
  - name: big
    model: big-1
    endpoints: [{address: "127.0.0.1:8303"}]
    capabilities: {context_window: 4096, streaming: false, apis: [completions, embeddings]}
    price: {input: 2, output: 2}
routes:
  - name: auto
  - name: ordered
    backends: [big, mid, tiny]
    objective: ordered
routing:
  output_reserve_tokens: 8
limits:
  max_body_bytes: 64KiB
`

func fuzzServer(t testing.TB, p *policy.Policy) *Server {
	// With the response cache, so reusable bodies (temperature 0) go
	// through the canonical key builder too.
	cache := respcache.New(respcache.Config{Store: respcache.NewMemory(1 << 20)})
	s, err := New(Config{Policy: p, Metrics: NewMetrics(prometheus.NewRegistry()), Tokenizer: realTokenizer(t), Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// FuzzProcess drives the message handler with a fuzzed body and a path
// from fuzzPaths. It calls handle, not handleSafely: a panic must fail the
// fuzzer, not be turned into a 500 by the recover.
//
// Checked: every answer is a well-formed ext_proc answer (an OpenAI error,
// or the body rewritten for the chosen backend, still the same request);
// splitting the body into chunks changes nothing; and each attempt of the
// decision's order, played through the per-attempt filter, reaches its
// backend with that backend's model and none of detour's headers.
//
// sel: bit 7 picks the policy (quickstart or tiny), bit 6 sends the body
// in two chunks, the rest picks the path.
func FuzzProcess(f *testing.F) {
	tiny, err := policy.Parse("tiny", []byte(tinyPolicy))
	if err != nil {
		f.Fatal(err)
	}
	servers := [2]*Server{fuzzServer(f, quickstart(f, "")), fuzzServer(f, tiny)}
	models := map[string]string{} // backend name → model, both policies
	for _, p := range []*policy.Policy{quickstart(f, ""), tiny} {
		for _, b := range p.Backends {
			models[b.Name] = b.Model
		}
	}

	f.Add(uint8(0), chat("auto", "hello", nil))
	f.Add(uint8(0x80), chat("auto", prose(30), obj{"stream": true}))
	f.Add(uint8(0x81), mustJSON(obj{"model": "ordered", "prompt": []any{"a", []int{1, 2}}}))
	f.Add(uint8(0x42), mustJSON(obj{"model": "auto", "input": "x"}))
	f.Add(uint8(4), []byte(`{"model":"auto","messages":[{"role":"user","content":"h\u00e9\"llo"}],"model":"fast-8k"}`))
	f.Add(uint8(0), []byte(`{"model":"auto","messages":[`))
	f.Add(uint8(0), chat("auto", "hello", obj{"temperature": 0, "seed": 7, "tools": []any{obj{"type": "function"}}}))

	// Reused across inputs, as the pool does; other is the second pass.
	w, other := new(work), new(work)
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, sel uint8, body []byte) {
		s := servers[sel>>7]
		path := fuzzPaths[int(sel&0x3f)%len(fuzzPaths)]
		chunked := sel&0x40 != 0
		st := s.state.Load()

		r := fuzzRequest(t, s, st, w, path, body, chunked)
		if r == nil {
			return // answered at the headers
		}
		// Envoy may hand the body over in any number of chunks.
		if again := fuzzRequest(t, s, st, other, path, body, !chunked); !proto.Equal(r, again) {
			t.Fatalf("chunked %v and %v answer differently:\n%v\n%v", chunked, !chunked, r, again)
		}
		if imm := r.GetImmediateResponse(); imm != nil {
			code := int32(imm.GetStatus().GetCode())
			checkFuzzImmediate(t, code, imm.Body, r.DynamicMetadata.GetFields()[MetadataNamespace] != nil)
			if code != 400 && code != 404 && code != 413 {
				t.Fatalf("status %d for %q: %s", code, body, imm.Body)
			}
			return
		}
		cr := r.GetRequestBody().GetResponse()
		if cr == nil {
			t.Fatalf("no answer: %v", r)
		}
		h := map[string]string{}
		for _, hv := range cr.GetHeaderMutation().GetSetHeaders() {
			h[hv.GetHeader().GetKey()] = headerValue(hv.GetHeader())
		}
		out := cr.GetBodyMutation().GetBody()
		want, ok := models[h[HeaderBackend]]
		if !ok || h[HeaderModel] != want {
			t.Fatalf("backend %q model %q", h[HeaderBackend], h[HeaderModel])
		}
		checkFuzzBody(t, body, out, h["content-length"], want, &w.req)
		if !cr.ClearRouteCache {
			t.Fatal("clear_route_cache not set")
		}

		// Each attempt of the order, through the per-attempt filter.
		order := fuzzOrder(t, r)
		if len(order) == 0 || order[0] != h[HeaderBackend] || len(order) > st.attempts {
			t.Fatalf("priority groups %v for backend %s, %d attempts", order, h[HeaderBackend], st.attempts)
		}
		for _, backend := range order {
			other.reset()
			hr := s.handle(ctx, st, other, upstreamHeaders(path, backend, want))
			mut := hr.GetRequestHeaders().GetResponse().GetHeaderMutation()
			if mut == nil || !slices.Contains(mut.RemoveHeaders, HeaderBackend) || !slices.Contains(mut.RemoveHeaders, HeaderModel) {
				t.Fatalf("attempt on %s: headers answer %v keeps detour's headers", backend, hr)
			}
			if hr.GetModeOverride().GetRequestBodyMode() != extprocfilterv3.ProcessingMode_BUFFERED {
				if models[backend] != want {
					t.Fatalf("attempt on %s (model %q) does not ask for a body written for %q", backend, models[backend], want)
				}
				continue
			}
			br := s.handle(ctx, st, other, bodyMsg(out, true)).GetRequestBody().GetResponse()
			if br == nil || br.GetBodyMutation() == nil {
				t.Fatalf("attempt on %s: body for %q not rewritten", backend, want)
			}
			ah := map[string]string{}
			for _, hv := range br.GetHeaderMutation().GetSetHeaders() {
				ah[hv.GetHeader().GetKey()] = headerValue(hv.GetHeader())
			}
			checkFuzzBody(t, out, br.GetBodyMutation().GetBody(), ah["content-length"], models[backend], &w.req)
		}
	})
}

// fuzzRequest plays one request through handle: the headers (unless path
// is ""), then the body whole or in two chunks. It returns the final
// answer, or nil when the headers were answered (and checked) already.
func fuzzRequest(t *testing.T, s *Server, st *state, w *work, path string, body []byte, chunked bool) *extprocv3.ProcessingResponse {
	t.Helper()
	ctx := context.Background()
	w.reset()
	if path != "" {
		r := s.handle(ctx, st, w, headersMsg(call{path: path}))
		if imm := r.GetImmediateResponse(); imm != nil {
			checkFuzzImmediate(t, int32(imm.GetStatus().GetCode()), imm.Body, r.DynamicMetadata.GetFields()[MetadataNamespace] != nil)
			if path != "/v1/models" && path != "/v1/foo" {
				t.Fatalf("headers for %s answered %d: %s", path, imm.GetStatus().GetCode(), imm.Body)
			}
			return nil
		}
		if r.GetRequestHeaders() == nil {
			t.Fatalf("headers answered with %v", r)
		}
	}
	chunks := [][]byte{body}
	if chunked {
		chunks = [][]byte{body[:len(body)/2], body[len(body)/2:]}
	}
	r := s.handle(ctx, st, w, bodyMsg(chunks[0], len(chunks) == 1))
	if len(chunks) == 2 && r.GetImmediateResponse() == nil {
		if br := r.GetRequestBody(); br == nil || br.Response != nil {
			t.Fatalf("first chunk answered with %v", r)
		}
		r = s.handle(ctx, st, w, bodyMsg(chunks[1], true))
	}
	return r
}

// checkFuzzBody checks a body rewritten from in for a backend serving
// model: valid JSON, its length in content-length, the model in place and
// still the request req describes.
func checkFuzzBody(t *testing.T, in, out []byte, contentLength, model string, req *route.Request) {
	t.Helper()
	if !json.Valid(out) {
		t.Fatalf("rewritten body is not valid JSON:\nin  %q\nout %q", in, out)
	}
	if contentLength != strconv.Itoa(len(out)) {
		t.Fatalf("content-length %q for %d bytes", contentLength, len(out))
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(out, &top); err != nil {
		t.Fatalf("rewritten body %q: %v", out, err)
	}
	var got string
	if err := json.Unmarshal(top["model"], &got); err != nil || got != model {
		t.Fatalf("rewritten model %q (%v), want %q\nin  %q\nout %q", top["model"], err, model, in, out)
	}
	var re route.Request
	if err := route.ParseRequest(req.Kind, out, &re); err != nil || re.Model != model {
		t.Fatalf("rewritten body does not parse back (%v, model %q): %q", err, re.Model, out)
	}
	if re.Kind != req.Kind || re.Messages != req.Messages || re.Stream != req.Stream || len(re.Texts) != len(req.Texts) {
		t.Fatalf("rewriting changed the request:\n%+v\n%+v", req, re)
	}
}

// fuzzOrder reads the backends of a routed answer's priority groups.
func fuzzOrder(t *testing.T, r *extprocv3.ProcessingResponse) []string {
	t.Helper()
	pg := r.GetDynamicMetadata().GetFields()[PriorityGroupsNamespace].GetStructValue().GetFields()["priority_groups"]
	var order []string
	for _, g := range pg.GetListValue().GetValues() {
		order = append(order, g.GetStructValue().GetFields()["name"].GetStringValue())
	}
	return order
}

func checkFuzzImmediate(t *testing.T, code int32, body []byte, reply bool) {
	t.Helper()
	if !json.Valid(body) {
		t.Fatalf("immediate %d body is not valid JSON: %q", code, body)
	}
	if !reply {
		t.Fatalf("immediate %d without detour.reply metadata", code)
	}
	if code == 200 {
		return
	}
	var e struct {
		Error *openAIError `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error == nil || e.Error.Message == "" {
		t.Fatalf("immediate %d body is not an OpenAI error: %q", code, body)
	}
}

// FuzzScanFirstToken drives the first-token stage's event stream reader as
// holdFirstToken does, the body arriving in chunks of size bytes. However
// the network splits a stream, the same line releases it; an incomplete
// line is never read; CRLF line ends read as LF; and only data lines
// count: the stream with every line made a comment holds no token.
func FuzzScanFirstToken(f *testing.F) {
	for _, tt := range scanFirstTokenTests {
		f.Add([]byte(tt.in), uint8(1))
		f.Add([]byte(tt.in), uint8(7))
	}
	f.Add([]byte(roleChunk+": ping\n\n"+contentChunk+"data: [DONE]\n\n"), uint8(0))
	f.Fuzz(func(t *testing.T, stream []byte, size uint8) {
		next, found := scanFirstToken(stream, 0)
		if next < 0 || next > len(stream) || (next > 0 && stream[next-1] != '\n' && stream[next-1] != '\r') {
			t.Fatalf("next %d is not after a line end in %q", next, stream)
		}
		if !found && bytes.ContainsAny(stream[next:], "\r\n") {
			t.Fatalf("a complete line after %d left unread in %q", next, stream)
		}

		n := int(size)
		if n == 0 {
			n = len(stream) + 1
		}
		var held []byte
		scanned, got := 0, false
		for i := 0; i < len(stream) && !got; i += n {
			held = append(held, stream[i:min(i+n, len(stream))]...)
			prev := scanned
			if scanned, got = scanFirstToken(held, scanned); scanned < prev {
				t.Fatalf("went back from %d to %d", prev, scanned)
			}
		}
		if got != found || scanned != next {
			t.Fatalf("in chunks of %d: (%d, %v), whole: (%d, %v)", n, scanned, got, next, found)
		}

		crlf := bytes.ReplaceAll(stream, []byte("\n"), []byte("\r\n"))
		if _, got := scanFirstToken(crlf, 0); got != found {
			t.Fatalf("CRLF line ends: %v, LF: %v", got, found)
		}
		commented := append([]byte(":"), stream...)
		commented = bytes.ReplaceAll(commented, []byte("\n"), []byte("\n:"))
		commented = bytes.ReplaceAll(commented, []byte("\r"), []byte("\r:"))
		if _, got := scanFirstToken(commented, 0); got {
			t.Fatalf("a token in comments: %q", commented)
		}
	})
}
