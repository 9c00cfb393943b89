package sim

import (
	"encoding/base64"
	"encoding/binary"
	"math"
	"net/http"
	"strings"
	"testing"
)

func TestChatCompletion(t *testing.T) {
	s := startSim(t, Config{Name: "alpha"})
	c := newClient(t)
	tests := []struct {
		name       string
		body       string
		hdr        map[string]string
		wantTokens int
		wantFinish string
	}{
		{"default length", chatBody(""), nil, 16, "stop"},
		{"max_tokens caps", chatBody(`"max_tokens":5`), nil, 5, "length"},
		{"max_completion_tokens caps", chatBody(`"max_completion_tokens":3`), nil, 3, "length"},
		{"smaller of both", chatBody(`"max_tokens":7,"max_completion_tokens":4`), nil, 4, "length"},
		{"max_tokens above natural", chatBody(`"max_tokens":100`), nil, 16, "stop"},
		{"x-sim-tokens", chatBody(""), map[string]string{"x-sim-tokens": "40"}, 40, "stop"},
		{"x-sim-tokens capped", chatBody(`"max_tokens":10`), map[string]string{"x-sim-tokens": "40"}, 10, "length"},
		{"zero tokens", chatBody(""), map[string]string{"x-sim-tokens": "0"}, 0, "stop"},
		{"content parts", `{"model":"m1","messages":[{"role":"user","content":[{"type":"text","text":"abcdefgh"},{"type":"image_url","image_url":{"url":"x"}}]}]}`, nil, 16, "stop"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), tt.body, tt.hdr)
			if r.err != nil || r.status != 200 {
				t.Fatalf("status %d err %v body %s", r.status, r.err, r.body)
			}
			if got := r.header.Get("x-sim-name"); got != "alpha" {
				t.Errorf("x-sim-name = %q", got)
			}
			if ct := r.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q", ct)
			}
			m := r.json(t)
			if dig(m, "object") != "chat.completion" || dig(m, "model") != "m1" {
				t.Errorf("object/model: %s", r.body)
			}
			if id, _ := dig(m, "id").(string); !strings.HasPrefix(id, "chatcmpl-") {
				t.Errorf("id = %q", id)
			}
			if _, ok := dig(m, "created").(float64); !ok {
				t.Errorf("created missing: %s", r.body)
			}
			if dig(m, "choices", 0, "message", "role") != "assistant" {
				t.Errorf("role: %s", r.body)
			}
			if got := dig(m, "choices", 0, "message", "content"); got != completionText(tt.wantTokens) {
				t.Errorf("content = %q, want %q", got, completionText(tt.wantTokens))
			}
			if got := dig(m, "choices", 0, "finish_reason"); got != tt.wantFinish {
				t.Errorf("finish_reason = %v, want %s", got, tt.wantFinish)
			}
			pt, ct, tt2 := dig(m, "usage", "prompt_tokens"), dig(m, "usage", "completion_tokens"), dig(m, "usage", "total_tokens")
			if ct != float64(tt.wantTokens) || pt.(float64) <= 0 || tt2 != pt.(float64)+ct.(float64) {
				t.Errorf("usage = %v %v %v", pt, ct, tt2)
			}
		})
	}
}

func TestPromptTokens(t *testing.T) {
	s := startSim(t, Config{})
	c := newClient(t)
	// 22 bytes + 8 bytes → ceil(22/4) + ceil(8/4) = 6 + 2.
	body := `{"model":"m","messages":[{"role":"system","content":"hello there, simulator"},{"role":"user","content":[{"type":"text","text":"abcdefgh"}]},{"role":"assistant","content":null}]}`
	r := call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), body, nil)
	if got := dig(r.json(t), "usage", "prompt_tokens"); got != 8.0 {
		t.Errorf("prompt_tokens = %v, want 8", got)
	}
	r = call(t, c, http.MethodPost, apiURL(s, "/v1/completions"), `{"model":"m","prompt":[[1,2,3],[4,5]]}`, nil)
	if got := dig(r.json(t), "usage", "prompt_tokens"); got != 5.0 {
		t.Errorf("token-array prompt_tokens = %v, want 5", got)
	}
}

