package main

// The proxy-wasm comparison (-only wasm, report section 7): four Envoys in
// front of the same simulated provider, run in alternating rounds in one
// process tree:
//
//	A  Envoy alone: a plain route to the provider, no detour filter
//	B  Envoy + ext_proc routing (routing.mode extproc, wasm.measure false)
//	C  Envoy + wasm routing (routing.mode wasm): the plugin decides inside
//	   Envoy, the ext_proc filter is skipped
//	D  Envoy + ext_proc routing + the measurement-only wasm plugin
//
// Besides latency and throughput it records detour.wasm's size, Envoy's
// time to ready and its resident memory with and without the plugin.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/detourhq/detour/bench/loadgen"
	"github.com/detourhq/detour/envoy"
	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/xds"
)

// Sides of the wasm comparison (A is sideA, the baseline).
const (
	sideExtProc = "B"
	sideWasm    = "C"
	sideMeasure = "D"
)

var wasmSides = []string{sideA, sideExtProc, sideWasm, sideMeasure}

// Targets of the wasm routing path (side C against side A).
const (
	targetWasmAddedP50    = 100 * time.Microsecond
	targetWasmThroughput  = 0.90 // C/A, closed loop
	startupRounds         = 5
	startupPollInterval   = 5 * time.Millisecond
	wasmEnvoyReadyTimeout = 60 * time.Second
)

func wasmSideLabel(s string) string {
	switch s {
	case sideA:
		return "A: Envoy alone"
	case sideExtProc:
		return "B: Envoy + ext_proc routing"
	case sideWasm:
		return "C: Envoy + wasm routing"
	case sideMeasure:
		return "D: Envoy + ext_proc routing + wasm measure"
	}
	return s
}

// wasmPlugin says whether a side's Envoy loads the plugin.
func wasmPlugin(side string) bool { return side == sideWasm || side == sideMeasure }

// memSample is one reading of an Envoy's memory, in KiB.
type memSample struct {
	RSS, HWM int64
}

// wasmResult is everything the wasm comparison measured.
type wasmResult struct {
	ModulePath  string
	ModuleBytes int64
	BodyBytes   int
	Workers     int
	Fixed       []roundRun
	Closed      []roundRun
	// Startup is each side's time from exec to /ready answering LIVE, per
	// cold start, in the order run.
	Startup map[string][]time.Duration
	// IdleMem is each side's memory right after ready, per cold start.
	IdleMem map[string][]memSample
	// LoadedMem is each side's memory after all the load phases.
	LoadedMem map[string]memSample
	// ExtProcDecisions is how many decisions the ext_proc service made
	// during side C's probe (0: the wasm plugin decided).
	ExtProcDecisionsForC float64
}

// wasmStack is the provider, the ext_proc service and four Envoys.
type wasmStack struct {
	sim, extproc *child
	envoys       map[string]*envoyProc
	cfgs         map[string]string // side → bootstrap path
	admins       map[string]string
	urls         map[string]string
	metricsAddr  string
}

