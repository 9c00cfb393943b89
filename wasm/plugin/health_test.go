package plugin

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/route"
)

// Three backends for "auto", cheapest first: fast, mid, long.
var healthTable = route.Table{
	Backends: []route.Backend{
		{Name: "fast", Model: "fast-8k", Caps: route.Capabilities{ContextWindow: 8192, APIs: route.APIsOf(route.KindChat)}, InputPrice: 0.1, OutputPrice: 0.4},
		{Name: "mid", Model: "mid-32k", Caps: route.Capabilities{ContextWindow: 32768, APIs: route.APIsOf(route.KindChat)}, InputPrice: 0.5, OutputPrice: 2},
		{Name: "long", Model: "long-context-200k", Caps: route.Capabilities{ContextWindow: 200000, APIs: route.APIsOf(route.KindChat)}, InputPrice: 1, OutputPrice: 4},
	},
	Aliases:       []route.Alias{{Name: "auto", Backends: []string{"fast", "mid", "long"}}, {Name: "batch", Backends: []string{"fast", "mid"}}},
	OutputReserve: 256,
}

func healthConfig(mut func(*Config)) []byte {
	c := Config{Role: RoleRouter, Table: &healthTable, Attempts: 3, MaxBodyBytes: 1 << 20,
		Health:     &HealthConfig{Cluster: "detour_wasm_source", Authority: "127.0.0.1:9190"},
		Priorities: map[string]string{"batch": "sheddable"}}
	if mut != nil {
		mut(&c)
	}
	b, _ := json.Marshal(c)
	return b
}

// lastCall is the latest HTTP call the root context dispatched.
func lastCall(t *testing.T, host proxytest.HostEmulator) proxytest.HttpCalloutAttribute {
	t.Helper()
	calls := host.GetCalloutAttributesFromContext(proxytest.PluginContextID)
	if len(calls) == 0 {
		t.Fatal("no HTTP call dispatched")
	}
	return calls[len(calls)-1]
}

func numCalls(host proxytest.HostEmulator) int {
	return len(host.GetCalloutAttributesFromContext(proxytest.PluginContextID))
}

