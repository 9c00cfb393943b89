package main

// The chaos suite (`make chaos`, -only chaos): a catalogue of faults, each
// injected while a fixed-rate load of chats goes through a real Envoy,
// once with detour (the ext_proc service, the control plane and its
// live-metrics controller, the measurement plugin; the shipped defaults)
// and once against the baseline (the same Envoy and providers, Envoy's
// defaults: one plain route to the preferred provider, no retry policy,
// no outlier detection). Written to reports/chaos.md with one SVG plot
// per scenario (chaos_report.go, chaos_plot.go).
//
// The providers are `detour sim` processes behind Toxiproxy proxies
// (chaos_net.go): "fast" (the cheapest, preferred) and "fast-b" each have
// an endpoint in region east and one in region west; "long" and "vision"
// one in east. Envoy is in region east, so east endpoints come first.
// Faults hit fast (both of its endpoints) unless the scenario says
// otherwise.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/detourhq/detour/bench/loadgen"
	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/healthview/viewhttp"
	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/sim"
	"github.com/detourhq/detour/xds"
)

const (
	modeDetour = "detour"
	// chaosRegion is Envoy's region.
	chaosRegion = "east"
	// chaosLead is the load before the fault; chaosTail after it.
	chaosLead = 8 * time.Second
	chaosTail = 30 * time.Second
	// chaosTokens is every answer's length: the stall fault cuts at 20.
	chaosTokens = 40
	// chaosRestart is how long a killed ext_proc service stays down before
	// its supervisor restarts it.
	chaosRestart = 2 * time.Second
	// chaosSlowTPS paces the long-answers scenario: 40 tokens in 4 s.
	chaosSlowTPS = 10
	// chaosShiftShare: 99 % of traffic shifted means at most 1 % of a
	// window's requests still go to the fault.
	chaosShiftShare = 0.01
	// chaosRecoverShare: recovered when the broken target has its share
	// of traffic back to at least this part of what it had before.
	chaosRecoverShare = 0.9
	// chaosBin is the plots' time resolution.
	chaosBin = 500 * time.Millisecond
)

var chaosModes = []string{modeDetour, modeBaseline}

// chaosSaturation names the saturation run in -chaos-scenarios.
const chaosSaturation = "saturation"

// chaosLoads: the fixed-rate load of every run.
var chaosLoads = []ctlLoad{{Rate: 20}, {Rate: 10, Stream: true}}

// chaosSim is one simulated provider endpoint.
type chaosSim struct {
	Name, Backend, Region string
}

var chaosSims = []chaosSim{
	{"fast-east", "fast", "east"},
	{"fast-west", "fast", "west"},
	{"fastb-east", "fast-b", "east"},
	{"fastb-west", "fast-b", "west"},
	{"long", "long", "east"},
	{"vision", "vision", "east"},
}

// The endpoints of fast, and of region east.
var (
	chaosFast = []string{"fast-east", "fast-west"}
	chaosEast = []string{"fast-east", "fastb-east", "long", "vision"}
)

// Kinds of fault, for the shift target: < 1 s for hard faults, < 5 s for
// statistical and latency ones; infrastructure faults break no provider.
const (
	kindHard        = "hard"
	kindStatistical = "statistical"
	kindLatency     = "latency"
	kindInfra       = "infrastructure"
)

// chaosScenario is one fault of the catalogue.
type chaosScenario struct {
	Name, Title, Fault, Kind string
	// Target: the endpoints the fault breaks, whose traffic must move
	// (nil: none, infrastructure faults).
	Target []string
	// For is how long the fault lasts; Flap > 0 turns it on and off every
	// Flap meanwhile.
	For, Flap time.Duration
	// DetourOnly: the fault is of a detour process, which the baseline
	// does not have.
	DetourOnly bool
	// NoShift, when set, says why the traffic is not expected to move
	// (the fault stays within the policy's thresholds).
	NoShift string
	// Replicas runs that many ext_proc replicas (extproc.replicas); 0 or
	// 1: one, the default.
	Replicas int
	// setup, when set, runs before the stack starts (after the providers
	// are reset), for conditions that hold through the whole run.
	setup  func(ctx context.Context, e *chaosEnv) error
	inject func(ctx context.Context, e *chaosEnv) error
	clear  func(ctx context.Context, e *chaosEnv) error
}

