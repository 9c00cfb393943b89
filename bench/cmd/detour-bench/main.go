// Command detour-bench is the program behind `make bench`. In one run it
// measures
//
//   - the latency and throughput cost of detour's ext_proc service: the same
//     Envoy config with and without the ext_proc filter, in front of a
//     simulated provider, all on loopback (see e2e.go);
//   - detour's own routing decision time, from its Prometheus histogram;
//   - failover: two simulated providers, the preferred one starts answering
//     503, with detour's config and with plain Envoy's defaults; and the time
//     from a policy edit to the new config in force in Envoy (see
//     failover.go);
//   - the Go micro benchmarks of the routing core (see micro.go);
//   - the proxy-wasm plugin against Envoy alone and the ext_proc path:
//     latency, throughput, time to ready, memory (see wasm.go);
//   - detour's live-metrics controller against the static baseline: time to
//     detect and time to shift in four fault scenarios (see controller.go);
//   - the response cache: a hit through Envoy, in memory and in Redis,
//     against a miss and an uncacheable request (see cache.go);
//   - with -only chaos (`make chaos`), the chaos suite: twelve faults, detour
//     against plain Envoy, written to reports/chaos.md with a plot per
//     scenario (see chaos.go);
//
// and writes the figures into BENCHMARKS.md between the markers
// <!-- bench:begin --> and <!-- bench:end --> (see report.go); the wasm and
// controller parts have their own markers.
//
// Usage:
//
//	ENVOY_BIN=/path/to/envoy go run ./bench/cmd/detour-bench [flags]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// options are the command-line flags.
type options struct {
	detour          string // detour binary; empty: build one
	out             string // report file; "-": stdout only
	rate            float64
	duration        time.Duration
	warmup          time.Duration
	rounds          int
	workers         int
	closedDuration  time.Duration
	closedWarmup    time.Duration
	skipMicro       bool
	skipE2E         bool
	skipFailover    bool
	skipWasm        bool
	skipController  bool
	skipCache       bool
	cacheRequests   int
	skipChaos       bool
	chaosOut        string
	keepWork        bool
	policyExtra     string
	chaosOnly       string
	chaosPlotFormat string
	chaosRaw        string
	skipSoak        bool
	soakDuration    time.Duration
	soakOut         string
	readme          string
	wasm            string
	only            string
	verbose         bool

	failoverRate     float64
	failoverDuration time.Duration
	failoverFaultAt  time.Duration
	reloadEdits      int
}

