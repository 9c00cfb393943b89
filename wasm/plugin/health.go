package plugin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/route"
	"github.com/detourhq/detour/wasm/proxywasm"
)

// The router role follows the live-metrics controller's view, as the
// ext_proc service does (docs/decisions/0011-live-metrics-controller.md):
// the root context long-polls GET /v1/status?wait=<version> on the control
// plane through Envoy (proxy_http_call), turns each new view into a rank
// per backend index of its router once, and every decision then sorts by
// that rank (route.Router.DecideHealth), sends one request in
// 1/trial_share first to a degraded or recovering backend, and sheds by
// priority with 429 and Retry-After.
//
// Each worker's VM polls on its own: one outstanding call per worker,
// which the control plane holds until the view changes (or
// viewhttp.MaxWait, 25 s), so a change reaches every worker within a
// round trip and an idle control plane answers each worker about twice a
// minute. A tick (1 s) re-arms the poll when no call is outstanding: after
// a failure, a bad answer, or an unchanged view; a changed view re-arms it
// at once.
//
// The view's types, ranks and shedding rules come from package
// healthview (standard library only, no net/http: the transport is
// healthview/viewhttp, which the plugin does not link).

// HealthConfig says where the router role reads the controller's view.
type HealthConfig struct {
	// Cluster is the Envoy cluster of the control plane's HTTP server
	// (xds.WasmSourceCluster).
	Cluster string `json:"cluster"`
	// Authority is the :authority of the call (the server's host:port).
	Authority string `json:"authority"`
	// Path of the view; default /v1/status.
	Path string `json:"path,omitempty"`
	// TickMS is the tick that re-arms the poll; default 1000.
	TickMS uint32 `json:"tick_ms,omitempty"`
	// TimeoutMS bounds one call; default 30000, above the control plane's
	// long-poll bound (25 s), so a quiet view is not a failure.
	TimeoutMS uint32 `json:"timeout_ms,omitempty"`
}

// Defaults of HealthConfig.
const (
	defaultHealthPath    = "/v1/status"
	defaultHealthTickMS  = 1000
	defaultHealthTimeout = 30000
)

func (c *HealthConfig) check() error {
	if c == nil {
		return nil
	}
	if c.Cluster == "" || c.Authority == "" {
		return errors.New("cluster and authority are required")
	}
	if c.Path == "" {
		c.Path = defaultHealthPath
	}
	if c.Path[0] != '/' || bytes.ContainsAny([]byte(c.Path), "?#") {
		return fmt.Errorf("path %q: want an absolute path without a query", c.Path)
	}
	if c.TickMS == 0 {
		c.TickMS = defaultHealthTickMS
	}
	if c.TimeoutMS == 0 {
		c.TimeoutMS = defaultHealthTimeout
	}
	return nil
}

// healthView is a view turned into what the plugin's router needs, built
// once per version: nothing per request but a counter.
type healthView struct {
	version uint64
	healthview.Ranks
	// shed holds only the routes that shed something.
	shed map[string]*healthview.Route
}

// health is the router plugin's follower of the view.
type health struct {
	cfg     *HealthConfig
	view    *healthView // nil: none received yet (every backend healthy)
	pending bool        // a call is outstanding
	trials  uint64
	draws   map[string]uint64 // by route: shedding's draws (healthview.Draw)
	failing bool              // the last call failed (logged once per streak)
	// scratch is handed to each decision: the VM runs one callback at a
	// time and DecideHealth keeps no reference, so streams need no copy.
	scratch route.Health
}

// newHealthView builds the view for router.
func newHealthView(v *healthview.Snapshot, r *route.Router) *healthView {
	bs := r.Backends()
	h := &healthView{version: v.Version, Ranks: v.RanksFor(len(bs), func(i int) string { return bs[i].Name })}
	for name, rt := range v.Routes {
		if rt.Shed != "" {
			if h.shed == nil {
				h.shed = map[string]*healthview.Route{}
			}
			h.shed[name] = &rt
		}
	}
	return h
}

// forRequest is the health to decide this request with (nil: all
// healthy), as extproc's healthState.forRequest.
func (h *health) forRequest() *route.Health {
	if h == nil || h.view == nil || !h.view.Any {
		return nil
	}
	out := &h.scratch
	out.Rank = h.view.Rank
	out.Trial = false
	if h.view.Trial {
		h.trials++
		out.Trial = h.trials%h.view.TrialEvery == 0
	}
	return out
}

// shedding returns the target route's shedding, or nil when it sheds
// nothing (no map lookup at all while no route sheds).
func (h *health) shedding(target string) *healthview.Route {
	if h == nil || h.view == nil || h.view.shed == nil {
		return nil
	}
	return h.view.shed[target]
}