func TestChatStream(t *testing.T) {
	tests := []struct {
		name      string
		cfg       Config
		body      string
		wantUsage bool
	}{
		{"no usage by default", Config{}, chatBody(`"stream":true,"max_tokens":4`), false},
		{"include_usage", Config{}, chatBody(`"stream":true,"max_tokens":4,"stream_options":{"include_usage":true}`), true},
		{"include_usage false", Config{}, chatBody(`"stream":true,"max_tokens":4,"stream_options":{"include_usage":false}`), false},
		{"AlwaysUsage", Config{AlwaysUsage: true}, chatBody(`"stream":true,"max_tokens":4`), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startSim(t, tt.cfg)
			resp, events, _, err := streamCall(t, newClient(t), apiURL(s, "/v1/chat/completions"), tt.body, nil)
			if err != nil {
				t.Fatal(err)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
				t.Errorf("Content-Type = %q", ct)
			}
			want := 1 + 4 + 1 + 1 // role, tokens, finish, [DONE]
			if tt.wantUsage {
				want++
			}
			if len(events) != want {
				t.Fatalf("got %d events, want %d: %v", len(events), want, events)
			}
			if events[len(events)-1].data != "[DONE]" {
				t.Errorf("last event %q, want [DONE]", events[len(events)-1].data)
			}
			var id string
			var text strings.Builder
			for i, ev := range events[:len(events)-1] {
				m := mustJSON(t, ev.data)
				if i == 0 {
					id, _ = m["id"].(string)
				}
				if m["id"] != id || m["object"] != "chat.completion.chunk" || m["model"] != "m1" {
					t.Errorf("chunk %d header fields: %s", i, ev.data)
				}
				switch {
				case i == 0:
					if dig(m, "choices", 0, "delta", "role") != "assistant" || dig(m, "choices", 0, "finish_reason") != nil {
						t.Errorf("first chunk: %s", ev.data)
					}
				case i <= 4:
					s, _ := dig(m, "choices", 0, "delta", "content").(string)
					text.WriteString(s)
					if dig(m, "choices", 0, "index") != 0.0 {
						t.Errorf("index: %s", ev.data)
					}
				case i == 5:
					if dig(m, "choices", 0, "finish_reason") != "length" {
						t.Errorf("finish chunk: %s", ev.data)
					}
					if d, _ := dig(m, "choices", 0, "delta").(map[string]any); len(d) != 0 {
						t.Errorf("finish chunk delta not empty: %s", ev.data)
					}
				case i == 6:
					if cs, _ := m["choices"].([]any); cs == nil || len(cs) != 0 {
						t.Errorf("usage chunk choices not empty: %s", ev.data)
					}
					if dig(m, "usage", "completion_tokens") != 4.0 || dig(m, "usage", "total_tokens") == nil {
						t.Errorf("usage chunk: %s", ev.data)
					}
				}
				if i < 6 {
					u, has := m["usage"]
					if tt.wantUsage != has || u != nil {
						t.Errorf("chunk %d: usage key present=%v value=%v (want present only with usage, as null)", i, has, u)
					}
				}
			}
			if text.String() != completionText(4) {
				t.Errorf("streamed text %q, want %q", text.String(), completionText(4))
			}
		})
	}
}

func TestCompletions(t *testing.T) {
	s := startSim(t, Config{})
	c := newClient(t)
	r := call(t, c, http.MethodPost, apiURL(s, "/v1/completions"), `{"model":"m2","prompt":"once upon","max_tokens":3}`, nil)
	if r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	m := r.json(t)
	if m["object"] != "text_completion" || m["model"] != "m2" || dig(m, "choices", 0, "text") != "tok0 tok1 tok2" ||
		dig(m, "choices", 0, "finish_reason") != "length" || dig(m, "usage", "completion_tokens") != 3.0 {
		t.Errorf("unexpected body %s", r.body)
	}

	_, events, _, err := streamCall(t, c, apiURL(s, "/v1/completions"),
		`{"model":"m2","prompt":["a","b"],"stream":true,"max_tokens":2,"stream_options":{"include_usage":true}}`, nil)
	if err != nil {
		t.Fatal(err)
	}
	// tokens ×2, finish, usage, [DONE]; no role chunk in the legacy API.
	if len(events) != 5 || events[4].data != "[DONE]" {
		t.Fatalf("events: %v", events)
	}
	var text string
	for _, ev := range events[:2] {
		m := mustJSON(t, ev.data)
		if m["object"] != "text_completion" {
			t.Errorf("chunk object: %s", ev.data)
		}
		text += dig(m, "choices", 0, "text").(string)
	}
	if text != "tok0 tok1" {
		t.Errorf("streamed text %q", text)
	}
	if dig(mustJSON(t, events[2].data), "choices", 0, "finish_reason") != "length" {
		t.Errorf("finish chunk: %s", events[2].data)
	}
	if dig(mustJSON(t, events[3].data), "usage", "prompt_tokens") != 2.0 {
		t.Errorf("usage chunk: %s", events[3].data)
	}
}

