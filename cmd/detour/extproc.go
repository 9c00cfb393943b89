package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/detourhq/detour/extproc"
	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/healthview/viewhttp"
	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/respcache"
)

func runExtProc(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("extproc", stderr)
	var sf serviceFlags
	sf.register(fs, "gRPC address Envoy calls (default: extproc.listen of the policy)",
		"Prometheus /metrics address (default: extproc.metrics of the policy)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	p, log, err := sf.load(stderr, func(p *policy.Policy) (*string, *string) { return &p.ExtProc.Listen, &p.ExtProc.Metrics })
	if err != nil {
		return err
	}
	ep, err := startExtProc(ctx, p, log)
	if err != nil {
		return err
	}
	if path := sf.policy.path; path != "" {
		go watchPolicy(ctx, path, log, ep.metrics.PolicyReloads, ep.server.SetPolicy)
	}
	<-ctx.Done()
	return ep.stop()
}

// extProcService is a running ext_proc gRPC server and its metrics endpoint.
// Streams already open when the policy changes finish on the one they began
// with.
type extProcService struct {
	server   *extproc.Server
	metrics  *extproc.Metrics
	grpc     *grpc.Server
	endpoint *metricsEndpoint
	grpcAddr string
	log      *slog.Logger
	done     chan error
}

// startExtProc listens on the policy's ext_proc and metrics addresses and
// serves until stop.
func startExtProc(ctx context.Context, p *policy.Policy, log *slog.Logger) (*extProcService, error) {
	reg := newRegistry()
	m := extproc.NewMetrics(reg)
	tok, err := extproc.NewTokenizer()
	if err != nil {
		return nil, err
	}
	cfg := extproc.Config{Policy: p, Metrics: m, Logger: log, Tokenizer: tok}
	// Requests queued while their backends are OPEN wake on each view.
	var srvRef atomic.Pointer[extproc.Server]
	if !p.Controller.Disabled {
		cfg.Health = watchHealth(ctx, p.ControllerURL(), m, log, func() {
			if s := srvRef.Load(); s != nil {
				s.HealthChanged()
			}
		})
	}
	if cfg.Cache, err = openCache(ctx, p, reg, log); err != nil {
		return nil, err
	}
	srv, err := extproc.New(cfg)
	if err != nil {
		return nil, err
	}
	srvRef.Store(srv)
	m.PolicyReloads.WithLabelValues("ok").Inc()
	// gRPC carries the whole body plus framing.
	g, _ := extproc.NewGRPCServer(srv, int(p.Limits.MaxBodyBytes)+1<<20)
	var lc net.ListenConfig
	gl, err := lc.Listen(ctx, "tcp", p.ExtProc.Listen)
	if err != nil {
		return nil, fmt.Errorf("ext_proc listen: %w", err)
	}
	s := &extProcService{server: srv, metrics: m, grpc: g, grpcAddr: gl.Addr().String(), log: log, done: make(chan error, 2)}
	if s.endpoint, err = serveMetrics(ctx, p.ExtProc.Metrics, reg, s.done); err != nil {
		gl.Close()
		return nil, err
	}
	go func() { s.done <- g.Serve(gl) }()
	log.Info("ext_proc serving", "grpc", s.grpcAddr, "metrics", "http://"+s.endpoint.addr+"/metrics",
		"backends", len(p.Backends), "max_body_bytes", int64(p.Limits.MaxBodyBytes))
	return s, nil
}

// openCache builds the response cache the policy asks for (nil: off).
// The store is opened lazily: a Redis that is down at start only means
// no cache until it is up (detour_cache_backend_up says so).
func openCache(ctx context.Context, p *policy.Policy, reg prometheus.Registerer, log *slog.Logger) (*respcache.Cache, error) {
	if !p.CacheOn() {
		return nil, nil
	}
	cfg := respcache.Config{
		Retention:     p.Cache.Retention.D(),
		MaxEntryBytes: int(p.Cache.MaxEntryBytes),
		Metrics:       respcache.NewMetrics(reg),
	}
	switch p.Cache.Store {
	case policy.CacheRedis:
		r := &p.Cache.Redis
		pw, err := r.RedisPassword()
		if err != nil {
			return nil, err
		}
		store := respcache.NewRedis(respcache.RedisOptions{Addr: r.Address, Username: r.Username, Password: pw, DB: r.DB, Timeout: r.Timeout.D()})
		cfg.Store, cfg.OpTimeout = store, r.Timeout.D()
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if err := store.Ping(pctx); err != nil {
			log.Warn("response cache: Redis does not answer; serving without the cache until it does", "redis", r.Address, "err", err)
		} else {
			log.Info("response cache in Redis", "redis", r.Address)
		}
	default:
		cfg.Store = respcache.NewMemory(int64(p.Cache.MaxBytes))
		log.Info("response cache in memory", "max_bytes", int64(p.Cache.MaxBytes))
	}
	return respcache.New(cfg), nil
}

// watchHealth follows the controller's view until ctx ends. Errors are
// counted always, logged once per outage: the control plane may simply
// not be up yet.
func watchHealth(ctx context.Context, url string, m *extproc.Metrics, log *slog.Logger, changed func()) *viewhttp.Watcher {
	w := viewhttp.NewWatcher(url)
	failing := false
	w.OnError = func(err error) {
		m.HealthViewErrors.Inc()
		if !failing {
			failing = true
			log.Warn("controller view unreachable; routing on the last view received (none: every backend healthy)", "url", url, "err", err)
		}
	}
	w.OnUpdate = func(s *healthview.Snapshot) {
		if failing {
			failing = false
			log.Info("controller view reachable again", "url", url)
		}
		m.HealthView.Set(float64(s.Version))
		var notHealthy []string
		for name, b := range s.Backends {
			if b.State != healthview.Healthy || b.Throttled {
				notHealthy = append(notHealthy, name+"="+b.State)
			}
		}
		log.Debug("controller view", "version", s.Version, "not_healthy", notHealthy)
		changed()
	}
	go w.Run(ctx)
	return w
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
	s.server.Close()
	err := s.endpoint.stop()
	s.log.Info("ext_proc stopped")
	return err
}
