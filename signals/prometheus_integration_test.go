package signals

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// integrationBins returns the Envoy and Prometheus binaries, or skips the
// test when they are not given; under CI (CI=true) a missing one fails it,
// so that the check cannot silently stop running.
func integrationBins(t *testing.T) (envoyBin, promBin string) {
	t.Helper()
	envoyBin, promBin = os.Getenv("ENVOY_BIN"), os.Getenv("PROMETHEUS_BIN")
	if envoyBin != "" && promBin != "" {
		return envoyBin, promBin
	}
	msg := "ENVOY_BIN and PROMETHEUS_BIN must both be set (make unit sets them: scripts/get-envoy.sh, scripts/get-prometheus.sh)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return "", ""
}

// freePort finds a free loopback port. Another process could take it
// before the server binds it; on loopback in a test that is unlikely
// enough, and the failure would be loud.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// syncBuffer collects a process's output for the log on failure.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// start runs a process for the test's duration and dumps its output if
// the test fails.
func start(t *testing.T, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(name), out.String())
		}
	})
}

// waitFor polls cond every 200 ms until it holds or the deadline passes.
func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

const integrationEnvoyConfig = `
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: %[1]d}}
stats_flush_interval: 1s
static_resources:
  listeners:
  - name: in
    address: {socket_address: {address: 127.0.0.1, port_value: %[2]d}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: in
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /, headers: [{name: x-backend, string_match: {exact: good}}]}
                route: {cluster: good}
              - match: {prefix: /, headers: [{name: x-backend, string_match: {exact: flaky}}]}
                route: {cluster: flaky}
  clusters:
  - name: good
    type: STATIC
    load_assignment:
      cluster_name: good
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: %[3]d}}}}]}]
  - name: flaky
    type: STATIC
    load_assignment:
      cluster_name: flaky
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: %[4]d}}}}]}]
`

const integrationPromConfig = `
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
- job_name: envoy
  metrics_path: /stats/prometheus
  params:
    usedonly: [""]
    filter: [%q]
  static_configs: [{targets: ["127.0.0.1:%d"]}]
`