func simFault(f sim.Fault, names ...string) (inject, clear func(context.Context, *chaosEnv) error) {
	return func(ctx context.Context, e *chaosEnv) error { return e.sims.setFault(ctx, names, &f) },
		func(ctx context.Context, e *chaosEnv) error { return e.sims.setFault(ctx, names, nil) }
}

func toxics(names []string, ts ...toxic) (inject, clear func(context.Context, *chaosEnv) error) {
	return func(_ context.Context, e *chaosEnv) error {
			for _, t := range ts {
				if err := e.net.addToxic(names, t); err != nil {
					return err
				}
			}
			return nil
		},
		func(ctx context.Context, e *chaosEnv) error { return e.net.reset(ctx) }
}

func chaosCatalogue() []chaosScenario {
	s := []chaosScenario{
		{Name: "hard-down", Title: "Hard down: fast's processes are killed mid-load", Fault: "SIGKILL to both fast providers; restarted when the fault ends", Kind: kindHard, Target: chaosFast, For: 20 * time.Second,
			inject: func(ctx context.Context, e *chaosEnv) error { e.sims.kill(chaosFast); return nil },
			clear:  func(ctx context.Context, e *chaosEnv) error { return e.sims.restart(ctx, chaosFast) }},
		{Name: "refused", Title: "Refused: fast's connections are refused", Fault: "Toxiproxy proxies of fast stopped (port closed, open connections closed)", Kind: kindHard, Target: chaosFast, For: 20 * time.Second,
			inject: func(_ context.Context, e *chaosEnv) error { return e.net.refuse(chaosFast, true) },
			clear:  func(_ context.Context, e *chaosEnv) error { return e.net.refuse(chaosFast, false) }},
		{Name: "brownout", Title: "Brownout: fast fails 30 % of its requests with 500", Fault: `sim fault {"status":500,"rate":0.3} (random)`, Kind: kindStatistical, Target: chaosFast, For: 20 * time.Second},
		{Name: "throttled", Title: "Throttled: fast answers 429 with Retry-After to 60 % of its requests", Fault: `sim fault {"status":429,"rate":0.6,"retry_after_s":5} (random)`, Kind: kindStatistical, Target: chaosFast, For: 20 * time.Second},
		{Name: "slow-start", Title: "Slow start: fast's first token comes after 3 s", Fault: `sim fault {"ttft_ms":3000}`, Kind: kindLatency, Target: chaosFast, For: 20 * time.Second},
		{Name: "stall", Title: "Stall: fast's answers stop after 20 tokens and hang", Fault: `sim fault {"stall_after_tokens":20} (answers are 40 tokens; the connection stays open)`, Kind: kindLatency, Target: chaosFast, For: 20 * time.Second},
		{Name: "slow-network", Title: "Slow network: +400 ms latency and 50 KB/s to fast", Fault: "Toxiproxy latency 400 ms and bandwidth 50 KB/s on fast's responses", Kind: kindLatency, Target: chaosFast, For: 20 * time.Second,
			NoShift: "+400 ms keeps fast's time to first token under the policy's 500 ms threshold (answers are a few hundred bytes, so 50 KB/s adds little): by the policy fast is slower but healthy, and it stays the cheapest choice"},
		{Name: "resets", Title: "Resets: fast's connections are reset once the request is sent", Fault: "Toxiproxy reset_peer (timeout 0) on requests to fast", Kind: kindHard, Target: chaosFast, For: 20 * time.Second},
		{Name: "region-loss", Title: "Region loss: every endpoint in region east is unreachable", Fault: "Toxiproxy timeout (0: black hole, connections stay open, no data) on every east endpoint (fast, fast-b, long, vision); Envoy is in east", Kind: kindHard, Target: []string{"fast-east", "fastb-east"}, For: 20 * time.Second},
		{Name: "flapping", Title: "Flapping: fast alternates down and up every 5 s", Fault: "fast's proxies stopped 5 s, started 5 s, for 30 s", Kind: kindHard, Target: chaosFast, For: 30 * time.Second, Flap: 5 * time.Second,
			inject: func(_ context.Context, e *chaosEnv) error { return e.net.refuse(chaosFast, true) },
			clear:  func(_ context.Context, e *chaosEnv) error { return e.net.refuse(chaosFast, false) }},
		{Name: "control-plane-down", Title: "Control plane down: `detour xds` killed for 60 s", Fault: "SIGKILL to detour xds; restarted after 60 s", Kind: kindInfra, For: 60 * time.Second, DetourOnly: true,
			inject: func(_ context.Context, e *chaosEnv) error { e.st.xds.kill(); return nil },
			clear:  func(ctx context.Context, e *chaosEnv) error { return e.st.restartXDS(ctx) }},
		{Name: "processor-down", Title: "Processor down: `detour extproc` killed and restarted", Fault: fmt.Sprintf("SIGKILL to detour extproc (the only replica, the default); restarted %s later (a supervisor's restart delay)", chaosRestart), Kind: kindInfra, For: chaosRestart, DetourOnly: true,
			inject: func(_ context.Context, e *chaosEnv) error { e.st.extproc.kill(); return nil },
			clear:  func(ctx context.Context, e *chaosEnv) error { return e.st.restartExtproc(ctx) }},
		{Name: "processor-down-long-answers", Title: "Processor down, long answers: `detour extproc` killed while 4-second answers are in flight", Fault: fmt.Sprintf("every provider paced at %d tokens/s for the whole run (40-token answers take 4 s, streamed or whole); SIGKILL to detour extproc (one replica); restarted %s later", chaosSlowTPS, chaosRestart), Kind: kindInfra, For: chaosRestart, DetourOnly: true,
			setup: func(ctx context.Context, e *chaosEnv) error {
				return e.sims.setFault(ctx, names(chaosSims), &sim.Fault{TokensPerSecond: chaosSlowTPS})
			},
			inject: func(_ context.Context, e *chaosEnv) error { e.st.extproc.kill(); return nil },
			clear:  func(ctx context.Context, e *chaosEnv) error { return e.st.restartExtproc(ctx) }},
		{Name: "processor-down-2-replicas", Title: "Processor down, two replicas: one `detour extproc` of two killed and restarted", Fault: fmt.Sprintf("`extproc.replicas` lists two; SIGKILL to the first; restarted %s later", chaosRestart), Kind: kindInfra, For: chaosRestart, DetourOnly: true, Replicas: 2,
			inject: func(_ context.Context, e *chaosEnv) error { e.st.extproc.kill(); return nil },
			clear:  func(ctx context.Context, e *chaosEnv) error { return e.st.restartExtproc(ctx) }},
	}
	for i := range s {
		switch s[i].Name {
		case "brownout":
			s[i].inject, s[i].clear = simFault(sim.Fault{Status: http.StatusInternalServerError, Rate: 0.3}, chaosFast...)
		case "throttled":
			s[i].inject, s[i].clear = simFault(sim.Fault{Status: http.StatusTooManyRequests, Rate: 0.6, RetryAfterS: 5}, chaosFast...)
		case "slow-start":
			s[i].inject, s[i].clear = simFault(sim.Fault{TTFTMS: 3000}, chaosFast...)
		case "stall":
			s[i].inject, s[i].clear = simFault(sim.Fault{StallAfterTokens: 20}, chaosFast...)
		case "slow-network":
			s[i].inject, s[i].clear = toxics(chaosFast,
				toxic{Type: "latency", Stream: "downstream", Attributes: map[string]any{"latency": 400}},
				toxic{Type: "bandwidth", Stream: "downstream", Attributes: map[string]any{"rate": 50}})
		case "resets":
			s[i].inject, s[i].clear = toxics(chaosFast, toxic{Type: "reset_peer", Stream: "upstream", Attributes: map[string]any{"timeout": 0}})
		case "region-loss":
			s[i].inject, s[i].clear = toxics(chaosEast, toxic{Type: "timeout", Stream: "upstream", Attributes: map[string]any{"timeout": 0}})
		}
	}
	return s
}

