package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/detourhq/detour/controller"
	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/healthview/viewhttp"
	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/signals"
	"github.com/detourhq/detour/xds"
)

// startController runs the live-metrics controller beside the control
// plane and returns the handler of its view (GET /v1/status). With the
// controller disabled the view says so and every backend counts as
// healthy.
func startController(ctx context.Context, p *policy.Policy, srv *xds.Server, reg prometheus.Registerer, log *slog.Logger) (*controller.Controller, *viewhttp.Publisher, error) {
	pub := viewhttp.NewPublisher()
	if p.Controller.Disabled {
		pub.Publish(&healthview.Snapshot{At: time.Now(), Source: "disabled", Backends: map[string]healthview.Backend{}, Routes: map[string]healthview.Route{}})
		log.Info("controller disabled: Envoy keeps the policy's settings")
		return nil, pub, nil
	}
	prober, err := newProber(p, log)
	if err != nil {
		return nil, nil, err
	}
	cfg := controller.Config{
		Policy: p, NewSource: signalSource, NewHosts: hostSource, Pusher: srv, Publisher: pub,
		Metrics: controller.NewMetrics(reg), Log: log.With("component", "controller"),
	}
	if prober != nil {
		// The probes' clients (TLS settings included) check that an
		// endpoint out of service answers again before it takes traffic.
		cfg.Prober, cfg.Reacher = prober, prober
	}
	c, err := controller.New(cfg)
	if err != nil {
		return nil, nil, err
	}
	go c.Run(ctx)
	return c, pub, nil
}

// signalSource builds where the controller reads its signals.
func signalSource(p *policy.Policy) (signals.Source, error) {
	names := backendNames(p)
	win := signals.DefaultWindowConfig()
	win.Length = p.CircuitBreaker.Window.D()
	win.StaleAfter = p.Controller.StaleAfter.D()
	switch p.Controller.Source {
	case policy.SourcePrometheus:
		src, err := signals.NewPrometheusSource(signals.PrometheusSourceConfig{
			URL: p.Controller.Prometheus.URL, Selector: p.Controller.Prometheus.Selector,
			Backend: signals.Backends(names...), Length: win.Length, FailureSpan: win.FailureSpan,
			StaleAfter: p.Controller.StaleAfter.D(), Timeout: p.Controller.Prometheus.Timeout.D(),
		})
		if err != nil {
			return nil, fmt.Errorf("prometheus source: %w", err)
		}
		return src, nil
	default:
		src, err := signals.NewEnvoySource(signals.EnvoySourceConfig{
			Admins: adminURLs(p), Client: &http.Client{Timeout: scrapeTimeout(p)},
			Backend: signals.Backends(names...), Window: win,
		})
		if err != nil {
			return nil, fmt.Errorf("envoy source: %w", err)
		}
		return src, nil
	}
}

// hostSource reads each Envoy's /clusters for the endpoints' own error
// rates (their weights). A Prometheus source has no per-endpoint series:
// none there.
func hostSource(p *policy.Policy) (controller.HostSource, error) {
	if p.Controller.Source != policy.SourceEnvoy {
		return nil, nil
	}
	hs, err := signals.NewHostSource(adminURLs(p), &http.Client{Timeout: scrapeTimeout(p)}, signals.Backends(backendNames(p)...), p.CircuitBreaker.Window.D())
	if err != nil {
		return nil, fmt.Errorf("endpoint source: %w", err)
	}
	return hs, nil
}

func backendNames(p *policy.Policy) []string {
	names := make([]string, len(p.Backends))
	for i, b := range p.Backends {
		names[i] = b.Name
	}
	return names
}

// adminURLs are the Envoys' admin base URLs.
func adminURLs(p *policy.Policy) []string {
	admins := make([]string, len(p.EnvoyAdmins()))
	for i, a := range p.EnvoyAdmins() {
		admins[i] = "http://" + a
	}
	return admins
}

// scrapeTimeout: a scrape must end well within one interval, so one hung
// Envoy does not hold up the verdict on the others.
func scrapeTimeout(p *policy.Policy) time.Duration {
	return min(max(p.Controller.Interval.D()*8/10, 200*time.Millisecond), 5*time.Second)
}
