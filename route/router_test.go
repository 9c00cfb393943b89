package route

import (
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
)

// route must not import policy (policy imports route), so this is
// examples/quickstart/policy.yaml as policy.RouteTable renders it; policy's
// TestRouteTable checks the two agree.
var allAPIs = APIsOf(KindChat, KindCompletion, KindEmbedding)

func quickstartTable() Table {
	return Table{
		Backends: []Backend{
			{Name: "fast", Model: "fast-8k", InputPrice: 0.10, OutputPrice: 0.40,
				Caps: Capabilities{ContextWindow: 8192, MaxOutputTokens: 4096, Tools: true, JSONMode: true, Streaming: true, APIs: allAPIs}},
			{Name: "fast-b", Model: "fast-8k", InputPrice: 0.12, OutputPrice: 0.48,
				Caps: Capabilities{ContextWindow: 8192, MaxOutputTokens: 4096, Tools: true, JSONMode: true, Streaming: true, APIs: allAPIs}},
			{Name: "long", Model: "long-200k", InputPrice: 1.00, OutputPrice: 4.00,
				Caps: Capabilities{ContextWindow: 200000, MaxOutputTokens: 8192, Streaming: true, APIs: allAPIs}},
			{Name: "vision", Model: "vision-128k", InputPrice: 2.50, OutputPrice: 10.00,
				Caps: Capabilities{ContextWindow: 128000, MaxOutputTokens: 16384, Vision: true, Tools: true, JSONMode: true, Streaming: true, APIs: allAPIs}},
		},
		Aliases:       []Alias{{Name: "auto", Objective: Cheapest}},
		OutputReserve: 1024,
	}
}