func TestEmbeddings(t *testing.T) {
	s := startSim(t, Config{EmbeddingDims: 16})
	c := newClient(t)
	embed := func(body string) map[string]any {
		t.Helper()
		r := call(t, c, http.MethodPost, apiURL(s, "/v1/embeddings"), body, nil)
		if r.status != 200 {
			t.Fatalf("status %d: %s", r.status, r.body)
		}
		return r.json(t)
	}
	vec := func(m map[string]any, i int) []float64 {
		t.Helper()
		raw, _ := dig(m, "data", i, "embedding").([]any)
		out := make([]float64, len(raw))
		for j, v := range raw {
			out[j] = v.(float64)
		}
		return out
	}
	norm := func(v []float64) float64 {
		var n float64
		for _, x := range v {
			n += x * x
		}
		return math.Sqrt(n)
	}

	a := embed(`{"model":"e","input":"hello"}`)
	if a["object"] != "list" || dig(a, "data", 0, "object") != "embedding" || dig(a, "data", 0, "index") != 0.0 || a["model"] != "e" {
		t.Errorf("shape: %v", a)
	}
	if dig(a, "usage", "prompt_tokens") != 2.0 || dig(a, "usage", "total_tokens") != 2.0 {
		t.Errorf("usage: %v", a["usage"])
	}
	va := vec(a, 0)
	if len(va) != 16 || math.Abs(norm(va)-1) > 1e-5 {
		t.Errorf("vector len %d norm %v", len(va), norm(va))
	}

	b := embed(`{"model":"e","input":["hello","world"]}`)
	if got := vec(b, 0); !equalVec(got, va) {
		t.Errorf("same input, different vector: %v vs %v", got, va)
	}
	if equalVec(vec(b, 1), va) {
		t.Error("different inputs, same vector")
	}

	small := vec(embed(`{"model":"e","input":"hello","dimensions":4}`), 0)
	if len(small) != 4 || math.Abs(norm(small)-1) > 1e-5 {
		t.Errorf("dimensions=4: %v", small)
	}
	// Matryoshka: the truncated vector points the same way as the prefix.
	for i := range small {
		if math.Abs(small[i]-va[i]/norm(va[:4])) > 1e-5 {
			t.Errorf("dimensions=4 is not the renormalized prefix: %v vs %v", small, va[:4])
			break
		}
	}

	b64 := embed(`{"model":"e","input":"hello","encoding_format":"base64"}`)
	str, _ := dig(b64, "data", 0, "embedding").(string)
	raw, err := base64.StdEncoding.DecodeString(str)
	if err != nil || len(raw) != 16*4 {
		t.Fatalf("base64 embedding: %v (%d bytes)", err, len(raw))
	}
	for i := range 16 {
		f := math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		if math.Abs(float64(f)-va[i]) > 1e-6 {
			t.Fatalf("base64 component %d = %v, float = %v", i, f, va[i])
		}
	}

	if got := embed(`{"model":"e","input":[1,2,3]}`); dig(got, "usage", "prompt_tokens") != 3.0 {
		t.Errorf("token input usage: %v", got["usage"])
	}
}

func equalVec(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestModels(t *testing.T) {
	c := newClient(t)
	t.Run("configured", func(t *testing.T) {
		s := startSim(t, Config{Models: []string{"gpt-a", "gpt-b"}})
		r := call(t, c, http.MethodGet, apiURL(s, "/v1/models"), "", nil)
		m := r.json(t)
		if m["object"] != "list" || dig(m, "data", 0, "id") != "gpt-a" || dig(m, "data", 1, "id") != "gpt-b" ||
			dig(m, "data", 0, "object") != "model" || dig(m, "data", 2) != nil {
			t.Errorf("models: %s", r.body)
		}
		if r := call(t, c, http.MethodGet, apiURL(s, "/v1/models/gpt-b"), "", nil); r.status != 200 || r.json(t)["id"] != "gpt-b" {
			t.Errorf("retrieve: %d %s", r.status, r.body)
		}
		r = call(t, c, http.MethodGet, apiURL(s, "/v1/models/nope"), "", nil)
		if r.status != 404 || errorOf(t, r)["code"] != "model_not_found" {
			t.Errorf("retrieve unknown: %d %s", r.status, r.body)
		}
		r = call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), `{"model":"nope","messages":[{"role":"user","content":"x"}]}`, nil)
		if r.status != 404 || errorOf(t, r)["code"] != "model_not_found" {
			t.Errorf("chat with unknown model: %d %s", r.status, r.body)
		}
		r = call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), `{"model":"gpt-b","messages":[{"role":"user","content":"x"}]}`, nil)
		if r.status != 200 {
			t.Errorf("chat with listed model: %d %s", r.status, r.body)
		}
	})
	t.Run("last asked", func(t *testing.T) {
		s := startSim(t, Config{})
		r := call(t, c, http.MethodGet, apiURL(s, "/v1/models"), "", nil)
		if d, _ := r.json(t)["data"].([]any); d == nil || len(d) != 0 {
			t.Errorf("before any request: %s", r.body)
		}
		call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), `{"model":"first","messages":[{"role":"user","content":"x"}]}`, nil)
		call(t, c, http.MethodPost, apiURL(s, "/v1/embeddings"), `{"model":"second","input":"x"}`, nil)
		r = call(t, c, http.MethodGet, apiURL(s, "/v1/models"), "", nil)
		if m := r.json(t); dig(m, "data", 0, "id") != "second" || dig(m, "data", 1) != nil {
			t.Errorf("after requests: %s", r.body)
		}
	})
}