// locateWasm is the module to load: detour.wasm beside the detour binary
// (what `make build` produces), else one built into dir.
func locateWasm(ctx context.Context, root, detourBin, dir string, log *slog.Logger) (string, error) {
	if p := os.Getenv("DETOUR_WASM"); p != "" {
		return p, nil
	}
	if beside := filepath.Join(filepath.Dir(detourBin), "detour.wasm"); fileExists(beside) {
		return beside, nil
	}
	out := filepath.Join(dir, "detour.wasm")
	log.Info("building detour.wasm", "out", out)
	cmd := exec.CommandContext(ctx, "go", "build", "-buildmode=c-shared", "-trimpath", "-ldflags=-s -w", "-o", out, "./wasm")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build detour.wasm: %w\n%s", err, b)
	}
	return out, nil
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// writeWasmConfigs writes the shared policy (provider, ext_proc) and one
// Envoy bootstrap per side, each with its own listener and admin port.
func writeWasmConfigs(ctx context.Context, dir, module string) (*wasmStack, string, error) {
	a, err := freeAddrs(ctx, 4+2*len(wasmSides))
	if err != nil {
		return nil, "", err
	}
	base := addrs{sim: a[0], simAdmin: a[1], extproc: a[2], metrics: a[3], listenB: a[4], adminB: a[5]}
	policyPath := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyPath, benchPolicy(base, ""), 0o644); err != nil {
		return nil, "", fmt.Errorf("write policy: %w", err)
	}
	wm, err := xds.LoadWasmModule(module)
	if err != nil {
		return nil, "", fmt.Errorf("wasm module: %w", err)
	}
	ws := &wasmStack{cfgs: map[string]string{}, admins: map[string]string{}, urls: map[string]string{},
		envoys: map[string]*envoyProc{}, metricsAddr: base.metrics}
	off := false
	for i, side := range wasmSides {
		p, err := policy.LoadFile(policyPath)
		if err != nil {
			return nil, "", fmt.Errorf("benchmark policy: %w", err)
		}
		p.Envoy.Listen, p.Envoy.Admin = a[4+2*i], a[5+2*i]
		var o xds.Options
		switch side {
		case sideExtProc:
			p.Wasm.Measure = &off
		case sideWasm:
			p.Routing.Mode = policy.ModeWasm
			o.Wasm = wm
		case sideMeasure:
			o.Wasm = wm
		}
		path := filepath.Join(dir, "envoy-"+side+".json")
		if side == sideA {
			b, err := baselineBootstrap(p)
			if err != nil {
				return nil, "", fmt.Errorf("side A bootstrap: %w", err)
			}
			if err := writeBootstrap(path, b); err != nil {
				return nil, "", err
			}
		} else {
			b, err := xds.StaticBootstrapFor(p, o)
			if err != nil {
				return nil, "", fmt.Errorf("side %s bootstrap: %w", side, err)
			}
			if err := writeBootstrap(path, b); err != nil {
				return nil, "", err
			}
		}
		ws.cfgs[side], ws.admins[side], ws.urls[side] = path, p.Envoy.Admin, "http://"+p.Envoy.Listen+chatPath
	}
	return ws, policyPath, nil
}