func mustRouter(t testing.TB, tab Table) *Router {
	t.Helper()
	r, err := New(tab)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// names turns a decision into backend names: chosen first, then fallbacks.
func names(r *Router, d *Decision) []string {
	out := []string{r.Backend(d.Backend).Name}
	for _, i := range d.Fallbacks {
		out = append(out, r.Backend(i).Name)
	}
	return out
}

func TestDecideQuickstart(t *testing.T) {
	r := mustRouter(t, quickstartTable())
	tests := []struct {
		name     string
		req      Request
		want     []string // chosen, then fallbacks
		reason   Reason
		upstream string
		need     int
	}{
		{
			name: "short chat to auto goes to the cheapest",
			req:  Request{Kind: KindChat, Model: "auto", PromptTokens: 100},
			want: []string{"fast", "fast-b", "long", "vision"}, reason: ReasonCheapest,
			upstream: "fast-8k", need: 100 + 1024,
		},
		{
			name: "50k-token prompt needs the long context",
			req:  Request{Kind: KindChat, Model: "auto", PromptTokens: 50_000},
			want: []string{"long", "vision"}, reason: ReasonCheapest,
			upstream: "long-200k", need: 50_000 + 1024,
		},
		{
			name: "prompt that just fits 8k with the reserve",
			req:  Request{Kind: KindChat, Model: "auto", PromptTokens: 8192 - 1024},
			want: []string{"fast", "fast-b", "long", "vision"}, reason: ReasonCheapest,
			upstream: "fast-8k", need: 8192,
		},
		{
			name: "one token more does not",
			req:  Request{Kind: KindChat, Model: "auto", PromptTokens: 8192 - 1024 + 1},
			want: []string{"long", "vision"}, reason: ReasonCheapest,
			upstream: "long-200k", need: 8192 + 1,
		},
		{
			name: "an image needs vision",
			req:  Request{Kind: KindChat, Model: "auto", PromptTokens: 1200, HasImages: true, Images: 1},
			want: []string{"vision"}, reason: ReasonOnly,
			upstream: "vision-128k", need: 1200 + 1024,
		},
		{
			name: "tools with a 20k prompt: fast is too small, long has no tools",
			req:  Request{Kind: KindChat, Model: "auto", PromptTokens: 20_000, HasTools: true},
			want: []string{"vision"}, reason: ReasonOnly,
			upstream: "vision-128k", need: 20_000 + 1024,
		},
		{
			name: "tools with a short prompt",
			req:  Request{Kind: KindChat, Model: "auto", PromptTokens: 300, HasTools: true},
			want: []string{"fast", "fast-b", "vision"}, reason: ReasonCheapest,
			upstream: "fast-8k", need: 300 + 1024,
		},
		{
			name: "tools and JSON mode",
			req:  Request{Kind: KindChat, Model: "auto", PromptTokens: 300, HasTools: true, JSONMode: true},
			want: []string{"fast", "fast-b", "vision"}, reason: ReasonCheapest,
			upstream: "fast-8k", need: 300 + 1024,
		},
		{
			name: "JSON mode with a long prompt",
			req:  Request{Kind: KindChat, Model: "auto", PromptTokens: 60_000, JSONMode: true},
			want: []string{"vision"}, reason: ReasonOnly,
			upstream: "vision-128k", need: 60_000 + 1024,
		},
		{
			name: "tools, image and JSON mode",
			req:  Request{Kind: KindChat, Model: "auto", PromptTokens: 2000, HasTools: true, HasImages: true, JSONMode: true, Stream: true},
			want: []string{"vision"}, reason: ReasonOnly,
			upstream: "vision-128k", need: 2000 + 1024,
		},
		{
			name: "explicit long-200k",
			req:  Request{Kind: KindChat, Model: "long-200k", PromptTokens: 100},
			want: []string{"long"}, reason: ReasonOnly,
			upstream: "long-200k", need: 100 + 1024,
		},
		{
			name: "explicit fast-8k: fast then fast-b",
			req:  Request{Kind: KindChat, Model: "fast-8k", PromptTokens: 100},
			want: []string{"fast", "fast-b"}, reason: ReasonCheapest,
			upstream: "fast-8k", need: 100 + 1024,
		},
		{
			name: "max_tokens above fast's and long's max_output_tokens",
			req:  Request{Kind: KindChat, Model: "auto", PromptTokens: 100, MaxOutputTokens: 10_000},
			want: []string{"vision"}, reason: ReasonOnly,
			upstream: "vision-128k", need: 100 + 10_000,
		},
		{
			name: "max_tokens sets the answer room instead of the reserve",
			req:  Request{Kind: KindChat, Model: "auto", PromptTokens: 4000, MaxOutputTokens: 4096},
			want: []string{"fast", "fast-b", "long", "vision"}, reason: ReasonCheapest,
			upstream: "fast-8k", need: 4000 + 4096,
		},
		{
			name: "max_tokens that fits the output cap but not the context",
			req:  Request{Kind: KindChat, Model: "auto", PromptTokens: 5000, MaxOutputTokens: 4000},
			want: []string{"long", "vision"}, reason: ReasonCheapest,
			upstream: "long-200k", need: 5000 + 4000,
		},
		{
			name: "embeddings need no answer room",
			req:  Request{Kind: KindEmbedding, Model: "auto", PromptTokens: 8192},
			want: []string{"fast", "fast-b", "long", "vision"}, reason: ReasonCheapest,
			upstream: "fast-8k", need: 8192,
		},
		{
			name: "completions",
			req:  Request{Kind: KindCompletion, Model: "fast-8k", PromptTokens: 10, Stream: true},
			want: []string{"fast", "fast-b"}, reason: ReasonCheapest,
			upstream: "fast-8k", need: 10 + 1024,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var d Decision
			if err := r.Decide(&tt.req, &d); err != nil {
				t.Fatal(err)
			}
			if got := names(r, &d); !slices.Equal(got, tt.want) {
				t.Errorf("backends = %v, want %v", got, tt.want)
			}
			if d.Reason != tt.reason {
				t.Errorf("reason = %v, want %v", d.Reason, tt.reason)
			}
			if d.Target != tt.req.Model {
				t.Errorf("target = %q, want %q", d.Target, tt.req.Model)
			}
			if d.UpstreamModel != tt.upstream {
				t.Errorf("upstream model = %q, want %q", d.UpstreamModel, tt.upstream)
			}
			if d.NeedTokens != tt.need {
				t.Errorf("NeedTokens = %d, want %d", d.NeedTokens, tt.need)
			}
		})
	}
}

