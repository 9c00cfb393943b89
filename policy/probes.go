package policy

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Probes configure the contextual health probes: sample requests the
// controller sends straight to each backend's endpoints, timed like
// traffic (time to first token, tokens per second, total time) and checked
// by a rule. A failed probe counts as a failed request of its backend.
// Probes are cheap by default: a few small requests, more often to idle or
// suspect backends than to busy healthy ones, within an hourly budget.
type Probes struct {
	// Disabled turns probing off. Default false.
	Disabled bool `yaml:"disabled,omitempty"`
	// Interval between probe rounds of a busy HEALTHY backend, whose own
	// traffic already shows its health. Default 60s.
	Interval Duration `yaml:"interval,omitempty"`
	// IdleInterval between probe rounds of a backend without traffic, or
	// one that is DEGRADED, OPEN or HALF_OPEN: probes are all there is to
	// judge it by. Default 5s. The hourly budget still bounds it.
	IdleInterval Duration `yaml:"idle_interval,omitempty"`
	// BudgetPerHour is the most probe requests sent to one backend in any
	// hour (each prompt, auth check and error check is one). A round that
	// does not fit waits. Default 120.
	BudgetPerHour int `yaml:"budget_per_hour,omitempty" jsonschema:"minimum=1"`
	// Timeout bounds one probe request, generation included. Default 30s.
	Timeout Duration `yaml:"timeout,omitempty"`
	// MaxTokens caps each probe's answer. Default 64: a few cents a day,
	// yet enough for a model that thinks briefly before answering (a cap of
	// 1 to 5 tokens makes those answer nothing, or refuse the request).
	MaxTokens int `yaml:"max_tokens,omitempty" jsonschema:"minimum=1"`
	// CheckAuth sends, to each backend with credentials, the short prompt
	// without them: it must be refused (401 or 403), or the key is not
	// what protects the backend. Default true.
	CheckAuth *bool `yaml:"check_auth,omitempty"`
	// CheckErrors sends a malformed request: it must be refused with a 4xx
	// in OpenAI's error shape ({"error":{"message":…,"type":…}}), which
	// detour's failover reads. Default true.
	CheckErrors *bool `yaml:"check_errors,omitempty"`
	// Prompts are the sample requests. Each goes only to the backends whose
	// capabilities support its kind. Default: a short prompt, a JSON-mode
	// prompt and a tool call; long_context and image are opt-in.
	Prompts []ProbePrompt `yaml:"prompts,omitempty"`
}

// ProbePrompt is one sample request and the rule its answer must meet.
type ProbePrompt struct {
	// Name labels the probe's results and metrics. Default: the kind.
	// Unique among the prompts.
	Name string `yaml:"name,omitempty" jsonschema:"pattern=^[A-Za-z0-9][A-Za-z0-9_-]*$"`
	// Kind of request: "short" (a short text prompt), "long_context" (the
	// prompt after a long filler text), "tool_call" (one tool offered and
	// required; backends with tools only), "json" (JSON mode; backends with
	// json_mode only) or "image" (a tiny inline image; backends with vision
	// only).
	Kind string `yaml:"kind" jsonschema:"enum=short,enum=long_context,enum=tool_call,enum=json,enum=image"`
	// Prompt is the user message. Default: one written for the kind. It is
	// never logged nor put in a result.
	Prompt string `yaml:"prompt,omitempty"`
	// ContextTokens is the length of the filler text of a long_context
	// probe, in tokens; capped by each backend's context window less
	// max_tokens and a margin. Default 4000.
	ContextTokens int `yaml:"context_tokens,omitempty" jsonschema:"minimum=0"`
	// Expect is the rule the answer must meet.
	Expect ProbeExpect `yaml:"expect,omitempty"`
}

// ProbeExpect is the rule a probe's answer must meet. A 200 answer must
// also finish its stream and carry some content (a tool call for a
// tool_call probe).
type ProbeExpect struct {
	// Status is the HTTP status expected. Default 200.
	Status int `yaml:"status,omitempty" jsonschema:"minimum=100,maximum=599"`
	// Regex must match the answer text (the tool call's arguments for a
	// tool_call probe). Go RE2 syntax; empty matches anything.
	Regex string `yaml:"regex,omitempty"`
	// JSON lists field paths (dot-separated, e.g. "status" or
	// "items.0.name") that the answer, parsed as a JSON object, must have;
	// the tool call's arguments for a tool_call probe. For a json probe the
	// answer must be a JSON object even when the list is empty.
	JSON []string `yaml:"json,omitempty"`
	// Tool is the function a tool_call probe offers and its answer must
	// call. Default get_weather.
	Tool string `yaml:"tool,omitempty" jsonschema:"pattern=^[A-Za-z0-9_-]{1,64}$"`
}

// Probe kinds.
const (
	ProbeShort       = "short"
	ProbeLongContext = "long_context"
	ProbeToolCall    = "tool_call"
	ProbeJSON        = "json"
	ProbeImage       = "image"
)

// ProbeKinds are the kinds a probe prompt may have.
var ProbeKinds = []string{ProbeShort, ProbeLongContext, ProbeToolCall, ProbeJSON, ProbeImage}

