package plugin

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/detourhq/detour/route"
)

// These tests run the plugin natively against the SDK's host emulator:
// package proxywasm forwards to the SDK outside wasip1.

var table = route.Table{
	Backends: []route.Backend{
		{Name: "fast", Model: "fast-8k", Caps: route.Capabilities{ContextWindow: 8192, Streaming: true, APIs: route.APIsOf(route.KindChat, route.KindCompletion, route.KindEmbedding)}, InputPrice: 0.1, OutputPrice: 0.4},
		{Name: "long", Model: "long-context-200k", Caps: route.Capabilities{ContextWindow: 200000, Streaming: true, APIs: route.APIsOf(route.KindChat)}, InputPrice: 1, OutputPrice: 4},
	},
	Aliases:       []route.Alias{{Name: "auto", Backends: []string{"fast", "long"}}, {Name: "legacy", Backends: []string{"fast"}}},
	OutputReserve: 256,
}

func routerConfig(mut func(*Config)) []byte {
	c := Config{Role: RoleRouter, Table: &table, Attempts: 4, MaxBodyBytes: 1 << 20, ExtProcTargets: []string{"legacy"}}
	if mut != nil {
		mut(&c)
	}
	b, _ := json.Marshal(c)
	return b
}

// start runs a plugin with cfg in a fresh host emulator.
func start(t *testing.T, cfg []byte, props map[string]string) (proxytest.HostEmulator, *VM) {
	t.Helper()
	vm := NewVM(func() int64 { return 1e9 })
	host, reset := startIn(t, vm, cfg, props)
	t.Cleanup(reset)
	return host, vm
}

// startIn runs a plugin with cfg in vm, in a fresh host emulator; the
// caller resets it before the next (the emulator is one at a time).
func startIn(t *testing.T, vm *VM, cfg []byte, props map[string]string) (proxytest.HostEmulator, func()) {
	t.Helper()
	opt := proxytest.NewEmulatorOption().WithVMContext(vm).WithPluginConfiguration(cfg)
	for k, v := range props {
		opt = opt.WithProperty(strings.Split(k, "."), []byte(v))
	}
	host, reset := proxytest.NewHostEmulator(opt)
	host.RegisterForeignFunction("clear_route_cache", func([]byte) []byte { return []byte{0} })
	if st := host.StartPlugin(); st != types.OnPluginStartStatusOK {
		reset()
		t.Fatalf("plugin start: %v; logs %q", st, host.GetCriticalLogs())
	}
	return host, reset
}

func reqHeaders(method, path string) [][2]string {
	return [][2]string{{":method", method}, {":path", path}, {"content-type", "application/json"}, {"content-length", "123"}}
}

func header(h [][2]string, k string) (string, bool) {
	for _, kv := range h {
		if kv[0] == k {
			return kv[1], true
		}
	}
	return "", false
}

func TestRouterDecides(t *testing.T) {
	host, _ := start(t, routerConfig(nil), nil)
	id := host.InitializeHttpContext()
	if a := host.CallOnRequestHeaders(id, reqHeaders("POST", "/v1/chat/completions"), false); a != types.ActionContinue {
		t.Fatalf("headers: %v (the buffer filter after the plugin holds them)", a)
	}
	if _, ok := header(host.GetCurrentRequestHeaders(id), "content-length"); ok {
		t.Error("content-length kept: the buffer filter must set it for the rewritten body")
	}
	body := `{"model":"auto","messages":[{"role":"user","content":"hello"}]}`
	if a := host.CallOnRequestBody(id, []byte(body[:20]), false); a != types.ActionPause {
		t.Fatalf("partial body: %v, want pause (buffer)", a)
	}
	if a := host.CallOnRequestBody(id, []byte(body[20:]), true); a != types.ActionContinue {
		t.Fatalf("body: %v: %+v", a, host.GetSentLocalResponse(id))
	}
	out := host.GetCurrentRequestBody(id)
	var req route.Request
	if err := route.ParseRequest(route.KindChat, out, &req); err != nil || req.Model != "fast-8k" {
		t.Fatalf("body %s: model %q, %v", out, req.Model, err)
	}
	// Padded for the widest model of the order (long-context-200k).
	if want := len(body) - len(`"auto"`) + route.ModelWidth("long-context-200k"); len(out) != want {
		t.Errorf("body is %d bytes, want %d (padding): %s", len(out), want, out)
	}
	for k, want := range map[string]string{
		"wasm." + StateBackend: "fast", "wasm." + StateModel: "fast-8k", "wasm." + StateRoute: "auto",
		"wasm." + StateTryPrefix + "1": "fast", "wasm." + StateTryPrefix + "2": "long",
		"wasm." + StateTryPrefix + "3": "long", "wasm." + StateTryPrefix + "4": "long",
	} {
		// The emulator keys properties by their NUL-joined path.
		if got, err := host.GetProperty([]string{strings.TrimPrefix(k, "wasm.")}); err != nil || string(got) != want {
			t.Errorf("filter state %s = %q (%v), want %q", k, got, err, want)
		}
	}
	if _, err := host.GetProperty([]string{StateStream}); err == nil {
		t.Error("a non-streaming request is marked as a stream")
	}
	if n, _ := host.GetCounterMetric(statDecisions + ".backend.fast"); n != 1 {
		t.Errorf("decisions counted %d", n)
	}
}