// TestPrometheusSourceAgreesWithEnvoySource runs a real Envoy in front of
// two upstreams (flaky answers every fourth request with a 503), a real
// Prometheus scraping Envoy's admin endpoint every second, and checks that
// both sources read the same traffic the same way.
func TestPrometheusSourceAgreesWithEnvoySource(t *testing.T) {
	envoyBin, promBin := integrationBins(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var flakyN atomic.Int64
	good := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ok"))
	}))
	defer good.Close()
	flaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if flakyN.Add(1)%4 == 0 {
			http.Error(w, "overloaded", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	defer flaky.Close()
	port := func(s *httptest.Server) int { return s.Listener.Addr().(*net.TCPAddr).Port }

	dir := t.TempDir()
	adminPort, listenPort, promPort := freePort(t), freePort(t), freePort(t)
	envoyCfg := filepath.Join(dir, "envoy.yaml")
	if err := os.WriteFile(envoyCfg, fmt.Appendf(nil, integrationEnvoyConfig, adminPort, listenPort, port(good), port(flaky)), 0o644); err != nil {
		t.Fatal(err)
	}
	promCfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(promCfg, fmt.Appendf(nil, integrationPromConfig, StatsFilter, adminPort), 0o644); err != nil {
		t.Fatal(err)
	}
	start(t, envoyBin, "-c", envoyCfg, "--disable-hot-restart", "--log-level", "warn")
	start(t, promBin, "--config.file="+promCfg, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		fmt.Sprintf("--web.listen-address=127.0.0.1:%d", promPort), "--log.level=warn")

	client := &http.Client{Timeout: 2 * time.Second}
	admin := fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	promURL := fmt.Sprintf("http://127.0.0.1:%d", promPort)
	ready := func(u string) func() bool {
		return func() bool {
			resp, err := client.Get(u)
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		}
	}
	waitFor(t, "Envoy ready", 15*time.Second, ready(admin+"/ready"))
	waitFor(t, "Prometheus ready", 15*time.Second, ready(promURL+"/-/ready"))

	send := func(backend string, n int) {
		t.Helper()
		for range n {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/", listenPort), nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("x-backend", backend)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
		}
	}
	backends := Backends("good", "flaky")
	envoySrc, err := NewEnvoySource(EnvoySourceConfig{Admins: []string{admin}, Client: client, Backend: backends, Window: DefaultWindowConfig()})
	if err != nil {
		t.Fatal(err)
	}
	newProm := func(length time.Duration) *PrometheusSource {
		t.Helper()
		p, err := NewPrometheusSource(PrometheusSourceConfig{URL: promURL, Selector: `job="envoy"`, Backend: backends, Length: length, StaleAfter: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	// promHas waits until Prometheus has scraped the counters EnvoySource
	// reads now.
	promHas := func(want map[string]Stats) {
		t.Helper()
		p := newProm(30 * time.Second)
		waitFor(t, "Prometheus to scrape the final counters", 15*time.Second, func() bool {
			got, err := p.Collect(ctx, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			for b, w := range want {
				if g := got[b]; g.TotalRequests != w.TotalRequests || g.TotalErrors != w.TotalErrors || g.TotalTooManyRequests != w.TotalTooManyRequests {
					return false
				}
			}
			return true
		})
	}

	// Warm-up: Envoy creates a cluster's counters on first use, and
	// increase() cannot see the increments before a series' first sample.
	// After this, every series the test reads exists in Prometheus.
	send("good", 4)
	send("flaky", 4)
	warm, err := envoySrc.Collect(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	promHas(warm)
	// One more scrape interval, so the window below starts after the
	// warm-up's last increment.
	time.Sleep(1500 * time.Millisecond)
	t0 := time.Now()
	if _, err := envoySrc.Collect(ctx, t0); err != nil {
		t.Fatal(err)
	}

	const n = 200
	send("good", n)
	send("flaky", n)
	final, err := envoySrc.Collect(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	sent := time.Since(t0)
	promHas(final)
	scraped := time.Since(t0)
	// A longer window makes increase()'s extrapolation smaller: the
	// samples span all of the window but up to a scrape interval at each
	// edge, which increase() stretches to the edges.
	time.Sleep(time.Until(t0.Add(12 * time.Second)))
	// The window starts 1 to 2 s before t0: after the sample that first
	// held the whole warm-up (taken at least 1.5 s before t0; any earlier
	// sample is a scrape interval older still), so it holds the n
	// requests and nothing of the warm-up.
	now := time.Now()
	length := now.Sub(t0).Truncate(time.Second) + 2*time.Second
	t.Logf("traffic sent %v after t0, Prometheus had it %v after t0; window %v", sent.Round(time.Millisecond), scraped.Round(time.Millisecond), length)
	envoyStats, err := envoySrc.Collect(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	promStats, err := newProm(length).Collect(ctx, now)
	if err != nil {
		t.Fatal(err)
	}

	for _, b := range []string{"good", "flaky"} {
		e, p := envoyStats[b], promStats[b]
		t.Logf("%s: envoy requests %d errors %d rate %.4f total %d/%d p95 %v (n=%d) mean %v | prometheus (window %v) requests %d errors %d rate %.4f total %d/%d p95 %v (n=%d) mean %v, age %v",
			b, e.Requests, e.Errors, e.ErrorRate, e.TotalRequests, e.TotalErrors, e.P95, e.LatencySamples, e.MeanLatency,
			length, p.Requests, p.Errors, p.ErrorRate, p.TotalRequests, p.TotalErrors, p.P95, p.LatencySamples, p.MeanLatency, p.Age)
		// The totals are the counters' current values on both paths:
		// exactly equal.
		if p.TotalRequests != e.TotalRequests || p.TotalErrors != e.TotalErrors {
			t.Errorf("%s: totals differ: envoy %d/%d, prometheus %d/%d", b, e.TotalRequests, e.TotalErrors, p.TotalRequests, p.TotalErrors)
		}
		// The Envoy window holds exactly the n requests since t0 (its
		// span starts at the scrape at t0).
		wantErr := uint64(0)
		if b == "flaky" {
			wantErr = n / 4
		}
		if e.Requests != n || e.Errors != wantErr {
			t.Errorf("%s: envoy window %d requests, %d errors; want %d, %d", b, e.Requests, e.Errors, n, wantErr)
		}
		// increase() only ever stretches: at most by length over
		// (length - 2 scrape intervals), plus rounding.
		stretch := float64(length) / float64(length-2*time.Second)
		within := func(got, want uint64) bool {
			return float64(got) >= float64(want)-0.5 && float64(got) <= float64(want)*stretch+0.5
		}
		if !within(p.Requests, e.Requests) || !within(p.Errors, e.Errors) {
			t.Errorf("%s: prometheus %d requests, %d errors; envoy %d, %d (stretch up to %.3f)", b, p.Requests, p.Errors, e.Requests, e.Errors, stretch)
		}
		// Both series of a backend are stretched by the same factor, so
		// the error rates differ by rounding only: each count is rounded
		// to a whole number, which moves the rate by at most about 1/n.
		if math.Abs(p.ErrorRate-e.ErrorRate) > 1.0/n {
			t.Errorf("%s: error rate: prometheus %.4f, envoy %.4f", b, p.ErrorRate, e.ErrorRate)
		}
		if p.Stale || e.Stale || p.LatencySamples == 0 || e.LatencySamples == 0 {
			t.Errorf("%s: stale or without latency: envoy %+v\nprometheus %+v", b, e, p)
		}
	}
	if !strings.Contains(newProm(length).Query(), `job="envoy"`) {
		t.Error("the selector is not in the query")
	}
}
