package policy

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/detourhq/detour/examples"
	"github.com/detourhq/detour/route"
)

// validPolicy is a minimal valid policy built in Go, defaulted.
func validPolicy() *Policy {
	p := &Policy{
		Backends: []Backend{{
			Name:         "a",
			Model:        "m-a",
			Endpoints:    []Endpoint{{Address: "127.0.0.1:8101"}},
			Capabilities: Capabilities{ContextWindow: 8192},
		}},
	}
	p.ApplyDefaults()
	return p
}

func TestValidateDirect(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Policy)
		want   []string // "path: message"; nil for a valid policy
	}{
		{"valid", func(*Policy) {}, nil},
		{"access log to a file", func(p *Policy) { p.Envoy.AccessLog = "/var/log/detour/access.log" }, nil},
		{"access log to stdout", func(p *Policy) { p.Envoy.AccessLog = "/dev/stdout" }, nil},
		{"relative access log", func(p *Policy) { p.Envoy.AccessLog = "access.log" },
			[]string{`envoy.access_log: "access.log" is not an absolute path`}},
		{"silence check too short", func(p *Policy) { p.Controller.SilenceCheck = Duration(time.Millisecond) },
			[]string{"controller.silence_check: 1ms is too short"}},
		{"NaN health error rate", func(p *Policy) { p.Health.ErrorRate = math.NaN() },
			[]string{"health.error_rate: NaN is not a share between 0 and 1"}},
		{"NaN breaker error rate", func(p *Policy) { p.CircuitBreaker.ErrorRate = math.NaN() },
			[]string{"circuit_breaker.error_rate: NaN is not a share between 0 and 1"}},
		{"error rate exactly 1", func(p *Policy) { p.CircuitBreaker.ErrorRate = 1 }, nil},
		{"NaN jitter", func(p *Policy) { p.Retry.Jitter = math.NaN() },
			[]string{"retry.jitter: jitter is a share between 0 and 1"}},
		{"jitter exactly 1", func(p *Policy) { p.Retry.Jitter = 1 }, nil},
		{"continuation style prefix", func(p *Policy) { p.Backends[0].Continuation = ContinuationPrefix }, nil},
		{"continuation style continue_final_message", func(p *Policy) { p.Backends[0].Continuation = ContinuationFinalMessage }, nil},
		{"unknown continuation", func(p *Policy) { p.Backends[0].Continuation = "append" },
			[]string{`backends[0].continuation: unknown continuation "append"`}},
		{"stall timeout too short", func(p *Policy) { p.Resume.StallTimeout = Duration(10 * time.Millisecond) },
			[]string{"resume.stall_timeout: 10ms would take pauses between healthy tokens for stalls"}},
		{"too many resumes", func(p *Policy) { p.Resume.MaxResumes = 9 },
			[]string{"resume.max_resumes: 9 is outside 1-3"}},
		{"infinite price", func(p *Policy) { p.Backends[0].Price.Output = math.Inf(1) },
			[]string{"backends[0].price: prices must be finite numbers"}},
		{"NaN price", func(p *Policy) { p.Backends[0].Price.Input = math.NaN() },
			[]string{"backends[0].price: prices must be finite numbers"}},
		{"infinite tokens per second", func(p *Policy) { p.Health.TokensPerSecond = math.Inf(1) },
			[]string{"health.tokens_per_second: must be a finite number, not negative"}},
		{"NaN tokens per second", func(p *Policy) { p.Health.TokensPerSecond = math.NaN() },
			[]string{"health.tokens_per_second: must be a finite number, not negative"}},
		{"zero attempts", func(p *Policy) { p.Retry.Attempts = 0 },
			[]string{"retry.attempts: attempts 0 is out of range"}},
		{"equal delays", func(p *Policy) { p.Retry.MaxDelay = p.Retry.BaseDelay }, nil},
		{"first_token_timeout equal to health.ttft", func(p *Policy) { p.Retry.FirstTokenTimeout = p.Health.TTFT }, nil},
		{"first_token_timeout just under the request timeout", func(p *Policy) { p.Retry.FirstTokenTimeout = p.Envoy.RequestTimeout - 1 }, nil},
		{"first_token_timeout under health.ttft", func(p *Policy) { p.Retry.FirstTokenTimeout = p.Health.TTFT - 1 },
			[]string{"retry.first_token_timeout: 499.999999ms is shorter than health.ttft (500ms), the time to first token of a healthy backend"}},
		{"first_token_timeout equal to the request timeout", func(p *Policy) { p.Retry.FirstTokenTimeout = p.Envoy.RequestTimeout },
			[]string{"retry.first_token_timeout: 5m0s is not shorter than envoy.request_timeout (5m0s), so it could never fire"}},
		{"max_body_bytes 1KiB", func(p *Policy) { p.Limits.MaxBodyBytes = 1 << 10 }, nil},
		{"max_body_bytes 64MiB", func(p *Policy) { p.Limits.MaxBodyBytes = 64 << 20 }, nil},
		{"max_body_bytes 64MiB+1", func(p *Policy) { p.Limits.MaxBodyBytes = 64<<20 + 1 },
			[]string{"limits.max_body_bytes: max_body_bytes 67108865 is out of range"}},
		{"max_output_tokens equal to the context", func(p *Policy) { p.Backends[0].Capabilities.MaxOutputTokens = 8192 }, nil},
		{"empty route backend name", func(p *Policy) {
			p.Routes = []Route{{Name: "auto", Backends: []string{""}, Objective: ObjectiveCheapest}}
		}, []string{`routes[0].backends[0]: unknown backend ""`}},
		{"every address bad, in a fixed order", func(p *Policy) {
			p.Envoy.Listen, p.Envoy.Admin, p.ExtProc.Listen, p.ExtProc.Metrics = "a", "b", "c", "d"
		}, []string{
			`envoy.listen: address "a" is not host:port`,
			`envoy.admin: address "b" is not host:port`,
			`extproc.listen: address "c" is not host:port`,
			`extproc.metrics: address "d" is not host:port`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for range 10 { // the order must not depend on map iteration
				p := validPolicy()
				tt.modify(p)
				var got []string
				for _, pr := range p.Validate() {
					if pr.Line != 0 || pr.Column != 0 {
						t.Errorf("Validate set a position: %+v", pr)
					}
					got = append(got, pr.Path+": "+pr.Message)
				}
				if !slices.Equal(got, tt.want) {
					t.Fatalf("problems:\n  got  %q\n  want %q", got, tt.want)
				}
			}
		})
	}
}

