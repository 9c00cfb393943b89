package probe

import (
	"cmp"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/sim"
)

var capable = policy.Capabilities{Tools: true, JSONMode: true, Vision: true}

// TestHealthyBackendPasses: every kind against a well-behaved simulator
// passes, timed.
func TestHealthyBackendPasses(t *testing.T) {
	s := startSim(t, sim.Config{Structured: true})
	p := newPolicy(t, func(p *policy.Policy) {
		p.Probes.Prompts = []policy.ProbePrompt{
			{Kind: policy.ProbeShort, Expect: policy.ProbeExpect{Regex: `^tok0( tok\d+)+$`}},
			{Kind: policy.ProbeJSON, Expect: policy.ProbeExpect{JSON: []string{"text"}}},
			{Kind: policy.ProbeToolCall, Expect: policy.ProbeExpect{JSON: []string{"query"}}},
			{Kind: policy.ProbeImage},
			{Kind: policy.ProbeLongContext, ContextTokens: 2000},
		}
	}, backend("a", s.Addr(), capable))
	rs := newProber(t, p).Probe(t.Context(), "a")
	want := []string{"short", "json", "tool_call", "image", "long_context", KindError}
	if got := names(rs); !slices.Equal(got, want) {
		t.Fatalf("probes = %v, want %v", got, want)
	}
	for _, r := range rs {
		if !r.OK || r.Slow || r.Reason != "" {
			t.Errorf("%v", r)
		}
		if r.Backend != "a" || r.Endpoint != s.Addr() || r.At.IsZero() || r.Total <= 0 {
			t.Errorf("%s: bookkeeping %+v", r.Probe, r)
		}
		if r.Kind == KindError {
			if r.Status != http.StatusBadRequest {
				t.Errorf("error check status %d", r.Status)
			}
			continue
		}
		if r.Status != 200 || r.TTFT <= 0 || r.TTFT > r.Total || r.TokensPerSecond <= 0 {
			t.Errorf("%s: not measured: %v", r.Probe, r)
		}
	}
}

// TestFaults: a scripted fault fails the probe, or only makes it slow,
// with a reason that says which.
func TestFaults(t *testing.T) {
	tests := []struct {
		name    string
		fault   sim.Fault
		tokens  int
		ok      bool
		slow    bool
		reason  string
		maxTime time.Duration
	}{
		{name: "server error", fault: sim.Fault{Status: 500}, reason: "status 500, want 200 (server_error: The server had an error"},
		{name: "overloaded", fault: sim.Fault{Status: 503}, reason: "status 503, want 200 (server_error: The engine is currently overloaded"},
		{name: "slow first token", fault: sim.Fault{TTFTMS: 120}, ok: true, slow: true, reason: "slow: time to first token "},
		{name: "slow generation", fault: sim.Fault{TokensPerSecond: 10}, tokens: 4, ok: true, slow: true, reason: "tokens/s under 20"},
		{name: "stall", fault: sim.Fault{TTFTMS: 5000}, reason: "timed out after 400ms: before the first token", maxTime: 2 * time.Second},
		{name: "slow headers", fault: sim.Fault{LatencyMS: 5000}, reason: "timed out after 400ms: no answer", maxTime: 2 * time.Second},
		{name: "cut off", fault: sim.Fault{DropAfterTokens: 3}, reason: "the answer broke off after 3 chunks with tokens: read stream: unexpected EOF"},
		{name: "reset", fault: sim.Fault{Reset: true}, reason: "send: Post"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startSim(t, sim.Config{DefaultTokens: cmp.Or(tt.tokens, 8)})
			s.SetFault(tt.fault)
			p := newPolicy(t, func(p *policy.Policy) {
				p.Probes.Prompts = []policy.ProbePrompt{{Kind: policy.ProbeShort}}
				p.Probes.CheckErrors = new(bool)
				p.Probes.Timeout = policy.Duration(400 * time.Millisecond)
				p.Health.TTFT = policy.Duration(100 * time.Millisecond)
				p.Retry.FirstTokenTimeout = policy.Duration(time.Second)
			}, backend("a", s.Addr(), policy.Capabilities{}))
			start := time.Now()
			rs := newProber(t, p).Probe(t.Context(), "a")
			if tt.maxTime > 0 && time.Since(start) > tt.maxTime {
				t.Errorf("the probe took %s", time.Since(start))
			}
			if len(rs) != 1 {
				t.Fatalf("results: %v", rs)
			}
			r := rs[0]
			if r.OK != tt.ok || r.Slow != tt.slow || !strings.Contains(r.Reason, tt.reason) {
				t.Errorf("got %v\nwant ok=%v slow=%v reason containing %q", r, tt.ok, tt.slow, tt.reason)
			}
		})
	}
}

