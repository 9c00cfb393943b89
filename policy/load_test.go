package policy

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/detourhq/detour/examples"
	"github.com/goccy/go-yaml"
)

// oneBackend is a valid policy of ten lines; cases append to it, so what
// they add starts on line 11.
const oneBackend = `version: 1
backends:
  - name: a
    model: m-a
    endpoints:
      - address: 127.0.0.1:8101
    capabilities:
      context_window: 8192
      max_output_tokens: 4096
    price: {input: 0.1, output: 0.4}
`

func TestOneBackendIsValid(t *testing.T) {
	if _, err := Parse("f.yaml", []byte(oneBackend)); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(oneBackend, "\n"); n != 10 {
		t.Fatalf("oneBackend has %d lines; the cases below count on 10", n)
	}
}

func TestParseQuickstart(t *testing.T) {
	p, err := Parse("quickstart.yaml", examples.QuickstartPolicy)
	if err != nil {
		t.Fatal(err)
	}
	if p == nil {
		t.Fatal("nil policy without an error")
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"version", p.Version, 1},
		{"backends", len(p.Backends), 4},
		{"routes", len(p.Routes), 1},
		{"route objective", p.Routes[0].Objective, ObjectiveCheapest},
		{"retry.attempts", p.Retry.Attempts, 4},
		{"retry.base_delay", p.Retry.BaseDelay.D(), 100 * time.Millisecond},
		{"retry.max_delay", p.Retry.MaxDelay.D(), 1200 * time.Millisecond},
		{"retry.jitter", p.Retry.Jitter, 0.5},
		{"retry.per_try_timeout", p.Retry.PerTryTimeout.D(), time.Duration(0)},
		{"retry.first_token_timeout", p.Retry.FirstTokenTimeout.D(), 10 * time.Second},
		{"circuit_breaker.error_rate", p.CircuitBreaker.ErrorRate, 0.25},
		{"circuit_breaker.window", p.CircuitBreaker.Window.D(), 30 * time.Second},
		{"circuit_breaker.min_requests", p.CircuitBreaker.MinRequests, 20},
		{"circuit_breaker.slow_response", p.CircuitBreaker.SlowResponse.D(), 2 * time.Second},
		{"circuit_breaker.failures_per_minute", p.CircuitBreaker.FailuresPerMinute, 50},
		{"health.ttft", p.Health.TTFT.D(), 500 * time.Millisecond},
		{"health.tokens_per_second", p.Health.TokensPerSecond, 20.0},
		{"health.total_time", p.Health.TotalTime.D(), 5 * time.Second},
		{"health.error_rate", p.Health.ErrorRate, 0.001},
		{"limits.max_body_bytes", p.Limits.MaxBodyBytes, Size(8 << 20)},
		{"routing.output_reserve_tokens", p.Routing.OutputReserveTokens, 1024},
		{"envoy.listen", p.Envoy.Listen, "127.0.0.1:10000"},
		{"envoy.admin", p.Envoy.Admin, "127.0.0.1:9901"},
		{"envoy.request_timeout", p.Envoy.RequestTimeout.D(), 300 * time.Second},
		{"extproc.listen", p.ExtProc.Listen, "127.0.0.1:9002"},
		{"extproc.metrics", p.ExtProc.Metrics, "127.0.0.1:9190"},
		{"extproc.message_timeout", p.ExtProc.MessageTimeout.D(), 4 * time.Second},
		{"extproc.failure_mode_allow", p.ExtProc.FailureModeAllow, false},
		{"extproc.log_prompts", p.ExtProc.LogPrompts, false},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	for _, b := range p.Backends {
		if b.API != APIOpenAI {
			t.Errorf("%s: api = %q, want %q", b.Name, b.API, APIOpenAI)
		}
		if b.Capabilities.Streaming == nil || !*b.Capabilities.Streaming {
			t.Errorf("%s: streaming does not default to true", b.Name)
		}
		if !slices.Equal(b.Capabilities.APIs, []string{"chat", "completions", "embeddings"}) {
			t.Errorf("%s: apis = %v, want all three", b.Name, b.Capabilities.APIs)
		}
	}
	fast := p.Backends[0]
	if fast.Name != "fast" || fast.Model != "fast-8k" || fast.Capabilities.ContextWindow != 8192 ||
		fast.Capabilities.MaxOutputTokens != 4096 || !fast.Capabilities.Tools || !fast.Capabilities.JSONMode ||
		fast.Capabilities.Vision || fast.Price != (Price{Input: 0.10, Output: 0.40}) ||
		len(fast.Endpoints) != 1 || fast.Endpoints[0] != (Endpoint{Address: "127.0.0.1:8101", Region: "local"}) {
		t.Errorf("backend fast decoded as %+v", fast)
	}
	if probs := p.Validate(); len(probs) != 0 {
		t.Errorf("Validate after Parse: %v", probs)
	}
}

func TestQuickstartPointsAtSchema(t *testing.T) {
	if !strings.Contains(string(examples.QuickstartPolicy), "policy/detour-policy.schema.json") {
		t.Error("the quickstart policy's header no longer names policy/detour-policy.schema.json")
	}
}