// estimateChaos is roughly how long the suite takes.
func estimateChaos(scenarios []chaosScenario) time.Duration {
	var d time.Duration
	for _, s := range scenarios {
		runs := 2
		if s.DetourOnly {
			runs = 1
		}
		d += time.Duration(runs) * (chaosLead + s.For + chaosTail + 6*time.Second)
	}
	return d
}

// --- the providers

// chaosProviders are the simulated providers and the Toxiproxy proxies in
// front of them, up for the whole suite.
type chaosProviders struct {
	c                        e2eConfig
	dir                      string
	extra                    []string // more `detour sim` flags
	procs                    map[string]*child
	addr, admin, proxy, args map[string]string
}

func startChaosProviders(ctx context.Context, c e2eConfig, dir string, extra ...string) (_ *chaosProviders, _ *faultNet, err error) {
	a, err := freeAddrs(ctx, 3*len(chaosSims))
	if err != nil {
		return nil, nil, err
	}
	p := &chaosProviders{c: c, dir: dir, extra: extra, procs: map[string]*child{}, addr: map[string]string{}, admin: map[string]string{}, proxy: map[string]string{}}
	defer func() {
		if err != nil {
			p.close()
		}
	}()
	for i, s := range chaosSims {
		p.addr[s.Name], p.admin[s.Name], p.proxy[s.Name] = a[3*i], a[3*i+1], a[3*i+2]
	}
	if err := p.restart(ctx, names(chaosSims)); err != nil {
		return nil, nil, err
	}
	net, err := newFaultNet(p.proxy, p.addr)
	if err != nil {
		return nil, nil, err
	}
	return p, net, nil
}