func TestRouterMarksStreams(t *testing.T) {
	host, _ := start(t, routerConfig(nil), nil)
	id := host.InitializeHttpContext()
	host.CallOnRequestHeaders(id, reqHeaders("POST", "/v1/chat/completions"), false)
	host.CallOnRequestBody(id, []byte(`{"model":"auto","stream":true,"messages":[{"role":"user","content":"hi"}]}`), true)
	if v, err := host.GetProperty([]string{StateStream}); err != nil || string(v) != "1" {
		t.Errorf("stream mark %q %v", v, err)
	}
}

func TestRouterRejects(t *testing.T) {
	for _, tt := range []struct {
		name, method, path, body string
		headersEOS               bool
		status                   uint32
		code                     string
	}{
		{"malformed JSON", "POST", "/v1/chat/completions", `{"model":`, false, 400, "invalid_request_body"},
		{"unknown model", "POST", "/v1/chat/completions", `{"model":"gpt-9","messages":[{"role":"user","content":"hi"}]}`, false, 404, "model_not_found"},
		{"too long for every backend", "POST", "/v1/chat/completions", `{"model":"auto","max_tokens":500000,"messages":[{"role":"user","content":"hi"}]}`, false, 400, "context_length_exceeded"},
		{"no body", "POST", "/v1/chat/completions", "", true, 400, "invalid_request_body"},
		{"unknown endpoint", "POST", "/v1/images", "", false, 404, "unknown_url"},
		{"too large", "POST", "/v1/chat/completions", `{"model":"auto","messages":[{"role":"user","content":"` + strings.Repeat("a", 2<<20) + `"}]}`, false, 413, "request_too_large"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			host, _ := start(t, routerConfig(nil), nil)
			id := host.InitializeHttpContext()
			a := host.CallOnRequestHeaders(id, reqHeaders(tt.method, tt.path), tt.headersEOS)
			if a == types.ActionContinue && !tt.headersEOS {
				a = host.CallOnRequestBody(id, []byte(tt.body), true)
			}
			if a != types.ActionPause {
				t.Errorf("action %v, want pause after a local reply", a)
			}
			r := host.GetSentLocalResponse(id)
			if r == nil || r.StatusCode != tt.status {
				t.Fatalf("local reply %+v, want status %d", r, tt.status)
			}
			e, err := route.DecodeAPIError(r.Data)
			if err != nil {
				t.Fatal(err)
			}
			if e.Code == nil || *e.Code != tt.code {
				t.Errorf("code %v, want %s (%s)", deref(e.Code), tt.code, e.Message)
			}
			if v, _ := header(r.Headers, HeaderError); v == "" {
				t.Errorf("no %s header", HeaderError)
			}
		})
	}
}

func TestRouterModelsList(t *testing.T) {
	host, _ := start(t, routerConfig(nil), nil)
	id := host.InitializeHttpContext()
	host.CallOnRequestHeaders(id, reqHeaders("GET", "/v1/models"), true)
	r := host.GetSentLocalResponse(id)
	if r == nil || r.StatusCode != 200 || !strings.Contains(string(r.Data), `"id":"auto"`) {
		t.Fatalf("%+v", r)
	}
}