func TestDecideUnsatisfiable(t *testing.T) {
	r := mustRouter(t, quickstartTable())
	tests := []struct {
		name string
		req  Request
		want Requirement
		msg  string
	}{
		{
			name: "300k-token prompt",
			req:  Request{Kind: KindChat, Model: "auto", PromptTokens: 300_000},
			want: RequireContext,
			msg: `no backend for model "auto" can serve this request (it needs about 300,000 prompt tokens): ` +
				`fast context window is 8,192 tokens; fast-b context window is 8,192 tokens; ` +
				`long context window is 200,000 tokens; vision context window is 128,000 tokens`,
		},
		{
			name: "exact count, output tokens and streaming in the needs",
			req:  Request{Kind: KindChat, Model: "fast-8k", PromptTokens: 9000, PromptTokensExact: true, MaxOutputTokens: 100, Stream: true},
			want: RequireContext,
			msg: `no backend for model "fast-8k" can serve this request (it needs 9,000 prompt tokens, 100 output tokens, streaming): ` +
				`fast context window is 8,192 tokens; fast-b context window is 8,192 tokens`,
		},
		{
			name: "image with a 150k prompt: three lack vision, one lacks context",
			req:  Request{Kind: KindChat, Model: "auto", PromptTokens: 150_000, HasImages: true, HasTools: true, JSONMode: true},
			want: RequireVision,
			msg: `no backend for model "auto" can serve this request (it needs about 150,000 prompt tokens, vision, tools, JSON mode): ` +
				`fast does not accept images; fast-b does not accept images; long does not accept images; vision context window is 128,000 tokens`,
		},
		{
			name: "tools on long-200k",
			req:  Request{Kind: KindChat, Model: "long-200k", PromptTokens: 10, HasTools: true},
			want: RequireTools,
			msg:  `no backend for model "long-200k" can serve this request (it needs about 10 prompt tokens, tools): long does not support tools`,
		},
		{
			name: "JSON mode on long-200k",
			req:  Request{Kind: KindChat, Model: "long-200k", PromptTokens: 10, JSONMode: true},
			want: RequireJSONMode,
			msg:  `no backend for model "long-200k" can serve this request (it needs about 10 prompt tokens, JSON mode): long does not support response_format JSON mode`,
		},
		{
			name: "image on fast-8k",
			req:  Request{Kind: KindChat, Model: "fast-8k", PromptTokens: 10, HasImages: true},
			want: RequireVision,
			msg:  `no backend for model "fast-8k" can serve this request (it needs about 10 prompt tokens, vision): fast does not accept images; fast-b does not accept images`,
		},
		{
			name: "max_tokens above every max_output_tokens",
			req:  Request{Kind: KindChat, Model: "auto", PromptTokens: 10, MaxOutputTokens: 20_000},
			want: RequireMaxOutput,
			msg: `no backend for model "auto" can serve this request (it needs about 10 prompt tokens, 20,000 output tokens): ` +
				`fast writes at most 4,096 output tokens; fast-b writes at most 4,096 output tokens; ` +
				`long writes at most 8,192 output tokens; vision writes at most 16,384 output tokens`,
		},
		{
			name: "embedding input too long",
			req:  Request{Kind: KindEmbedding, Model: "fast-8k", PromptTokens: 9000},
			want: RequireContext,
			msg:  `no backend for model "fast-8k" can serve this request (it needs 9,000 input tokens): fast context window is 8,192 tokens; fast-b context window is 8,192 tokens`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var d Decision
			err := r.Decide(&tt.req, &d)
			var ue *UnsatisfiableError
			if !errors.As(err, &ue) {
				t.Fatalf("err = %v (%T), want *UnsatisfiableError", err, err)
			}
			if ue.Target != tt.req.Model {
				t.Errorf("Target = %q", ue.Target)
			}
			if got := ue.Requirement(); got != tt.want {
				t.Errorf("Requirement() = %v, want %v", got, tt.want)
			}
			if got := err.Error(); got != tt.msg {
				t.Errorf("message:\n  got  %s\n  want %s", got, tt.msg)
			}
			cands, _ := r.Candidates(tt.req.Model)
			if len(ue.Rejections) != len(cands) {
				t.Errorf("%d rejections for %d candidates", len(ue.Rejections), len(cands))
			}
			for _, rj := range ue.Rejections {
				if rj.Requirement == RequireNone || rj.Detail == "" {
					t.Errorf("empty rejection %+v", rj)
				}
			}
		})
	}
}