// Probe defaults.
const (
	DefaultProbeInterval      = 60 * time.Second
	DefaultProbeIdleInterval  = 5 * time.Second
	DefaultProbeBudgetPerHour = 120
	DefaultProbeTimeout       = 30 * time.Second
	// DefaultProbeMaxTokens: small enough that a probe costs next to
	// nothing, large enough that a model which reasons briefly still
	// answers (and that a JSON answer or a tool call is not cut short).
	DefaultProbeMaxTokens     = 64
	DefaultProbeContextTokens = 4000
	DefaultProbeTool          = "get_weather"

	// ProbeContextMargin is kept free of a long_context probe's filler, on
	// top of max_tokens, for the question, the chat template and the
	// difference between detour's token estimate and the model's tokenizer.
	ProbeContextMargin = 512
)

// Default prompts per kind. They ask for little, so that any model answers
// them within max_tokens.
var defaultProbePrompts = map[string]string{
	ProbeShort:       "Reply with the single word: pong",
	ProbeLongContext: "The text above is filler. Reply with the single word: pong",
	ProbeToolCall:    "What is the weather in Paris? Answer by calling the tool.",
	ProbeJSON:        `Reply with only this JSON object: {"status": "ok"}`,
	ProbeImage:       "What colour is this image? Answer in one word.",
}

var (
	probeToolRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	jsonPathRE  = regexp.MustCompile(`^[^.]+(\.[^.]+)*$`)
)

func (p *Policy) applyProbeDefaults() {
	pr := &p.Probes
	setDur(&pr.Interval, DefaultProbeInterval)
	setDur(&pr.IdleInterval, DefaultProbeIdleInterval)
	setInt(&pr.BudgetPerHour, DefaultProbeBudgetPerHour)
	setDur(&pr.Timeout, DefaultProbeTimeout)
	setInt(&pr.MaxTokens, DefaultProbeMaxTokens)
	t := true
	if pr.CheckAuth == nil {
		pr.CheckAuth = &t
	}
	if pr.CheckErrors == nil {
		pr.CheckErrors = &t
	}
	if pr.Prompts == nil {
		pr.Prompts = []ProbePrompt{{Kind: ProbeShort}, {Kind: ProbeJSON}, {Kind: ProbeToolCall}}
	}
	for i := range pr.Prompts {
		q := &pr.Prompts[i]
		setStr(&q.Name, q.Kind)
		setStr(&q.Prompt, defaultProbePrompts[q.Kind])
		setInt(&q.Expect.Status, 200)
		if q.Kind == ProbeLongContext {
			setInt(&q.ContextTokens, DefaultProbeContextTokens)
		}
		if q.Kind == ProbeToolCall {
			setStr(&q.Expect.Tool, DefaultProbeTool)
		}
	}
}

