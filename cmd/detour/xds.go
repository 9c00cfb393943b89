package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"google.golang.org/grpc"

	"github.com/detourhq/detour/extproc"
	"github.com/detourhq/detour/healthview/viewhttp"
	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/xds"
)

func runXDS(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("xds", stderr)
	var sf serviceFlags
	sf.register(fs, "gRPC address Envoys connect to (default: xds.listen of the policy)",
		"Prometheus /metrics address (default: xds.metrics of the policy)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	p, log, err := sf.load(stderr, func(p *policy.Policy) (*string, *string) { return &p.XDS.Listen, &p.XDS.Metrics })
	if err != nil {
		return err
	}
	wm, err := findWasmModule(p, log)
	if err != nil {
		return err
	}
	svc, err := startXDS(ctx, p, sf.policy.path, wm, log)
	if err != nil {
		return err
	}
	<-ctx.Done()
	return svc.stop()
}

// xdsService is a running control plane: ADS server, metrics, and the
// policy watch that feeds it.
type xdsService struct {
	server   *xds.Server
	grpc     *grpc.Server
	endpoint *metricsEndpoint
	addr     string
	log      *slog.Logger
	done     chan error
}

// startXDS serves p over ADS and, when policyPath is set, follows the file.
func startXDS(ctx context.Context, p *policy.Policy, policyPath string, wm *xds.WasmModule, log *slog.Logger) (*xdsService, error) {
	log = log.With("component", "xds")
	reg := newRegistry()
	m := xds.NewMetrics(reg)
	srv := xds.NewServer(ctx, p, log, m)
	var extra []handler
	if wm != nil {
		srv.SetWasmModule(wm)
		// Envoy fetches the plugin from here, pinned by its sha256.
		extra = append(extra, handler{"GET " + wm.WasmURLPath(), xds.WasmHandler(wm)})
	}
	ctl, pub, err := startController(ctx, p, srv, reg, log)
	if err != nil {
		return nil, err
	}
	// The controller's view: the ext_proc services follow it, `detour
	// status` shows it.
	extra = append(extra, handler{"GET " + viewhttp.Path, pub})
	g := grpc.NewServer(extproc.GRPCOptions(16 << 20)...)
	x := srv.XDS()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, x)
	listenerservice.RegisterListenerDiscoveryServiceServer(g, x)
	routeservice.RegisterRouteDiscoveryServiceServer(g, x)
	clusterservice.RegisterClusterDiscoveryServiceServer(g, x)
	endpointservice.RegisterEndpointDiscoveryServiceServer(g, x)

	var lc net.ListenConfig
	gl, err := lc.Listen(ctx, "tcp", p.XDS.Listen)
	if err != nil {
		return nil, fmt.Errorf("xds listen: %w", err)
	}
	s := &xdsService{server: srv, grpc: g, addr: gl.Addr().String(), log: log, done: make(chan error, 2)}
	if s.endpoint, err = serveMetrics(ctx, p.XDS.Metrics, reg, s.done, extra...); err != nil {
		gl.Close()
		return nil, err
	}
	go func() { s.done <- g.Serve(gl) }()
	m.Reloads.WithLabelValues("ok").Inc()
	if policyPath != "" {
		go watchPolicy(ctx, policyPath, log, m.Reloads, func(np *policy.Policy) error {
			if err := srv.SetPolicy(ctx, np); err != nil {
				return err
			}
			if ctl != nil {
				ctl.SetPolicy(np)
			}
			return nil
		})
	}
	log.Info("xds serving", "grpc", s.addr, "metrics", "http://"+s.endpoint.addr+"/metrics", "watching", policyPath)
	return s, nil
}

func (s *xdsService) stop() error {
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		// ADS streams never end on their own: close them.
		s.grpc.Stop()
	}
	return s.endpoint.stop()
}

// findWasmModule loads detour's proxy-wasm module: wasm.module of the
// policy, else detour.wasm beside this executable. Without one Envoy runs
// without the plugin, which only a policy with wasm routing cannot do.
func findWasmModule(p *policy.Policy, log *slog.Logger) (*xds.WasmModule, error) {
	path := p.Wasm.Module
	if path == "" {
		exe, err := os.Executable()
		if err == nil {
			path = filepath.Join(filepath.Dir(exe), "detour.wasm")
		}
		if _, err := os.Stat(path); err != nil {
			if p.UsesWasmRouting() {
				return nil, fmt.Errorf("routing mode wasm needs detour's wasm module: none at %s (build it with `make wasm`, or set wasm.module)", path)
			}
			log.Info("no wasm plugin found: Envoy runs without in-Envoy measurement", "looked_at", path)
			return nil, nil
		}
	}
	m, err := xds.LoadWasmModule(path)
	if err != nil {
		return nil, err
	}
	log.Info("wasm plugin", "path", m.Path, "sha256", m.SHA256, "bytes", len(m.Bytes))
	return m, nil
}