// Parts of a run, for -only.
const (
	partLatency  = "latency"
	partFailover = "failover"
	partMicro    = "micro"
	partWasm     = "wasm"
	partCtl      = "controller"
	partChaos    = "chaos"
	partSoak     = "soak"
)

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("detour-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.detour, "detour", "", "path of the detour binary (default: build ./cmd/detour into a temporary directory)")
	fs.StringVar(&o.out, "out", "BENCHMARKS.md", `report file whose generated section is replaced ("-": print the section to stdout only)`)
	fs.Float64Var(&o.rate, "rate", 500, "fixed-rate (open loop) requests per second")
	fs.DurationVar(&o.duration, "duration", 15*time.Second, "measured duration of each fixed-rate round")
	fs.DurationVar(&o.warmup, "warmup", 3*time.Second, "unrecorded warm-up before each fixed-rate round")
	fs.IntVar(&o.rounds, "rounds", 3, "rounds per side (sides alternate A,B,A,B,...)")
	fs.IntVar(&o.workers, "workers", 32, "closed-loop workers for the throughput test")
	fs.DurationVar(&o.closedDuration, "closed-duration", 10*time.Second, "measured duration of each throughput round")
	fs.DurationVar(&o.closedWarmup, "closed-warmup", 2*time.Second, "unrecorded warm-up before each throughput round")
	fs.BoolVar(&o.skipMicro, "skip-micro", false, "skip the Go micro benchmarks")
	fs.BoolVar(&o.skipE2E, "skip-e2e", false, "skip the added-latency and throughput measurements (report sections 1-3)")
	fs.BoolVar(&o.skipFailover, "skip-failover", false, "skip the failover and policy-edit measurements (report sections 4-5)")
	fs.BoolVar(&o.skipWasm, "skip-wasm", false, "skip the proxy-wasm plugin comparison (report section 7)")
	fs.BoolVar(&o.skipController, "skip-controller", false, "skip the live-metrics controller scenarios (report section 8)")
	fs.BoolVar(&o.skipCache, "skip-cache", false, "skip the response cache measurement (report section 9)")
	fs.IntVar(&o.cacheRequests, "cache-requests", 1000, "cache: measured requests of each kind per store")
	fs.StringVar(&o.wasm, "wasm", "", "path of detour.wasm (default: $DETOUR_WASM, else detour.wasm beside the detour binary, else build ./wasm)")
	fs.StringVar(&o.only, "only", "", "run only these parts, comma-separated: latency (sections 1-3), failover (4-5), micro (6), wasm (7), controller (8), cache (9), chaos (the chaos suite), soak (the soak); chaos and soak run only when named")
	fs.StringVar(&o.policyExtra, "policy-extra", "", `latency (sections 1-3): YAML appended to detour's policy, e.g. "resume: {enabled: false}" to measure what a feature costs`)
	fs.BoolVar(&o.keepWork, "keep-work", false, "keep the work directory (every process's log, the generated policies and Envoy configs) for inspection")
	fs.StringVar(&o.chaosOut, "chaos-out", "reports/chaos.md", "chaos: report file (the plots go beside it, in chaos/)")
	fs.DurationVar(&o.soakDuration, "soak-duration", 20*time.Minute, "soak: how long the load runs")
	fs.StringVar(&o.soakOut, "soak-out", "reports/soak.md", "soak: report file")
	fs.StringVar(&o.chaosRaw, "chaos-raw", "", "chaos: directory to write every run's requests and views to, as JSON (default: none)")
	fs.StringVar(&o.chaosPlotFormat, "chaos-plots", "svg", "chaos: plot format, svg or png")
	fs.StringVar(&o.chaosOnly, "chaos-scenarios", "", "chaos: run only these scenarios, comma-separated (default: the whole catalogue)")
	fs.StringVar(&o.readme, "readme", "README.md", `chaos: file whose summary section (between <!-- chaos-summary:begin/end -->) is replaced ("": none)`)
	fs.Float64Var(&o.failoverRate, "failover-rate", 200, "failover: fixed-rate (open loop) requests per second")
	fs.DurationVar(&o.failoverDuration, "failover-duration", 20*time.Second, "failover: duration of each side's run")
	fs.DurationVar(&o.failoverFaultAt, "failover-fault-at", 5*time.Second, "failover: when the primary provider starts answering 503, from the start of the run")
	fs.IntVar(&o.reloadEdits, "reload-edits", 20, "policy edits to time (0: skip that measurement)")
	fs.BoolVar(&o.verbose, "v", false, "verbose: debug logs, and the child processes' output on stderr")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	o.skipChaos, o.skipSoak = true, true
	if o.only != "" {
		o.skipE2E, o.skipFailover, o.skipMicro, o.skipWasm, o.skipController, o.skipCache = true, true, true, true, true, true
		for part := range strings.SplitSeq(o.only, ",") {
			switch strings.TrimSpace(part) {
			case partLatency:
				o.skipE2E = false
			case partFailover:
				o.skipFailover = false
			case partMicro:
				o.skipMicro = false
			case partWasm:
				o.skipWasm = false
			case partCtl:
				o.skipController = false
			case partCache:
				o.skipCache = false
			case partChaos:
				o.skipChaos = false
			case partSoak:
				o.skipSoak = false
			default:
				return o, fmt.Errorf("-only: unknown part %q (want %s, %s, %s, %s, %s, %s, %s or %s)", part, partLatency, partFailover, partMicro, partWasm, partCtl, partCache, partChaos, partSoak)
			}
		}
	}
	switch {
	case !(o.rate > 0) || !(o.failoverRate > 0):
		return o, errors.New("-rate and -failover-rate must be > 0")
	case o.duration <= 0 || o.closedDuration <= 0:
		return o, errors.New("-duration and -closed-duration must be > 0")
	case o.warmup < 0 || o.closedWarmup < 0:
		return o, errors.New("warm-ups must be >= 0")
	case o.rounds < 1:
		return o, errors.New("-rounds must be >= 1")
	case o.workers < 1:
		return o, errors.New("-workers must be >= 1")
	case o.failoverFaultAt <= 0 || o.failoverFaultAt >= o.failoverDuration:
		return o, errors.New("-failover-fault-at must lie within -failover-duration")
	case o.chaosPlotFormat != "svg" && o.chaosPlotFormat != "png":
		return o, errors.New("-chaos-plots must be svg or png")
	case o.reloadEdits < 0:
		return o, errors.New("-reload-edits must be >= 0")
	case o.cacheRequests < 1:
		return o, errors.New("-cache-requests must be >= 1")
	case o.soakDuration < time.Minute:
		return o, errors.New("-soak-duration must be at least 1m")
	case o.skipE2E && o.skipMicro && o.skipFailover && o.skipWasm && o.skipController && o.skipCache && o.skipChaos && o.skipSoak:
		return o, errors.New("nothing left to measure (-skip-e2e, -skip-failover, -skip-micro, -skip-wasm, -skip-controller and -skip-cache all set)")
	}
	return o, nil
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "detour-bench:", err)
		return 2
	}
	level := slog.LevelInfo
	if o.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := bench(ctx, o, args, stdout, stderr, log); err != nil {
		log.Error("benchmark failed", "err", err)
		return 1
	}
	return 0
}

