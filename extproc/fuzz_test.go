package extproc

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

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

	w := new(work) // reused across inputs, as the pool does
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, sel uint8, body []byte) {
		s := servers[sel>>7]
		path := fuzzPaths[int(sel&0x3f)%len(fuzzPaths)]
		chunked := sel&0x40 != 0
		st := s.state.Load()
		w.reset()

		if path != "" {
			r := s.handle(ctx, st, w, headersMsg(call{path: path}))
			if imm := r.GetImmediateResponse(); imm != nil {
				checkFuzzImmediate(t, int32(imm.GetStatus().GetCode()), imm.Body, r.DynamicMetadata.GetFields()[MetadataNamespace] != nil)
				if path != "/v1/models" && path != "/v1/foo" {
					t.Fatalf("headers for %s answered %d: %s", path, imm.GetStatus().GetCode(), imm.Body)
				}
				return
			}
			if r.GetRequestHeaders() == nil {
				t.Fatalf("headers answered with %v", r)
			}
		}
		chunks := [][]byte{body}
		if chunked {
			chunks = [][]byte{body[:len(body)/2], body[len(body)/2:]}
		}
		var r = s.handle(ctx, st, w, bodyMsg(chunks[0], len(chunks) == 1))
		if len(chunks) == 2 {
			if r.GetImmediateResponse() == nil {
				if br := r.GetRequestBody(); br == nil || br.Response != nil {
					t.Fatalf("first chunk answered with %v", r)
				}
				r = s.handle(ctx, st, w, bodyMsg(chunks[1], true))
			}
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
		if !json.Valid(out) {
			t.Fatalf("rewritten body is not valid JSON:\nin  %q\nout %q", body, out)
		}
		if h["content-length"] != strconv.Itoa(len(out)) {
			t.Fatalf("content-length %q for %d bytes", h["content-length"], len(out))
		}
		want, ok := models[h[HeaderBackend]]
		if !ok || h[HeaderModel] != want {
			t.Fatalf("backend %q model %q", h[HeaderBackend], h[HeaderModel])
		}
		var top map[string]json.RawMessage
		if err := json.Unmarshal(out, &top); err != nil {
			t.Fatalf("rewritten body %q: %v", out, err)
		}
		var model string
		if err := json.Unmarshal(top["model"], &model); err != nil || model != want {
			t.Fatalf("rewritten model %q (%v), want %q\nin  %q\nout %q", top["model"], err, want, body, out)
		}
		// The rewritten body is a request for the same thing.
		var re route.Request
		if err := route.ParseRequest(w.req.Kind, out, &re); err != nil || re.Model != want {
			t.Fatalf("rewritten body does not parse back (%v, model %q): %q", err, re.Model, out)
		}
		if re.Kind != w.req.Kind || re.Messages != w.req.Messages || re.Stream != w.req.Stream || len(re.Texts) != len(w.req.Texts) {
			t.Fatalf("rewriting changed the request:\n%+v\n%+v", w.req, re)
		}
		if !cr.ClearRouteCache {
			t.Fatal("clear_route_cache not set")
		}
	})
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
