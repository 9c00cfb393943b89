package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	"github.com/detourhq/detour/extproc"
	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/xds"
)

func runXDS(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("xds", stderr)
	var pf policyFlag
	pf.register(fs)
	listen := fs.String("listen", "", "gRPC address Envoys connect to (default: xds.listen of the policy)")
	metrics := fs.String("metrics", "", "Prometheus /metrics address (default: xds.metrics of the policy)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := newLogger(stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}
	p, err := pf.load()
	if err != nil {
		return err
	}
	if *listen != "" {
		p.XDS.Listen = *listen
	}
	if *metrics != "" {
		p.XDS.Metrics = *metrics
	}
	svc, err := startXDS(ctx, p, pf.path, log)
	if err != nil {
		return err
	}
	<-ctx.Done()
	return svc.stop()
}

// xdsService is a running control plane: ADS server, metrics, and the
// policy watch that feeds it.
type xdsService struct {
	server     *xds.Server
	grpc       *grpc.Server
	metricsSrv *http.Server
	addr       string
	log        *slog.Logger
	done       chan error
}

// startXDS serves p over ADS and, when policyPath is set, follows the file:
// a valid change is pushed to every Envoy, an invalid one is logged with its
// positions, counted, and the last good policy stays.
func startXDS(ctx context.Context, p *policy.Policy, policyPath string, log *slog.Logger) (*xdsService, error) {
	log = log.With("component", "xds")
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := xds.NewMetrics(reg)
	srv := xds.NewServer(ctx, p, log, m)
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
	ml, err := lc.Listen(ctx, "tcp", p.XDS.Metrics)
	if err != nil {
		gl.Close()
		return nil, fmt.Errorf("xds metrics listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	s := &xdsService{
		server: srv, grpc: g, addr: gl.Addr().String(), log: log,
		metricsSrv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second},
		done:       make(chan error, 3),
	}
	go func() { s.done <- g.Serve(gl) }()
	go func() {
		err := s.metricsSrv.Serve(ml)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.done <- err
	}()
	m.Reloads.WithLabelValues("ok").Inc()
	if policyPath != "" {
		go func() {
			err := policy.Watch(ctx, policyPath, func(np *policy.Policy) {
				if err := srv.SetPolicy(ctx, np); err != nil {
					m.Reloads.WithLabelValues("invalid").Inc()
					log.Error("policy change not applied; the last good policy stays", "err", err)
					return
				}
				m.Reloads.WithLabelValues("ok").Inc()
				log.Info("policy change applied", "file", policyPath)
			}, func(err error) {
				m.Reloads.WithLabelValues("invalid").Inc()
				log.Error("policy change rejected; the last good policy stays", "problems", err.Error())
			})
			if err != nil {
				log.Error("policy watch stopped", "err", err)
			}
		}()
	}
	log.Info("xds serving", "grpc", s.addr, "metrics", "http://"+ml.Addr().String()+"/metrics", "watching", policyPath)
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
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return s.metricsSrv.Shutdown(ctx)
}
