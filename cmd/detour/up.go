package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"

	"github.com/detourhq/detour/envoy"
	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/sim"
	"github.com/detourhq/detour/xds"
)

func runUp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("up", stderr)
	var pf policyFlag
	pf.register(fs)
	noSim := fs.Bool("no-sim", false, "do not start simulated providers for loopback endpoints")
	workDir := fs.String("workdir", "", "where the generated Envoy config is written (default: a temporary directory)")
	envoyLog := fs.String("envoy-log-level", "warn", "Envoy's log level")
	concurrency := fs.Int("concurrency", 2, "Envoy worker threads")
	static := fs.Bool("static", false, "give Envoy a static config instead of running the xDS control plane")
	region := fs.String("region", "", "the Envoy's region: the backends' endpoints there come first")
	var lf logFlags
	lf.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	p, err := pf.load()
	if err != nil {
		return err
	}
	bin, err := envoy.Locate("")
	if err != nil {
		return err
	}
	ver, err := envoy.Version(ctx, bin)
	if err != nil {
		return err
	}
	log.Info("envoy found", "path", bin, "version", ver)

	dir := *workDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "detour-up-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}

	var sims []*sim.Server
	defer func() { stopSims(sims, log) }()
	if !*noSim {
		if sims, err = startSims(ctx, p, log); err != nil {
			return err
		}
	}
	if *static {
		// No control plane, so no controller: Envoy keeps the policy's
		// settings and the processor does not look for a view.
		p.Controller.Disabled = true
	}
	ep, err := startExtProc(ctx, p, log)
	if err != nil {
		return err
	}
	defer ep.stop()

	wm, err := findWasmModule(p, log)
	if err != nil {
		return err
	}
	var b *bootstrapv3.Bootstrap
	if *static {
		b, err = xds.StaticBootstrapFor(p, xds.Options{Wasm: wm})
	} else {
		xs, err := startXDS(ctx, p, pf.path, wm, log)
		if err != nil {
			return err
		}
		defer xs.stop()
		b, err = xds.DynamicBootstrap(p, xds.DynamicOptions{NodeID: "detour-up", Region: *region})
		if err != nil {
			return err
		}
	}
	if err != nil {
		return err
	}
	cfg, err := xds.MarshalBootstrap(b)
	if err != nil {
		return err
	}
	cfgPath := filepath.Join(dir, "envoy.json")
	if err := os.WriteFile(cfgPath, cfg, 0o644); err != nil {
		return err
	}
	// Envoy outlives a cancelled ctx only by the stop below, which runs
	// before the ext_proc service and the providers close.
	proc, err := envoy.Start(context.WithoutCancel(ctx), envoy.Options{
		Bin: bin, ConfigPath: cfgPath, AdminAddr: p.Envoy.Admin,
		Concurrency: *concurrency, LogLevel: *envoyLog, Stdout: stderr, Stderr: stderr,
	})
	if err != nil {
		return err
	}
	defer proc.Stop(10 * time.Second)
	if err := proc.WaitReady(ctx, 30*time.Second); err != nil {
		return err
	}
	fmt.Fprintf(stdout, `detour is up.
  Envoy:    http://%[1]s   (admin http://%[2]s)
  ext_proc: %[3]s   (metrics http://%[4]s/metrics)
  config:   %[5]s%[6]s

Try:
  curl -s http://%[1]s/v1/chat/completions -H 'content-type: application/json' \
    -d '{"model":"auto","messages":[{"role":"user","content":"hello"}]}' -i

Ctrl-C stops everything.
`, p.Envoy.Listen, p.Envoy.Admin, ep.grpcAddr, ep.endpoint.addr, cfgPath, xdsLine(*static, p))

	select {
	case <-ctx.Done():
		log.Info("shutting down")
		return nil
	case <-proc.Done():
		return fmt.Errorf("envoy exited: %v", proc.Err())
	case err := <-ep.done:
		return fmt.Errorf("ext_proc stopped: %w", err)
	}
}

// startSims starts a simulated provider for every loopback endpoint.
func startSims(ctx context.Context, p *policy.Policy, log *slog.Logger) ([]*sim.Server, error) {
	var out []*sim.Server
	for _, b := range p.Backends {
		for _, e := range b.Endpoints {
			host, _, err := net.SplitHostPort(e.Address)
			if err != nil {
				return out, err
			}
			if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
				log.Info("not simulating a non-loopback endpoint", "backend", b.Name, "address", e.Address)
				continue
			}
			// Structured: JSON-mode and tool-call requests get answers of
			// that shape, as a real model's, so detour's health probes of
			// those kinds pass.
			s, err := sim.New(sim.Config{Name: b.Name, Addr: e.Address, Models: []string{b.Model}, Structured: true, Logger: log})
			if err != nil {
				return out, fmt.Errorf("simulated provider for %s: %w", b.Name, err)
			}
			if err := s.Start(ctx); err != nil {
				return out, fmt.Errorf("simulated provider for %s at %s: %w", b.Name, e.Address, err)
			}
			out = append(out, s)
			log.Info("simulated provider", "backend", b.Name, "addr", s.Addr(), "fault_admin", s.AdminAddr())
		}
	}
	return out, nil
}

func stopSims(sims []*sim.Server, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range sims {
		if err := s.Close(ctx); err != nil && !errors.Is(err, context.Canceled) {
			log.Warn("simulated provider did not stop cleanly", "name", s.Name(), "err", err)
		}
	}
}

func xdsLine(static bool, p *policy.Policy) string {
	if static {
		return "  (static)"
	}
	return fmt.Sprintf("\n  xds:      %s   (metrics http://%s/metrics)", p.XDS.Listen, p.XDS.Metrics)
}