func TestRequirementTies(t *testing.T) {
	// Ties go to the later check.
	e := &UnsatisfiableError{Rejections: []Rejection{{Requirement: RequireVision}, {Requirement: RequireContext}}}
	if got := e.Requirement(); got != RequireContext {
		t.Errorf("tie: %v, want context_window", got)
	}
	e = &UnsatisfiableError{Rejections: []Rejection{{Requirement: RequireContext}, {Requirement: RequireTools}, {Requirement: RequireTools}}}
	if got := e.Requirement(); got != RequireTools {
		t.Errorf("majority: %v, want tools", got)
	}
	if got := (&UnsatisfiableError{}).Requirement(); got != RequireNone {
		t.Errorf("no rejections: %v", got)
	}
	want := []string{"none", "endpoint", "vision", "tools", "json_mode", "streaming", "max_output_tokens", "context_window"}
	for q := RequireNone; q <= RequireContext; q++ {
		if q.String() != want[q] {
			t.Errorf("Requirement(%d).String() = %q, want %q", q, q.String(), want[q])
		}
	}
}

// smallTable has backends that differ in one capability each.
func smallTable() Table {
	chatOnly := APIsOf(KindChat)
	return Table{
		Backends: []Backend{
			{Name: "batch", Model: "m", InputPrice: 0.1, OutputPrice: 0.1,
				Caps: Capabilities{ContextWindow: 32000, Streaming: false, APIs: allAPIs}},
			{Name: "live", Model: "m", InputPrice: 1, OutputPrice: 1,
				Caps: Capabilities{ContextWindow: 32000, Streaming: true, APIs: chatOnly}},
			{Name: "embed", Model: "e", InputPrice: 0.01,
				Caps: Capabilities{ContextWindow: 8192, APIs: APIsOf(KindEmbedding)}},
			{Name: "short-out", Model: "s", Caps: Capabilities{ContextWindow: 4096, MaxOutputTokens: 256, Streaming: true, APIs: allAPIs}},
		},
		Aliases: []Alias{
			{Name: "chat-only", Backends: []string{"live"}},
			{Name: "pinned", Backends: []string{"live", "embed", "batch"}, Objective: Ordered},
		},
		OutputReserve: 1000,
	}
}