// TestRuleMismatch: an answer that breaks its rule fails.
func TestRuleMismatch(t *testing.T) {
	structured := startSim(t, sim.Config{Structured: true})
	plain := startSim(t, sim.Config{})
	tests := []struct {
		name   string
		addr   string
		prompt policy.ProbePrompt
		reason string
	}{
		{"regex", plain.Addr(), policy.ProbePrompt{Kind: policy.ProbeShort, Expect: policy.ProbeExpect{Regex: "(?i)pong"}},
			`the answer (`},
		{"json field", structured.Addr(), policy.ProbePrompt{Kind: policy.ProbeJSON, Expect: policy.ProbeExpect{JSON: []string{"status"}}},
			`the JSON answer has no field "status"`},
		{"json nested field", structured.Addr(), policy.ProbePrompt{Kind: policy.ProbeJSON, Expect: policy.ProbeExpect{JSON: []string{"text.inner"}}},
			`the JSON answer has no field "text.inner"`},
		{"not json", plain.Addr(), policy.ProbePrompt{Kind: policy.ProbeJSON},
			"the answer is not a JSON object"},
		{"no tool call", plain.Addr(), policy.ProbePrompt{Kind: policy.ProbeToolCall},
			"answered without calling the tool get_weather"},
		{"tool argument", structured.Addr(), policy.ProbePrompt{Kind: policy.ProbeToolCall, Expect: policy.ProbeExpect{JSON: []string{"city"}}},
			`the JSON answer has no field "city"`},
		{"status", plain.Addr(), policy.ProbePrompt{Kind: policy.ProbeShort, Expect: policy.ProbeExpect{Status: 201}},
			"status 200, want 201"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPolicy(t, func(p *policy.Policy) {
				p.Probes.Prompts = []policy.ProbePrompt{tt.prompt}
				p.Probes.CheckErrors = new(bool)
			}, backend("a", tt.addr, capable))
			rs := newProber(t, p).Probe(t.Context(), "a")
			if len(rs) != 1 || rs[0].OK || !strings.Contains(rs[0].Reason, tt.reason) {
				t.Fatalf("got %v, want a failure containing %q", rs, tt.reason)
			}
			if strings.Contains(rs[0].Reason, p.Probes.Prompts[0].Prompt) {
				t.Errorf("the reason holds the prompt: %q", rs[0].Reason)
			}
		})
	}
}

// TestAuthCheck: a backend with credentials must refuse a request without
// them; the key comes from the environment or a file at probe time.
func TestAuthCheck(t *testing.T) {
	const key = "sk-probe-secret-1234"
	locked := startSim(t, sim.Config{APIKey: key})
	open := startSim(t, sim.Config{})
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key")
	if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PROBE_TEST_KEY", key)
	tests := []struct {
		name  string
		addr  string
		creds policy.Credentials
		auth  string // reason of the auth check; "" = passes
		other string // reason of the other probes; "" = pass
	}{
		{"key from env, refused without", locked.Addr(), policy.Credentials{APIKeyEnv: "PROBE_TEST_KEY"}, "", ""},
		{"key from file, refused without", locked.Addr(), policy.Credentials{APIKeyFile: keyFile}, "", ""},
		{"backend accepts anything", open.Addr(), policy.Credentials{APIKeyEnv: "PROBE_TEST_KEY"},
			"backend accepted a request without credentials (status 200)", ""},
		{"key unset", locked.Addr(), policy.Credentials{APIKeyEnv: "PROBE_TEST_UNSET"},
			"", "credentials: environment variable PROBE_TEST_UNSET is unset or empty"},
		{"key file missing", locked.Addr(), policy.Credentials{APIKeyFile: filepath.Join(dir, "nope")},
			"", "credentials: read api_key_file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := backend("a", tt.addr, policy.Capabilities{})
			b.Credentials = &tt.creds
			p := newPolicy(t, nil, b)
			rs := newProber(t, p).Probe(t.Context(), "a")
			if got := names(rs); !slices.Equal(got, []string{"short", KindAuth, KindError}) {
				t.Fatalf("probes = %v", got)
			}
			for _, r := range rs {
				want := tt.other
				if r.Kind == KindAuth {
					want = tt.auth
				}
				if r.OK != (want == "") || !strings.Contains(r.Reason, want) {
					t.Errorf("%v\nwant reason %q", r, want)
				}
				if strings.Contains(r.Reason, key) {
					t.Errorf("the key is in the reason: %q", r.Reason)
				}
			}
			if a := byProbe(rs)[KindAuth]; tt.auth == "" && a.Status != http.StatusUnauthorized {
				t.Errorf("auth check status %d", a.Status)
			}
		})
	}
}

