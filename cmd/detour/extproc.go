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

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	"github.com/detourhq/detour/extproc"
	"github.com/detourhq/detour/policy"
)

func runExtProc(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("extproc", stderr)
	var pf policyFlag
	pf.register(fs)
	listen := fs.String("listen", "", "gRPC address Envoy calls (default: extproc.listen of the policy)")
	metrics := fs.String("metrics", "", "Prometheus /metrics address (default: extproc.metrics of the policy)")
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
		p.ExtProc.Listen = *listen
	}
	if *metrics != "" {
		p.ExtProc.Metrics = *metrics
	}
	ep, err := startExtProc(ctx, p, log)
	if err != nil {
		return err
	}
	if pf.path != "" {
		go ep.watch(ctx, pf.path)
	}
	<-ctx.Done()
	return ep.stop()
}

// extProcService is a running ext_proc gRPC server and its metrics endpoint.
type extProcService struct {
	server     *extproc.Server
	metrics    *extproc.Metrics
	grpc       *grpc.Server
	metricsSrv *http.Server
	grpcAddr   string
	metricAddr string
	log        *slog.Logger
	done       chan error
}

// startExtProc listens on the policy's ext_proc and metrics addresses and
// serves until stop.
func startExtProc(ctx context.Context, p *policy.Policy, log *slog.Logger) (*extProcService, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := extproc.NewMetrics(reg)
	tok, err := extproc.NewTokenizer()
	if err != nil {
		return nil, err
	}
	srv, err := extproc.New(extproc.Config{Policy: p, Metrics: m, Logger: log, Tokenizer: tok})
	if err != nil {
		return nil, err
	}
	m.PolicyReloads.WithLabelValues("ok").Inc()
	// gRPC carries the whole body plus framing.
	g, _ := extproc.NewGRPCServer(srv, int(p.Limits.MaxBodyBytes)+1<<20)
	var lc net.ListenConfig
	gl, err := lc.Listen(ctx, "tcp", p.ExtProc.Listen)
	if err != nil {
		return nil, fmt.Errorf("ext_proc listen: %w", err)
	}
	ml, err := lc.Listen(ctx, "tcp", p.ExtProc.Metrics)
	if err != nil {
		gl.Close()
		return nil, fmt.Errorf("metrics listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	s := &extProcService{
		server: srv, metrics: m, grpc: g, grpcAddr: gl.Addr().String(), metricAddr: ml.Addr().String(), log: log,
		metricsSrv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second},
		done:       make(chan error, 2),
	}
	go func() { s.done <- g.Serve(gl) }()
	go func() {
		err := s.metricsSrv.Serve(ml)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.done <- err
	}()
	log.Info("ext_proc serving", "grpc", s.grpcAddr, "metrics", "http://"+s.metricAddr+"/metrics",
		"backends", len(p.Backends), "max_body_bytes", int64(p.Limits.MaxBodyBytes))
	return s, nil
}

// watch follows the policy file: streams already open finish on the policy
// they started with; an invalid change is logged and the last good policy
// stays.
func (s *extProcService) watch(ctx context.Context, path string) {
	err := policy.Watch(ctx, path, func(p *policy.Policy) {
		if err := s.server.SetPolicy(p); err != nil {
			s.metrics.PolicyReloads.WithLabelValues("invalid").Inc()
			s.log.Error("policy change not applied; the last good policy stays", "err", err)
			return
		}
		s.metrics.PolicyReloads.WithLabelValues("ok").Inc()
		s.log.Info("policy change applied", "file", path)
	}, func(err error) {
		s.metrics.PolicyReloads.WithLabelValues("invalid").Inc()
		s.log.Error("policy change rejected; the last good policy stays", "problems", err.Error())
	})
	if err != nil {
		s.log.Error("policy watch stopped", "err", err)
	}
}

// stop drains in-flight streams for up to 5 s, then closes.
func (s *extProcService) stop() error {
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		s.log.Warn("ext_proc: streams still open after 5s; closing them")
		s.grpc.Stop()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.metricsSrv.Shutdown(ctx)
	s.log.Info("ext_proc stopped")
	return err
}