// runWasm runs the wasm comparison.
func runWasm(ctx context.Context, c e2eConfig, module string) (_ *wasmResult, err error) {
	dir := filepath.Join(c.workDir, "wasm")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	st, err := os.Stat(module)
	if err != nil {
		return nil, fmt.Errorf("wasm module: %w", err)
	}
	ws, policyPath, err := writeWasmConfigs(ctx, dir, module)
	if err != nil {
		return nil, err
	}
	defer ws.close()
	pol, err := policy.LoadFile(policyPath)
	if err != nil {
		return nil, err
	}
	simAddr := pol.Backends[0].Endpoints[0].Address
	// The provider's admin address is not in the policy: pick one.
	sa, err := freeAddrs(ctx, 1)
	if err != nil {
		return nil, err
	}
	if ws.sim, err = startChild(ctx, "sim", filepath.Join(dir, "sim.log"), c.childOutput, c.detourBin,
		"sim", "--name", backendName, "--listen", simAddr, "--admin", sa[0], "--log-level", "warn"); err != nil {
		return nil, err
	}
	if ws.extproc, err = startChild(ctx, "extproc", filepath.Join(dir, "extproc.log"), c.childOutput, c.detourBin,
		"extproc", "--policy", policyPath); err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, ws.sim, "http://"+simAddr+"/v1/models", 15*time.Second); err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, ws.extproc, "http://"+ws.metricsAddr+"/healthz", 15*time.Second); err != nil {
		return nil, err
	}

	res := &wasmResult{ModulePath: module, ModuleBytes: st.Size(), Workers: envoyThreads,
		Startup: map[string][]time.Duration{}, IdleMem: map[string][]memSample{}, LoadedMem: map[string]memSample{}}

	// Cold starts, alternating sides: time to ready and idle memory.
	c.log.Info("wasm: cold starts", "rounds", startupRounds, "sides", len(wasmSides))
	for r := 0; r < startupRounds; r++ {
		for _, side := range wasmSides {
			if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
				return nil, err
			}
			e, d, err := startEnvoyTimed(ctx, "envoy-"+side, c.envoyBin, ws.cfgs[side], ws.admins[side], dir, c.childOutput)
			if err != nil {
				return nil, err
			}
			// Let the workers finish starting their VMs before reading memory.
			_ = sleepCtx(ctx, 300*time.Millisecond)
			m, merr := readMem(e.proc.Pid())
			e.stop()
			if merr != nil {
				return nil, merr
			}
			res.Startup[side] = append(res.Startup[side], d)
			res.IdleMem[side] = append(res.IdleMem[side], m)
		}
	}
	for _, side := range wasmSides {
		e, _, err := startEnvoyTimed(ctx, "envoy-"+side, c.envoyBin, ws.cfgs[side], ws.admins[side], dir, c.childOutput)
		if err != nil {
			return nil, err
		}
		ws.envoys[side] = e
	}

	body := chatBody()
	res.BodyBytes = len(body)
	reqs := map[string]loadgen.Request{}
	for _, side := range wasmSides {
		reqs[side] = chatRequest(ws.urls[side], body)
	}
	if err := ws.check(ctx, reqs, res); err != nil {
		return nil, err
	}
	o := c.opts
	c.log.Info("wasm comparison", "rate", o.rate, "duration", o.duration, "rounds", o.rounds, "workers", o.workers,
		"estimated", estimateWasm(o).Round(time.Second))
	fixed := phase{name: "wasm fixed rate", warmup: o.warmup, load: func(ctx context.Context, req loadgen.Request) (loadgen.Result, error) {
		return loadgen.OpenLoop{Rate: o.rate, Duration: o.duration, Warmup: o.warmup}.Run(ctx, req)
	}}
	if res.Fixed, err = ws.rounds(ctx, fixed, o.rounds, reqs, c); err != nil {
		return nil, err
	}
	closed := phase{name: "wasm max throughput", warmup: o.closedWarmup, load: func(ctx context.Context, req loadgen.Request) (loadgen.Result, error) {
		return loadgen.ClosedLoop{Workers: o.workers, Duration: o.closedDuration, Warmup: o.closedWarmup}.Run(ctx, req)
	}}
	if res.Closed, err = ws.rounds(ctx, closed, o.rounds, reqs, c); err != nil {
		return nil, err
	}
	for _, side := range wasmSides {
		if m, err := readMem(ws.envoys[side].proc.Pid()); err == nil {
			res.LoadedMem[side] = m
		}
	}
	return res, nil
}

func estimateWasm(o options) time.Duration {
	per := o.warmup + o.duration + settle + o.closedWarmup + o.closedDuration + settle
	return time.Duration(len(wasmSides)*o.rounds) * per
}

// startEnvoyTimed starts an Envoy and returns it with its time to ready,
// polling /ready every few milliseconds.
func startEnvoyTimed(ctx context.Context, name, bin, cfg, admin, dir string, tee io.Writer) (*envoyProc, time.Duration, error) {
	logPath := filepath.Join(dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, 0, fmt.Errorf("%s log: %w", name, err)
	}
	w := io.MultiWriter(f, prefixWriter(tee, name))
	t0 := time.Now()
	p, err := envoy.Start(ctx, envoy.Options{
		Bin: bin, ConfigPath: cfg, AdminAddr: admin, Concurrency: envoyThreads,
		LogLevel: "warn", Stdout: w, Stderr: w,
	})
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("%s: %w", name, err)
	}
	e := &envoyProc{name: name, proc: p, logPath: logPath, logFile: f}
	ctx2, cancel := context.WithTimeout(ctx, wasmEnvoyReadyTimeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	url := "http://" + admin + "/ready"
	for {
		req, _ := http.NewRequestWithContext(ctx2, http.MethodGet, url, nil)
		if resp, err := client.Do(req); err == nil {
			var b bytes.Buffer
			_, _ = b.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.TrimSpace(b.String()) == "LIVE" {
				return e, time.Since(t0), nil
			}
		}
		select {
		case <-p.Done():
			e.stop()
			return nil, 0, fmt.Errorf("%s exited before it was ready (%v); log:\n%s", name, p.Err(), fileTail(logPath, 30))
		case <-ctx2.Done():
			e.stop()
			return nil, 0, fmt.Errorf("%s not ready after %s; log:\n%s", name, wasmEnvoyReadyTimeout, fileTail(logPath, 30))
		case <-time.After(startupPollInterval):
		}
	}
}