func TestValidateZeroPolicy(t *testing.T) {
	var p Policy
	var paths []string
	for _, pr := range p.Validate() {
		paths = append(paths, pr.Path)
	}
	// Before ApplyDefaults a zero policy fails on everything that has a
	// default; after it, only the missing backends remain.
	if !slices.Contains(paths, "version") || !slices.Contains(paths, "backends") || !slices.Contains(paths, "retry.attempts") {
		t.Errorf("zero policy problems: %v", paths)
	}
	p.ApplyDefaults()
	probs := p.Validate()
	if len(probs) != 1 || probs[0].Path != "backends" {
		t.Errorf("defaulted empty policy problems: %v", probs)
	}
}

func TestRouteTable(t *testing.T) {
	p, err := Parse("quickstart.yaml", examples.QuickstartPolicy)
	if err != nil {
		t.Fatal(err)
	}
	tab := p.RouteTable()
	if tab.OutputReserve != 1024 {
		t.Errorf("OutputReserve = %d", tab.OutputReserve)
	}
	all := route.APIsOf(route.KindChat, route.KindCompletion, route.KindEmbedding)
	want := []route.Backend{
		{Name: "fast", Model: "fast-8k", InputPrice: 0.10, OutputPrice: 0.40,
			Caps: route.Capabilities{ContextWindow: 8192, MaxOutputTokens: 4096, Tools: true, JSONMode: true, Streaming: true, APIs: all}},
		{Name: "fast-b", Model: "fast-8k", InputPrice: 0.12, OutputPrice: 0.48,
			Caps: route.Capabilities{ContextWindow: 8192, MaxOutputTokens: 4096, Tools: true, JSONMode: true, Streaming: true, APIs: all}},
		{Name: "long", Model: "long-200k", InputPrice: 1.00, OutputPrice: 4.00,
			Caps: route.Capabilities{ContextWindow: 200000, MaxOutputTokens: 8192, Streaming: true, APIs: all}},
		{Name: "vision", Model: "vision-128k", InputPrice: 2.50, OutputPrice: 10.00,
			Caps: route.Capabilities{ContextWindow: 128000, MaxOutputTokens: 16384, Vision: true, Tools: true, JSONMode: true, Streaming: true, APIs: all}},
	}
	if !slices.Equal(tab.Backends, want) {
		t.Errorf("backends:\n  got  %+v\n  want %+v", tab.Backends, want)
	}
	if len(tab.Aliases) != 1 || tab.Aliases[0].Name != "auto" || tab.Aliases[0].Objective != route.Cheapest || len(tab.Aliases[0].Backends) != 0 {
		t.Errorf("aliases: %+v", tab.Aliases)
	}
	if _, err := route.New(tab); err != nil {
		t.Errorf("route.New(quickstart table): %v", err)
	}
}