func TestApplyDefaultsIdempotentAndKeepsValues(t *testing.T) {
	p, err := Parse("f.yaml", []byte(oneBackend+`routes: [{name: r, objective: ordered}]
retry: {attempts: 2, base_delay: 50ms, max_delay: 3s, jitter: 0.1, first_token_timeout: 3s}
limits: {max_body_bytes: 1MiB}
`))
	if err != nil {
		t.Fatal(err)
	}
	want := Retry{Attempts: 2, BaseDelay: Duration(50 * time.Millisecond), MaxDelay: Duration(3 * time.Second), Jitter: 0.1,
		FirstTokenTimeout: Duration(3 * time.Second), BudgetPercent: DefaultRetryBudget, MinRetryConcurrency: DefaultMinRetryConc}
	if p.Retry != want {
		t.Errorf("retry = %+v, want %+v", p.Retry, want)
	}
	if p.Limits.MaxBodyBytes != 1<<20 || p.Routes[0].Objective != ObjectiveOrdered {
		t.Errorf("limits/objective overwritten: %+v %+v", p.Limits, p.Routes[0])
	}
	before := *p
	before.Backends = slices.Clone(p.Backends)
	p.ApplyDefaults()
	if p.Retry != before.Retry || p.Health != before.Health || p.CircuitBreaker != before.CircuitBreaker ||
		p.Limits != before.Limits || p.Envoy != before.Envoy || !reflect.DeepEqual(p.ExtProc, before.ExtProc) ||
		!slices.Equal(p.Backends[0].Capabilities.APIs, before.Backends[0].Capabilities.APIs) {
		t.Error("a second ApplyDefaults changed the policy")
	}
}

func TestStreamingFalseIsKept(t *testing.T) {
	src := strings.Replace(oneBackend, "      max_output_tokens: 4096\n",
		"      max_output_tokens: 4096\n      streaming: false\n      apis: [embeddings]\n", 1)
	p, err := Parse("f.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	c := p.Backends[0].Capabilities
	if c.Streaming == nil || *c.Streaming {
		t.Error("streaming: false was replaced by the default")
	}
	if !slices.Equal(c.APIs, []string{"embeddings"}) {
		t.Errorf("apis = %v, want [embeddings]", c.APIs)
	}
}

// problems parses src and returns its problems, one "file:line:col: ..."
// string each; it fails the test when src is accepted.
func problems(t *testing.T, src string) []string {
	t.Helper()
	p, err := Parse("f.yaml", []byte(src))
	if err == nil {
		t.Fatalf("accepted:\n%s", src)
	}
	if p != nil {
		t.Error("a policy came back with an error")
	}
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("error is %T, want *ValidationError: %v", err, err)
	}
	if ve.File != "f.yaml" {
		t.Errorf("File = %q", ve.File)
	}
	if len(ve.Problems) == 0 {
		t.Fatal("a ValidationError with no problems")
	}
	return strings.Split(ve.Error(), "\n")
}