// TestNoAuthCheckWithoutCredentials: nothing to leave out, nothing to check.
func TestNoAuthCheckWithoutCredentials(t *testing.T) {
	s := startSim(t, sim.Config{})
	p := newPolicy(t, nil, backend("a", s.Addr(), policy.Capabilities{}))
	if got := names(newProber(t, p).Probe(t.Context(), "a")); !slices.Equal(got, []string{"short", KindError}) {
		t.Errorf("probes = %v", got)
	}
}

// TestCapabilityGating: a backend is sent only the prompts it can serve.
func TestCapabilityGating(t *testing.T) {
	s := startSim(t, sim.Config{Structured: true})
	tests := []struct {
		caps policy.Capabilities
		want []string
	}{
		{policy.Capabilities{}, []string{"short", KindError}},
		{policy.Capabilities{Tools: true}, []string{"short", "tool_call", KindError}},
		{policy.Capabilities{JSONMode: true}, []string{"short", "json", KindError}},
		{policy.Capabilities{Tools: true, JSONMode: true, Vision: true}, []string{"short", "json", "tool_call", KindError}},
		{policy.Capabilities{APIs: []string{"embeddings"}}, nil},
	}
	for _, tt := range tests {
		p := newPolicy(t, nil, backend("a", s.Addr(), tt.caps))
		pr := newProber(t, p)
		rs := pr.Probe(t.Context(), "a")
		if got := names(rs); !slices.Equal(got, tt.want) {
			t.Errorf("%+v: probes = %v, want %v", tt.caps, got, tt.want)
		}
		if pr.Requests("a") != len(tt.want) {
			t.Errorf("%+v: Requests = %d, sent %d", tt.caps, pr.Requests("a"), len(rs))
		}
		for _, r := range rs {
			if !r.OK {
				t.Errorf("%v", r)
			}
		}
	}
	if got := names(newProber(t, newPolicy(t, nil, backend("a", s.Addr(), policy.Capabilities{}))).Probe(t.Context(), "nope")); got != nil {
		t.Errorf("unknown backend: %v", got)
	}
}

// TestNonStreamingBackend: a backend that cannot stream is probed without
// streaming; its rate is taken over the whole answer.
func TestNonStreamingBackend(t *testing.T) {
	s := startSim(t, sim.Config{Structured: true})
	no := false
	p := newPolicy(t, nil, backend("a", s.Addr(), policy.Capabilities{Streaming: &no, Tools: true, JSONMode: true}))
	for _, r := range newProber(t, p).Probe(t.Context(), "a") {
		if !r.OK || r.Status == 0 {
			t.Errorf("%v", r)
		}
		if r.Kind != KindError && (r.TTFT != 0 || r.TokensPerSecond <= 0) {
			t.Errorf("%s: ttft %s, rate %g", r.Probe, r.TTFT, r.TokensPerSecond)
		}
	}
}

// TestEndpointsRoundRobin: each round goes to the next endpoint.
func TestEndpointsRoundRobin(t *testing.T) {
	s1, s2 := startSim(t, sim.Config{}), startSim(t, sim.Config{})
	b := backend("a", s1.Addr(), policy.Capabilities{})
	b.Endpoints = append(b.Endpoints, policy.Endpoint{Address: s2.Addr()})
	pr := newProber(t, newPolicy(t, nil, b))
	var got []string
	for range 3 {
		got = append(got, pr.Probe(t.Context(), "a")[0].Endpoint)
	}
	if want := []string{s1.Addr(), s2.Addr(), s1.Addr()}; !slices.Equal(got, want) {
		t.Errorf("endpoints %v, want %v", got, want)
	}
}

// TestCancelledRound: a round cut short by its context leaves out what it
// could not finish.
func TestCancelledRound(t *testing.T) {
	s := startSim(t, sim.Config{})
	s.SetFault(sim.Fault{TTFTMS: 5000})
	p := newPolicy(t, nil, backend("a", s.Addr(), policy.Capabilities{}))
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if rs := newProber(t, p).Probe(ctx, "a"); len(rs) != 0 {
		t.Errorf("results of a cancelled round: %v", rs)
	}
}