func names(sims []chaosSim) []string {
	out := make([]string, len(sims))
	for i, s := range sims {
		out[i] = s.Name
	}
	return out
}

func chaosModel(backend string) string {
	for _, b := range ctlBackends {
		if b.Name == backend {
			return b.Model
		}
	}
	return ""
}

// restart starts the providers of names that are not running and waits
// for them to answer.
func (p *chaosProviders) restart(ctx context.Context, names []string) error {
	for _, s := range chaosSims {
		if !slices.Contains(names, s.Name) {
			continue
		}
		if c := p.procs[s.Name]; c != nil {
			if gone, _ := c.exited(); !gone {
				continue
			}
		}
		args := append([]string{"sim", "--name", s.Name, "--listen", p.addr[s.Name], "--admin", p.admin[s.Name], "--model", chaosModel(s.Backend),
			"--tokens", fmt.Sprint(chaosTokens), "--log-level", "warn"}, p.extra...)
		c, err := startChild(ctx, "sim-"+s.Name, filepath.Join(p.dir, "sim-"+s.Name+".log"), p.c.childOutput, p.c.detourBin, args...)
		if err != nil {
			return err
		}
		p.procs[s.Name] = c
		if err := waitHTTP(ctx, c, "http://"+p.addr[s.Name]+"/v1/models", 15*time.Second); err != nil {
			return err
		}
	}
	return nil
}

// kill ends the providers of names at once.
func (p *chaosProviders) kill(names []string) {
	for _, n := range names {
		if c := p.procs[n]; c != nil {
			c.kill()
		}
	}
}

// setFault sets (f non-nil) or clears the simulator fault of names.
func (p *chaosProviders) setFault(ctx context.Context, names []string, f *sim.Fault) error {
	for _, n := range names {
		var err error
		if f == nil {
			err = simAdmin(ctx, http.MethodDelete, p.admin[n], "/_sim/faults", nil, nil)
		} else {
			err = simAdmin(ctx, http.MethodPost, p.admin[n], "/_sim/faults", *f, nil)
		}
		if err != nil {
			return fmt.Errorf("sim %s: %w", n, err)
		}
	}
	return nil
}

// reset brings every provider back (restarting killed ones) and clears
// their faults.
func (p *chaosProviders) reset(ctx context.Context) error {
	if err := p.restart(ctx, names(chaosSims)); err != nil {
		return err
	}
	return p.setFault(ctx, names(chaosSims), nil)
}

func (p *chaosProviders) close() {
	for _, c := range p.procs {
		c.stop(5 * time.Second)
	}
}

// --- the stacks