// A target left to the ext_proc filter passes untouched and undecided.
func TestRouterLeavesExtProcTargets(t *testing.T) {
	host, _ := start(t, routerConfig(nil), nil)
	id := host.InitializeHttpContext()
	host.CallOnRequestHeaders(id, reqHeaders("POST", "/v1/chat/completions"), false)
	body := `{"model":"legacy","messages":[{"role":"user","content":"hi"}]}`
	if a := host.CallOnRequestBody(id, []byte(body), true); a != types.ActionContinue {
		t.Fatal(a)
	}
	if got := string(host.GetCurrentRequestBody(id)); got != body {
		t.Errorf("body changed: %s", got)
	}
	if _, err := host.GetProperty([]string{StateBackend}); err == nil {
		t.Error("decided a request left to ext_proc")
	}
}

func TestRouterPanicIsRecovered(t *testing.T) {
	for _, failOpen := range []bool{false, true} {
		t.Run(map[bool]string{false: "fail closed", true: "fail open"}[failOpen], func(t *testing.T) { testPanic(t, failOpen) })
	}
}

func testPanic(t *testing.T, failOpen bool) {
	{
		host, vm := start(t, routerConfig(func(c *Config) { c.FailOpen = failOpen }), nil)
		vm.panicIn = "request body"
		id := host.InitializeHttpContext()
		host.CallOnRequestHeaders(id, reqHeaders("POST", "/v1/chat/completions"), false)
		a := host.CallOnRequestBody(id, []byte(`{"model":"auto","messages":[]}`), true)
		if n, _ := host.GetCounterMetric(statPanics); n != 1 {
			t.Errorf("panics counted %d", n)
		}
		r := host.GetSentLocalResponse(id)
		switch {
		case failOpen && (a != types.ActionContinue || r != nil):
			t.Errorf("fail open: action %v, reply %+v; want the request to go on", a, r)
		case !failOpen && (r == nil || r.StatusCode != 500):
			t.Errorf("fail closed: reply %+v, want 500", r)
		}
		// The next request is served normally.
		vm.panicIn = ""
		id = host.InitializeHttpContext()
		host.CallOnRequestHeaders(id, reqHeaders("POST", "/v1/chat/completions"), false)
		if a := host.CallOnRequestBody(id, []byte(`{"model":"auto","messages":[{"role":"user","content":"hi"}]}`), true); a != types.ActionContinue {
			t.Errorf("after a panic: %v", a)
		}
	}
}

func TestUpstreamRewritesInPlace(t *testing.T) {
	var req route.Request
	orig := []byte(`{"model":"auto","messages":[{"role":"user","content":"hi"}]}`)
	if err := route.ParseRequest(route.KindChat, orig, &req); err != nil {
		t.Fatal(err)
	}
	padded := route.RewriteModelPadded(nil, orig, &req, "fast-8k", route.ModelWidth("long-context-200k"))
	for _, tt := range []struct {
		name    string
		cfg     Config
		props   map[string]string
		model   string // in the body sent upstream
		outcome string
	}{
		{"same model", Config{Role: RoleUpstream, Backend: "fast", Model: "fast-8k"}, nil, "fast-8k", outcomeUnchanged},
		{"another model", Config{Role: RoleUpstream, Backend: "long", Model: "long-context-200k"}, nil, "long-context-200k", outcomeRewritten},
		{"cluster from Envoy", Config{Role: RoleUpstream, Models: map[string]string{"long": "long-context-200k"}}, map[string]string{"xds.cluster_name": "long"}, "long-context-200k", outcomeRewritten},
		{"wider than the padding", Config{Role: RoleUpstream, Backend: "x", Model: strings.Repeat("m", 40)}, nil, "fast-8k", outcomeNoRoom},
	} {
		t.Run(tt.name, func(t *testing.T) {
			raw, _ := json.Marshal(tt.cfg)
			host, _ := start(t, raw, tt.props)
			id := host.InitializeHttpContext()
			h := [][2]string{{":path", "/v1/chat/completions"}, {HeaderBackend, "fast"}, {HeaderModel, "fast-8k"}, {"x-other", "1"}}
			if a := host.CallOnRequestHeaders(id, h, false); a != types.ActionContinue {
				t.Fatalf("headers: %v", a)
			}
			got := host.GetCurrentRequestHeaders(id)
			for _, k := range []string{HeaderBackend, HeaderModel} {
				if _, ok := header(got, k); ok {
					t.Errorf("%s would reach the provider", k)
				}
			}
			if a := host.CallOnRequestBody(id, padded, true); a != types.ActionContinue {
				t.Fatalf("body: %v", a)
			}
			out := host.GetCurrentRequestBody(id)
			if len(out) != len(padded) {
				t.Fatalf("length changed %d → %d: content-length has gone upstream", len(padded), len(out))
			}
			var r route.Request
			if err := route.ParseRequest(route.KindChat, out, &r); err != nil || r.Model != tt.model {
				t.Errorf("upstream body %s: model %q %v, want %q", out, r.Model, err, tt.model)
			}
			backend := tt.cfg.Backend
			if backend == "" {
				backend = tt.props["xds.cluster_name"]
			}
			if n, _ := host.GetCounterMetric(statAttempts + ".backend." + backend + ".outcome." + tt.outcome); n != 1 {
				t.Errorf("attempt not counted as %s", tt.outcome)
			}
		})
	}
}

