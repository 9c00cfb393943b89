package policy

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestProbeDefaults(t *testing.T) {
	p := validPolicy()
	pr := p.Probes
	if pr.Interval.D() != time.Minute || pr.IdleInterval.D() != 5*time.Second || pr.BudgetPerHour != 120 ||
		pr.Timeout.D() != 30*time.Second || pr.MaxTokens != 64 || !*pr.CheckAuth || !*pr.CheckErrors {
		t.Errorf("defaults: %+v", pr)
	}
	var kinds []string
	for _, q := range pr.Prompts {
		kinds = append(kinds, q.Kind)
		if q.Name != q.Kind || q.Prompt == "" || q.Expect.Status != 200 {
			t.Errorf("prompt defaults: %+v", q)
		}
	}
	if !slices.Equal(kinds, []string{ProbeShort, ProbeJSON, ProbeToolCall}) {
		t.Errorf("default kinds = %v", kinds)
	}
	if tool := pr.Prompts[2].Expect.Tool; tool != DefaultProbeTool {
		t.Errorf("tool = %q", tool)
	}
	// Explicit values are kept, and an explicit empty list stays empty:
	// the checks alone.
	q := &Policy{Backends: p.Backends, Probes: Probes{Prompts: []ProbePrompt{}, CheckAuth: new(bool)}}
	q.ApplyDefaults()
	if len(q.Probes.Prompts) != 0 || *q.Probes.CheckAuth {
		t.Errorf("explicit values lost: %+v", q.Probes)
	}
	long := &Policy{Backends: p.Backends, Probes: Probes{Prompts: []ProbePrompt{{Kind: ProbeLongContext}}}}
	long.ApplyDefaults()
	if got := long.Probes.Prompts[0].ContextTokens; got != DefaultProbeContextTokens {
		t.Errorf("context_tokens = %d", got)
	}
}

func TestProbeGating(t *testing.T) {
	p := validPolicy()
	p.Probes.Prompts = []ProbePrompt{{Kind: ProbeShort}, {Kind: ProbeJSON}, {Kind: ProbeToolCall}, {Kind: ProbeImage}, {Kind: ProbeLongContext, ContextTokens: 100000}}
	p.ApplyDefaults()
	names := func(b Backend) []string {
		var out []string
		for _, q := range p.ProbePromptsFor(&b) {
			out = append(out, q.Name)
		}
		return out
	}
	plain := p.Backends[0] // 8192 tokens, no tools, JSON or vision
	if got := names(plain); !slices.Equal(got, []string{"short", "long_context"}) {
		t.Errorf("plain backend: %v", got)
	}
	if got := p.ProbeContextTokens(&plain, p.Probes.Prompts[4]); got != 8192-64-ProbeContextMargin {
		t.Errorf("long context capped to %d", got)
	}
	rich := plain
	rich.Capabilities.Tools, rich.Capabilities.JSONMode, rich.Capabilities.Vision = true, true, true
	if got := names(rich); len(got) != 5 {
		t.Errorf("capable backend: %v", got)
	}
	tiny := plain
	tiny.Capabilities.ContextWindow = 500
	if got := names(tiny); !slices.Equal(got, []string{"short"}) {
		t.Errorf("tiny context: %v", got)
	}
	embed := plain
	embed.Capabilities.APIs = []string{"embeddings"}
	if got := p.ProbeRequests(&embed); got != 0 {
		t.Errorf("embeddings-only backend gets %d probe requests", got)
	}
	// short + long_context + error check; with credentials, the auth check.
	if got := p.ProbeRequests(&plain); got != 3 {
		t.Errorf("plain requests = %d", got)
	}
	plain.Credentials = &Credentials{APIKeyEnv: "K", Header: "authorization"}
	if got := p.ProbeRequests(&plain); got != 4 {
		t.Errorf("with credentials requests = %d", got)
	}
	p.Probes.Disabled = true
	if got := p.ProbeRequests(&plain); got != 0 {
		t.Errorf("disabled requests = %d", got)
	}
}