func TestValidation(t *testing.T) {
	s := startSim(t, Config{EmbeddingDims: 8})
	c := newClient(t)
	tests := []struct {
		name       string
		method     string
		path       string
		body       string
		wantStatus int
		wantParam  any // nil = JSON null
		wantIn     string
	}{
		{"malformed JSON", "POST", "/v1/chat/completions", `{"model":`, 400, nil, "could not parse the JSON body"},
		{"empty body", "POST", "/v1/chat/completions", ``, 400, nil, "body is empty"},
		{"not an object", "POST", "/v1/chat/completions", `[1,2]`, 400, nil, "could not parse"},
		{"trailing garbage", "POST", "/v1/chat/completions", `{"model":"m"} x`, 400, nil, "could not parse"},
		{"missing model", "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}]}`, 400, nil, "must provide a model"},
		{"missing model completions", "POST", "/v1/completions", `{"prompt":"x"}`, 400, nil, "must provide a model"},
		{"missing model embeddings", "POST", "/v1/embeddings", `{"input":"x"}`, 400, nil, "must provide a model"},
		{"missing messages", "POST", "/v1/chat/completions", `{"model":"m"}`, 400, "messages", "Missing required parameter"},
		{"empty messages", "POST", "/v1/chat/completions", `{"model":"m","messages":[]}`, 400, "messages", "empty array"},
		{"message without role", "POST", "/v1/chat/completions", `{"model":"m","messages":[{"content":"x"}]}`, 400, "messages[0].role", "role"},
		{"bad content type", "POST", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":5}]}`, 400, "messages[0].content", "content"},
		{"stream wrong type", "POST", "/v1/chat/completions", `{"model":"m","stream":"yes","messages":[{"role":"user","content":"x"}]}`, 400, "stream", "Invalid type"},
		{"max_tokens zero", "POST", "/v1/chat/completions", chatBody(`"max_tokens":0`), 400, "max_tokens", "below minimum"},
		{"max_completion_tokens negative", "POST", "/v1/chat/completions", chatBody(`"max_completion_tokens":-1`), 400, "max_completion_tokens", "below minimum"},
		{"missing prompt", "POST", "/v1/completions", `{"model":"m"}`, 400, "prompt", "Missing required parameter"},
		{"bad prompt", "POST", "/v1/completions", `{"model":"m","prompt":{"a":1}}`, 400, "prompt", "Invalid type"},
		{"missing input", "POST", "/v1/embeddings", `{"model":"m"}`, 400, "input", "Missing required parameter"},
		{"empty input string", "POST", "/v1/embeddings", `{"model":"m","input":""}`, 400, "input", "must not be empty"},
		{"empty input array", "POST", "/v1/embeddings", `{"model":"m","input":[]}`, 400, "input", "empty array"},
		{"bad encoding_format", "POST", "/v1/embeddings", `{"model":"m","input":"x","encoding_format":"hex"}`, 400, "encoding_format", "encoding_format"},
		{"dimensions too large", "POST", "/v1/embeddings", `{"model":"m","input":"x","dimensions":9}`, 400, "dimensions", "between 1 and 8"},
		{"wrong method chat", "GET", "/v1/chat/completions", ``, 405, nil, "not allowed"},
		{"wrong method models", "POST", "/v1/models", `{}`, 405, nil, "not allowed"},
		{"unknown path", "POST", "/v1/nope", `{}`, 404, nil, "Invalid URL (POST /v1/nope)"},
		{"root", "GET", "/", ``, 404, nil, "Invalid URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := call(t, c, tt.method, apiURL(s, tt.path), tt.body, nil)
			if r.status != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", r.status, tt.wantStatus, r.body)
			}
			e := errorOf(t, r)
			if e["type"] != "invalid_request_error" {
				t.Errorf("type = %v", e["type"])
			}
			if e["param"] != tt.wantParam {
				t.Errorf("param = %v, want %v", e["param"], tt.wantParam)
			}
			if msg, _ := e["message"].(string); !strings.Contains(msg, tt.wantIn) {
				t.Errorf("message %q lacks %q", msg, tt.wantIn)
			}
			if r.header.Get("x-sim-name") != "sim" {
				t.Errorf("x-sim-name = %q", r.header.Get("x-sim-name"))
			}
			if tt.wantStatus == 405 && r.header.Get("Allow") == "" {
				t.Error("405 without Allow")
			}
		})
	}
}