// OnTick re-arms the poll when no call is outstanding.
func (p *Plugin) OnTick() {
	defer p.guard("tick")
	if p.health != nil && !p.health.pending {
		p.poll()
	}
}

// poll asks the control plane for the view after the one the plugin has.
func (p *Plugin) poll() {
	h := p.health
	path := h.cfg.Path
	if h.view != nil {
		path += "?wait=" + strconv.FormatUint(h.view.version, 10)
	}
	headers := [][2]string{{":method", "GET"}, {":path", path}, {":authority", h.cfg.Authority}, {"accept", "application/json"}}
	if _, err := proxywasm.DispatchHttpCall(h.cfg.Cluster, headers, nil, nil, h.cfg.TimeoutMS, p.onView); err != nil {
		p.viewFailed("dispatch to cluster " + h.cfg.Cluster + ": " + err.Error())
		return
	}
	h.pending = true
}

// onView takes the control plane's answer.
func (p *Plugin) onView(numHeaders, bodySize, _ int) {
	defer p.guard("health view")
	h := p.health
	h.pending = false
	changed, err := p.takeView(numHeaders, bodySize)
	if err != nil {
		p.viewFailed(err.Error())
		return
	}
	if h.failing {
		h.failing = false
		proxywasm.LogInfo("detour: controller view reachable again")
	}
	if changed {
		p.poll() // the next change, at once; an unchanged view waits for the tick
	}
}

// takeView reads the call's answer and applies it when its version is not
// the one in use; any failure keeps the view in use.
func (p *Plugin) takeView(numHeaders, bodySize int) (changed bool, err error) {
	if numHeaders == 0 {
		return false, errors.New("call failed or timed out")
	}
	hs, err := proxywasm.GetHttpCallResponseHeaders()
	if err != nil {
		return false, fmt.Errorf("read headers: %w", err)
	}
	if st, _ := headerValue(hs, ":status"); st != "200" {
		return false, fmt.Errorf("answered status %s", st)
	}
	if bodySize <= 0 {
		return false, errors.New("empty answer")
	}
	body, err := proxywasm.GetHttpCallResponseBody(0, bodySize)
	if err != nil {
		return false, fmt.Errorf("read body: %w", err)
	}
	h := p.health
	// Most answers after the first are a long poll's end with the same
	// view: its version (the snapshot's first field) says so without
	// parsing the rest.
	if v, ok := peekVersion(body); ok && h.view != nil && v == h.view.version {
		return false, nil
	}
	var v healthview.Snapshot
	if err := json.Unmarshal(body, &v); err != nil {
		return false, fmt.Errorf("decode: %w", err)
	}
	if v.Version == 0 {
		return false, errors.New("decode: no version")
	}
	if h.view != nil && v.Version == h.view.version {
		return false, nil
	}
	// Any other version is news, even a smaller one: a restarted control
	// plane counts again from its clock.
	h.view = newHealthView(&v, p.router)
	p.vm.metrics.views.Increment(1)
	return true, nil
}

func (p *Plugin) viewFailed(why string) {
	p.vm.metrics.viewErrors.Increment(1)
	if !p.health.failing {
		p.health.failing = true
		proxywasm.LogWarn("detour: controller view: " + why + "; routing on with the last view")
	}
}

// peekVersion reads the top-level "version" of a view without parsing it:
// the publisher writes it first.
func peekVersion(b []byte) (uint64, bool) {
	i := bytes.IndexByte(b, '{')
	if i < 0 {
		return 0, false
	}
	b = bytes.TrimLeft(b[i+1:], " \t\r\n")
	const key = `"version"`
	if !bytes.HasPrefix(b, []byte(key)) {
		return 0, false
	}
	b = bytes.TrimLeft(b[len(key):], " \t\r\n")
	if len(b) == 0 || b[0] != ':' {
		return 0, false
	}
	b = bytes.TrimLeft(b[1:], " \t\r\n")
	n := 0
	for n < len(b) && b[n] >= '0' && b[n] <= '9' {
		n++
	}
	v, err := strconv.ParseUint(string(b[:n]), 10, 64)
	return v, err == nil
}

func headerValue(h [][2]string, k string) (string, bool) {
	for _, kv := range h {
		if kv[0] == k {
			return kv[1], true
		}
	}
	return "", false
}

// draw is the route's next shedding draw, from a sequence of its own
// (as extproc's healthState.draw).
func (h *health) draw(route string) float64 {
	if h.draws == nil {
		h.draws = map[string]uint64{}
	}
	h.draws[route]++
	return healthview.Draw(h.draws[route])
}