func TestValidateProbes(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Policy)
		want   []string // "path: message"
	}{
		{"defaults", func(*Policy) {}, nil},
		{"interval too short", func(p *Policy) { p.Probes.Interval = Duration(time.Millisecond) },
			[]string{"probes.interval: 1ms is out of range", "probes.idle_interval: 5s is not between 100ms and interval (1ms)"}},
		{"idle interval over interval", func(p *Policy) { p.Probes.IdleInterval = Duration(2 * time.Minute) },
			[]string{"probes.idle_interval: 2m0s is not between 100ms and interval (1m0s)"}},
		{"negative budget", func(p *Policy) { p.Probes.BudgetPerHour = -1 },
			[]string{"probes.budget_per_hour: -1 is not a positive number of requests"}},
		{"budget below a round", func(p *Policy) { p.Probes.BudgetPerHour = 1 },
			[]string{`probes.budget_per_hour: one probe round of backend "a" sends 2 requests, more than the budget of 1`}},
		{"budget below a round, disabled", func(p *Policy) { p.Probes.BudgetPerHour, p.Probes.Disabled = 1, true }, nil},
		{"timeout", func(p *Policy) { p.Probes.Timeout = Duration(time.Millisecond) },
			[]string{"probes.timeout: 1ms is out of range"}},
		{"max tokens", func(p *Policy) { p.Probes.MaxTokens = -5 },
			[]string{"probes.max_tokens: -5 is not a positive number of tokens"}},
		{"unknown kind", func(p *Policy) {
			p.Probes.Prompts = []ProbePrompt{{Name: "x", Kind: "video", Prompt: "hi", Expect: ProbeExpect{Status: 200}}}
		},
			[]string{`probes.prompts[0].kind: unknown kind "video"`}},
		{"missing kind", func(p *Policy) { p.Probes.Prompts = []ProbePrompt{{Expect: ProbeExpect{Status: 200}}} },
			[]string{`probes.prompts[0].kind: unknown kind ""`}},
		{"bad name and duplicate", func(p *Policy) {
			p.Probes.Prompts[0].Name = "a b"
			p.Probes.Prompts[2].Name = "json"
		}, []string{
			`probes.prompts[0].name: probe name "a b" has characters metric labels should not carry`,
			`probes.prompts[2].name: probe name "json" is used twice (also probes.prompts[1])`,
		}},
		{"empty prompt", func(p *Policy) { p.Probes.Prompts[0].Prompt = "  " },
			[]string{"probes.prompts[0].prompt: the prompt is empty"}},
		{"status", func(p *Policy) { p.Probes.Prompts[0].Expect.Status = 42 },
			[]string{"probes.prompts[0].expect.status: 42 is not an HTTP status"}},
		{"bad regex", func(p *Policy) { p.Probes.Prompts[0].Expect.Regex = "po(ng" },
			[]string{"probes.prompts[0].expect.regex: error parsing regexp: missing closing ): `po(ng`"}},
		{"json paths", func(p *Policy) { p.Probes.Prompts[1].Expect.JSON = []string{"status", "a..b", ""} },
			[]string{`probes.prompts[1].expect.json[1]: "a..b" is not a field path`, `probes.prompts[1].expect.json[2]: "" is not a field path`}},
		{"json on a text probe", func(p *Policy) { p.Probes.Prompts[0].Expect.JSON = []string{"status"} },
			[]string{"probes.prompts[0].expect.json: a short probe's answer is text, not JSON"}},
		{"tool on a text probe", func(p *Policy) { p.Probes.Prompts[0].Expect.Tool = "f" },
			[]string{"probes.prompts[0].expect.tool: a short probe calls no tool"}},
		{"bad tool name", func(p *Policy) { p.Probes.Prompts[2].Expect.Tool = "get weather" },
			[]string{`probes.prompts[2].expect.tool: "get weather" is not a function name`}},
		{"context tokens", func(p *Policy) {
			p.Probes.Prompts[0].ContextTokens = 10
			p.Probes.Prompts = append(p.Probes.Prompts, ProbePrompt{Name: "long", Kind: ProbeLongContext, Prompt: "x", ContextTokens: -1, Expect: ProbeExpect{Status: 200}})
		}, []string{
			"probes.prompts[0].context_tokens: context_tokens applies to long_context probes, not short",
			"probes.prompts[3].context_tokens: cannot be negative",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := validPolicy()
			tt.modify(p)
			var got []string
			for _, pr := range p.Validate() {
				got = append(got, pr.Path+": "+pr.Message)
				if pr.Hint == "" && !strings.Contains(pr.Path, "regex") {
					t.Errorf("%s has no hint", pr.Path)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("problems:\n  got  %q\n  want %q", got, tt.want)
			}
		})
	}
}

func TestParseProbes(t *testing.T) {
	const head = `version: 1
backends:
  - name: a
    model: m-a
    endpoints:
      - address: 127.0.0.1:8101
    capabilities:
      context_window: 8192
      tools: true
`
	p, err := Parse("f.yaml", []byte(head+`probes:
  interval: 2m
  budget_per_hour: 60
  check_auth: false
  prompts:
    - kind: short
      expect: {regex: "(?i)pong"}
    - name: weather
      kind: tool_call
      expect: {tool: lookup, json: [query]}
`))
	if err != nil {
		t.Fatal(err)
	}
	pr := p.Probes
	if pr.Interval.D() != 2*time.Minute || pr.BudgetPerHour != 60 || *pr.CheckAuth || !*pr.CheckErrors || len(pr.Prompts) != 2 {
		t.Fatalf("probes = %+v", pr)
	}
	if q := pr.Prompts[1]; q.Name != "weather" || q.Expect.Tool != "lookup" || q.Expect.Status != 200 || q.Prompt == "" {
		t.Errorf("tool prompt = %+v", q)
	}
	got := problems(t, head+`probes:
  max_tokenz: 5
  prompts:
    - kind: short
      expect: {regex: "(", status: 99}
`)
	want := []string{`f.yaml:11:3: probes.max_tokenz: unknown key "max_tokenz" (hint: did you mean "max_tokens"?)`}
	if !slices.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
	got = problems(t, head+`probes:
  prompts:
    - kind: short
      expect: {regex: "(", status: 99}
`)
	want = []string{
		"f.yaml:13:23: probes.prompts[0].expect.regex: error parsing regexp: missing closing ): `(` (hint: Go RE2 syntax, e.g. (?i)pong)",
		"f.yaml:13:36: probes.prompts[0].expect.status: 99 is not an HTTP status (hint: e.g. 200)",
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}