func TestParseProblems(t *testing.T) {
	// A second backend, lines 11-16, for cases that need two.
	const b = `  - name: b
    model: m-b
    endpoints:
      - address: 127.0.0.1:8102
    capabilities:
      context_window: 8192
`
	tests := []struct {
		name string
		src  string
		want []string
	}{
		{
			name: "syntax error",
			src:  "version: 1\nbackends: [\n",
			want: []string{"f.yaml:2:11: sequence end token ']' not found"},
		},
		{
			name: "tab indentation",
			src:  "version: 1\nbackends:\n\t- name: a\n",
			want: []string{"f.yaml:3:1: found character '\t' that cannot start any token"},
		},
		{
			name: "credentials name exactly one source",
			src:  oneBackend + "    credentials: {api_key_env: A_KEY, api_key_file: /run/key}\n",
			want: []string{`f.yaml:11:18: backends[0].credentials: name exactly one of api_key_env and api_key_file (hint: keys never go in the policy itself)`},
		},
		{
			name: "credentials: bad variable name and header",
			src:  oneBackend + "    credentials: {api_key_env: 1KEY, header: X-Key}\n",
			want: []string{
				`f.yaml:11:32: backends[0].credentials.api_key_env: "1KEY" is not an environment variable name (hint: e.g. OPENAI_API_KEY)`,
				`f.yaml:11:46: backends[0].credentials.header: "X-Key" cannot carry a key (hint: a lower-case header name such as authorization or api-key)`,
			},
		},
		{
			name: "a key written into the policy is refused",
			src:  oneBackend + "    credentials: {api_key: sk-123}\n",
			want: []string{`f.yaml:11:19: backends[0].credentials.api_key: unknown key "api_key" (hint: known keys here: api_key_env, api_key_file, header)`},
		},
		{
			name: "retry budget and outlier detection ranges",
			src:  oneBackend + "retry: {budget_percent: 150}\noutlier_detection: {base_ejection_time: 10m, max_ejection_time: 1m}\n",
			want: []string{
				`f.yaml:11:25: retry.budget_percent: 150 is not a percentage in (0, 100] (hint: 100 lets every request have one retry in flight)`,
				`f.yaml:12:65: outlier_detection.max_ejection_time: max_ejection_time is shorter than base_ejection_time`,
			},
		},
		{
			name: "Envoy listens on an IP, not a host name",
			src:  oneBackend + "envoy:\n  listen: localhost:10000\n",
			want: []string{`f.yaml:12:11: envoy.listen: Envoy listens on IP addresses only, not "localhost" (hint: e.g. 127.0.0.1 or 0.0.0.0)`},
		},
		{
			name: "mixed TLS endpoints in one backend",
			src:  strings.Replace(oneBackend, "      - address: 127.0.0.1:8101\n", "      - address: 127.0.0.1:8101\n      - address: 127.0.0.2:8101\n        tls: {sni: api.example.com}\n", 1),
			want: []string{`f.yaml:8:14: backends[0].endpoints[1].tls: endpoints of one backend must all use TLS or all not (hint: a backend is one Envoy cluster with one transport; split it into two backends)`},
		},
		{
			name: "unknown top-level key with a hint",
			src:  oneBackend + "retyr:\n  attempts: 3\n",
			want: []string{`f.yaml:11:1: retyr: unknown key "retyr" (hint: did you mean "retry"?)`},
		},
		{
			name: "unknown nested key with a hint",
			src:  strings.Replace(oneBackend, "context_window:", "context_windw:", 1),
			// Structural problems stop the check before the semantic ones
			// (here: the context window left unset).
			want: []string{`f.yaml:8:7: backends[0].capabilities.context_windw: unknown key "context_windw" (hint: did you mean "context_window"?)`},
		},
		{
			name: "unknown key far from every known one lists them",
			src:  oneBackend + "tracing: {}\n",
			want: []string{`f.yaml:11:1: tracing: unknown key "tracing" (hint: known keys here: backends, cache, circuit_breaker, controller, envoy, extproc, health, limits, outlier_detection, probes, queue, resume, retry, routes, routing, version, wasm, xds)`},
		},
		{
			name: "int field given a word",
			src:  oneBackend + "retry:\n  attempts: three\n",
			want: []string{`f.yaml:12:13: retry.attempts: want a whole number, got "three"`},
		},
		{
			name: "int field given a fraction",
			src:  oneBackend + "retry:\n  attempts: 1.5\n",
			want: []string{`f.yaml:12:13: retry.attempts: want a whole number, got "1.5"`},
		},
		{
			name: "int field given a quoted number",
			src:  oneBackend + "retry:\n  attempts: \"3\"\n",
			want: []string{`f.yaml:12:13: retry.attempts: want a whole number, got "\"3\""`},
		},
		{
			name: "int field overflowing",
			src:  oneBackend + "retry:\n  attempts: 99999999999999999999\n",
			want: []string{`f.yaml:12:13: retry.attempts: want a whole number, got "99999999999999999999"`},
		},
		{
			name: "bool field",
			src:  oneBackend + "extproc:\n  log_prompts: maybe\n",
			want: []string{`f.yaml:12:16: extproc.log_prompts: want true or false, got "maybe"`},
		},
		{
			name: "bool field given a quoted true",
			src:  oneBackend + "extproc:\n  failure_mode_allow: \"true\"\n",
			want: []string{`f.yaml:12:23: extproc.failure_mode_allow: want true or false, got "\"true\""`},
		},
		{
			name: "float field",
			src:  oneBackend + "health:\n  error_rate: lots\n",
			want: []string{`f.yaml:12:15: health.error_rate: want a number, got "lots"`},
		},
		{
			name: "float field given NaN",
			src:  oneBackend + "retry:\n  jitter: .nan\n",
			want: []string{`f.yaml:12:11: retry.jitter: want a number, got ".nan"`},
		},
		{
			name: "float field given infinity",
			src:  oneBackend + "health:\n  tokens_per_second: .inf\n",
			want: []string{`f.yaml:12:22: health.tokens_per_second: want a number, got ".inf"`},
		},
		{
			name: "duration without a unit",
			src:  oneBackend + "health:\n  ttft: 100\n",
			want: []string{`f.yaml:12:9: health.ttft: want a duration with a unit such as "500ms" or "30s", got 100`},
		},
		{
			name: "negative duration",
			src:  oneBackend + "retry:\n  base_delay: -100ms\n",
			want: []string{`f.yaml:12:15: retry.base_delay: duration "-100ms" is negative`},
		},
		{
			name: "malformed duration",
			src:  oneBackend + "circuit_breaker:\n  window: 30 seconds\n",
			want: []string{`f.yaml:12:11: circuit_breaker.window: want a duration such as "500ms" or "30s", got "30 seconds"`},
		},
		{
			name: "size with an unknown unit",
			src:  oneBackend + "limits:\n  max_body_bytes: 8XB\n",
			want: []string{`f.yaml:12:19: limits.max_body_bytes: want a size such as 1048576 or "8MiB", got "8XB"`},
		},
		{
			name: "negative size",
			src:  oneBackend + "limits:\n  max_body_bytes: -1\n",
			want: []string{`f.yaml:12:19: limits.max_body_bytes: want a size such as 1048576 or "8MiB", got "-1"`},
		},
		{
			name: "list where a mapping is expected",
			src:  oneBackend + "retry:\n  - attempts: 3\n",
			want: []string{`f.yaml:12:3: retry: want a mapping of keys to values, got a list`},
		},
		{
			name: "scalar where a mapping is expected",
			src:  strings.Replace(oneBackend, "    price: {input: 0.1, output: 0.4}", "    price: 0.1", 1),
			want: []string{`f.yaml:10:12: backends[0].price: want a mapping of keys to values, got "0.1"`},
		},
		{
			name: "mapping where a list is expected",
			src:  oneBackend + "routes:\n  name: auto\n",
			want: []string{`f.yaml:12:3: routes: want a list, got a mapping (hint: write one item per line starting with "- ")`},
		},
		{
			name: "scalar where a list is expected",
			src:  strings.Replace(oneBackend, "    endpoints:\n      - address: 127.0.0.1:8101\n", "    endpoints: 127.0.0.1:8101\n", 1),
			want: []string{`f.yaml:5:16: backends[0].endpoints: want a list, got "127.0.0.1:8101" (hint: write one item per line starting with "- ")`},
		},
		{
			name: "list where a single value is expected",
			src:  oneBackend + "envoy:\n  listen: [127.0.0.1:10000]\n",
			want: []string{`f.yaml:12:11: envoy.listen: want a single value, got a list`},
		},
		{
			name: "mapping where a duration is expected",
			src:  oneBackend + "health:\n  ttft: {ms: 500}\n",
			want: []string{`f.yaml:12:9: health.ttft: want a single value, got a mapping`},
		},
		{
			name: "duplicate backend name",
			src:  oneBackend + strings.Replace(b, "name: b", "name: a", 1),
			want: []string{`f.yaml:11:11: backends[1].name: backend name "a" is used twice (also backends[0]) (hint: names must be unique)`},
		},
		{
			name: "dot in a backend name",
			src:  strings.Replace(oneBackend, "name: a", "name: openai.gpt4", 1),
			want: []string{`f.yaml:3:11: backends[0].name: backend name "openai.gpt4" has characters Envoy cluster names cannot carry (hint: use letters, digits, '-' and '_' (a dot would break Envoy's stats tags))`},
		},
		{
			name: "backend name starting with a dash",
			src:  strings.Replace(oneBackend, "name: a", "name: -a", 1),
			want: []string{`f.yaml:3:11: backends[0].name: backend name "-a" has characters Envoy cluster names cannot carry (hint: use letters, digits, '-' and '_' (a dot would break Envoy's stats tags))`},
		},
		{
			name: "missing name and model",
			src:  strings.Replace(strings.Replace(oneBackend, "  - name: a\n", "  - api: openai\n", 1), "    model: m-a\n", "", 1),
			want: []string{
				`f.yaml:3:5: backends[0].name: backend has no name`,
				`f.yaml:3:5: backends[0].model: backend has no model id (hint: the provider's model id, e.g. gpt-4o-mini)`,
			},
		},
		{
			name: "unknown backend in a route",
			src:  oneBackend + b + "routes:\n  - name: auto\n    backends: [a, bb]\n",
			want: []string{`f.yaml:19:19: routes[0].backends[1]: unknown backend "bb" (hint: did you mean "b"?)`},
		},
		{
			name: "unknown backend in a route, nothing close",
			src:  oneBackend + "routes:\n  - name: auto\n    backends: [anthropic]\n",
			want: []string{`f.yaml:13:16: routes[0].backends[0]: unknown backend "anthropic"`},
		},
		{
			name: "backend listed twice in a route",
			src:  oneBackend + "routes:\n  - name: auto\n    backends: [a, a]\n",
			want: []string{`f.yaml:13:19: routes[0].backends[1]: backend "a" is listed twice`},
		},
		{
			name: "route named like a model id",
			src:  oneBackend + "routes:\n  - name: m-a\n",
			want: []string{`f.yaml:12:11: routes[0].name: route "m-a" has the name of a model id served by backend "a" (hint: give the alias another name)`},
		},
		{
			name: "duplicate route",
			src:  oneBackend + "routes:\n  - name: auto\n  - name: auto\n    objective: ordered\n",
			want: []string{`f.yaml:13:11: routes[1].name: route "auto" is defined twice (also routes[0])`},
		},
		{
			name: "route without a name, unknown objective",
			src:  oneBackend + "routes:\n  - objective: fastest\n",
			want: []string{
				`f.yaml:12:5: routes[0].name: route has no name (hint: the model name clients send, e.g. auto)`,
				`f.yaml:12:16: routes[0].objective: unknown objective "fastest" (hint: one of cheapest, ordered)`,
			},
		},
		{
			name: "bad addresses",
			src: oneBackend + strings.Replace(b, "      - address: 127.0.0.1:8102\n",
				"      - address: api.example.com\n      - address: :443\n      - address: host:99999\n", 1),
			want: []string{
				`f.yaml:14:18: backends[1].endpoints[0].address: address "api.example.com" is not host:port (hint: write host:port, e.g. api.example.com:443)`,
				`f.yaml:15:18: backends[1].endpoints[1].address: address ":443" has no host (hint: write host:port, e.g. api.example.com:443)`,
				`f.yaml:16:18: backends[1].endpoints[2].address: address "host:99999" has no valid port (hint: write host:port, e.g. api.example.com:443)`,
			},
		},
		{
			name: "bad listen address",
			src:  oneBackend + "extproc:\n  metrics: localhost\n",
			want: []string{`f.yaml:12:12: extproc.metrics: address "localhost" is not host:port (hint: write host:port, e.g. 127.0.0.1:9002)`},
		},
		{
			name: "no endpoints",
			src:  strings.Replace(oneBackend, "      - address: 127.0.0.1:8101\n", "", 1),
			want: []string{`f.yaml:5:5: backends[0].endpoints: backend has no endpoints (hint: add one: - address: host:port)`},
		},
		{
			name: "context_window zero",
			src:  strings.Replace(strings.Replace(oneBackend, "8192", "0", 1), "4096", "0", 1),
			want: []string{`f.yaml:8:23: backends[0].capabilities.context_window: context_window must be a positive number of tokens (hint: e.g. 128000)`},
		},
		{
			name: "context_window negative",
			src:  strings.Replace(oneBackend, "8192", "-8192", 1),
			want: []string{`f.yaml:8:23: backends[0].capabilities.context_window: context_window must be a positive number of tokens (hint: e.g. 128000)`},
		},
		{
			name: "max_output_tokens above context_window",
			src:  strings.Replace(oneBackend, "4096", "16384", 1),
			want: []string{`f.yaml:9:26: backends[0].capabilities.max_output_tokens: max_output_tokens 16384 exceeds context_window 8192`},
		},
		{
			name: "negative max_output_tokens",
			src:  strings.Replace(oneBackend, "4096", "-1", 1),
			want: []string{`f.yaml:9:26: backends[0].capabilities.max_output_tokens: max_output_tokens cannot be negative`},
		},
		{
			name: "unknown api",
			src:  strings.Replace(oneBackend, "      max_output_tokens: 4096\n", "      max_output_tokens: 4096\n      apis: [chat, images]\n", 1),
			want: []string{`f.yaml:10:20: backends[0].capabilities.apis[1]: unknown api "images" (hint: one of chat, completions, embeddings)`},
		},
		{
			name: "unsupported wire api",
			src:  strings.Replace(oneBackend, "    model: m-a\n", "    model: m-a\n    api: anthropic\n", 1),
			want: []string{`f.yaml:5:10: backends[0].api: unsupported api "anthropic" (hint: only "openai" is supported)`},
		},
		{
			name: "negative price",
			src:  strings.Replace(oneBackend, "output: 0.4", "output: -0.4", 1),
			want: []string{`f.yaml:10:12: backends[0].price: prices cannot be negative`},
		},
		{
			name: "negative priority",
			src:  oneBackend + "    priority: -1\n",
			want: []string{`f.yaml:11:15: backends[0].priority: priority cannot be negative (hint: 0 is the first tier)`},
		},
		{
			name: "version 2",
			src:  strings.Replace(oneBackend, "version: 1", "version: 2", 1),
			want: []string{`f.yaml:1:10: version: unsupported version 2 (hint: use version: 1)`},
		},
		{
			name: "no backends",
			src:  "version: 1\nbackends: []\n",
			want: []string{`f.yaml:2:11: backends: no backends (hint: add at least one backend with a name, model, endpoints and capabilities)`},
		},
		{
			name: "backends missing",
			src:  "version: 1\nretry: {attempts: 2}\n",
			want: []string{`f.yaml:1:1: backends: no backends (hint: add at least one backend with a name, model, endpoints and capabilities)`},
		},
		{
			name: "retry attempts above 10",
			src:  oneBackend + "retry:\n  attempts: 11\n",
			want: []string{`f.yaml:12:13: retry.attempts: attempts 11 is out of range (hint: between 1 (no retry) and 10)`},
		},
		{
			name: "retry attempts negative",
			src:  oneBackend + "retry:\n  attempts: -1\n",
			want: []string{`f.yaml:12:13: retry.attempts: attempts -1 is out of range (hint: between 1 (no retry) and 10)`},
		},
		{
			name: "max_delay below base_delay",
			src:  oneBackend + "retry:\n  base_delay: 2s\n  max_delay: 1s\n",
			want: []string{`f.yaml:13:14: retry.max_delay: max_delay is shorter than base_delay`},
		},
		{
			name: "max_delay below the default base_delay",
			src:  oneBackend + "retry:\n  max_delay: 50ms\n",
			want: []string{`f.yaml:12:14: retry.max_delay: max_delay is shorter than base_delay`},
		},
		{
			name: "jitter above 1",
			src:  oneBackend + "retry:\n  jitter: 1.5\n",
			want: []string{`f.yaml:12:11: retry.jitter: jitter is a share between 0 and 1 (hint: 0.5 means ±50 %)`},
		},
		{
			name: "jitter negative",
			src:  oneBackend + "retry:\n  jitter: -0.1\n",
			want: []string{`f.yaml:12:11: retry.jitter: jitter is a share between 0 and 1 (hint: 0.5 means ±50 %)`},
		},
		{
			name: "first_token_timeout under a healthy time to first token",
			src:  oneBackend + "retry:\n  first_token_timeout: 200ms\n",
			want: []string{`f.yaml:12:24: retry.first_token_timeout: 200ms is shorter than health.ttft (500ms), the time to first token of a healthy backend (hint: e.g. 10s: well above a normal time to first token)`},
		},
		{
			name: "first_token_timeout past the request timeout",
			src:  oneBackend + "retry:\n  first_token_timeout: 5m\n",
			want: []string{`f.yaml:12:24: retry.first_token_timeout: 5m0s is not shorter than envoy.request_timeout (5m0s), so it could never fire (hint: e.g. 10s: well above a normal time to first token)`},
		},
		{
			name: "health error rate above 1",
			src:  oneBackend + "health:\n  error_rate: 1.01\n",
			want: []string{`f.yaml:12:15: health.error_rate: 1.01 is not a share between 0 and 1 (hint: 0.25 means 25 %)`},
		},
		{
			name: "breaker error rate negative",
			src:  oneBackend + "circuit_breaker:\n  error_rate: -0.25\n",
			want: []string{`f.yaml:12:15: circuit_breaker.error_rate: -0.25 is not a share between 0 and 1 (hint: 0.25 means 25 %)`},
		},
		{
			name: "max_body_bytes below 1KiB",
			src:  oneBackend + "limits:\n  max_body_bytes: 1000\n",
			want: []string{`f.yaml:12:19: limits.max_body_bytes: max_body_bytes 1000 is out of range (hint: between 1KiB and 64MiB)`},
		},
		{
			name: "max_body_bytes above 64MiB",
			src:  oneBackend + "limits:\n  max_body_bytes: 1GB\n",
			want: []string{`f.yaml:12:19: limits.max_body_bytes: max_body_bytes 1000000000 is out of range (hint: between 1KiB and 64MiB)`},
		},
		{
			name: "negative counts",
			src:  oneBackend + "routing: {output_reserve_tokens: -1}\ncircuit_breaker: {min_requests: -1, failures_per_minute: -5}\nhealth: {tokens_per_second: -2}\n",
			want: []string{
				`f.yaml:11:34: routing.output_reserve_tokens: cannot be negative`,
				`f.yaml:12:33: circuit_breaker.min_requests: cannot be negative`,
				`f.yaml:12:58: circuit_breaker.failures_per_minute: cannot be negative`,
				`f.yaml:13:29: health.tokens_per_second: must be a finite number, not negative`,
			},
		},
		{
			name: "empty file",
			src:  "",
			want: []string{`f.yaml:1:1: the policy is empty (hint: start from examples/quickstart/policy.yaml)`},
		},
		{
			name: "comments only",
			src:  "# nothing here yet\n\n",
			want: []string{`f.yaml:1:1: the policy is empty (hint: start from examples/quickstart/policy.yaml)`},
		},
		{
			name: "several documents",
			src:  oneBackend + "---\n" + oneBackend,
			want: []string{`f.yaml:1:1: the file holds several YAML documents; a policy is one document`},
		},
		{
			name: "top level is a list",
			src:  "- version: 1\n",
			want: []string{`f.yaml:1:1: want a mapping of keys to values, got a list`},
		},
		{
			name: "duplicate key",
			src:  oneBackend + "version: 1\n",
			want: []string{`f.yaml:11:1: mapping key "version" already defined at [1:1]`},
		},
		{
			name: "alias to an anchor of another type",
			src:  oneBackend + "retry: &r {attempts: 3}\nhealth: *r\n",
			want: []string{`f.yaml:11:12: health.attempts: unknown key "attempts" (hint: known keys here: error_rate, tokens_per_second, total_time, ttft)`},
		},
		{
			name: "alias to a scalar of another type",
			src:  oneBackend + "retry: {attempts: &n 3}\nhealth: {ttft: *n}\n",
			want: []string{`f.yaml:11:22: health.ttft: want a duration with a unit such as "500ms" or "30s", got 3`},
		},
		{
			name: "alias making a route twice",
			src:  oneBackend + "routes: [{name: &n auto}, {name: *n}]\n",
			want: []string{`f.yaml:11:34: routes[1].name: route "auto" is defined twice (also routes[0])`},
		},
		{
			name: "alias without an anchor",
			src:  oneBackend + "retry: *nope\n",
			want: []string{`f.yaml:11:9: could not find alias "nope"`},
		},
		{
			name: "merge key",
			src:  oneBackend + "retry: &r {jitter: 0.2}\ncircuit_breaker: {<<: *r, min_requests: 4}\n",
			want: []string{`f.yaml:12:19: circuit_breaker: YAML merge keys (<<) are not supported (hint: write the keys out, or use an alias (*name) for the whole value)`},
		},
		{
			name: "port with a sign",
			src:  strings.Replace(oneBackend, "127.0.0.1:8101", "'127.0.0.1:+80'", 1),
			want: []string{`f.yaml:6:18: backends[0].endpoints[0].address: address "127.0.0.1:+80" has no valid port (hint: write host:port, e.g. api.example.com:443)`},
		},
		{
			name: "port zero",
			src:  oneBackend + "envoy: {admin: '127.0.0.1:0'}\n",
			want: []string{`f.yaml:11:16: envoy.admin: address "127.0.0.1:0" has no valid port (hint: write host:port, e.g. 127.0.0.1:9002)`},
		},
		{
			name: "tag on an int",
			src:  strings.Replace(oneBackend, "version: 1", "version: !!int 1", 1),
			want: []string{`f.yaml:1:10: version: YAML tag !!int is not supported (hint: remove the tag: the field decides the type)`},
		},
		{
			name: "tag on a mapping",
			src:  oneBackend + "retry: !!map {attempts: 2}\n",
			want: []string{`f.yaml:11:8: retry: YAML tag !!map is not supported (hint: remove the tag: the field decides the type)`},
		},
		{
			name: "tag on a null duration",
			src:  oneBackend + "health: {ttft: !!null ~}\n",
			want: []string{`f.yaml:11:16: health.ttft: YAML tag !!null is not supported (hint: remove the tag: the field decides the type)`},
		},
		{
			name: "several problems, sorted by line",
			src: `version: 1
retry:
  jitter: 3
backends:
  - name: a.b
    model: m
    endpoints: [{address: nowhere}]
    capabilities: {context_window: 0}
routes:
  - name: m
    backends: [x]
`,
			want: []string{
				`f.yaml:3:11: retry.jitter: jitter is a share between 0 and 1 (hint: 0.5 means ±50 %)`,
				`f.yaml:5:11: backends[0].name: backend name "a.b" has characters Envoy cluster names cannot carry (hint: use letters, digits, '-' and '_' (a dot would break Envoy's stats tags))`,
				`f.yaml:7:27: backends[0].endpoints[0].address: address "nowhere" is not host:port (hint: write host:port, e.g. api.example.com:443)`,
				`f.yaml:8:36: backends[0].capabilities.context_window: context_window must be a positive number of tokens (hint: e.g. 128000)`,
				`f.yaml:10:11: routes[0].name: route "m" has the name of a model id served by backend "a.b" (hint: give the alias another name)`,
				`f.yaml:11:16: routes[0].backends[0]: unknown backend "x"`,
			},
		},
		{
			name: "several type problems all reported",
			src:  oneBackend + "retry: {attempts: x, base_delay: 5, jitter: high}\nbogus: 1\nextproc: {log_prompts: 1}\n",
			want: []string{
				`f.yaml:11:19: retry.attempts: want a whole number, got "x"`,
				`f.yaml:11:34: retry.base_delay: want a duration with a unit such as "500ms" or "30s", got 5`,
				`f.yaml:11:45: retry.jitter: want a number, got "high"`,
				`f.yaml:12:1: bogus: unknown key "bogus" (hint: known keys here: backends, cache, circuit_breaker, controller, envoy, extproc, health, limits, outlier_detection, probes, queue, resume, retry, routes, routing, version, wasm, xds)`,
				`f.yaml:13:24: extproc.log_prompts: want true or false, got "1"`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := problems(t, tt.src)
			if !slices.Equal(got, tt.want) {
				t.Errorf("problems:\n  got  %s\n  want %s", strings.Join(got, "\n       "), strings.Join(tt.want, "\n       "))
			}
		})
	}
}

