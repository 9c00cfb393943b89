package e2e

import (
	"strings"
	"testing"
	"time"
)

// Bad requests get a clear OpenAI-shaped error and disturb nothing else.
func TestErrors(t *testing.T) { inBothModes(t, stackOptions{MaxBodyBytes: 2 << 20}, testErrors) }

func testErrors(t *testing.T, s *stack) {
	big := func(n int) []byte { // a chat body of about n bytes
		return chat("auto", nil, user(strings.Repeat("a", n)))
	}
	cases := []struct {
		name   string
		path   string
		body   []byte
		status int
		code   string
		has    string // the message must mention this
	}{
		{"malformed JSON", "/v1/chat/completions", []byte(`{"model":"auto","messages":`), 400, "invalid_request_body", "parse"},
		{"not an object", "/v1/chat/completions", []byte(`[1,2]`), 400, "invalid_request_body", ""},
		{"missing messages", "/v1/chat/completions", []byte(`{"model":"auto"}`), 400, "invalid_request_body", "messages"},
		{"unknown model lists the known ones", "/v1/chat/completions", chat("gpt-9", nil, user("hi")), 404, "model_not_found", "long-200k"},
		{"no backend holds a 300k-token prompt", "/v1/chat/completions", chat("auto", nil, user(words(300000))), 400, "context_length_exceeded", "context window"},
		{"vision asked of a text-only model", "/v1/chat/completions", chat("long-200k", nil, user([]any{map[string]any{"type": "image_url", "image_url": map[string]any{"url": "https://x/y.png"}}})), 400, "unsupported_request", "image"},
		{"body just over the limit: detour's 413", "/v1/chat/completions", big(2<<20 + 100), 413, "request_too_large", "limit"},
		{"body far over the limit: Envoy's 413", "/v1/chat/completions", big(3 << 20), 413, "request_too_large", "limit"},
		{"unknown endpoint", "/v1/images/generations", []byte(`{"model":"auto","prompt":"cat"}`), 404, "unknown_url", "/v1/chat/completions"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s.ResetSims()
			start := time.Now()
			r := post(t, s.URL(tc.path), tc.body)
			e := assertOpenAIError(t, r, tc.status, tc.code)
			if msg, _ := e["message"].(string); !strings.Contains(msg, tc.has) {
				t.Errorf("message %q does not mention %q", msg, tc.has)
			}
			for name, srv := range s.sims {
				if n := srv.Stats().Requests; n != 0 {
					t.Errorf("backend %s received %d requests; a rejected request must not reach a provider", name, n)
				}
			}
			t.Logf("%d in %s: %s", r.Status, time.Since(start).Round(time.Millisecond), r.Body)
		})
	}
	// After all of that, ordinary traffic still flows.
	if r := post(t, s.URL("/v1/chat/completions"), chat("auto", nil, user("still there?"))); r.Status != 200 {
		t.Fatalf("after the bad requests: status %d %s", r.Status, r.Body)
	}
}