// bench runs everything asked for and writes the report. Measurement
// failures after setup still produce a report (stating the failure) but
// make bench return an error.
func bench(ctx context.Context, o options, args []string, stdout, stderr io.Writer, log *slog.Logger) error {
	start := time.Now()
	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "detour-bench-")
	if err != nil {
		return fmt.Errorf("temporary directory: %w", err)
	}
	if o.keepWork {
		log.Info("work directory kept (process logs, policies, Envoy configs)", "dir", work)
	} else {
		defer os.RemoveAll(work)
	}

	rep := &report{
		Started: start.UTC(),
		Command: commandLine(os.Getenv("ENVOY_BIN"), args),
		Options: o,
	}
	rep.Machine = probeMachine(ctx, root)
	rep.LoadBefore = loadAverage()

	var failures []error
	var ctl *controllerResult
	var ctlErr string
	var cache *cacheResult
	var cacheErr string
	var chaos *chaosResult
	var chaosErr string
	var soak *soakResult
	var soakErr string
	if !o.skipE2E || !o.skipFailover || !o.skipWasm || !o.skipController || !o.skipCache || !o.skipChaos || !o.skipSoak {
		envoyBin, envoyVer, err := findEnvoy(ctx, root)
		if err != nil {
			return err
		}
		rep.Machine.Envoy = envoyVer
		detourBin := o.detour
		if detourBin == "" {
			if detourBin, err = buildDetour(ctx, root, work, log); err != nil {
				return err
			}
		}
		cfg := e2eConfig{
			opts: o, envoyBin: envoyBin, detourBin: detourBin, workDir: work,
			childOutput: childOutput(o.verbose, stderr), log: log,
		}
		if !o.skipE2E {
			e2e, err := runE2E(ctx, cfg)
			if err != nil {
				return fmt.Errorf("end-to-end benchmark: %w", err)
			}
			rep.E2E = e2e
		}
		if !o.skipFailover && ctx.Err() == nil {
			fo, err := runFailover(ctx, cfg)
			switch {
			case ctx.Err() != nil:
			case err != nil:
				rep.FailoverErr = err.Error()
				failures = append(failures, fmt.Errorf("failover benchmark: %w", err))
			default:
				rep.Failover = fo
				if fo.ReloadErr != "" {
					failures = append(failures, fmt.Errorf("policy-edit measurement: %s", fo.ReloadErr))
				}
			}
		}
		if !o.skipWasm && ctx.Err() == nil {
			module := o.wasm
			if module == "" {
				module, err = locateWasm(ctx, root, detourBin, work, log)
			}
			var wr *wasmResult
			if err == nil {
				wr, err = runWasm(ctx, cfg, module)
			}
			switch {
			case ctx.Err() != nil:
			case err != nil:
				rep.WasmErr = err.Error()
				failures = append(failures, fmt.Errorf("wasm comparison: %w", err))
			default:
				rep.Wasm = wr
			}
		}
		if !o.skipController && ctx.Err() == nil {
			module := o.wasm
			if module == "" {
				module, err = locateWasm(ctx, root, detourBin, work, log)
			}
			if err == nil {
				ctl, err = runController(ctx, cfg, module)
			}
			switch {
			case ctx.Err() != nil:
			case err != nil:
				ctlErr = err.Error()
				failures = append(failures, fmt.Errorf("controller benchmark: %w", err))
			}
		}
		if !o.skipCache && ctx.Err() == nil {
			cache, err = runCache(ctx, cfg, o.cacheRequests)
			switch {
			case ctx.Err() != nil:
			case err != nil:
				cacheErr = err.Error()
				failures = append(failures, fmt.Errorf("cache benchmark: %w", err))
			}
		}
		if !o.skipChaos && ctx.Err() == nil {
			module := o.wasm
			if module == "" {
				module, err = locateWasm(ctx, root, detourBin, work, log)
			}
			if err == nil {
				chaos, err = runChaos(ctx, cfg, module, splitList(o.chaosOnly))
			}
			switch {
			case ctx.Err() != nil:
			case err != nil:
				chaosErr = err.Error()
				failures = append(failures, fmt.Errorf("chaos suite: %w", err))
			}
		}
		if !o.skipSoak && ctx.Err() == nil {
			module := o.wasm
			if module == "" {
				module, err = locateWasm(ctx, root, detourBin, work, log)
			}
			if err == nil {
				soak, err = runSoak(ctx, cfg, module, o.soakDuration)
			}
			switch {
			case ctx.Err() != nil:
			case err != nil:
				soakErr = err.Error()
				failures = append(failures, fmt.Errorf("soak: %w", err))
			}
		}
	}
	if !o.skipMicro && ctx.Err() == nil {
		micro, err := runMicro(ctx, root, log)
		rep.Micro = micro
		if err != nil {
			rep.MicroErr = err.Error()
			failures = append(failures, fmt.Errorf("micro benchmarks: %w", err))
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("interrupted; %s left unchanged: %w", o.out, err)
	}
	rep.LoadAfter = loadAverage()
	rep.Elapsed = time.Since(start)

	// The main section holds parts 1-6; the wasm comparison and the
	// controller scenarios have their own markers, so `-only wasm` or
	// `-only controller` leaves the other figures in place (and a run
	// without them leaves their figures in place).
	mainPart := !o.skipE2E || !o.skipFailover || !o.skipMicro
	if o.out == "-" {
		if mainPart {
			_, err = stdout.Write(rep.markdown())
		}
		if err == nil && !o.skipWasm {
			_, err = stdout.Write(rep.wasmMarkdown())
		}
		if err == nil && !o.skipController {
			_, err = stdout.Write(controllerMarkdown(rep, ctl, ctlErr))
		}
		if err == nil && !o.skipCache {
			_, err = stdout.Write(cacheMarkdown(rep, cache, cacheErr))
		}
		if err == nil && !o.skipChaos {
			_, err = stdout.Write(chaosMarkdown(rep, chaos, chaosErr, "", ""))
		}
		if err == nil && !o.skipSoak {
			_, err = stdout.Write(soakMarkdown(rep, soak, soakErr))
		}
	} else {
		if mainPart {
			err = updateFile(o.out, rep.markdown())
		}
		if err == nil && !o.skipWasm {
			err = updateFileBetween(o.out, rep.wasmMarkdown(), wasmBeginMarker, wasmEndMarker)
		}
		if err == nil && !o.skipController {
			err = updateFileBetween(o.out, controllerMarkdown(rep, ctl, ctlErr), ctlBeginMarker, ctlEndMarker)
		}
		if err == nil && !o.skipCache {
			err = updateFileBetween(o.out, cacheMarkdown(rep, cache, cacheErr), cacheBeginMarker, cacheEndMarker)
		}
		if err == nil && !o.skipChaos {
			err = writeChaosReport(o, rep, chaos, chaosErr)
		}
		if !o.skipSoak {
			// A failed check is reported in the file and fails the run.
			if serr := writeSoakReport(o.soakOut, rep, soak, soakErr); serr != nil {
				failures = append(failures, serr)
			}
		}
		if err == nil {
			var files []string
			if mainPart || !o.skipWasm || !o.skipController || !o.skipCache {
				files = append(files, o.out)
			}
			if !o.skipChaos {
				files = append(files, o.chaosOut)
			}
			if !o.skipSoak {
				files = append(files, o.soakOut)
			}
			log.Info("report written", "files", files, "elapsed", rep.Elapsed.Round(time.Second))
		}
	}
	if err != nil {
		return err
	}
	return errors.Join(failures...)
}

// childOutput is where child processes' output is copied besides their log
// files: stderr with -v, nowhere otherwise.
func childOutput(verbose bool, stderr io.Writer) io.Writer {
	if verbose {
		return stderr
	}
	return io.Discard
}

// commandLine is how the run was invoked, for the report.
func commandLine(envoyBin string, args []string) string {
	var parts []string
	if envoyBin != "" {
		parts = append(parts, "ENVOY_BIN="+shellQuote(envoyBin))
	}
	parts = append(parts, "go run ./bench/cmd/detour-bench")
	for _, a := range args {
		parts = append(parts, shellQuote(a))
	}
	return strings.Join(parts, " ")
}

func shellQuote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\n'\"$\\`*?;&|<>()") {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
