package extproc

import (
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/detourhq/detour/route"
)

func TestTiktoken(t *testing.T) {
	tc := realTokenizer(t)
	for _, tt := range []struct {
		text string
		want int
	}{
		{"hello world", 2},
		{"", 0},
		{"hello", 1},
	} {
		if got := tc.CountTokens(tt.text); got != tt.want {
			t.Errorf("CountTokens(%q) = %d, want %d", tt.text, got, tt.want)
		}
	}
	// Invalid UTF-8 is counted, not refused.
	if got := tc.CountTokens("a\xffb"); got <= 0 {
		t.Errorf("CountTokens of invalid UTF-8 = %d", got)
	}
}

// recorder is a TokenCounter double that counts one token per byte and
// remembers what it was given.
type recorder struct {
	mu    sync.Mutex
	calls int
	text  strings.Builder
}

func (r *recorder) CountTokens(s string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	r.text.WriteString(s)
	return len(s)
}

func (r *recorder) snapshot() (int, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls, r.text.String()
}

func TestExactPromptTokens(t *testing.T) {
	body := []byte(`{"model":"auto","tools":[{"type":"function","function":{"name":"f"}}],"messages":[` +
		`{"role":"system","content":"be \"brief\"\n"},` +
		`{"role":"user","content":[{"type":"text","text":"caf\u00e9 \ud83d\ude00"},{"type":"image_url","image_url":{"url":"http://x/y.png"}}]}]}`)
	var req route.Request
	if err := route.ParseRequest(route.KindChat, body, &req); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	n, _ := exactPromptTokens(rec, &req, body, nil, 0)
	_, text := rec.snapshot()
	// The tokenizer sees decoded text, not JSON escapes.
	if want := "be \"brief\"\ncafé 😀"; text != want {
		t.Errorf("tokenizer saw %q, want %q", text, want)
	}
	want := len(text) + req.Messages*tokensPerMessage + tokensReplyPrime + req.Images*route.ImageTokens + req.ToolBytes/3
	if n != want {
		t.Errorf("exact count %d, want %d (texts %d, %d messages, %d images, %d tool bytes)", n, want, len(text), req.Messages, req.Images, req.ToolBytes)
	}
}

// Long texts may be handed to the tokenizer in pieces, but every byte is
// counted exactly once.
func TestExactPromptTokensLongText(t *testing.T) {
	for _, text := range []string{
		strings.Repeat("a", 100_000),
		strings.Repeat("word ", 20_000),
		strings.Repeat("é", 50_000),
		strings.Repeat("x\n", 30_000),
	} {
		body := chat("auto", text, nil)
		var req route.Request
		if err := route.ParseRequest(route.KindChat, body, &req); err != nil {
			t.Fatal(err)
		}
		rec := &recorder{}
		exactPromptTokens(rec, &req, body, nil, 0)
		_, got := rec.snapshot()
		if got != "be brief"+text {
			t.Errorf("%.10q…: tokenizer saw %d bytes, want %d", text, len(got), len(text)+8)
		}
	}
	// The real tokenizer on a long run without spaces stays close to the
	// estimate's order of magnitude.
	tc := realTokenizer(t)
	body := chat("auto", strings.Repeat("a", 200_000), nil)
	var req route.Request
	if err := route.ParseRequest(route.KindChat, body, &req); err != nil {
		t.Fatal(err)
	}
	if n, _ := exactPromptTokens(tc, &req, body, nil, 0); n < 200_000/16 || n > 200_000 {
		t.Errorf("200000 a's counted as %d tokens", n)
	}
}

