package plugin

import (
	"fmt"
	"runtime"
	"strconv"
	"time"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/detourhq/detour/demote"
	"github.com/detourhq/detour/route"
	"github.com/detourhq/detour/wasm/proxywasm"
)

// VM is the plugin's VM context: one per Envoy worker thread.
type VM struct {
	types.DefaultVMContext
	// clock is time in nanoseconds; tests replace it.
	clock func() int64
	// now is the time local demotion keeps: time.Now, whose monotonic
	// reading a step of the wall clock does not move (clock's does).
	now func() time.Time
	// metrics are shared by every plugin instance of the VM: Envoy
	// returns the same stat for the same name, and defining one per
	// instance would repeat the host calls.
	metrics *metricSet
	// panicIn makes the named callback panic: tests of the recovery.
	panicIn string
	// demote is this worker's local demotion (demote.go); nil until a
	// router role starts.
	demote *demote.Tracker
}

// NewVM returns the VM context to register with proxywasm.SetVMContext.
func NewVM(clock func() int64) *VM { return &VM{clock: clock, now: time.Now} }

// NewPluginContext is called once per filter configuration.
func (v *VM) NewPluginContext(uint32) types.PluginContext {
	if v.metrics == nil {
		v.metrics = newMetricSet()
	}
	return &Plugin{vm: v}
}

// Plugin is one filter configuration (one role, one backend for upstream).
type Plugin struct {
	types.DefaultPluginContext
	vm     *VM
	cfg    *Config
	router *route.Router
	models []byte // GET /v1/models
	// extproc says which targets the ext_proc filter decides.
	extproc map[string]bool
	// strip is removed from every upstream request: detour's headers.
	strip []string
	// health follows the controller's view (router role with a
	// configured source; nil otherwise).
	health *health
	done   uint64 // streams finished, for the GC check
	// demoteRank and demoteHealth hold a decision's ranks while local
	// demotions apply (router role; one callback at a time).
	demoteRank   []uint8
	demoteHealth route.Health
}

// OnPluginStart reads and checks the configuration. A bad configuration
// fails the plugin, which Envoy reports and (by the filter's
// failure_policy) handles; detour's control plane never sends one.
func (p *Plugin) OnPluginStart(int) types.OnPluginStartStatus {
	raw, err := proxywasm.GetPluginConfiguration()
	if err != nil {
		proxywasm.LogCritical("detour: read plugin configuration: " + err.Error())
		return types.OnPluginStartStatusFailed
	}
	cfg, err := ParseConfig(raw)
	if err != nil {
		proxywasm.LogCritical("detour: " + err.Error())
		return types.OnPluginStartStatusFailed
	}
	p.cfg = cfg
	if cfg.Role == RoleRouter {
		r, err := route.New(*cfg.Table)
		if err != nil {
			proxywasm.LogCritical("detour: plugin configuration: " + err.Error())
			return types.OnPluginStartStatusFailed
		}
		p.router = r
		p.models = route.ModelsList(r.Known())
		p.extproc = map[string]bool{}
		for _, t := range cfg.ExtProcTargets {
			p.extproc[t] = true
		}
		for _, t := range cfg.WasmTargets {
			p.extproc[t] = false
		}
		if cfg.Health != nil {
			p.health = &health{cfg: cfg.Health}
			if err := proxywasm.SetTickPeriodMilliSeconds(cfg.Health.TickMS); err != nil {
				proxywasm.LogCritical("detour: set tick period: " + err.Error())
				return types.OnPluginStartStatusFailed
			}
		}
		p.startDemotion()
	}
	p.strip = []string{HeaderBackend, HeaderModel, HeaderRoute, HeaderStream, HeaderPriority}
	proxywasm.LogInfo(fmt.Sprintf("detour: plugin started: role %s", cfg.Role))
	return types.OnPluginStartStatusOK
}

// NewHttpContext is called per HTTP stream (per attempt for upstream).
func (p *Plugin) NewHttpContext(uint32) types.HttpContext {
	switch p.cfg.Role {
	case RoleRouter:
		return &routerStream{p: p, measure: measure{p: p}}
	case RoleUpstream:
		return &upstreamStream{p: p}
	default:
		return &measureStream{measure: measure{p: p}}
	}
}

// streamDone runs after every stream: Go's GC on wasm runs inside
// whichever callback allocates past the target, so an occasional explicit
// collection keeps the heap, and the pause, small.
func (p *Plugin) streamDone() {
	p.done++
	if p.done%4096 != 0 {
		return
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if ms.HeapAlloc > 16<<20 {
		runtime.GC()
	}
}

// recovered turns a panic in a callback into a count and a log line; the
// caller decides what the stream does next.
func (p *Plugin) recovered(r any, where string) {
	p.vm.metrics.panics.Increment(1)
	proxywasm.LogError(fmt.Sprintf("detour: panic in %s: %v", where, r))
}

// injected panics where a test asked for one.
func (v *VM) injected(where string) {
	if v.panicIn == where {
		panic("injected panic in " + where)
	}
}

// guard recovers a panic in a callback that has no better answer than to
// let the stream go on: count it, log it.
func (p *Plugin) guard(where string) {
	if r := recover(); r != nil {
		p.recovered(r, where)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// leftToExtProc reports whether the ext_proc filter decides target.
func (p *Plugin) leftToExtProc(target string) bool {
	if v, ok := p.extproc[target]; ok {
		return v
	}
	return p.cfg.ExtProcByDefault
}