func TestDecideCapabilities(t *testing.T) {
	r := mustRouter(t, smallTable())
	tests := []struct {
		name   string
		req    Request
		want   []string
		reason Reason
		need   int
		err    Requirement // RequireNone: no error
		msg    string
	}{
		{name: "no stream: the cheaper batch backend",
			req: Request{Kind: KindChat, Model: "m", PromptTokens: 10}, want: []string{"batch", "live"}, reason: ReasonCheapest, need: 1010},
		{name: "stream skips the backend that does not stream",
			req: Request{Kind: KindChat, Model: "m", PromptTokens: 10, Stream: true}, want: []string{"live"}, reason: ReasonOnly, need: 1010},
		{name: "embeddings skip the chat-only backend",
			req: Request{Kind: KindEmbedding, Model: "m", PromptTokens: 10}, want: []string{"batch"}, reason: ReasonOnly, need: 10},
		{name: "embeddings to a chat-only alias",
			req: Request{Kind: KindEmbedding, Model: "chat-only", PromptTokens: 10}, err: RequireAPI,
			msg: `no backend for model "chat-only" can serve this request (it needs 10 input tokens): live does not serve this endpoint`},
		{name: "chat to an embeddings-only model",
			req: Request{Kind: KindChat, Model: "e", PromptTokens: 10}, err: RequireAPI,
			msg: `no backend for model "e" can serve this request (it needs about 10 prompt tokens): embed does not serve this endpoint`},
		{name: "stream to a model none of whose backends stream",
			req: Request{Kind: KindCompletion, Model: "pinned", PromptTokens: 10, Stream: true}, err: RequireAPI,
			msg: `no backend for model "pinned" can serve this request (it needs about 10 prompt tokens, streaming): live does not serve this endpoint; embed does not serve this endpoint; batch does not stream`},
		{name: "ordered keeps the list order, not the cost",
			req: Request{Kind: KindChat, Model: "pinned", PromptTokens: 10}, want: []string{"live", "batch"}, reason: ReasonOrdered, need: 1010},
		{name: "ordered skips those that do not qualify",
			req: Request{Kind: KindEmbedding, Model: "pinned", PromptTokens: 10}, want: []string{"embed", "batch"}, reason: ReasonOrdered, need: 10},
		{name: "answer room is the backend's max output when below the reserve",
			req: Request{Kind: KindChat, Model: "s", PromptTokens: 3840}, want: []string{"short-out"}, reason: ReasonOnly, need: 3840 + 256},
		{name: "and the context check uses it",
			req: Request{Kind: KindChat, Model: "s", PromptTokens: 3841}, err: RequireContext,
			msg: `no backend for model "s" can serve this request (it needs about 3,841 prompt tokens): short-out context window is 4,096 tokens`},
		{name: "max_tokens above max_output_tokens",
			req: Request{Kind: KindChat, Model: "s", PromptTokens: 10, MaxOutputTokens: 257}, err: RequireMaxOutput,
			msg: `no backend for model "s" can serve this request (it needs about 10 prompt tokens, 257 output tokens): short-out writes at most 256 output tokens`},
		{name: "max_tokens near MaxInt does not overflow into a fit",
			req: Request{Kind: KindChat, Model: "m", PromptTokens: 10, MaxOutputTokens: math.MaxInt}, err: RequireContext},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var d Decision
			err := r.Decide(&tt.req, &d)
			if tt.err != RequireNone {
				var ue *UnsatisfiableError
				if !errors.As(err, &ue) {
					t.Fatalf("err = %v, want *UnsatisfiableError", err)
				}
				if ue.Requirement() != tt.err {
					t.Errorf("Requirement() = %v, want %v", ue.Requirement(), tt.err)
				}
				if tt.msg != "" && err.Error() != tt.msg {
					t.Errorf("message:\n  got  %s\n  want %s", err, tt.msg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := names(r, &d); !slices.Equal(got, tt.want) {
				t.Errorf("backends = %v, want %v", got, tt.want)
			}
			if d.Reason != tt.reason {
				t.Errorf("reason = %v, want %v", d.Reason, tt.reason)
			}
			if d.NeedTokens != tt.need {
				t.Errorf("NeedTokens = %d, want %d", d.NeedTokens, tt.need)
			}
		})
	}
}

func TestDecidePriorityBeatsCost(t *testing.T) {
	tab := quickstartTable()
	tab.Backends[3].Priority = 0 // vision: the dearest, in the first tier
	tab.Backends[0].Priority = 1
	tab.Backends[1].Priority = 1
	tab.Backends[2].Priority = 2
	tab.Aliases = append(tab.Aliases, Alias{Name: "listed", Backends: []string{"long", "fast-b", "fast", "vision"}, Objective: Ordered})
	r := mustRouter(t, tab)
	tests := []struct {
		model  string
		want   []string
		reason Reason
	}{
		// Cheapest within a tier, tiers in order.
		{"auto", []string{"vision", "fast", "fast-b", "long"}, ReasonCheapest},
		// Ordered within a tier, tiers in order.
		{"listed", []string{"vision", "fast-b", "fast", "long"}, ReasonOrdered},
	}
	for _, tt := range tests {
		var d Decision
		if err := r.Decide(&Request{Kind: KindChat, Model: tt.model, PromptTokens: 100}, &d); err != nil {
			t.Fatal(err)
		}
		if got := names(r, &d); !slices.Equal(got, tt.want) || d.Reason != tt.reason {
			t.Errorf("%s: %v (%v), want %v (%v)", tt.model, got, d.Reason, tt.want, tt.reason)
		}
	}
}

func TestDecideEqualCostKeepsListOrder(t *testing.T) {
	tab := quickstartTable()
	tab.Backends[1].InputPrice, tab.Backends[1].OutputPrice = tab.Backends[0].InputPrice, tab.Backends[0].OutputPrice
	tab.Aliases = []Alias{{Name: "ba", Backends: []string{"fast-b", "fast"}}}
	r := mustRouter(t, tab)
	for _, tt := range []struct {
		model string
		want  []string
	}{{"fast-8k", []string{"fast", "fast-b"}}, {"ba", []string{"fast-b", "fast"}}} {
		var d Decision
		if err := r.Decide(&Request{Kind: KindChat, Model: tt.model, PromptTokens: 100}, &d); err != nil {
			t.Fatal(err)
		}
		if got := names(r, &d); !slices.Equal(got, tt.want) {
			t.Errorf("%s: %v, want %v", tt.model, got, tt.want)
		}
	}
}

func TestDecideUnknownModel(t *testing.T) {
	r := mustRouter(t, quickstartTable())
	known := []string{"auto", "fast-8k", "long-200k", "vision-128k"}
	if !slices.Equal(r.Known(), known) {
		t.Errorf("Known() = %v, want %v", r.Known(), known)
	}
	tests := []struct {
		model, msg string
	}{
		{"gpt-4o", `model "gpt-4o" is not served here; known models: auto, fast-8k, long-200k, vision-128k`},
		{"fast", `model "fast" is not served here; known models: auto, fast-8k, long-200k, vision-128k`}, // a backend name is not a model
		{"AUTO", `model "AUTO" is not served here; known models: auto, fast-8k, long-200k, vision-128k`},
		{"", `the request names no model; known models: auto, fast-8k, long-200k, vision-128k`},
	}
	for _, tt := range tests {
		var d Decision
		err := r.Decide(&Request{Kind: KindChat, Model: tt.model, PromptTokens: 10}, &d)
		var ue *UnknownModelError
		if !errors.As(err, &ue) {
			t.Fatalf("%q: err = %v, want *UnknownModelError", tt.model, err)
		}
		if ue.Model != tt.model || !slices.Equal(ue.Known, known) {
			t.Errorf("%q: %+v", tt.model, ue)
		}
		if err.Error() != tt.msg {
			t.Errorf("%q: message %q, want %q", tt.model, err, tt.msg)
		}
	}
}

func TestReasonString(t *testing.T) {
	for r, want := range map[Reason]string{ReasonCheapest: "cheapest", ReasonOrdered: "ordered", ReasonOnly: "only_candidate"} {
		if r.String() != want {
			t.Errorf("%d: %q, want %q", r, r.String(), want)
		}
	}
}

func TestDecisionReuse(t *testing.T) {
	r := mustRouter(t, quickstartTable())
	var d Decision
	reqs := []Request{
		{Kind: KindChat, Model: "auto", PromptTokens: 100},
		{Kind: KindChat, Model: "auto", PromptTokens: 100, HasImages: true},
		{Kind: KindChat, Model: "fast-8k", PromptTokens: 100},
		{Kind: KindChat, Model: "auto", PromptTokens: 50_000},
	}
	want := [][]string{{"fast", "fast-b", "long", "vision"}, {"vision"}, {"fast", "fast-b"}, {"long", "vision"}}
	for round := range 3 {
		for i := range reqs {
			if err := r.Decide(&reqs[i], &d); err != nil {
				t.Fatal(err)
			}
			if got := names(r, &d); !slices.Equal(got, want[i]) {
				t.Fatalf("round %d, request %d: %v, want %v", round, i, got, want[i])
			}
		}
	}
}

func TestDecideAllocs(t *testing.T) {
	r := mustRouter(t, quickstartTable())
	var d Decision
	reqs := []Request{
		{Kind: KindChat, Model: "auto", PromptTokens: 100},
		{Kind: KindChat, Model: "auto", PromptTokens: 50_000, Stream: true},
		{Kind: KindChat, Model: "fast-8k", PromptTokens: 100, HasTools: true},
		{Kind: KindChat, Model: "auto", PromptTokens: 100, HasImages: true},
	}
	for i := range reqs { // warm up: grow d's slices
		if err := r.Decide(&reqs[i], &d); err != nil {
			t.Fatal(err)
		}
	}
	if raceEnabled {
		t.Skip("allocation counts are not exact under the race detector")
	}
	allocs := testing.AllocsPerRun(200, func() {
		for i := range reqs {
			if err := r.Decide(&reqs[i], &d); err != nil {
				t.Fatal(err)
			}
		}
	})
	if allocs != 0 {
		t.Errorf("Decide allocates %v times per run after warm-up, want 0", allocs)
	}
	allocs = testing.AllocsPerRun(100, func() { _ = r.Uncertain(&reqs[1]) })
	if allocs != 0 {
		t.Errorf("Uncertain allocates %v times, want 0", allocs)
	}
}

// TestDecideParsedBody goes from a request body to a decision.
func TestDecideParsedBody(t *testing.T) {
	r := mustRouter(t, quickstartTable())
	tests := []struct {
		name string
		body string
		want []string
	}{
		{"short chat", `{"model":"auto","messages":[{"role":"user","content":"Hello!"}]}`,
			[]string{"fast", "fast-b", "long", "vision"}},
		{"image part", `{"model":"auto","stream":true,"messages":[{"role":"user","content":[{"type":"text","text":"What is this?"},{"type":"image_url","image_url":{"url":"https://example.com/a.png"}}]}]}`,
			[]string{"vision"}},
		{"long prompt", `{"model":"auto","messages":[{"role":"user","content":"` + strings.Repeat("lorem ipsum dolor sit amet ", 8000) + `"}]}`,
			[]string{"long", "vision"}},
		{"tools and json", `{"model":"auto","response_format":{"type":"json_object"},"tools":[{"type":"function","function":{"name":"f","parameters":{}}}],"messages":[{"role":"user","content":"hi"}]}`,
			[]string{"fast", "fast-b", "vision"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var req Request
			if err := ParseRequest(KindChat, []byte(tt.body), &req); err != nil {
				t.Fatal(err)
			}
			var d Decision
			if err := r.Decide(&req, &d); err != nil {
				t.Fatal(err)
			}
			if got := names(r, &d); !slices.Equal(got, tt.want) {
				t.Errorf("backends = %v, want %v (request %+v)", got, tt.want, req)
			}
		})
	}
}

// bandEdges returns, for a context limit, the largest estimate whose band
// [lo, hi) still lies below it (so the next one up covers it) and the
// largest estimate whose band still covers it, from the band constants.
func bandEdges(limit int) (belowHi, lastLo int) {
	p := 0
	for p*estimateHighNum/estimateHighDen <= limit {
		p++
	}
	belowHi = p - 1
	for p*estimateLowNum/estimateLowDen <= limit {
		p++
	}
	return belowHi, p - 1
}

func TestUncertain(t *testing.T) {
	r := mustRouter(t, quickstartTable())
	// For auto the limits (context minus the 1024 reserve) are 7168 (fast,
	// fast-b), 126976 (vision) and 198976 (long). The true count may lie
	// in [lo, hi) = [estimateLow×, estimateHigh×) of the estimate.
	const fastLimit = 8192 - 1024
	belowHi, lastLo := bandEdges(fastLimit)
	if belowHi < 100 || lastLo*estimateHighNum/estimateHighDen >= 128000-1024 {
		t.Fatalf("the band [%d/%d, %d/%d) is too wide for these cases", estimateLowNum, estimateLowDen, estimateHighNum, estimateHighDen)
	}
	tests := []struct {
		name string
		req  Request
		want bool
	}{
		{"far below every limit", Request{Kind: KindChat, Model: "auto", PromptTokens: 100}, false},
		{"limit inside the band", Request{Kind: KindChat, Model: "auto", PromptTokens: 5000}, true},
		{"limit exactly at hi is outside", Request{Kind: KindChat, Model: "auto", PromptTokens: belowHi}, false},
		{"limit just under hi", Request{Kind: KindChat, Model: "auto", PromptTokens: belowHi + 1}, true},
		{"limit exactly at lo is inside", Request{Kind: KindChat, Model: "auto", PromptTokens: lastLo}, true},
		{"limit just under lo", Request{Kind: KindChat, Model: "auto", PromptTokens: lastLo + 1}, false},
		{"near the vision limit", Request{Kind: KindChat, Model: "auto", PromptTokens: 100_000}, true},
		{"far beyond every limit", Request{Kind: KindChat, Model: "auto", PromptTokens: 5_000_000}, false},
		{"exact count", Request{Kind: KindChat, Model: "auto", PromptTokens: 5000, PromptTokensExact: true}, false},
		{"unknown model", Request{Kind: KindChat, Model: "nope", PromptTokens: 5000}, false},
		{"only the model's own candidates count", Request{Kind: KindChat, Model: "long-200k", PromptTokens: 5000}, false},
		{"without max_tokens the limit is at hi", Request{Kind: KindChat, Model: "fast-8k", PromptTokens: belowHi}, false},
		{"max_tokens lowers the limit into the band", Request{Kind: KindChat, Model: "fast-8k", PromptTokens: belowHi, MaxOutputTokens: 4096}, true},
		{"chat: the limit is below lo", Request{Kind: KindChat, Model: "fast-8k", PromptTokens: lastLo + 1}, false},
		{"embeddings have no answer room, so the limit is higher", Request{Kind: KindEmbedding, Model: "fast-8k", PromptTokens: lastLo + 1}, true},
	}
	for _, tt := range tests {
		if got := r.Uncertain(&tt.req); got != tt.want {
			t.Errorf("%s (estimate %d): Uncertain = %v, want %v", tt.name, tt.req.PromptTokens, got, tt.want)
		}
	}
}

func TestCountLimit(t *testing.T) {
	r := mustRouter(t, quickstartTable())
	tests := []struct {
		req  Request
		want int
	}{
		{Request{Kind: KindChat, Model: "auto"}, 200000 - 1024 + 1},
		{Request{Kind: KindChat, Model: "fast-8k"}, 8192 - 1024 + 1},
		{Request{Kind: KindChat, Model: "fast-8k", MaxOutputTokens: 100}, 8192 - 100 + 1},
		{Request{Kind: KindEmbedding, Model: "vision-128k"}, 128000 + 1},
		{Request{Kind: KindChat, Model: "nope"}, 0},
	}
	for _, tt := range tests {
		if got := r.CountLimit(&tt.req); got != tt.want {
			t.Errorf("CountLimit(%s, max %d) = %d, want %d", tt.req.Model, tt.req.MaxOutputTokens, got, tt.want)
		}
		// A prompt of CountLimit tokens fits nowhere; one less fits somewhere.
		if tt.want == 0 {
			continue
		}
		var d Decision
		req := tt.req
		req.PromptTokens = tt.want
		if err := r.Decide(&req, &d); err == nil {
			t.Errorf("%s: a prompt of CountLimit tokens was routed to %s", req.Model, r.Backend(d.Backend).Name)
		}
		req.PromptTokens--
		if err := r.Decide(&req, &d); err != nil {
			t.Errorf("%s: a prompt of CountLimit-1 tokens: %v", req.Model, err)
		}
	}
}

func TestNewErrors(t *testing.T) {
	b := func(name, model string) Backend {
		return Backend{Name: name, Model: model, Caps: Capabilities{ContextWindow: 1000, APIs: allAPIs}}
	}
	tests := []struct {
		name string
		tab  Table
		err  string
	}{
		{"no backends", Table{}, "route table has no backends"},
		{"no backends, an alias", Table{Aliases: []Alias{{Name: "auto"}}}, "route table has no backends"},
		{"duplicate backend", Table{Backends: []Backend{b("a", "m"), b("a", "n")}}, `backend "a" is defined twice`},
		{"alias clashing with a model id", Table{Backends: []Backend{b("a", "m")}, Aliases: []Alias{{Name: "m"}}},
			`alias "m" clashes with a model id or another alias`},
		{"alias defined twice", Table{Backends: []Backend{b("a", "m")}, Aliases: []Alias{{Name: "x"}, {Name: "x"}}},
			`alias "x" clashes with a model id or another alias`},
		{"alias naming an unknown backend", Table{Backends: []Backend{b("a", "m")}, Aliases: []Alias{{Name: "x", Backends: []string{"a", "b"}}}},
			`alias "x" names unknown backend "b"`},
	}
	for _, tt := range tests {
		r, err := New(tt.tab)
		if err == nil || err.Error() != tt.err || r != nil {
			t.Errorf("%s: New = %v, %v; want error %q", tt.name, r, err, tt.err)
		}
	}
}

func TestNewIndexes(t *testing.T) {
	tab := quickstartTable()
	r := mustRouter(t, tab)
	tab.Backends[0].Name = "changed" // New copies the backends
	if r.Backend(0).Name != "fast" || len(r.Backends()) != 4 {
		t.Errorf("router shares the table's backends: %q", r.Backend(0).Name)
	}
	for _, tt := range []struct {
		model string
		want  []int
		ok    bool
	}{
		{"auto", []int{0, 1, 2, 3}, true},
		{"fast-8k", []int{0, 1}, true},
		{"vision-128k", []int{3}, true},
		{"fast", nil, false},
	} {
		got, ok := r.Candidates(tt.model)
		if ok != tt.ok || !slices.Equal(got, tt.want) {
			t.Errorf("Candidates(%q) = %v, %v; want %v, %v", tt.model, got, ok, tt.want, tt.ok)
		}
	}
}

func TestThousands(t *testing.T) {
	tests := []struct {
		n    int
		want string
	}{
		{0, "0"},
		{7, "7"},
		{999, "999"},
		{1000, "1,000"},
		{8192, "8,192"},
		{65536, "65,536"},
		{200000, "200,000"},
		{1234567, "1,234,567"},
		{-1, "-1"},
		{-1234, "-1,234"},
		{-999999, "-999,999"},
		{math.MaxInt64, "9,223,372,036,854,775,807"},
		{math.MinInt64, "-9,223,372,036,854,775,808"},
	}
	for _, tt := range tests {
		if got := thousands(tt.n); got != tt.want {
			t.Errorf("thousands(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
}