func TestMeasure(t *testing.T) {
	host, vm := start(t, []byte(`{"role":"measure"}`), nil)
	var now int64 = 1e9
	vm.clock = func() int64 { now += 1e6; return now } // 1 ms per reading: every time recorded is > 0
	id := host.InitializeHttpContext()
	host.CallOnRequestHeaders(id, reqHeaders("POST", "/v1/chat/completions"), false)
	host.CallOnResponseHeaders(id, [][2]string{{":status", "200"}, {"content-type", "text/event-stream"}, {HeaderBackend, "fast"}}, false)
	host.CallOnResponseBody(id, []byte("data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n"), false)
	host.CallOnResponseBody(id, []byte("data: {\"usage\":{\"completion_tokens\":12}}\n\ndata: [DONE]\n\n"), true)
	host.CompleteHttpContext(id)
	for name, want := range map[string]uint64{
		statTokens + ".backend.fast":              12,
		statResponses + ".backend.fast.class.2xx": 1,
	} {
		if n, err := host.GetCounterMetric(name); err != nil || n != want {
			t.Errorf("%s = %d (%v), want %d", name, n, err, want)
		}
	}
	for _, h := range []string{statTTFT, statDuration, statRate} {
		if v, err := host.GetHistogramMetric(h + ".backend.fast"); err != nil || v == 0 {
			t.Errorf("%s not recorded: %d, %v", h, v, err)
		}
	}
	// An answer from a later attempt counts its tokens, but its times
	// include the failed attempts before it: not recorded against fast-b.
	id = host.InitializeHttpContext()
	host.CallOnRequestHeaders(id, reqHeaders("POST", "/v1/chat/completions"), false)
	host.CallOnResponseHeaders(id, [][2]string{{":status", "200"}, {"content-type", "text/event-stream"}, {HeaderBackend, "fast-b"}, {AttemptCountHeader, "2"}}, false)
	host.CallOnResponseBody(id, []byte("data: {\"usage\":{\"completion_tokens\":5}}\n\ndata: [DONE]\n\n"), true)
	host.CompleteHttpContext(id)
	if n, _ := host.GetCounterMetric(statTokens + ".backend.fast-b"); n != 5 {
		t.Errorf("retried answer's tokens counted %d, want 5", n)
	}
	for _, h := range []string{statTTFT, statDuration, statRate} {
		if v, _ := host.GetHistogramMetric(h + ".backend.fast-b"); v != 0 {
			t.Errorf("%s recorded %d for an answer after a failover", h, v)
		}
	}
	// A reply no backend sent is counted, not timed.
	id = host.InitializeHttpContext()
	host.CallOnRequestHeaders(id, reqHeaders("POST", "/v1/chat/completions"), false)
	host.CallOnResponseHeaders(id, [][2]string{{":status", "503"}}, true)
	host.CompleteHttpContext(id)
	if n, _ := host.GetCounterMetric(statResponses + ".backend.none.class.5xx"); n != 1 {
		t.Errorf("unanswered 503 counted %d", n)
	}
}

func TestParseConfig(t *testing.T) {
	for _, bad := range []string{``, `{`, `{"role":"x"}`, `{"role":"router"}`, `{"role":"upstream"}`} {
		if _, err := ParseConfig([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	vm := NewVM(func() int64 { return 0 })
	host, reset := proxytest.NewHostEmulator(proxytest.NewEmulatorOption().WithVMContext(vm).WithPluginConfiguration([]byte(`{"role":"nope"}`)))
	defer reset()
	if st := host.StartPlugin(); st == types.OnPluginStartStatusOK {
		t.Error("started on a bad configuration")
	}
}

func deref(p *string) string {
	if p == nil {
		return "<null>"
	}
	return *p
}