func TestParseAccepts(t *testing.T) {
	tests := []struct {
		name  string
		extra string
		check func(*Policy) bool
	}{
		{"duration in ms", "health: {ttft: 500ms}\n", func(p *Policy) bool { return p.Health.TTFT.D() == 500*time.Millisecond }},
		{"compound duration", "envoy: {request_timeout: 1m30s}\n", func(p *Policy) bool { return p.Envoy.RequestTimeout.D() == 90*time.Second }},
		{"quoted duration", "circuit_breaker: {window: \"10s\"}\n", func(p *Policy) bool { return p.CircuitBreaker.Window.D() == 10*time.Second }},
		{"size as a number", "limits: {max_body_bytes: 1024}\n", func(p *Policy) bool { return p.Limits.MaxBodyBytes == 1024 }},
		{"size in MiB", "limits: {max_body_bytes: 8MiB}\n", func(p *Policy) bool { return p.Limits.MaxBodyBytes == 8<<20 }},
		{"size with a space", "limits: {max_body_bytes: 2 MB}\n", func(p *Policy) bool { return p.Limits.MaxBodyBytes == 2_000_000 }},
		{"integer float", "retry: {jitter: 1}\n", func(p *Policy) bool { return p.Retry.Jitter == 1 }},
		{"hex int", "retry: {attempts: 0x5}\n", func(p *Policy) bool { return p.Retry.Attempts == 5 }},
		{"null leaves the default", "retry: {attempts: null, base_delay: ~}\n", func(p *Policy) bool {
			return p.Retry.Attempts == 4 && p.Retry.BaseDelay.D() == 100*time.Millisecond
		}},
		{"route over all backends", "routes: [{name: auto}]\n", func(p *Policy) bool {
			return len(p.Routes[0].Backends) == 0 && p.Routes[0].Objective == ObjectiveCheapest
		}},
		{"alias of a whole value", "retry: &r {jitter: 0.2}\n", func(p *Policy) bool { return p.Retry.Jitter == 0.2 }},
		{"quoted keys", "\"retry\": {'jitter': 0.3}\n", func(p *Policy) bool { return p.Retry.Jitter == 0.3 }},
		{"explicit key", "? retry\n: {jitter: 0.4}\n", func(p *Policy) bool { return p.Retry.Jitter == 0.4 }},
		{"anchored key", "&k retry: {jitter: 0.6}\n", func(p *Policy) bool { return p.Retry.Jitter == 0.6 }},
		{"IPv6 address", "envoy: {listen: '[::1]:10000'}\n", func(p *Policy) bool { return p.Envoy.Listen == "[::1]:10000" }},
		{"route named like a backend (not a model)", "routes: [{name: a}]\n", func(p *Policy) bool { return p.Routes[0].Name == "a" }},
		{"anchor reused at the same type", "health: {ttft: &d 700ms, total_time: *d}\n", func(p *Policy) bool {
			return p.Health.TTFT.D() == 700*time.Millisecond && p.Health.TotalTime.D() == 700*time.Millisecond
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("f.yaml", []byte(oneBackend+tt.extra))
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(p) {
				t.Errorf("decoded %+v", p)
			}
		})
	}
}