// readMem reads VmRSS and VmHWM of /proc/<pid>/status, in KiB.
func readMem(pid int) (memSample, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memSample{}, err
	}
	var m memSample
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "VmRSS":
			m.RSS = n
		case "VmHWM":
			m.HWM = n
		}
	}
	if m.RSS == 0 {
		return m, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
	}
	return m, nil
}

// check probes every side once: all must succeed; A must not be routed,
// B–D must; C must be decided without the ext_proc service.
func (ws *wasmStack) check(ctx context.Context, reqs map[string]loadgen.Request, res *wasmResult) error {
	client := &http.Client{Timeout: 10 * time.Second}
	for _, side := range wasmSides {
		before, herr := ws.decisions(ctx)
		model, err := probe(ctx, client, reqs[side])
		if err != nil {
			return fmt.Errorf("side %s probe: %w", side, err)
		}
		switch {
		case side == sideA && model == backendModel:
			return fmt.Errorf("side A probe: the provider answered for model %q: the baseline was routed", model)
		case side != sideA && model != backendModel:
			return fmt.Errorf("side %s probe: %w (the provider answered for model %q, want %q)", side, errNotRouted, model, backendModel)
		}
		if side == sideWasm && herr == nil {
			after, err := ws.decisions(ctx)
			if err == nil {
				res.ExtProcDecisionsForC = after.Count - before.Count
			}
		}
	}
	return nil
}

func (ws *wasmStack) decisions(ctx context.Context) (histogram, error) {
	return (&stack{metricsAddr: ws.metricsAddr}).decisionHistogram(ctx)
}

// rounds runs the phase against A, B, C, D, rounds times.
func (ws *wasmStack) rounds(ctx context.Context, ph phase, rounds int, reqs map[string]loadgen.Request, c e2eConfig) ([]roundRun, error) {
	var out []roundRun
	for r := 1; r <= rounds; r++ {
		for _, side := range wasmSides {
			if err := sleepCtx(ctx, settle); err != nil {
				return nil, err
			}
			pids := map[string]int{
				procLoadgen:  os.Getpid(),
				procEnvoy:    ws.envoys[side].proc.Pid(),
				procExtProc:  ws.extproc.cmd.Process.Pid,
				procProvider: ws.sim.cmd.Process.Pid,
			}
			warm := make(chan cpuSnapshot, 1)
			t := time.AfterFunc(ph.warmup, func() { warm <- takeCPU(pids) })
			res, err := ph.load(ctx, reqs[side])
			after := takeCPU(pids)
			t.Stop()
			if err != nil {
				return nil, fmt.Errorf("%s round %d side %s: %w", ph.name, r, side, err)
			}
			if err := ws.alive(); err != nil {
				return nil, fmt.Errorf("%s round %d side %s: %w", ph.name, r, side, err)
			}
			x := roundRun{Round: r, Side: side, Res: res}
			select {
			case before := <-warm:
				x.CPU = perRequest(before, after, res.Sent)
			default:
			}
			c.log.Info(ph.name, "round", r, "side", side, "result", res.String())
			out = append(out, x)
		}
	}
	return out, nil
}

func (ws *wasmStack) alive() error {
	var es []*envoyProc
	for _, side := range wasmSides {
		if e := ws.envoys[side]; e != nil {
			es = append(es, e)
		}
	}
	return allAlive([]*child{ws.sim, ws.extproc}, es)
}

func (ws *wasmStack) close() {
	for _, side := range wasmSides {
		if e := ws.envoys[side]; e != nil {
			e.stop()
		}
	}
	for _, c := range []*child{ws.extproc, ws.sim} {
		if c != nil {
			c.stop(5 * time.Second)
		}
	}
}