// chaosPolicy is the suite's policy: the providers through their proxies,
// "auto" (cheapest), the measurement plugin, every backend able to continue
// a stalled answer (the simulators continue their own text), everything else
// the shipped defaults (controller, probes and resume included).
func chaosPolicy(a ctlAddrs, proxy map[string]string, module, accessLog string, replicas []string) []byte {
	var b strings.Builder
	b.WriteString("# generated by detour-bench (chaos)\nversion: 1\nbackends:\n")
	for _, be := range ctlBackends {
		fmt.Fprintf(&b, "  - name: %s\n    model: %s\n    endpoints:\n", be.Name, be.Model)
		for _, s := range chaosSims {
			if s.Backend == be.Name {
				fmt.Fprintf(&b, "      - {address: %q, region: %s}\n", proxy[s.Name], s.Region)
			}
		}
		fmt.Fprintf(&b, `    capabilities:
      context_window: %d
      max_output_tokens: %d
      tools: %t
      vision: %t
      json_mode: true
    price: {input: %.2f, output: %.2f}
    continuation: continue_final_message
`, be.Context, be.MaxOut, be.Tools, be.Vision, be.In, be.Out)
	}
	fmt.Fprintf(&b, `routes:
  - name: auto
    objective: cheapest
envoy: {listen: %q, admin: %q, access_log: %q}
extproc: {listen: %q, metrics: %q%s}
xds: {listen: %q, metrics: %q}
wasm: {module: %q, measure: true}
`, a.listen, a.admin, accessLog, a.extproc, a.metrics, replicaList(replicas), a.xds, a.xdsMetrics, module)
	return []byte(b.String())
}

// replicaList is the extproc.replicas entry for more than one replica.
func replicaList(replicas []string) string {
	if len(replicas) < 2 {
		return ""
	}
	q := make([]string, len(replicas))
	for i, r := range replicas {
		q[i] = fmt.Sprintf("%q", r)
	}
	return ", replicas: [" + strings.Join(q, ", ") + "]"
}

// chaosStack is one run's Envoy and, with detour, its processes.
type chaosStack struct {
	c                 e2eConfig
	dir, name, policy string
	a                 ctlAddrs
	extproc, xds      *child
	envoy             *envoyProc
	// replica is the second ext_proc replica (Replicas 2), at
	// replicaAddr with metrics on replicaMetrics.
	replica                     *child
	replicaAddr, replicaMetrics string
	url, viewURL                string
}

func startChaosStack(ctx context.Context, c e2eConfig, prov *chaosProviders, dir, name, module, mode string, replicas int) (_ *chaosStack, err error) {
	ad, err := freeAddrs(ctx, 8)
	if err != nil {
		return nil, err
	}
	a := ctlAddrs{listen: ad[0], admin: ad[1], extproc: ad[2], metrics: ad[3], xds: ad[4], xdsMetrics: ad[5]}
	s := &chaosStack{c: c, dir: dir, name: name, a: a, url: "http://" + a.listen + chatPath,
		viewURL: "http://" + a.xdsMetrics + viewhttp.Path, policy: filepath.Join(dir, name+"-policy.yaml")}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	var list []string
	if replicas > 1 {
		s.replicaAddr, s.replicaMetrics = ad[6], ad[7]
		list = []string{a.extproc, s.replicaAddr}
	}
	if err := os.WriteFile(s.policy, chaosPolicy(a, prov.proxy, module, filepath.Join(dir, name+"-access.log"), list), 0o644); err != nil {
		return nil, fmt.Errorf("write policy: %w", err)
	}
	p, err := policy.LoadFile(s.policy)
	if err != nil {
		return nil, fmt.Errorf("chaos policy: %w", err)
	}
	bootPath := filepath.Join(dir, name+"-envoy.json")
	if mode == modeBaseline {
		boot, err := plainEnvoyBootstrap(p, xds.Options{Region: chaosRegion})
		if err != nil {
			return nil, err
		}
		if err := writeBootstrap(bootPath, boot); err != nil {
			return nil, err
		}
	} else {
		boot, err := xds.DynamicBootstrap(p, xds.DynamicOptions{NodeID: "detour-chaos-" + name, Region: chaosRegion})
		if err != nil {
			return nil, fmt.Errorf("dynamic bootstrap: %w", err)
		}
		if err := writeBootstrap(bootPath, boot); err != nil {
			return nil, err
		}
		if err := s.restartExtproc(ctx); err != nil {
			return nil, err
		}
		if s.replicaAddr != "" {
			n := name + "-extproc-replica"
			if s.replica, err = startChild(ctx, n, s.logPath(n), c.childOutput, c.detourBin, "extproc", "--policy", s.policy,
				"--listen", s.replicaAddr, "--metrics", s.replicaMetrics, "--log-level", "warn"); err != nil {
				return nil, err
			}
			if err := waitHTTP(ctx, s.replica, "http://"+s.replicaMetrics+"/healthz", 15*time.Second); err != nil {
				return nil, err
			}
		}
		if err := s.restartXDS(ctx); err != nil {
			return nil, err
		}
	}
	if s.envoy, err = startEnvoy(ctx, name+"-envoy", c.envoyBin, bootPath, a.admin, dir, c.childOutput); err != nil {
		return nil, err
	}
	return s, nil
}