// TestParseJSON: JSON is YAML, so a policy written as JSON (quoted keys)
// loads, and to the same policy as its YAML.
func TestParseJSON(t *testing.T) {
	var doc any
	if err := yaml.Unmarshal(examples.QuickstartPolicy, &doc); err != nil {
		t.Fatal(err)
	}
	js, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	fromJSON, err := Parse("quickstart.json", js)
	if err != nil {
		t.Fatalf("%v\n%s", err, js)
	}
	fromYAML, err := Parse("quickstart.yaml", examples.QuickstartPolicy)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fromJSON, fromYAML) {
		t.Errorf("JSON and YAML differ:\n%+v\n%+v", fromJSON, fromYAML)
	}
	// A mistake in JSON is reported at its place too.
	bad := strings.Replace(string(js), `"context_window": 8192`, `"context_window": "8192"`, 1)
	got := problems(t, bad)
	if len(got) != 1 || !strings.Contains(got[0], `backends[0].capabilities.context_window: want a whole number, got "\"8192\""`) {
		t.Errorf("problems: %q", got)
	}
}

func TestValidationErrorFormat(t *testing.T) {
	e := &ValidationError{File: "p.yaml", Problems: []Problem{
		{Line: 3, Column: 7, Path: "retry.jitter", Message: "too big", Hint: "0.5 means ±50 %"},
		{Line: 9, Column: 1, Path: "x", Message: "unknown key"},
		{Message: "no place"},
		{Path: "routes", Message: "no position"},
	}}
	want := "p.yaml:3:7: retry.jitter: too big (hint: 0.5 means ±50 %)\n" +
		"p.yaml:9:1: x: unknown key\n" +
		"p.yaml: no place\n" +
		"p.yaml: routes: no position"
	if got := e.Error(); got != want {
		t.Errorf("Error() =\n%s\nwant\n%s", got, want)
	}
	e.File = ""
	if got := e.Error(); !strings.HasPrefix(got, "3:7: retry.jitter: too big") {
		t.Errorf("without a file: %q", got)
	}
}

func TestLoadFile(t *testing.T) {
	p, err := LoadFile(filepath.Join("..", "examples", "quickstart", "policy.yaml"))
	if err != nil || len(p.Backends) != 4 {
		t.Fatalf("LoadFile(quickstart) = %v, %v", p, err)
	}

	_, err = LoadFile(filepath.Join("testdata", "does-not-exist.yaml"))
	var ve *ValidationError
	if err == nil || errors.As(err, &ve) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v (want a wrapped fs.ErrNotExist, not a ValidationError)", err)
	}

	path := filepath.Join("testdata", "broken.yaml")
	_, err = LoadFile(path)
	if !errors.As(err, &ve) {
		t.Fatalf("broken.yaml: %v", err)
	}
	want := []string{
		path + `:7:7: backends[0].capabilities.context_windw: unknown key "context_windw" (hint: did you mean "context_window"?)`,
		path + `:12:13: retry.attempts: want a whole number, got "lots"`,
	}
	if got := strings.Split(err.Error(), "\n"); !slices.Equal(got, want) {
		t.Errorf("broken.yaml:\n  got  %q\n  want %q", got, want)
	}
}