func viewJSONOf(t *testing.T, v *healthview.Snapshot) []byte {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var ok200 = [][2]string{{":status", "200"}, {"content-type", "application/json"}}

// serve ticks and answers the outstanding call with v.
func serve(t *testing.T, host proxytest.HostEmulator, v *healthview.Snapshot) {
	t.Helper()
	host.Tick()
	host.CallOnHttpCallResponse(lastCall(t, host).CalloutID, ok200, nil, viewJSONOf(t, v))
}

func states(version uint64, s map[string]string) *healthview.Snapshot {
	v := &healthview.Snapshot{Version: version, Backends: map[string]healthview.Backend{}, Routes: map[string]healthview.Route{}, TrialShare: 0.05}
	for b, st := range s {
		v.Backends[b] = healthview.Backend{State: st, Reason: "test", Transitions: []healthview.Transition{{From: "HEALTHY", To: st}}}
	}
	return v
}

// decide runs one request and returns its order of backends (attempts
// 1..3), or the local reply.
func decide(t *testing.T, host proxytest.HostEmulator, model string, headers ...[2]string) ([]string, *proxytest.LocalHttpResponse) {
	t.Helper()
	return decideN(t, host, model, 3, headers...)
}

// decideN is decide for attempts 1..n.
func decideN(t *testing.T, host proxytest.HostEmulator, model string, n int, headers ...[2]string) ([]string, *proxytest.LocalHttpResponse) {
	t.Helper()
	id := host.InitializeHttpContext()
	h := append(reqHeaders("POST", "/v1/chat/completions"), headers...)
	if a := host.CallOnRequestHeaders(id, h, false); a != types.ActionContinue {
		return nil, host.GetSentLocalResponse(id)
	}
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hi"}]}`, model)
	if a := host.CallOnRequestBody(id, []byte(body), true); a != types.ActionContinue {
		return nil, host.GetSentLocalResponse(id)
	}
	var order []string
	for i := 1; i <= n; i++ {
		v, err := host.GetProperty([]string{StateTryPrefix + itoa(i)})
		if err != nil {
			t.Fatalf("no %s%d: %v", StateTryPrefix, i, err)
		}
		order = append(order, string(v))
	}
	host.CompleteHttpContext(id)
	return order, nil
}

func TestHealthNoViewRoutesAsBefore(t *testing.T) {
	host, _ := start(t, healthConfig(nil), nil)
	if host.GetTickPeriod() != 1000 {
		t.Errorf("tick period %d, want 1000", host.GetTickPeriod())
	}
	if order, r := decide(t, host, "auto"); r != nil || strings.Join(order, ",") != "fast,mid,long" {
		t.Errorf("no view: order %v, reply %+v", order, r)
	}
}

// A router without a health source (static bootstrap, controller off)
// sets no tick and never calls.
func TestHealthOffWithoutSource(t *testing.T) {
	host, _ := start(t, routerConfig(nil), nil)
	if host.GetTickPeriod() != 0 {
		t.Errorf("tick set without a health source")
	}
	host.Tick()
	if numCalls(host) != 0 {
		t.Errorf("called without a health source")
	}
}

func TestHealthViewApplied(t *testing.T) {
	host, _ := start(t, healthConfig(nil), nil)
	host.Tick()
	c := lastCall(t, host)
	want := map[string]string{":method": "GET", ":path": "/v1/status", ":authority": "127.0.0.1:9190"}
	for k, v := range want {
		if got, _ := header(c.Headers, k); got != v {
			t.Errorf("call header %s = %q, want %q", k, got, v)
		}
	}
	if c.Upstream != "detour_wasm_source" {
		t.Errorf("call to %q", c.Upstream)
	}
	host.Tick() // one call at a time
	if numCalls(host) != 1 {
		t.Fatalf("%d calls with one outstanding", numCalls(host))
	}
	host.CallOnHttpCallResponse(c.CalloutID, ok200, nil, viewJSONOf(t, states(41, map[string]string{"fast": "OPEN", "mid": "DEGRADED", "long": "HEALTHY"})))
	// Taken, and the long poll re-armed at once for the next version.
	if n := numCalls(host); n != 2 {
		t.Fatalf("%d calls after a new view, want the next long poll", n)
	}
	if p, _ := header(lastCall(t, host).Headers, ":path"); p != "/v1/status?wait=41" {
		t.Errorf("next call %q", p)
	}
	if n, _ := host.GetCounterMetric(statViews); n != 1 {
		t.Errorf("views counted %d", n)
	}
	// OPEN last, DEGRADED after the healthy one: long, mid, fast (trials
	// aside: the first request is not one).
	if order, r := decide(t, host, "auto"); r != nil || strings.Join(order, ",") != "long,mid,fast" {
		t.Errorf("order %v, reply %+v; want long,mid,fast", order, r)
	}
	// Throttled ranks with DEGRADED; HALF_OPEN after DEGRADED.
	v := states(42, map[string]string{"fast": "HALF_OPEN", "mid": "HEALTHY", "long": "HEALTHY"})
	b := v.Backends["mid"]
	b.Throttled = true
	v.Backends["mid"] = b
	host.CallOnHttpCallResponse(lastCall(t, host).CalloutID, ok200, nil, viewJSONOf(t, v))
	if order, _ := decide(t, host, "auto"); strings.Join(order, ",") != "long,mid,fast" {
		t.Errorf("throttled mid, recovering fast: order %v, want long,mid,fast", order)
	}
	// A view with every backend healthy routes by the objective again.
	host.CallOnHttpCallResponse(lastCall(t, host).CalloutID, ok200, nil, viewJSONOf(t, states(43, map[string]string{"fast": "HEALTHY"})))
	if order, _ := decide(t, host, "auto"); strings.Join(order, ",") != "fast,mid,long" {
		t.Errorf("all healthy: order %v", order)
	}
}

// One request in round(1/trial_share) goes first to a DEGRADED backend.
func TestHealthTrialShare(t *testing.T) {
	host, _ := start(t, healthConfig(nil), nil)
	v := states(7, map[string]string{"fast": "DEGRADED"})
	v.TrialShare = 0.1
	serve(t, host, v)
	first := map[string]int{}
	for range 100 {
		order, r := decide(t, host, "auto")
		if r != nil {
			t.Fatalf("reply %+v", r)
		}
		first[order[0]]++
	}
	if first["fast"] != 10 || first["mid"] != 90 {
		t.Errorf("first choices %v, want fast 10 (trials), mid 90", first)
	}
}

func TestHealthSheds(t *testing.T) {
	host, _ := start(t, healthConfig(nil), nil)
	v := states(9, map[string]string{"fast": "OPEN", "mid": "OPEN", "long": "OPEN"})
	v.Routes["auto"] = healthview.Route{Shed: healthview.Standard, Reason: "every backend OPEN", RetryAfter: 7}
	v.Routes["batch"] = healthview.Route{Shed: healthview.Sheddable, Reason: "healthy share 0.25"}
	serve(t, host, v)
	check := func(name, model string, shed bool, retryAfter string, headers ...[2]string) {
		t.Run(name, func(t *testing.T) {
			order, r := decide(t, host, model, headers...)
			if !shed {
				if r != nil || len(order) == 0 {
					t.Fatalf("refused: %+v", r)
				}
				return
			}
			if r == nil || r.StatusCode != 429 {
				t.Fatalf("reply %+v, order %v; want 429", r, order)
			}
			if ra, _ := header(r.Headers, "retry-after"); ra != retryAfter {
				t.Errorf("retry-after %q, want %q", ra, retryAfter)
			}
			if k, _ := header(r.Headers, HeaderError); k != "shed" {
				t.Errorf("%s %q", HeaderError, k)
			}
			e, err := route.DecodeAPIError(r.Data)
			if err != nil {
				t.Fatal(err)
			}
			if e.Type != "rate_limit_error" || e.Code == nil || *e.Code != "capacity_shed" {
				t.Errorf("error %+v", e)
			}
		})
	}
	check("standard by default", "auto", true, "7")
	check("sheddable header", "auto", true, "7", [2]string{HeaderPriority, "sheddable"})
	check("critical header", "auto", false, "", [2]string{HeaderPriority, "critical"})
	// batch's default priority is sheddable (policy routes[].priority).
	check("route default sheddable", "batch", true, "1")
	check("standard on a route shedding sheddable", "batch", false, "", [2]string{HeaderPriority, "standard"})
	if n, _ := host.GetCounterMetric(statRejected + ".kind.shed"); n != 3 {
		t.Errorf("shed counted %d, want 3", n)
	}
	// An unknown priority is the client's error, as with ext_proc.
	if _, r := decide(t, host, "auto", [2]string{HeaderPriority, "urgent"}); r == nil || r.StatusCode != 400 {
		t.Errorf("unknown priority: %+v", r)
	}
}

// A fraction of the edge priority admitted: spread evenly, as in ext_proc.
func TestHealthShedsAFraction(t *testing.T) {
	host, _ := start(t, healthConfig(nil), nil)
	v := states(9, map[string]string{"fast": "HEALTHY"})
	v.Routes["auto"] = healthview.Route{Shed: healthview.Sheddable, Admit: 0.5, Reason: "backends turning requests away", RetryAfter: 2}
	serve(t, host, v)
	for _, tc := range []struct {
		priority string
		admitted int // of 40
	}{
		{"sheddable", 20},
		{"standard", 40},
	} {
		admitted := 0
		for range 40 {
			order, r := decide(t, host, "auto", [2]string{HeaderPriority, tc.priority})
			if r == nil && len(order) > 0 {
				admitted++
			} else if r == nil || r.StatusCode != 429 {
				t.Fatalf("reply %+v, order %v; want routed or 429", r, order)
			}
		}
		if d := admitted - tc.admitted; d < -1 || d > 1 {
			t.Errorf("%s: %d of 40 admitted, want %d ± 1", tc.priority, admitted, tc.admitted)
		}
	}
}

// A failed call, an error status or garbage keeps the last view; the tick
// re-arms the poll.
func TestHealthBadAnswersKeepView(t *testing.T) {
	host, _ := start(t, healthConfig(nil), nil)
	serve(t, host, states(5, map[string]string{"fast": "OPEN"}))
	for i, bad := range []struct {
		headers [][2]string
		body    string
	}{
		{nil, ""}, // failed or timed out: no headers
		{[][2]string{{":status", "503"}}, "upstream connect error"},
		{ok200, "<html>"},
		{ok200, `{"version":`},
		{ok200, `{}`},
		{ok200, `[1,2]`},
		{ok200, ""},
	} {
		calls := numCalls(host)
		host.CallOnHttpCallResponse(lastCall(t, host).CalloutID, bad.headers, nil, []byte(bad.body))
		if numCalls(host) != calls {
			t.Errorf("bad answer %d retried at once", i)
		}
		if order, _ := decide(t, host, "auto"); order[0] == "fast" {
			t.Errorf("bad answer %d dropped the view: order %v", i, order)
		}
		host.Tick()
		if numCalls(host) != calls+1 {
			t.Errorf("bad answer %d: the tick did not poll again", i)
		}
	}
	if n, _ := host.GetCounterMetric(statViewErrors); n != 7 {
		t.Errorf("view errors %d, want 7", n)
	}
	if n := len(host.GetWarnLogs()); n != 1 {
		t.Errorf("%d warnings, want one per streak: %q", n, host.GetWarnLogs())
	}
	// The same version again (a long poll's end): kept, not re-armed at once.
	calls := numCalls(host)
	host.CallOnHttpCallResponse(lastCall(t, host).CalloutID, ok200, nil, viewJSONOf(t, states(5, map[string]string{"fast": "OPEN"})))
	if numCalls(host) != calls {
		t.Error("an unchanged view re-armed the poll at once")
	}
	if n, _ := host.GetCounterMetric(statViews); n != 1 {
		t.Errorf("views %d, want 1", n)
	}
	// A smaller version is news (a restarted control plane).
	host.Tick()
	host.CallOnHttpCallResponse(lastCall(t, host).CalloutID, ok200, nil, viewJSONOf(t, states(3, map[string]string{"fast": "HEALTHY"})))
	if order, _ := decide(t, host, "auto"); order[0] != "fast" {
		t.Errorf("restarted control plane's view not taken: %v", order)
	}
}

func TestPeekVersion(t *testing.T) {
	for in, want := range map[string]uint64{
		"{\n  \"version\": 1764118800123,\n  \"at\": 1}": 1764118800123,
		`{"version":5}`: 5,
	} {
		if v, ok := peekVersion([]byte(in)); !ok || v != want {
			t.Errorf("peekVersion(%q) = %d, %v", in, v, ok)
		}
	}
	for _, in := range []string{``, `{}`, `{"at":1,"version":5}`, `{"version":"5"}`, `{"version":}`} {
		if _, ok := peekVersion([]byte(in)); ok {
			t.Errorf("peekVersion(%q) accepted", in)
		}
	}
}

// The version the plugin peeks at is the one the publisher writes first.
func TestPeekVersionOfASnapshot(t *testing.T) {
	b, _ := json.Marshal(healthview.Snapshot{Version: 3, TrialShare: 0.5,
		Backends: map[string]healthview.Backend{"a": {State: healthview.Open, Throttled: true}},
		Routes:   map[string]healthview.Route{"r": {Shed: healthview.Standard, Reason: "x", RetryAfter: 4}}})
	if got, ok := peekVersion(b); !ok || got != 3 {
		t.Errorf("peekVersion of a snapshot: %d %v", got, ok)
	}
}