func TestAuth(t *testing.T) {
	const key = "sk-sim-secret-123"
	s := startSim(t, Config{APIKey: key})
	c := newClient(t)
	tests := []struct {
		name       string
		auth       string
		wantStatus int
		wantIn     string
	}{
		{"missing", "", 401, "didn't provide an API key"},
		{"wrong key", "Bearer sk-wrong", 401, "Incorrect API key"},
		{"wrong scheme", "Basic " + key, 401, "Incorrect API key"},
		{"bare key", key, 401, "Incorrect API key"},
		{"right key", "Bearer " + key, 200, ""},
		{"scheme case-insensitive", "bearer " + key, 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := map[string]string{}
			if tt.auth != "" {
				hdr["Authorization"] = tt.auth
			}
			r := call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), chatBody(""), hdr)
			if r.status != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", r.status, tt.wantStatus, r.body)
			}
			if tt.wantStatus != 401 {
				return
			}
			e := errorOf(t, r)
			if e["type"] != "authentication_error" || e["code"] != "invalid_api_key" || e["param"] != nil {
				t.Errorf("error: %s", r.body)
			}
			if msg, _ := e["message"].(string); !strings.Contains(msg, tt.wantIn) {
				t.Errorf("message %q lacks %q", msg, tt.wantIn)
			}
			if strings.Contains(string(r.body), key) || strings.Contains(string(r.body), "sk-wrong") {
				t.Errorf("error body echoes a key: %s", r.body)
			}
		})
	}
	// Models also require the key.
	if r := call(t, c, http.MethodGet, apiURL(s, "/v1/models"), "", nil); r.status != 401 {
		t.Errorf("models without key: %d", r.status)
	}
}

// A request that asks the simulator to continue its own partial answer
// (an assistant message marked prefix, or continue_final_message) gets the
// tokens after it, within max_tokens; any other partial text starts over.
func TestChatContinuation(t *testing.T) {
	s := startSim(t, Config{Name: "alpha"})
	c := newClient(t)
	msgs := func(last string) string {
		return `"messages":[{"role":"user","content":"hi"},` + last + `]`
	}
	tests := []struct {
		name, body, want string
	}{
		{"prefix", `{"model":"m1",` + msgs(`{"role":"assistant","content":"tok0 tok1 tok2","prefix":true}`) + `,"max_tokens":4}`, " tok3 tok4 tok5 tok6"},
		{"continue_final_message", `{"model":"m1",` + msgs(`{"role":"assistant","content":"tok0 tok1"}`) + `,"continue_final_message":true,"max_tokens":2}`, " tok2 tok3"},
		{"to the natural end", `{"model":"m1",` + msgs(`{"role":"assistant","content":"tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 tok8 tok9 tok10 tok11 tok12 tok13","prefix":true}`) + `}`, " tok14 tok15"},
		{"not marked: a new answer", `{"model":"m1",` + msgs(`{"role":"assistant","content":"tok0"}`) + `,"max_tokens":2}`, "tok0 tok1"},
		{"foreign text: start over", `{"model":"m1",` + msgs(`{"role":"assistant","content":"Hello","prefix":true}`) + `,"max_tokens":2}`, "tok0 tok1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), tt.body, nil)
			if r.err != nil || r.status != 200 {
				t.Fatalf("status %d err %v body %s", r.status, r.err, r.body)
			}
			if got := dig(r.json(t), "choices", 0, "message", "content"); got != tt.want {
				t.Errorf("content %q, want %q", got, tt.want)
			}
		})
	}
}