// The exact count is taken only when the estimate cannot settle the
// decision.
func TestExactCountOnlyWhenUncertain(t *testing.T) {
	p := quickstart(t, "")
	for _, tt := range []struct {
		name   string
		body   []byte
		exact  bool
		target string
	}{
		{"short prompt", chat("auto", "hello", nil), false, "auto"},
		{"near fast-8k's limit", uncertainPrompt(t, p, prose(8000)), true, "auto"},
		{"explicit model far below its limit", chat("long-200k", prose(8000), nil), false, "long-200k"},
		{"explicit model far above its limit", chat("fast-8k", prose(100_000), nil), false, "fast-8k"},
		{"unknown model is not counted", chat("nope", prose(8000), nil), false, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			h := newHarness(t, p, rec)
			if got := countMethod(t, h, "/v1/chat/completions", tt.body) == "exact"; got != tt.exact {
				t.Fatalf("test case out of date: Router.Uncertain = %v", got)
			}
			h.do(t, post("/v1/chat/completions", tt.body))
			calls, _ := rec.snapshot()
			if (calls > 0) != tt.exact {
				t.Errorf("tokenizer called %d times; want exact=%v", calls, tt.exact)
			}
			est, exact := counter(t, h.metrics.TokenCounts.WithLabelValues("estimate")), counter(t, h.metrics.TokenCounts.WithLabelValues("exact"))
			if tt.exact && (exact != 1 || est != 0) || !tt.exact && (exact != 0 || est != 1) {
				t.Errorf("prompt_token_counts_total estimate=%v exact=%v; want exact=%v", est, exact, tt.exact)
			}
		})
	}
}

// Near a limit the exact count decides: "hello world" estimates at 3
// tokens for its 11 bytes but is 2.
func TestExactCountChangesDecision(t *testing.T) {
	p := quickstart(t, "")
	body := uncertainPrompt(t, p, strings.Repeat("hello world ", 3000))

	h := newHarness(t, p, realTokenizer(t))
	checkRouted(t, h.do(t, post("/v1/chat/completions", body)), body, "fast", "fast-8k", "auto")
	if got := counter(t, h.metrics.TokenCounts.WithLabelValues("exact")); got != 1 {
		t.Errorf("prompt_token_counts_total{method=exact} = %v, want 1", got)
	}

	// Without a tokenizer the conservative estimate rules fast-8k out.
	h = newHarness(t, p, nil)
	checkRouted(t, h.do(t, post("/v1/chat/completions", body)), body, "long", "long-200k", "auto")
	if got := counter(t, h.metrics.TokenCounts.WithLabelValues("estimate")); got != 1 {
		t.Errorf("prompt_token_counts_total{method=estimate} = %v, want 1", got)
	}
	if n := testutil.CollectAndCount(h.metrics.TokenCounts); n != 1 {
		t.Errorf("%d token count series, want 1", n)
	}
}

// A prompt sent as token ids needs no tokenizer: the exact count must keep
// the ids, or an 8000-id prompt would be sent to an 8k model.
func TestExactCountKeepsTokenIDs(t *testing.T) {
	p := quickstart(t, "")
	ids := make([]int, 8000)
	for i := range ids {
		ids[i] = i % 50000
	}
	for _, tt := range []struct {
		path string
		body []byte
		want int // the recorder counts a token per byte of text
	}{
		{"/v1/completions", mustJSON(obj{"model": "auto", "prompt": ids}), 8000},
		{"/v1/completions", mustJSON(obj{"model": "auto", "prompt": []any{"a short text", ids}}), 8000 + len("a short text")},
		{"/v1/embeddings", mustJSON(obj{"model": "auto", "input": [][]int{ids[:4000], ids[4000:]}}), 8000},
	} {
		var req route.Request
		if err := route.ParseRequest(route.KindFromPath(tt.path), tt.body, &req); err != nil {
			t.Fatal(err)
		}
		rec := &recorder{}
		n, _ := exactPromptTokens(rec, &req, tt.body, nil, 0)
		if n != tt.want {
			t.Errorf("%s: exact count %d, want %d (8000 token ids, each counted once)", tt.path, n, tt.want)
		}
	}
	h := newHarness(t, p, realTokenizer(t))
	body := mustJSON(obj{"model": "auto", "prompt": ids})
	r := h.do(t, post("/v1/completions", body))
	checkRouted(t, r, body, "long", "long-200k", "auto")
}
