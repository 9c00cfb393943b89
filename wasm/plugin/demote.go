package plugin

import (
	"github.com/detourhq/detour/demote"
	"github.com/detourhq/detour/route"
	"github.com/detourhq/detour/wasm/proxywasm"
)

// Local demotion in wasm routing (package demote), as the ext_proc
// service does it: the upstream role observes every attempt, the router
// role overlays the demotions in force on each decision. Both roles run
// in each worker's VM and share its tracker (the VM runs one callback at
// a time: no lock), so each worker demotes on the attempts it saw itself.
// The tracker exists only once a router role started in the VM: with
// ext_proc routing, the processor demotes.

// startDemotion gives the VM its tracker (router role): the router's view
// says which backends are already below HEALTHY.
func (p *Plugin) startDemotion() {
	if p.vm.demote == nil {
		p.vm.demote = demote.New()
	}
	p.vm.demote.Viewed = p.viewRanksLow
}

// viewRanksLow reports whether the router's view ranks backend below
// HEALTHY.
func (p *Plugin) viewRanksLow(backend string) bool {
	h := p.health
	if h == nil || h.view == nil {
		return false
	}
	i, ok := p.router.BackendIndex(backend)
	return ok && h.view.Low(i)
}

// observeAttempt records the upstream attempt to backend whose request
// headers are at hand (upstream role, before it strips detour's headers).
// A first attempt goes to the routed backend: the ext_proc router names
// it in x-detour-backend (which the strip removes, and Envoy keeps one
// attempt's header changes for the next), and in wasm routing Envoy's
// x-envoy-attempt-count says 1 (the routes ask for it on requests too). A
// retry's backend is found by its request id.
func (p *Plugin) observeAttempt(backend string) {
	t := p.vm.demote
	if t == nil || backend == "" {
		return
	}
	routed, _ := proxywasm.GetHttpRequestHeader(HeaderBackend)
	if routed == "" {
		if n, _ := proxywasm.GetHttpRequestHeader(AttemptCountHeader); n == "1" {
			routed = backend
		}
	}
	id, _ := proxywasm.GetHttpRequestHeader("x-request-id")
	ev := t.Observe(p.vm.now(), id, routed, backend)
	switch ev.Kind {
	case demote.Demoted:
		p.vm.metrics.demoted(ev.Backend)
		proxywasm.LogWarn("detour: backend " + ev.Backend + " demoted locally: " + itoa(ev.Moved) + " of " + itoa(ev.Routed) +
			" attempts retried elsewhere within " + demote.Window.String() + "; until the controller's view or " + demote.Hold.String())
	case demote.Answers:
		proxywasm.LogInfo("detour: locally demoted backend " + ev.Backend + " answers again")
	}
}

// healthFor is the health to decide a request with: the controller's
// view (health.forRequest), with this VM's demotions on top; nil when
// every backend is healthy.
func (p *Plugin) healthFor() *route.Health {
	base := p.health.forRequest()
	t := p.vm.demote
	if t == nil || t.Active() == 0 {
		return base
	}
	var rank []uint8
	if base != nil {
		rank = base.Rank
	}
	out, trial := t.Overlay(p.vm.now(), p.router, rank, p.demoteRank)
	if out == nil {
		return base
	}
	p.demoteRank = out
	h := &p.demoteHealth
	h.Rank, h.Trial = out, trial || base != nil && base.Trial
	return h
}
