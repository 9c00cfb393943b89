package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The routing scenarios of the quickstart policy, through the real Envoy.
func TestRouting(t *testing.T) { inBothModes(t, stackOptions{}, testRouting) }

func testRouting(t *testing.T, s *stack) {
	image := []any{
		map[string]any{"type": "text", "text": "What is in this picture?"},
		map[string]any{"type": "image_url", "image_url": map[string]any{"url": "data:image/png;base64,iVBORw0KGgo="}},
	}
	cases := []struct {
		name, path string
		body       []byte
		backend    string
		model      string
	}{
		{"short chat goes to the cheapest", "/v1/chat/completions", chat("auto", nil, user("hello")), "fast", "fast-8k"},
		{"50k-token chat needs the long context", "/v1/chat/completions", chat("auto", nil, user(words(50000))), "long", "long-200k"},
		{"an image part needs vision", "/v1/chat/completions", chat("auto", nil, user(image)), "vision", "vision-128k"},
		{"tools with a 20k-token prompt", "/v1/chat/completions", chat("auto", map[string]any{"tools": []any{weatherTool}}, user(words(20000))), "vision", "vision-128k"},
		{"explicit long-200k", "/v1/chat/completions", chat("long-200k", nil, user("hi")), "long", "long-200k"},
		{"explicit fast-8k picks the cheaper of two", "/v1/chat/completions", chat("fast-8k", nil, user("hi")), "fast", "fast-8k"},
		{"completions", "/v1/completions", []byte(`{"model":"auto","prompt":"Say hi"}`), "fast", "fast-8k"},
		{"embeddings", "/v1/embeddings", []byte(`{"model":"auto","input":["a","b"]}`), "fast", "fast-8k"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s.ResetSims()
			r := post(t, s.URL(tc.path), tc.body)
			if r.Status != 200 {
				t.Fatalf("status %d: %s", r.Status, r.Body)
			}
			if got := r.Header.Get("x-detour-backend"); got != tc.backend {
				t.Errorf("x-detour-backend %q, want %q", got, tc.backend)
			}
			if got := r.Header.Get("x-detour-model"); got != tc.model {
				t.Errorf("x-detour-model %q, want %q", got, tc.model)
			}
			if got := r.Header.Get("x-detour-reason"); got == "" {
				t.Error("no x-detour-reason")
			}
			if got := r.Header.Get("x-sim-name"); got != tc.backend {
				t.Errorf("answered by %q, want %q", got, tc.backend)
			}
			if got, _ := r.JSON(t)["model"].(string); got != tc.model {
				t.Errorf("response model %q, want %q", got, tc.model)
			}
			recs := s.Sim(tc.backend).Requests(1)
			if len(recs) != 1 || recs[0].Model != tc.model {
				t.Fatalf("upstream saw %+v, want one request for model %q", recs, tc.model)
			}
		})
	}
	t.Run("the access log says where a request went, and nothing of the prompt", func(t *testing.T) {
		vision := s.Sim("vision").Addr()
		line, all := s.AccessLogLine(func(m map[string]any) bool { return m["upstream"] == vision })
		for k, want := range map[string]any{"status": 200.0, "backend": "vision", "cluster": "vision", "attempts": 1.0,
			"method": "POST", "path": "/v1/chat/completions", "flags": "-", "details": "via_upstream"} {
			if line[k] != want {
				t.Errorf("%s: %v, want %v (line %v)", k, line[k], want, line)
			}
		}
		if bytes.Contains(all, []byte("picture")) {
			t.Errorf("the access log holds a prompt:\n%s", all)
		}
	})
	t.Run("metrics count the decisions", func(t *testing.T) {
		m, wants := s.Metrics(), []string{
			`detour_extproc_decisions_total{backend="fast",reason="cheapest",route="auto"}`,
			`detour_extproc_decisions_total{backend="long",reason="only_candidate",route="long-200k"}`,
			`detour_extproc_decision_duration_seconds_count`,
		}
		if s.opts.Wasm == "route" { // the plugin's count, in Envoy's stats
			m, wants = s.EnvoyPrometheus(), []string{`detour_wasm_decisions_total{backend="fast"}`, `detour_wasm_decisions_total{backend="long"}`}
		}
		for _, want := range wants {
			if !strings.Contains(m, want) {
				t.Errorf("metrics lack %s", want)
			}
		}
	})
	t.Run("a client cannot pick the backend with detour's header", func(t *testing.T) {
		r := post(t, s.URL("/v1/chat/completions"), chat("auto", nil, user("hello")), "x-detour-backend", "vision")
		if r.Status != 200 || r.Header.Get("x-sim-name") != "fast" {
			t.Fatalf("status %d, answered by %q, want 200 from fast", r.Status, r.Header.Get("x-sim-name"))
		}
	})
	t.Run("models list", func(t *testing.T) {
		resp, err := client.Get(s.URL("/v1/models"))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var list struct {
			Data []struct{ ID string } `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&list); err != nil || resp.StatusCode != 200 {
			t.Fatalf("status %d, err %v", resp.StatusCode, err)
		}
		var ids []string
		for _, d := range list.Data {
			ids = append(ids, d.ID)
		}
		if got := strings.Join(ids, ","); got != "auto,fast-8k,long-200k,vision-128k" {
			t.Errorf("models %s", got)
		}
	})
}

// A streamed answer reaches the client chunk by chunk, not at the end.
func TestStreamingPassesThrough(t *testing.T) {
	inBothModes(t, stackOptions{}, testStreamingPassesThrough)
}

func testStreamingPassesThrough(t *testing.T, s *stack) {
	body := chat("auto", map[string]any{"stream": true, "stream_options": map[string]any{"include_usage": true}}, user("count"))
	req, _ := http.NewRequest(http.MethodPost, s.URL("/v1/chat/completions"), strings.NewReader(string(body)))
	req.Header.Set("content-type", "application/json")
	// 10 tokens at 10 tokens/s: a second from first to last.
	req.Header.Set("x-sim-tokens", "10")
	req.Header.Set("x-sim-tokens-per-second", "10")
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("content-type"), "text/event-stream") {
		t.Fatalf("status %d content-type %q", resp.StatusCode, resp.Header.Get("content-type"))
	}
	if resp.Header.Get("x-detour-backend") != "fast" {
		t.Errorf("x-detour-backend %q", resp.Header.Get("x-detour-backend"))
	}
	var first, last time.Duration
	var contentChunks int
	var sawUsage, sawDone bool
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "data: ") {
			continue
		}
		data := strings.TrimPrefix(line, "data: ")
		if data == "[DONE]" {
			sawDone = true
			break
		}
		var chunk struct {
			Model   string
			Choices []struct {
				Delta struct{ Content string }
			}
			Usage *struct {
				CompletionTokens int `json:"completion_tokens"`
			}
		}
		if err := json.Unmarshal([]byte(data), &chunk); err != nil {
			t.Fatalf("bad chunk %q: %v", data, err)
		}
		if chunk.Model != "fast-8k" {
			t.Errorf("chunk model %q", chunk.Model)
		}
		if chunk.Usage != nil {
			sawUsage = chunk.Usage.CompletionTokens == 10
		}
		if len(chunk.Choices) > 0 && chunk.Choices[0].Delta.Content != "" {
			contentChunks++
			if first == 0 {
				first = time.Since(start)
			}
			last = time.Since(start)
		}
	}
	if !sawDone || !sawUsage || contentChunks != 10 {
		t.Fatalf("done=%v usage=%v content chunks=%d, want true, true, 10", sawDone, sawUsage, contentChunks)
	}
	// The first token must not wait for the whole answer.
	if last-first < 500*time.Millisecond {
		t.Errorf("first chunk at %s, last at %s: the stream was buffered", first, last)
	}
	t.Logf("first content chunk after %s, last after %s", first, last)
}