// restartExtproc starts `detour extproc` and waits until it is healthy.
func (s *chaosStack) restartExtproc(ctx context.Context) (err error) {
	n := s.name + "-extproc"
	s.extproc, err = startChild(ctx, n, s.logPath(n), s.c.childOutput, s.c.detourBin, "extproc", "--policy", s.policy, "--log-level", "warn")
	if err != nil {
		return err
	}
	return waitHTTP(ctx, s.extproc, "http://"+s.a.metrics+"/healthz", 15*time.Second)
}

// restartXDS starts `detour xds` and waits until it serves its metrics.
func (s *chaosStack) restartXDS(ctx context.Context) (err error) {
	n := s.name + "-xds"
	s.xds, err = startChild(ctx, n, s.logPath(n), s.c.childOutput, s.c.detourBin, "xds", "--policy", s.policy, "--log-level", "info")
	if err != nil {
		return err
	}
	return waitHTTP(ctx, s.xds, "http://"+s.a.xdsMetrics+"/metrics", 15*time.Second)
}

// logPath is a fresh log file per start (a restarted process keeps the
// first one's log).
func (s *chaosStack) logPath(name string) string {
	p := filepath.Join(s.dir, name+".log")
	for i := 2; ; i++ {
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			return p
		}
		p = filepath.Join(s.dir, fmt.Sprintf("%s.%d.log", name, i))
	}
}

