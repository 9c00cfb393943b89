package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/detourhq/detour/policy"
)

// serviceFlags are what the long-running services share: --policy, the
// listen and metrics addresses that override the policy's, and logging.
type serviceFlags struct {
	policy          policyFlag
	log             logFlags
	listen, metrics string
}

func (f *serviceFlags) register(fs *flag.FlagSet, listenHelp, metricsHelp string) {
	f.policy.register(fs)
	fs.StringVar(&f.listen, "listen", "", listenHelp)
	fs.StringVar(&f.metrics, "metrics", "", metricsHelp)
	f.log.register(fs)
}

// load builds the logger and loads the policy, with the address flags
// written over the policy's own; addrs names which fields they are.
func (f *serviceFlags) load(stderr io.Writer, addrs func(*policy.Policy) (listen, metrics *string)) (*policy.Policy, *slog.Logger, error) {
	log, err := f.log.logger(stderr)
	if err != nil {
		return nil, nil, err
	}
	p, err := f.policy.load()
	if err != nil {
		return nil, nil, err
	}
	listen, metrics := addrs(p)
	if f.listen != "" {
		*listen = f.listen
	}
	if f.metrics != "" {
		*metrics = f.metrics
	}
	return p, log, nil
}

// logFlags are --log-level and --log-format.
type logFlags struct{ level, format string }

func (l *logFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.level, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&l.format, "log-format", "text", "text or json")
}

func (l *logFlags) logger(w io.Writer) (*slog.Logger, error) { return newLogger(w, l.level, l.format) }

// newRegistry is a Prometheus registry with the Go and process collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// handler is one more route on a service's HTTP endpoint.
type handler struct {
	pattern string
	h       http.Handler
}

// metricsEndpoint serves a registry's /metrics (and /healthz) over HTTP.
type metricsEndpoint struct {
	srv  *http.Server
	addr string
}

// serveMetrics listens on addr and serves reg until stop; a serving error
// goes to done.
func serveMetrics(ctx context.Context, addr string, reg *prometheus.Registry, done chan<- error, extra ...handler) (*metricsEndpoint, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	for _, h := range extra {
		mux.Handle(h.pattern, h.h)
	}
	m := &metricsEndpoint{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, addr: ln.Addr().String()}
	go func() {
		err := m.srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		done <- err
	}()
	return m, nil
}

func (m *metricsEndpoint) stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return m.srv.Shutdown(ctx)
}

// watchPolicy follows the policy file for one component until ctx ends:
// apply takes each valid change; a change that is invalid, or that apply
// refuses, is logged with its problems and counted, and the last good
// policy stays.
func watchPolicy(ctx context.Context, path string, log *slog.Logger, reloads *prometheus.CounterVec, apply func(*policy.Policy) error) {
	err := policy.Watch(ctx, path, func(p *policy.Policy) {
		if err := apply(p); err != nil {
			reloads.WithLabelValues("invalid").Inc()
			log.Error("policy change not applied; the last good policy stays", "err", err)
			return
		}
		reloads.WithLabelValues("ok").Inc()
		log.Info("policy change applied", "file", path)
	}, func(err error) {
		reloads.WithLabelValues("invalid").Inc()
		log.Error("policy change rejected; the last good policy stays", "problems", err.Error())
	})
	if err != nil {
		log.Error("policy watch stopped", "err", err)
	}
}