func (p *Policy) validateProbes(v *validator) {
	pr := &p.Probes
	if pr.Interval.D() < time.Second || pr.Interval.D() > 24*time.Hour {
		v.add("probes.interval", fmt.Sprintf("%s is out of range", pr.Interval.D()), "between 1s and 24h; 60s checks a busy backend every minute")
	}
	if pr.IdleInterval.D() < 100*time.Millisecond || pr.IdleInterval > pr.Interval {
		v.add("probes.idle_interval", fmt.Sprintf("%s is not between 100ms and interval (%s)", pr.IdleInterval.D(), pr.Interval.D()),
			"idle and suspect backends are probed more often than busy healthy ones, e.g. 5s")
	}
	if pr.BudgetPerHour < 1 {
		v.add("probes.budget_per_hour", fmt.Sprintf("%d is not a positive number of requests", pr.BudgetPerHour), "e.g. 120; set disabled: true to stop probing")
	}
	if pr.Timeout.D() < 100*time.Millisecond || pr.Timeout.D() > 10*time.Minute {
		v.add("probes.timeout", fmt.Sprintf("%s is out of range", pr.Timeout.D()), "between 100ms and 10m; it bounds a whole probe, generation included")
	}
	if pr.MaxTokens < 1 {
		v.add("probes.max_tokens", fmt.Sprintf("%d is not a positive number of tokens", pr.MaxTokens), "e.g. 64: enough for a model that reasons briefly")
	}
	names := map[string]int{}
	for i, q := range pr.Prompts {
		at := fmt.Sprintf("probes.prompts[%d]", i)
		if !slices.Contains(ProbeKinds, q.Kind) {
			v.add(at+".kind", fmt.Sprintf("unknown kind %q", q.Kind), "one of "+strings.Join(ProbeKinds, ", "))
		}
		switch {
		case q.Name == "":
			// A prompt without a kind has no name either: one problem.
		case !nameRE.MatchString(q.Name):
			v.add(at+".name", fmt.Sprintf("probe name %q has characters metric labels should not carry", q.Name), "use letters, digits, '-' and '_'")
		default:
			if j, dup := names[q.Name]; dup {
				v.add(at+".name", fmt.Sprintf("probe name %q is used twice (also probes.prompts[%d])", q.Name, j), "name each prompt of the same kind")
			} else {
				names[q.Name] = i
			}
		}
		if strings.TrimSpace(q.Prompt) == "" && q.Kind != "" && slices.Contains(ProbeKinds, q.Kind) {
			v.add(at+".prompt", "the prompt is empty", "leave it out for the kind's default prompt")
		}
		if q.ContextTokens < 0 {
			v.add(at+".context_tokens", "cannot be negative", "the filler length in tokens, e.g. 4000")
		} else if q.ContextTokens > 0 && q.Kind != ProbeLongContext {
			v.add(at+".context_tokens", fmt.Sprintf("context_tokens applies to long_context probes, not %s", q.Kind), "remove it, or set kind: long_context")
		}
		e := q.Expect
		if e.Status < 100 || e.Status > 599 {
			v.add(at+".expect.status", fmt.Sprintf("%d is not an HTTP status", e.Status), "e.g. 200")
		}
		if e.Regex != "" {
			if _, err := regexp.Compile(e.Regex); err != nil {
				v.add(at+".expect.regex", err.Error(), "Go RE2 syntax, e.g. (?i)pong")
			}
		}
		for j, path := range e.JSON {
			if !jsonPathRE.MatchString(path) {
				v.add(fmt.Sprintf("%s.expect.json[%d]", at, j), fmt.Sprintf("%q is not a field path", path), `dot-separated field names, e.g. "status" or "items.0.name"`)
			}
		}
		if len(e.JSON) > 0 && q.Kind != ProbeJSON && q.Kind != ProbeToolCall {
			v.add(at+".expect.json", fmt.Sprintf("a %s probe's answer is text, not JSON", q.Kind), "use it with kind json or tool_call")
		}
		if e.Tool != "" && q.Kind != ProbeToolCall {
			v.add(at+".expect.tool", fmt.Sprintf("a %s probe calls no tool", q.Kind), "use it with kind tool_call")
		} else if q.Kind == ProbeToolCall && !probeToolRE.MatchString(e.Tool) {
			v.add(at+".expect.tool", fmt.Sprintf("%q is not a function name", e.Tool), "letters, digits, '_' and '-', at most 64, e.g. get_weather")
		}
	}
	if pr.Disabled || pr.BudgetPerHour < 1 {
		return
	}
	for i := range p.Backends {
		b := &p.Backends[i]
		if n := p.ProbeRequests(b); n > pr.BudgetPerHour {
			v.add("probes.budget_per_hour", fmt.Sprintf("one probe round of backend %q sends %d requests, more than the budget of %d", b.Name, n, pr.BudgetPerHour),
				fmt.Sprintf("raise it to at least %d, or send fewer prompts", n))
			break
		}
	}
}

// ProbePromptsFor returns the prompts a backend can be sent: those whose
// kind its capabilities support. A backend that does not serve the chat
// API gets none, since every probe is a chat completion.
func (p *Policy) ProbePromptsFor(b *Backend) []ProbePrompt {
	c := b.Capabilities
	if len(c.APIs) > 0 && !slices.Contains(c.APIs, "chat") {
		return nil
	}
	var out []ProbePrompt
	for _, q := range p.Probes.Prompts {
		ok := true
		switch q.Kind {
		case ProbeToolCall:
			ok = c.Tools
		case ProbeJSON:
			ok = c.JSONMode
		case ProbeImage:
			ok = c.Vision
		case ProbeLongContext:
			ok = p.ProbeContextTokens(b, q) > 0
		}
		if ok {
			out = append(out, q)
		}
	}
	return out
}

// ProbeContextTokens is the filler length of a long_context prompt sent to
// b: the prompt's context_tokens, capped so that the filler, the question
// and the answer fit the backend's context window. 0 means the backend's
// window is too small to probe with a long context.
func (p *Policy) ProbeContextTokens(b *Backend, q ProbePrompt) int {
	room := b.Capabilities.ContextWindow - p.Probes.MaxTokens - ProbeContextMargin
	return max(0, min(q.ContextTokens, room))
}

// ProbeChecksAuth reports whether b gets the check that a request without
// credentials is refused: only a backend with credentials has any to omit.
func (p *Policy) ProbeChecksAuth(b *Backend) bool {
	return p.Probes.CheckAuth != nil && *p.Probes.CheckAuth && b.Credentials != nil && len(p.ProbePromptsFor(b)) > 0
}

// ProbeChecksErrors reports whether b gets the malformed-request check.
func (p *Policy) ProbeChecksErrors(b *Backend) bool {
	c := b.Capabilities
	chat := len(c.APIs) == 0 || slices.Contains(c.APIs, "chat")
	return p.Probes.CheckErrors != nil && *p.Probes.CheckErrors && chat
}

// ProbeRequests is how many requests one probe round sends to b: every
// applicable prompt, plus the auth and error checks that apply.
func (p *Policy) ProbeRequests(b *Backend) int {
	if p.Probes.Disabled {
		return 0
	}
	n := len(p.ProbePromptsFor(b))
	if p.ProbeChecksAuth(b) {
		n++
	}
	if p.ProbeChecksErrors(b) {
		n++
	}
	return n
}
