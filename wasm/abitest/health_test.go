package abitest

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/route"
	"github.com/detourhq/detour/wasm/plugin"
)

// The router role follows the controller's view through the real ABI:
// proxy_set_tick_period_milliseconds, proxy_on_tick, proxy_http_call,
// proxy_on_http_call_response and the call's headers (map 6) and body
// (buffer 4).

func healthRouterConfig(t testing.TB) []byte {
	return config(t, plugin.Config{Role: plugin.RoleRouter, Table: &table, Attempts: 3, MaxBodyBytes: 1 << 20,
		Health: &plugin.HealthConfig{Cluster: "detour_wasm_source", Authority: "127.0.0.1:9190"}})
}

// respond answers the guest's HTTP call token on root context 1.
func (g *guest) respond(token uint32, headers [][2]string, body []byte) {
	g.t.Helper()
	g.h.callHeaders, g.h.callBody = headers, body
	g.call("proxy_on_http_call_response", 1, uint64(token), uint64(len(headers)), uint64(len(body)), 0)
	g.h.callHeaders, g.h.callBody = nil, nil
}

func viewBody(t testing.TB, s *healthview.Snapshot) []byte {
	t.Helper()
	b, err := json.MarshalIndent(s, "", "  ") // as the publisher writes it
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (g *guest) lastCall() httpCall {
	g.t.Helper()
	if len(g.h.calls) == 0 {
		g.t.Fatalf("no HTTP call dispatched; logs %q", g.h.logs)
	}
	return g.h.calls[len(g.h.calls)-1]
}

func TestRouterFollowsView(t *testing.T) {
	g := start(t, healthRouterConfig(t))
	if g.h.tick != 1000 {
		t.Fatalf("tick period %d ms, want 1000", g.h.tick)
	}
	if len(g.h.calls) != 0 {
		t.Fatalf("called before the first tick: %+v", g.h.calls)
	}
	g.call("proxy_on_tick", 1)
	c := g.lastCall()
	if p, _ := headerOf(c.headers, ":path"); c.cluster != "detour_wasm_source" || p != "/v1/status" || c.timeout != 30000 {
		t.Fatalf("call %+v", c)
	}
	g.call("proxy_on_tick", 1) // outstanding: no second call
	if len(g.h.calls) != 1 {
		t.Fatalf("%d calls with one outstanding", len(g.h.calls))
	}

	view := &healthview.Snapshot{Version: 7, Backends: map[string]healthview.Backend{
		"fast": {State: healthview.Open}, "long": {State: healthview.Healthy},
	}, Routes: map[string]healthview.Route{}, TrialShare: 0.05}
	g.respond(c.token, [][2]string{{":status", "200"}, {"content-type", "application/json"}}, viewBody(t, view))
	// A new view re-arms the long poll at once, waiting for the next one.
	if p, _ := headerOf(g.lastCall().headers, ":path"); len(g.h.calls) != 2 || p != "/v1/status?wait=7" {
		t.Fatalf("after a view: calls %+v", g.h.calls)
	}
	if m := g.h.metric("detour_wasm_health_views_total"); m == nil || m.value != 1 {
		t.Errorf("views counted %+v", m)
	}

	body := chatBody("auto", "hello")
	if _, onBody := g.request(2, chatHeaders(len(body)), body); onBody != actionContinue {
		t.Fatalf("action %d; local %+v", onBody, g.h.local)
	}
	if g.h.props[plugin.StateBackend] != "long" || g.h.props[plugin.StateTryPrefix+"2"] != "fast" {
		t.Errorf("with fast OPEN: state %v, want long first and fast last", g.h.props)
	}
	g.finish(2, [][2]string{{":status", "200"}}, nil)

	// Shedding: the route refuses standard requests.
	view = &healthview.Snapshot{Version: 8, Backends: map[string]healthview.Backend{
		"fast": {State: healthview.Open}, "long": {State: healthview.Open},
	}, Routes: map[string]healthview.Route{"auto": {Shed: healthview.Standard, Reason: "every backend OPEN", RetryAfter: 3}}}
	g.respond(g.lastCall().token, [][2]string{{":status", "200"}}, viewBody(t, view))
	if _, onBody := g.request(3, chatHeaders(len(body)), body); onBody != actionPause || g.h.local == nil {
		t.Fatalf("shed: action %d, local %+v", onBody, g.h.local)
	}
	lr := g.h.local
	if ra, _ := headerOf(lr.headers, "retry-after"); lr.status != 429 || lr.details != "detour_shed" || ra != "3" {
		t.Errorf("shed reply %d %q headers %q", lr.status, lr.details, lr.headers)
	}
	if e, err := route.DecodeAPIError(lr.body); err != nil || e.Code == nil || *e.Code != "capacity_shed" {
		t.Errorf("shed body %s: %v", lr.body, err)
	}
	g.finish(3, [][2]string{{":status", "429"}}, lr.body)
	// A critical request still goes.
	h := append(chatHeaders(len(body)), [2]string{plugin.HeaderPriority, "critical"})
	if _, onBody := g.request(4, h, body); onBody != actionContinue || g.h.local != nil {
		t.Fatalf("critical: action %d, local %+v", onBody, g.h.local)
	}
	g.finish(4, [][2]string{{":status", "200"}}, nil)

	// A failed call (no headers) keeps the view and waits for the tick.
	calls := len(g.h.calls)
	g.respond(g.lastCall().token, nil, nil)
	if len(g.h.calls) != calls {
		t.Errorf("a failed call was retried at once")
	}
	g.call("proxy_on_tick", 1)
	if len(g.h.calls) != calls+1 {
		t.Errorf("the tick did not re-arm the poll")
	}
	if m := g.h.metric("detour_wasm_health_view_errors_total"); m == nil || m.value != 1 {
		t.Errorf("view errors %+v", m)
	}
	if _, onBody := g.request(5, chatHeaders(len(body)), body); onBody != actionPause || g.h.local == nil || g.h.local.status != 429 {
		t.Errorf("after a failed call the last view must hold: action %d, local %+v", onBody, g.h.local)
	}
}

// TestRouterWithViewCost times decisions with a view that reorders every
// request (fast DEGRADED, trials on) against none, in one instance.
func TestRouterWithViewCost(t *testing.T) {
	g := start(t, healthRouterConfig(t))
	body := chatBody("auto", strings.Repeat("lorem ipsum ", 40))
	resp := [][2]string{{":status", "200"}, {"content-type", "application/json"}, {plugin.HeaderBackend, "fast"}}
	respBody := []byte(`{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}`)
	id := uint32(2)
	run := func(n int) (time.Duration, map[string]int) {
		seen := map[string]int{}
		begin := time.Now()
		for range n {
			id++
			if _, onBody := g.request(id, chatHeaders(len(body)), body); onBody != actionContinue {
				t.Fatalf("action %d, local %+v", onBody, g.h.local)
			}
			seen[g.h.props[plugin.StateBackend]]++
			g.finish(id, resp, respBody)
		}
		return time.Since(begin) / time.Duration(n), seen
	}
	const n = 4000
	run(500) // warm-up
	without, _ := run(n)
	g.call("proxy_on_tick", 1)
	view := &healthview.Snapshot{Version: 9, Backends: map[string]healthview.Backend{
		"fast": {State: healthview.Degraded, Signals: healthview.Signals{Requests: 100, Errors: 30}}, "long": {State: healthview.Healthy},
	}, Routes: map[string]healthview.Route{"auto": {HealthyShare: 0.75}}, TrialShare: 0.05}
	vb := viewBody(t, view)
	begin := time.Now()
	g.respond(g.lastCall().token, [][2]string{{":status", "200"}}, vb)
	took := time.Since(begin)
	with, seen := run(n)
	if seen["fast"] != n/20 || seen["long"] != n-n/20 {
		t.Errorf("with fast DEGRADED: %v, want 1 in 20 (trials) on fast", seen)
	}
	// The same view again (a long poll that ended unchanged): not parsed.
	begin = time.Now()
	g.respond(g.lastCall().token, [][2]string{{":status", "200"}}, vb)
	same := time.Since(begin)
	t.Logf("per request: %v without a view, %v with fast DEGRADED; taking a %d-byte view %v, an unchanged one %v",
		without, with, len(vb), took, same)
}