// ready waits until a chat is answered by fast's east endpoint and, with
// detour, the controller's view shows fast and fast-b HEALTHY.
func (s *chaosStack) ready(ctx context.Context, client *http.Client, mode string) error {
	deadline := time.Now().Add(30 * time.Second)
	body := chaosBody(mode)(false)
	var last string
	for {
		o := ctlSend(ctx, client, s.url, body, false, 0)
		ok := o.ok() && o.Sim == "fast-east"
		if !ok {
			last = fmt.Sprintf("status %d %s from %q", o.Status, o.Err, o.Sim)
		} else if mode == modeDetour {
			v, err := viewhttp.Fetch(ctx, adminClient, s.viewURL, 0)
			switch {
			case err != nil:
				ok, last = false, err.Error()
			default:
				for _, name := range []string{"fast", "fast-b"} {
					if b, found := v.Backends[name]; !found || b.State != healthview.Healthy || b.Throttled {
						ok, last = false, fmt.Sprintf("%s is %q", name, b.State)
					}
				}
			}
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after 30s: %s", last)
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
}

func (s *chaosStack) alive() error {
	var cs []*child
	for _, c := range []*child{s.extproc, s.replica, s.xds} {
		if c != nil {
			cs = append(cs, c)
		}
	}
	return allAlive(cs, []*envoyProc{s.envoy})
}

func (s *chaosStack) close() {
	if s.envoy != nil {
		s.envoy.stop()
	}
	for _, c := range []*child{s.xds, s.extproc, s.replica} {
		if c != nil {
			c.stop(5 * time.Second)
		}
	}
}

// chaosBody is the mode's chat: "auto" through detour; the baseline's
// plain route sends the body as it is, so it names fast's model.
func chaosBody(mode string) func(stream bool) []byte {
	model := "auto"
	if mode == modeBaseline {
		model = chaosModel("fast")
	}
	return func(stream bool) []byte {
		return fmt.Appendf(nil, `{"model":%q,"messages":[{"role":"user","content":"hello"}],"stream":%t}`, model, stream)
	}
}

// --- one run

// chaosEnv is what a fault acts on.
type chaosEnv struct {
	sims *chaosProviders
	net  *faultNet
	st   *chaosStack
}

// chaosState is one read of the controller's view: each backend's state.
type chaosState struct {
	At     time.Duration
	States map[string]string
}

// chaosRun is one scenario in one mode.
type chaosRun struct {
	Mode             string
	FaultAt, ClearAt time.Duration
	End              time.Duration
	// Windows are the spans the fault was on (several when it flaps).
	Windows   [][2]time.Duration
	Outcomes  []ctlOutcome
	States    []chaosState // detour only
	Ejections []ctlGauge   // Envoy's outlier ejections of fast
	Upstream  map[string]int64
}

var chaosEjectionsActive = regexp.MustCompile(`^cluster\.fast\.outlier_detection\.ejections_active$`)

func runChaos1(ctx context.Context, c e2eConfig, env *chaosEnv, dir, module string, sc chaosScenario, mode string, jitter time.Duration) (*chaosRun, error) {
	if err := env.sims.reset(ctx); err != nil {
		return nil, err
	}
	if err := env.net.reset(ctx); err != nil {
		return nil, err
	}
	if sc.setup != nil {
		if err := sc.setup(ctx, env); err != nil {
			return nil, fmt.Errorf("set up: %w", err)
		}
	}
	st, err := startChaosStack(ctx, c, env.sims, dir, sc.Name+"-"+mode, module, mode, sc.Replicas)
	if err != nil {
		return nil, err
	}
	defer st.close()
	env.st = st
	client := loadgen.NewClient(ctlMaxInFlight)
	defer client.CloseIdleConnections()
	if err := st.ready(ctx, client, mode); err != nil {
		return nil, err
	}
	r := &chaosRun{Mode: mode}
	c.log.Debug("chaos run", "scenario", sc.Name, "mode", mode)
	start := time.Now()
	stop := make(chan struct{})
	var mu sync.Mutex
	pollDone := make(chan struct{})
	var poller sync.WaitGroup
	poller.Go(func() {
		tick := time.NewTicker(ctlPoll)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-pollDone:
				return
			case <-tick.C:
			}
			at := time.Since(start)
			if mode == modeDetour {
				if v, err := viewhttp.Fetch(ctx, adminClient, st.viewURL, 0); err == nil {
					cs := chaosState{At: at, States: map[string]string{}}
					for name, b := range v.Backends {
						cs.States[name] = ctlView{State: b.State, Throttled: b.Throttled}.label()
					}
					mu.Lock()
					r.States = append(r.States, cs)
					mu.Unlock()
				}
			}
			if g, err := envoyCounters(ctx, st.a.admin, chaosEjectionsActive); err == nil {
				var n int64
				for _, v := range g {
					n += v
				}
				mu.Lock()
				r.Ejections = append(r.Ejections, ctlGauge{At: at, Value: n})
				mu.Unlock()
			}
		}
	})
	var load sync.WaitGroup
	load.Go(func() { r.Outcomes = ctlLoop(ctx, client, st.url, chaosLoads, chaosBody(mode), start, stop) })

	script := func() error {
		if err := sleepCtx(ctx, time.Until(start.Add(chaosLead+jitter))); err != nil {
			return err
		}
		c.log.Debug("chaos fault on", "scenario", sc.Name, "mode", mode)
		span, err := runFault(ctx, start, sc.For, sc.Flap,
			func() error { return sc.inject(ctx, env) }, func() error { return sc.clear(ctx, env) })
		r.FaultAt, r.ClearAt, r.Windows = span.FaultAt, span.ClearAt, span.Windows
		if err != nil {
			return err
		}
		c.log.Debug("chaos fault cleared", "scenario", sc.Name, "mode", mode, "at", time.Since(start))
		return sleepCtx(ctx, time.Until(start.Add(r.ClearAt+chaosTail)))
	}
	serr := script()
	r.End = time.Since(start)
	close(stop)
	load.Wait()
	close(pollDone)
	poller.Wait()
	if serr != nil {
		return nil, serr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := st.alive(); err != nil {
		return nil, err
	}
	return r, nil
}

// chaosResult is the whole suite.
type chaosResult struct {
	Scenarios []chaosScenarioResult
	// Saturation is nil when it did not run (SatErr says why, or it was
	// not asked for).
	Saturation *saturationResult
	SatErr     string
}

type chaosScenarioResult struct {
	Scenario chaosScenario
	Runs     map[string]*chaosRun
	Err      string
}

// runChaos runs the catalogue (only the scenarios named in only, if any),
// detour first, then the baseline, each on a fresh stack.
func runChaos(ctx context.Context, c e2eConfig, module string, only []string) (*chaosResult, error) {
	dir := filepath.Join(c.workDir, "chaos")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if _, err := os.Stat(module); err != nil {
		return nil, fmt.Errorf("wasm module: %w", err)
	}
	var catalogue []chaosScenario
	for _, sc := range chaosCatalogue() {
		if len(only) == 0 || slices.Contains(only, sc.Name) {
			catalogue = append(catalogue, sc)
		}
	}
	saturation := len(only) == 0 || slices.Contains(only, chaosSaturation)
	if len(catalogue) == 0 && !saturation {
		return nil, fmt.Errorf("no chaos scenario named %s", strings.Join(only, ", "))
	}
	prov, net, err := startChaosProviders(ctx, c, dir)
	if err != nil {
		return nil, err
	}
	defer prov.close()
	defer net.close()
	env := &chaosEnv{sims: prov, net: net}
	c.log.Info("chaos suite", "scenarios", len(catalogue), "estimated", estimateChaos(catalogue).Round(time.Second), "logs", dir)
	res := &chaosResult{}
	var errs []error
	for _, sc := range catalogue {
		sr := chaosScenarioResult{Scenario: sc, Runs: map[string]*chaosRun{}}
		jitter := rand.N(time.Second)
		for _, mode := range chaosModes {
			if mode == modeBaseline && sc.DetourOnly {
				continue
			}
			if err := sleepCtx(ctx, settle); err != nil {
				return nil, err
			}
			r, err := runChaos1(ctx, c, env, dir, module, sc, mode, jitter)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if err != nil {
				sr.Err = fmt.Sprintf("%s: %v", mode, err)
				errs = append(errs, fmt.Errorf("chaos %s, %s: %w", sc.Name, mode, err))
				c.log.Warn("chaos scenario failed", "scenario", sc.Name, "mode", mode, "err", err)
				break
			}
			f := chaosFiguresOf(sc, r)
			c.log.Info("chaos", "scenario", sc.Name, "mode", mode, "sent", f.Sent, "failed", f.Failed,
				"detect", fmtFound(f.Detected, f.Detect), "shift", fmtFound(f.Shifted, f.Shift), "recover", fmtFound(f.Recovered, f.Recover),
				"attempts", fmt.Sprintf("%.3f", f.Attempts))
			sr.Runs[mode] = r
			if c.opts.chaosRaw != "" {
				if err := writeJSONFile(filepath.Join(c.opts.chaosRaw, sc.Name+"-"+mode+".json"), r); err != nil {
					c.log.Warn("raw chaos data", "err", err)
				}
			}
		}
		res.Scenarios = append(res.Scenarios, sr)
	}
	if saturation && ctx.Err() == nil {
		sat, err := runSaturation(ctx, c, module)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil {
			res.SatErr = err.Error()
			errs = append(errs, fmt.Errorf("saturation: %w", err))
		}
		res.Saturation = sat
		if sat != nil && c.opts.chaosRaw != "" {
			if err := writeJSONFile(filepath.Join(c.opts.chaosRaw, "saturation.json"), sat); err != nil {
				c.log.Warn("raw saturation data", "err", err)
			}
		}
	}
	return res, errors.Join(errs...)
}

func writeJSONFile(path string, v any) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}

func fmtFound(ok bool, d time.Duration) string {
	if !ok {
		return "never"
	}
	return fmtSec(d)
}
