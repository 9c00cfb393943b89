// Command detour-bench is the program behind `make bench`. In one run it
// measures
//
//   - the latency and throughput cost of detour's ext_proc service: the same
//     Envoy config with and without the ext_proc filter, in front of a
//     simulated provider, all on loopback (see e2e.go);
//   - detour's own routing decision time, from its Prometheus histogram;
//   - the Go micro benchmarks of the routing core (see micro.go);
//
// and writes the figures into BENCHMARKS.md between the markers
// <!-- bench:begin --> and <!-- bench:end --> (see report.go).
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
	detour         string // detour binary; empty: build one
	out            string // report file; "-": stdout only
	rate           float64
	duration       time.Duration
	warmup         time.Duration
	rounds         int
	workers        int
	closedDuration time.Duration
	closedWarmup   time.Duration
	skipMicro      bool
	skipE2E        bool
	verbose        bool
}

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
	fs.BoolVar(&o.skipE2E, "skip-e2e", false, "skip the Envoy end-to-end measurements")
	fs.BoolVar(&o.verbose, "v", false, "verbose: debug logs, and the child processes' output on stderr")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	switch {
	case !(o.rate > 0):
		return o, errors.New("-rate must be > 0")
	case o.duration <= 0 || o.closedDuration <= 0:
		return o, errors.New("-duration and -closed-duration must be > 0")
	case o.warmup < 0 || o.closedWarmup < 0:
		return o, errors.New("warm-ups must be >= 0")
	case o.rounds < 1:
		return o, errors.New("-rounds must be >= 1")
	case o.workers < 1:
		return o, errors.New("-workers must be >= 1")
	case o.skipE2E && o.skipMicro:
		return o, errors.New("-skip-e2e and -skip-micro together leave nothing to measure")
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
	defer os.RemoveAll(work)

	rep := &report{
		Started: start.UTC(),
		Command: commandLine(os.Getenv("ENVOY_BIN"), args),
		Options: o,
	}
	rep.Machine = probeMachine(ctx, root)
	rep.LoadBefore = loadAverage()

	var failures []error
	if !o.skipE2E {
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
		e2e, err := runE2E(ctx, e2eConfig{
			opts: o, envoyBin: envoyBin, detourBin: detourBin, workDir: work,
			childOutput: childOutput(o.verbose, stderr), log: log,
		})
		if err != nil {
			return fmt.Errorf("end-to-end benchmark: %w", err)
		}
		rep.E2E = e2e
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

	section := rep.markdown()
	if o.out == "-" {
		_, err = stdout.Write(section)
	} else {
		err = updateFile(o.out, section)
		if err == nil {
			log.Info("report written", "file", o.out, "elapsed", rep.Elapsed.Round(time.Second))
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
