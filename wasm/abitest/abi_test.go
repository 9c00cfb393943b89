package abitest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/detourhq/detour/route"
	"github.com/detourhq/detour/wasm/plugin"
	"github.com/detourhq/detour/wasm/wasmtest"
)

// Actions of proxy_on_request_* (types.Action).
const (
	actionContinue = 0
	actionPause    = 1
)

// The table the router role is configured with: "auto" picks the
// cheaper backend that fits, falling back to the other.
var table = route.Table{
	Backends: []route.Backend{
		{Name: "fast", Model: "fast-8k", InputPrice: 0.1, OutputPrice: 0.4,
			Caps: route.Capabilities{ContextWindow: 8192, Streaming: true, APIs: route.APIsOf(route.KindChat, route.KindCompletion)}},
		{Name: "long", Model: "long-context-200k", InputPrice: 1, OutputPrice: 4,
			Caps: route.Capabilities{ContextWindow: 200000, Streaming: true, APIs: route.APIsOf(route.KindChat)}},
	},
	Aliases:       []route.Alias{{Name: "auto", Backends: []string{"fast", "long"}}},
	OutputReserve: 256,
}

func config(t testing.TB, c plugin.Config) []byte {
	t.Helper()
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func routerConfig(t testing.TB) []byte {
	return config(t, plugin.Config{Role: plugin.RoleRouter, Table: &table, Attempts: 3, MaxBodyBytes: 1 << 20})
}

// The module is compiled once per test binary; each test gets its own
// instance (its own Go runtime and heap). The runtime lives as long as
// the process.
var shared struct {
	once     sync.Once
	r        wazero.Runtime
	compiled wazero.CompiledModule
	took     time.Duration
	err      error
	n        int
}

func compiled(t testing.TB) (wazero.Runtime, wazero.CompiledModule) {
	t.Helper()
	path := wasmtest.Module(t)
	shared.once.Do(func() {
		ctx := context.Background()
		bin, err := os.ReadFile(path)
		if err != nil {
			shared.err = err
			return
		}
		r := wazero.NewRuntime(ctx)
		wasi_snapshot_preview1.MustInstantiate(ctx, r)
		if shared.err = instantiateEnv(ctx, r); shared.err != nil {
			return
		}
		start := time.Now()
		shared.compiled, shared.err = r.CompileModule(ctx, bin)
		shared.took = time.Since(start)
		shared.r = r
		t.Logf("compiled %s (%d bytes) in %v", path, len(bin), shared.took)
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.r, shared.compiled
}

// guest is one instance of detour.wasm with its host.
type guest struct {
	t      testing.TB
	h      *host
	ctx    context.Context
	mod    api.Module
	fns    map[string]api.Function
	output bytes.Buffer // the guest's stdout and stderr (a Go panic lands here)
	took   time.Duration
	spent  map[string]time.Duration // time in each export, host calls included
}

// start instantiates the module and brings up one plugin (root context
// 1) with cfg, as Envoy does for a filter configuration.
func start(t testing.TB, cfg []byte) *guest {
	t.Helper()
	r, cm := compiled(t)
	g := &guest{t: t, h: newHost(cfg), fns: map[string]api.Function{}, spent: map[string]time.Duration{}}
	g.ctx = withHost(context.Background(), g.h)
	shared.n++
	// A Go c-shared module is a reactor: _initialize starts the runtime
	// and runs init (which registers the plugin); _start would run main
	// and exit. Real clocks: the plugin times responses.
	mc := wazero.NewModuleConfig().
		WithName(fmt.Sprintf("detour-%d", shared.n)).
		WithStartFunctions("_initialize").
		WithSysWalltime().WithSysNanotime().
		WithStdout(&g.output).WithStderr(&g.output)
	begin := time.Now()
	mod, err := r.InstantiateModule(g.ctx, cm, mc)
	g.took = time.Since(begin)
	if err != nil {
		t.Fatalf("instantiate: %v\n%s", err, g.output.String())
	}
	t.Cleanup(func() { mod.Close(context.Background()) })
	g.mod = mod
	g.h.alloc = mod.ExportedFunction("proxy_on_memory_allocate")
	g.call("proxy_on_context_create", 1, 0)
	if st := g.call("proxy_on_vm_start", 1, 0); st != 1 {
		t.Fatalf("proxy_on_vm_start = %d; logs %q", st, g.h.logs)
	}
	if st := g.call("proxy_on_configure", 1, uint64(len(cfg))); st != 1 {
		t.Fatalf("proxy_on_configure = %d; logs %q", st, g.h.logs)
	}
	return g
}

// call calls an export of the guest; a trap or exit fails the test.
func (g *guest) call(name string, args ...uint64) uint32 {
	g.t.Helper()
	f := g.fns[name]
	if f == nil {
		if f = g.mod.ExportedFunction(name); f == nil {
			g.t.Fatalf("the module does not export %s", name)
		}
		g.fns[name] = f
	}
	begin := time.Now()
	res, err := f.Call(g.ctx, args...)
	g.spent[name] += time.Since(begin)
	if err != nil {
		g.t.Fatalf("%s%v: %v\nguest output: %s\nlogs: %q", name, args, err, g.output.String(), g.h.logs)
	}
	if len(res) == 0 {
		return 0
	}
	return api.DecodeU32(res[0])
}

func (g *guest) memPages() uint32 { return g.mod.Memory().Size() / 65536 }

// request runs a stream's request half on a new context id under root
// context 1: the headers, then the whole body at once (Envoy's buffer
// filter delivers it so). It returns both actions.
func (g *guest) request(id uint32, headers [][2]string, body []byte) (onHeaders, onBody uint32) {
	g.t.Helper()
	g.h.newStream()
	g.h.reqHeaders = slices.Clone(headers)
	g.call("proxy_on_context_create", uint64(id), 1)
	onHeaders = g.call("proxy_on_request_headers", uint64(id), uint64(len(headers)), 0)
	g.h.reqBody = slices.Clone(body)
	onBody = g.call("proxy_on_request_body", uint64(id), uint64(len(body)), 1)
	return onHeaders, onBody
}

// finish runs the response half and tears the stream down.
func (g *guest) finish(id uint32, headers [][2]string, body []byte) {
	g.t.Helper()
	g.h.respHeaders = headers
	g.call("proxy_on_response_headers", uint64(id), uint64(len(headers)), 0)
	g.h.respBody = body
	g.call("proxy_on_response_body", uint64(id), uint64(len(body)), 1)
	g.call("proxy_on_done", uint64(id))
	g.call("proxy_on_log", uint64(id))
	g.call("proxy_on_delete", uint64(id))
}

func chatHeaders(n int) [][2]string {
	return [][2]string{{":method", "POST"}, {":path", "/v1/chat/completions"},
		{"content-type", "application/json"}, {"content-length", fmt.Sprint(n)}}
}

func chatBody(model, text string) []byte {
	return []byte(`{"model":"` + model + `","messages":[{"role":"user","content":"` + text + `"}],"max_tokens":64}`)
}

func header(h [][2]string, k string) (string, bool) {
	for _, kv := range h {
		if kv[0] == k {
			return kv[1], true
		}
	}
	return "", false
}

// TestImportsAndExports checks the module's ABI surface: everything it
// imports is WASI or a host function of this package's table (with the
// same signature), and it exports what Envoy calls.
func TestImportsAndExports(t *testing.T) {
	_, cm := compiled(t)
	for _, f := range cm.ImportedFunctions() {
		mod, name, _ := f.Import()
		switch mod {
		case wasi_snapshot_preview1.ModuleName:
		case "env":
			hf, ok := hostFuncs[name]
			if !ok {
				t.Errorf("env.%s is imported but not implemented by the test host", name)
			} else if !slices.Equal(f.ParamTypes(), hf.params) || !slices.Equal(f.ResultTypes(), []api.ValueType{i32}) {
				t.Errorf("env.%s: module declares %v -> %v, host has %v -> i32", name, f.ParamTypes(), f.ResultTypes(), hf.params)
			}
		default:
			t.Errorf("unexpected import %s.%s", mod, name)
		}
	}
	exports := cm.ExportedFunctions()
	for _, name := range []string{
		"_initialize", "proxy_abi_version_0_2_1", "proxy_on_memory_allocate",
		"proxy_on_context_create", "proxy_on_vm_start", "proxy_on_configure",
		"proxy_on_request_headers", "proxy_on_request_body",
		"proxy_on_response_headers", "proxy_on_response_body",
		"proxy_on_done", "proxy_on_log", "proxy_on_delete",
		"proxy_on_tick", "proxy_on_http_call_response",
	} {
		if _, ok := exports[name]; !ok {
			t.Errorf("export %s missing", name)
		}
	}
	if _, ok := exports["_start"]; ok {
		t.Error("the module exports _start: not built as a reactor (-buildmode=c-shared)")
	}
}

func TestRouterDecides(t *testing.T) {
	g := start(t, routerConfig(t))
	t.Logf("instantiate (Go runtime init + plugin start) took %v, memory %d pages", g.took, g.memPages())

	body := chatBody("auto", "hello")
	onHeaders, onBody := g.request(2, chatHeaders(len(body)), body)
	if onHeaders != actionContinue {
		t.Fatalf("proxy_on_request_headers = %d, want Continue", onHeaders)
	}
	if _, ok := header(g.h.reqHeaders, "content-length"); ok {
		t.Error("content-length kept: the body changes length")
	}
	if onBody != actionContinue {
		t.Fatalf("proxy_on_request_body = %d, want Continue; local response %+v; logs %q", onBody, g.h.local, g.h.logs)
	}
	if g.h.local != nil {
		t.Fatalf("unexpected local response %d %s", g.h.local.status, g.h.local.body)
	}

	// The body was replaced with the model of the chosen backend, padded
	// for the widest model of the attempts: byte for byte what the route
	// package produces natively.
	var req route.Request
	if err := route.ParseRequest(route.KindChat, g.h.reqBody, &req); err != nil {
		t.Fatalf("rewritten body %q: %v", g.h.reqBody, err)
	}
	if req.Model != "fast-8k" {
		t.Errorf("rewritten model %q, want fast-8k; body %s", req.Model, g.h.reqBody)
	}
	var orig route.Request
	if err := route.ParseRequest(route.KindChat, body, &orig); err != nil {
		t.Fatal(err)
	}
	want := route.RewriteModelPadded(nil, body, &orig, "fast-8k", route.ModelWidth("long-context-200k"))
	if !bytes.Equal(g.h.reqBody, want) {
		t.Errorf("body\n got %q\nwant %q", g.h.reqBody, want)
	}

	// The decision as filter state.
	for k, v := range map[string]string{
		plugin.StateBackend:         "fast",
		plugin.StateModel:           "fast-8k",
		plugin.StateRoute:           "auto",
		plugin.StateTryPrefix + "1": "fast",
		plugin.StateTryPrefix + "2": "long",
		plugin.StateTryPrefix + "3": "long", // past the order: its last backend
	} {
		if got, ok := g.h.props[k]; got != v {
			t.Errorf("property %s = %q (set %v), want %q", k, got, ok, v)
		}
	}
	if !slices.Equal(g.h.foreign, []string{"clear_route_cache"}) {
		t.Errorf("foreign calls %q, want one clear_route_cache", g.h.foreign)
	}
	if m := g.h.metric("detour_wasm_decisions_total.backend.fast"); m == nil || m.kind != 0 || m.value != 1 {
		t.Errorf("decision counter %+v; metrics %q", m, g.h.metricNames())
	}

	// The response is measured for the backend that answered.
	g.finish(2, [][2]string{{":status", "200"}, {"content-type", "application/json"}, {plugin.HeaderBackend, "fast"}},
		[]byte(`{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7}}`))
	if m := g.h.metric("detour_output_tokens_total.backend.fast"); m == nil || m.value != 7 {
		t.Errorf("output tokens %+v; metrics %q", m, g.h.metricNames())
	}
	if m := g.h.metric("detour_responses_total.backend.fast.class.2xx"); m == nil || m.value != 1 {
		t.Errorf("responses %+v; metrics %q", m, g.h.metricNames())
	}
}

func TestRouterUnknownModel(t *testing.T) {
	g := start(t, routerConfig(t))
	body := chatBody("no-such-model", "hello")
	if _, onBody := g.request(2, chatHeaders(len(body)), body); onBody != actionPause {
		t.Fatalf("proxy_on_request_body = %d, want Pause after a local reply", onBody)
	}
	lr := g.h.local
	if lr == nil {
		t.Fatalf("no local response; logs %q", g.h.logs)
	}
	if lr.status != 404 || lr.details != "detour_unknown_model" {
		t.Errorf("local response %d %q, want 404 detour_unknown_model", lr.status, lr.details)
	}
	e, err := route.DecodeAPIError(lr.body)
	if err != nil {
		t.Fatal(err)
	}
	if e.Code == nil || *e.Code != "model_not_found" || e.Param == nil || *e.Param != "model" {
		t.Errorf("error %+v", e)
	}
	if v, _ := header(lr.headers, plugin.HeaderError); v != "unknown_model" {
		t.Errorf("local response headers %q", lr.headers)
	}
	if v, _ := header(lr.headers, "content-type"); v != "application/json" {
		t.Errorf("local response headers %q", lr.headers)
	}
	if len(g.h.props) != 0 || len(g.h.foreign) != 0 {
		t.Errorf("a rejected request set state %v or called %q", g.h.props, g.h.foreign)
	}
	if m := g.h.metric("detour_wasm_rejections_total.kind.unknown_model"); m == nil || m.value != 1 {
		t.Errorf("rejection counter %+v; metrics %q", m, g.h.metricNames())
	}
}

func TestUpstreamRewritesInPlace(t *testing.T) {
	g := start(t, config(t, plugin.Config{Role: plugin.RoleUpstream, Backend: "long", Model: "long-context-200k"}))
	// As the router leaves it: another backend's model, padded for this one.
	orig := chatBody("auto", "hello")
	var req route.Request
	if err := route.ParseRequest(route.KindChat, orig, &req); err != nil {
		t.Fatal(err)
	}
	body := route.RewriteModelPadded(nil, orig, &req, "fast-8k", route.ModelWidth("long-context-200k"))
	headers := append(chatHeaders(len(body)), [2]string{plugin.HeaderBackend, "fast"}, [2]string{plugin.HeaderModel, "fast-8k"})

	onHeaders, onBody := g.request(2, headers, body)
	if onHeaders != actionContinue || onBody != actionContinue {
		t.Fatalf("actions %d, %d, want Continue; logs %q", onHeaders, onBody, g.h.logs)
	}
	for _, k := range []string{plugin.HeaderBackend, plugin.HeaderModel} {
		if _, ok := header(g.h.reqHeaders, k); ok {
			t.Errorf("%s not stripped", k)
		}
	}
	if len(g.h.reqBody) != len(body) {
		t.Fatalf("body length %d, want %d (content-length has gone upstream)", len(g.h.reqBody), len(body))
	}
	var got route.Request
	if err := route.ParseRequest(route.KindChat, g.h.reqBody, &got); err != nil {
		t.Fatalf("rewritten body %q: %v", g.h.reqBody, err)
	}
	if got.Model != "long-context-200k" {
		t.Errorf("model %q, want long-context-200k; body %q", got.Model, g.h.reqBody)
	}
	if m := g.h.metric("detour_upstream_attempts_total.backend.long.outcome.rewritten"); m == nil || m.value != 1 {
		t.Errorf("attempt counter %+v; metrics %q", m, g.h.metricNames())
	}
}

// TestManyRequests drives the router role through many whole streams and
// checks that the module's linear memory stays bounded: a leak of pinned
// allocations or contexts would grow it with every request.
func TestManyRequests(t *testing.T) {
	n := 20000
	if testing.Short() {
		n = 5000 // still above the plugin's 4096-stream GC check
	}
	g := start(t, routerConfig(t))
	pagesStart := g.memPages()

	respHeaders := [][2]string{{":status", "200"}, {"content-type", "application/json"}, {plugin.HeaderBackend, "fast"}}
	respBody := []byte(`{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}`)
	// Bodies of varying sizes, one in ten for an unknown model.
	var bodies [][]byte
	for i := range 10 {
		model := "auto"
		if i == 9 {
			model = "nope"
		}
		bodies = append(bodies, chatBody(model, strings.Repeat("lorem ipsum ", 1+i*40)))
	}

	// A rejected request gets detour's own reply: no backend answered.
	rejectHeaders := [][2]string{{":status", "404"}, {"content-type", "application/json"}}

	var pagesWarm uint32
	const warm = 500
	logsBefore := g.h.nLogs
	var byBody [10]time.Duration // time per body, after warm-up
	begin := time.Now()
	var warmAt time.Time
	for i := range n {
		if i == warm {
			pagesWarm, warmAt = g.memPages(), time.Now()
			clear(g.spent)
			g.h.allocs, g.h.allocSpent = 0, 0
		}
		id := uint32(2 + i)
		body := bodies[i%len(bodies)]
		t0 := time.Now()
		_, onBody := g.request(id, chatHeaders(len(body)), body)
		if i%len(bodies) == 9 {
			if onBody != actionPause || g.h.local == nil || g.h.local.status != 404 {
				t.Fatalf("request %d: action %d, local %+v", i, onBody, g.h.local)
			}
			g.finish(id, rejectHeaders, g.h.local.body)
		} else {
			if onBody != actionContinue || g.h.props[plugin.StateBackend] != "fast" {
				t.Fatalf("request %d: action %d, state %v; logs %q", i, onBody, g.h.props, g.h.logs)
			}
			g.finish(id, respHeaders, respBody)
		}
		if i >= warm {
			byBody[i%len(bodies)] += time.Since(t0)
		}
	}
	total := time.Since(begin)
	perReq := time.Since(warmAt) / time.Duration(n-warm)
	pagesEnd := g.memPages()

	rejected := n / len(bodies)
	if m := g.h.metric("detour_wasm_decisions_total.backend.fast"); m == nil || m.value != int64(n-rejected) {
		t.Errorf("decisions %+v, want %d", m, n-rejected)
	}
	if m := g.h.metric("detour_output_tokens_total.backend.fast"); m == nil || m.value != int64(2*(n-rejected)) {
		t.Errorf("output tokens %+v, want %d", m, 2*(n-rejected))
	}
	if m := g.h.metric("detour_responses_total.backend.none.class.4xx"); m == nil || m.value != int64(rejected) {
		t.Errorf("rejected responses %+v, want %d", m, rejected)
	}
	if logged := g.h.nLogs - logsBefore; logged != 0 {
		t.Errorf("%d log lines, e.g. %q", logged, g.h.logs)
	}

	t.Logf("%d requests in %v: %v per request (headers, body, response, done, delete) after %d warm-up",
		n, total, perReq, warm)
	per := func(i int) time.Duration { return byBody[i] / time.Duration((n-warm)/len(bodies)) }
	t.Logf("per request by body: %d B %v, %d B %v, %d B (unknown model, 404) %v",
		len(bodies[0]), per(0), len(bodies[8]), per(8), len(bodies[9]), per(9))
	var split []string
	for _, name := range slices.Sorted(maps.Keys(g.spent)) {
		split = append(split, fmt.Sprintf("%s %v", strings.TrimPrefix(name, "proxy_on_"), g.spent[name]/time.Duration(n-warm)))
	}
	t.Logf("per request by callback: %s", strings.Join(split, ", "))
	// Part of it is the guest's allocator, which the host calls back
	// (re-entering the Go runtime) for every value it returns.
	if g.h.allocs > 0 {
		t.Logf("proxy_on_memory_allocate: %.1f calls per request, %v each",
			float64(g.h.allocs)/float64(n-warm), g.h.allocSpent/time.Duration(g.h.allocs))
	}
	// The floor under those figures: one call of an export that does
	// nothing (proxy_on_log), entering and leaving the Go runtime.
	const calls = 10000
	t0 := time.Now()
	for range calls {
		g.call("proxy_on_log", 1)
	}
	t.Logf("an empty export call takes %v", time.Since(t0)/calls)
	t.Logf("linear memory: %d pages (%.1f MiB) after start, %d after warm-up, %d after %d requests",
		pagesStart, mib(pagesStart), pagesWarm, pagesEnd, n)
	const bound = 64 << 20 / 65536 // pages
	if grown := pagesEnd - pagesStart; grown > bound {
		t.Errorf("memory grew by %d pages (%.1f MiB) over %d requests, bound %d pages", grown, mib(grown), n, bound)
	}
}

func mib(pages uint32) float64 { return float64(pages) * 65536 / (1 << 20) }