func TestRouteTableConversions(t *testing.T) {
	src := oneBackend + `    priority: 2
  - name: e
    model: embed
    endpoints: [{address: "127.0.0.1:8102"}]
    capabilities: {context_window: 512, streaming: false, apis: [embeddings, completions]}
routing: {output_reserve_tokens: 256}
routes:
  - name: pinned
    backends: [e, a]
    objective: ordered
`
	p, err := Parse("f.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	tab := p.RouteTable()
	if tab.OutputReserve != 256 {
		t.Errorf("OutputReserve = %d", tab.OutputReserve)
	}
	if tab.Backends[0].Priority != 2 {
		t.Errorf("priority = %d", tab.Backends[0].Priority)
	}
	e := tab.Backends[1].Caps
	if e.Streaming || e.APIs != route.APIsOf(route.KindEmbedding, route.KindCompletion) || e.APIs.Has(route.KindChat) {
		t.Errorf("embed caps = %+v", e)
	}
	a := tab.Aliases[0]
	if a.Objective != route.Ordered || !slices.Equal(a.Backends, []string{"e", "a"}) {
		t.Errorf("alias = %+v", a)
	}
	if _, err := route.New(tab); err != nil {
		t.Error(err)
	}
	// A Policy built in Go with a nil Streaming streams.
	q := validPolicy()
	q.Backends[0].Capabilities.Streaming = nil
	if !q.RouteTable().Backends[0].Caps.Streaming {
		t.Error("nil streaming converted to false")
	}
}

func TestProblemString(t *testing.T) {
	tests := []struct {
		p    Problem
		want string
	}{
		{Problem{Line: 1, Column: 2, Path: "a.b", Message: "m", Hint: "h"}, "1:2: a.b: m (hint: h)"},
		{Problem{Line: 1, Column: 2, Message: "m"}, "1:2: m"},
		{Problem{Path: "a", Message: "m"}, "a: m"},
		{Problem{Message: "m", Hint: "h"}, "m (hint: h)"},
	}
	for _, tt := range tests {
		if got := tt.p.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.p, got, tt.want)
		}
	}
	if s := (Problem{Message: "x"}).String(); strings.Contains(s, "0:0") {
		t.Errorf("a problem without a place printed one: %q", s)
	}
}
