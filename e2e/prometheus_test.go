package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/healthview/viewhttp"
	"github.com/detourhq/detour/signals"
)

// prometheusBin is $PROMETHEUS_BIN (`make e2e` sets it from
// scripts/get-prometheus.sh). Without it the test is skipped, except under
// CI (CI=true), where it fails so that the check cannot silently stop
// running: the same rule as the signals package's integration test.
func prometheusBin(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("PROMETHEUS_BIN"); bin != "" {
		return bin
	}
	msg := "PROMETHEUS_BIN is not set: this test runs a real Prometheus server (make e2e sets it: scripts/get-prometheus.sh --path)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// e2ePromConfig scrapes one Envoy's admin endpoint every second, with the
// same ?usedonly&filter= as detour's own scraper (what PrometheusSource's
// documentation recommends).
const e2ePromConfig = `global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}
scrape_configs:
- job_name: envoy
  metrics_path: /stats/prometheus
  params:
    usedonly: [""]
    filter: [%q]
  static_configs: [{targets: [%q]}]
`

// startPrometheus runs a Prometheus server on listen that scrapes the
// Envoy admin at admin, and waits until it has scraped it once.
func startPrometheus(t *testing.T, bin, listen, admin string) {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, e2ePromConfig, signals.StatsFilter, admin), 0o644); err != nil {
		t.Fatal(err)
	}
	var out logBuffer
	cmd := exec.Command(bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		"--web.listen-address="+listen, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus output:\n%s", tail(&out, 40))
		}
	})
	base := "http://" + listen
	waitUntil(t, "Prometheus ready", 20*time.Second, func() bool {
		resp, err := http.Get(base + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	waitUntil(t, "Prometheus to scrape Envoy", 20*time.Second, func() bool {
		resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(`up{job="envoy"} == 1`))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var r struct {
			Data struct {
				Result []json.RawMessage `json:"result"`
			} `json:"data"`
		}
		return json.NewDecoder(resp.Body).Decode(&r) == nil && len(r.Data.Result) > 0
	})
}

// waitUntil polls cond every 100 ms until it holds or within passes.
func waitUntil(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sourceControllerYAML is brownoutControllerYAML with an explicit signal
// source and stale_after (10 s: well above Prometheus's 1 s scrape
// interval plus its lag, so a scrape in flight never reads as stale).
func sourceControllerYAML(source, promURL string) string {
	y := `controller:
  interval: 500ms
  dwell: 2s
  cool_down: 3s
  max_cool_down: 6s
  stale_after: 10s
  source: ` + source
	if promURL != "" {
		y += fmt.Sprintf("\n  prometheus: {url: %q, selector: 'job=\"envoy\"'}", promURL)
	}
	return y + "\nprobes: {disabled: true}"
}

// brownoutRun is what one mode's brownout measured.
type brownoutRun struct {
	mode                       string
	failed, total              int
	degraded, opened, healthy  time.Duration // since the fault began (healthy: since it cleared)
	degradedOK, openOK, healOK bool
	transitions                map[string][]string // every backend, the whole run
	sinceFault                 map[string][]string // every backend, first occurrences from the fault on
	final                      map[string]string   // every backend's state at the end
	signalWarnings             int                 // "controller signals incomplete" lines during the run
	maxAge                     time.Duration       // oldest signal age of fast seen in the view during the run
	signalErrors               int                 // views with a signal_error during the run
	why                        []string            // fast's transitions as the controller logged them
}

// runBrownout runs TestControllerBrownout's scenario on a fresh stack
// whose controller reads its signals from source.
func runBrownout(t *testing.T, source string) brownoutRun {
	t.Helper()
	var promBin, promListen, promURL string
	if source == "prometheus" {
		promBin = prometheusBin(t)
		promListen = freeAddr(t)
		promURL = "http://" + promListen
	}
	// The stack chooses Envoy's admin address, so Prometheus (whose
	// address the policy names) starts after it; until then the
	// controller's queries fail, which a new controller does not count as
	// bad news for stale_after.
	s := startStack(t, stackOptions{Controller: sourceControllerYAML(source, promURL)})
	if promBin != "" {
		startPrometheus(t, promBin, promListen, s.AdminAddr)
	}
	viewURL := "http://" + s.XDSMetricsAddr + viewhttp.Path
	waitUntil(t, "the controller to read its signals with every backend HEALTHY", 20*time.Second, func() bool {
		v, err := viewhttp.Fetch(context.Background(), http.DefaultClient, viewURL, 0)
		if err != nil || v.Source != source || v.SignalError != "" || len(v.Backends) == 0 {
			return false
		}
		for _, b := range v.Backends {
			if b.State != healthview.Healthy {
				return false
			}
		}
		return true
	})
	logFrom := len(s.xdsLogText())

	r := brownoutRun{mode: source}
	var (
		faultAt, clearAt time.Duration
		mu               sync.Mutex
	)
	// The view's signal age and errors, beside the timeline's states.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			v, err := viewhttp.Fetch(ctx, http.DefaultClient, viewURL, 0)
			if err != nil {
				continue
			}
			mu.Lock()
			if v.SignalError != "" {
				r.signalErrors++
			}
			r.maxAge = max(r.maxAge, time.Duration(v.Backends["fast"].Signals.Age))
			mu.Unlock()
		}
	}()
	tl := runTimeline(t, s, 45*time.Second, []load{{rate: 40, body: chat("auto", nil, user("hello"))}}, func(tl *timeline) {
		faultAt, clearAt = tl.fault("fast", brownout, 3*time.Second, 25*time.Second)
	})
	cancel()
	wg.Wait()

	r.failed, r.total = tl.failed()
	r.degraded, r.degradedOK = tl.firstState("fast", healthview.Degraded, faultAt)
	r.opened, r.openOK = tl.firstState("fast", healthview.Open, faultAt)
	r.healthy, r.healOK = tl.firstState("fast", healthview.Healthy, clearAt)
	r.degraded -= faultAt
	r.opened -= faultAt
	r.healthy -= clearAt
	r.transitions, r.sinceFault, r.final = map[string][]string{}, map[string][]string{}, map[string]string{}
	for _, b := range s.opts.Backends {
		r.transitions[b.Name] = tl.transitions(b.Name)
		r.sinceFault[b.Name] = firstOccurrences(tl, b.Name, faultAt)
		if n := len(tl.views); n > 0 {
			r.final[b.Name] = tl.views[n-1].states[b.Name]
		}
	}
	runLog := s.xdsLogText()[logFrom:]
	r.signalWarnings = strings.Count(runLog, "controller signals incomplete")
	for _, line := range strings.Split(runLog, "\n") {
		if strings.Contains(line, "backend state changed") && strings.Contains(line, "backend=fast ") {
			r.why = append(r.why, line[strings.Index(line, "backend=fast "):])
		}
	}

	// The assertions of TestControllerBrownout, except the bound on the
	// detection time, which the caller sets per mode.
	t.Logf("%s mode: %s; fast went %v; the controller's reasons:\n%s", source, tl.summary(), r.transitions["fast"], strings.Join(r.why, "\n"))
	if r.total < 1500 {
		t.Fatalf("only %d requests sent", r.total)
	}
	if r.failed != 0 {
		t.Errorf("%d of %d client requests failed, want 0 while fast-b is healthy", r.failed, r.total)
	}
	if !r.degradedOK {
		t.Errorf("fast never DEGRADED after the fault: %v", r.transitions["fast"])
	}
	if !r.openOK || r.opened > 30*time.Second {
		t.Errorf("fast not OPEN within the 30 s window (%v): %v", r.opened, r.transitions["fast"])
	}
	if !r.healOK {
		t.Errorf("fast not HEALTHY again after the fault cleared: %v", r.transitions["fast"])
	}
	if !strings.Contains(s.xdsLogText(), `backend=fast from=HEALTHY to=DEGRADED reason="error rate`) {
		t.Errorf("no transition log line:\n%s", tail(s.xdsLog, 20))
	}
	if v, err := viewhttp.Fetch(context.Background(), http.DefaultClient, viewURL, 0); err != nil {
		t.Errorf("controller view: %v", err)
	} else if v.Source != source {
		t.Errorf("the view's source is %q, want %q", v.Source, source)
	}
	if t.Failed() {
		if v, err := viewhttp.Fetch(context.Background(), http.DefaultClient, viewURL, 0); err == nil {
			b, _ := json.MarshalIndent(v.Backends["fast"], "", "  ")
			t.Logf("fast in the final view: %s", b)
		}
	}
	return r
}

// firstOccurrences lists the states backend was seen in at or after from,
// each once, in the order it was first seen.
func firstOccurrences(tl *timeline, backend string, from time.Duration) []string {
	var out []string
	for _, v := range tl.views {
		if st := v.states[backend]; v.at >= from && st != "" && !slices.Contains(out, st) {
			out = append(out, st)
		}
	}
	return out
}

// TestControllerPrometheusMode: reading the signals from a Prometheus
// server that scrapes Envoy gives the same decisions as scraping Envoy
// directly. The brownout of TestControllerBrownout runs twice, on two
// fresh stacks one after the other (not in parallel: the timings compared
// are the point, and two stacks under load on one small machine would
// disturb each other's): once with source envoy, once with source
// prometheus. Both must reach the same states in the same order, lose no
// client request, and recover; the difference in detection lag (Prometheus
// adds up to two scrape intervals: increase() needs two samples of the 5xx
// counter Envoy only creates on the first error) is measured and logged.
//
// The time to OPEN is not compared: both modes open on "error rate > 25 %
// since DEGRADED (n ≥ 20)", counted from the totals' increases after the
// move to DEGRADED. Scraping Envoy, those are the trial requests only
// (about 10 s to collect 20). Through Prometheus, the totals lag by up to
// a scrape, so full-rate requests sent before the move but scraped after
// it count as "since DEGRADED": when they are 20 or more, fast opens
// within about a second of DEGRADED. Seen over five runs: 3 to 12 s after
// the fault through Prometheus, a steady 10.6 s scraping Envoy.
func TestControllerPrometheusMode(t *testing.T) {
	prometheusBin(t) // skip (or fail under CI) before starting anything
	var runs []brownoutRun
	for _, mode := range []struct {
		source        string
		degradeWithin time.Duration
	}{
		// TestControllerBrownout's bound.
		{"envoy", 2 * time.Second},
		// Prometheus scrapes every 1 s. Envoy creates a cluster's
		// upstream_rq_5xx on its first 5xx (with or without ?usedonly),
		// and increase() ignores what a new series held at its first
		// sample: the errors count from the second sample on, up to two
		// scrapes after the fault. Then one evaluation (500 ms). Measured:
		// 2.2 s (against 0.5 s scraping Envoy directly).
		{"prometheus", 4 * time.Second},
	} {
		t.Run(mode.source, func(t *testing.T) {
			r := runBrownout(t, mode.source)
			if r.degradedOK && r.degraded > mode.degradeWithin {
				t.Errorf("fast DEGRADED %v after the fault, want within %v", r.degraded, mode.degradeWithin)
			}
			runs = append(runs, r)
		})
	}
	if len(runs) != 2 {
		t.Fatalf("%d of 2 modes ran", len(runs))
	}
	e, p := runs[0], runs[1]
	ms := func(d time.Duration, ok bool) string {
		if !ok {
			return "never"
		}
		return d.Round(10 * time.Millisecond).String()
	}
	t.Logf("%-34s %-16s %s", "", "source envoy", "source prometheus")
	t.Logf("%-34s %-16s %s", "fault → fast DEGRADED", ms(e.degraded, e.degradedOK), ms(p.degraded, p.degradedOK))
	t.Logf("%-34s %-16s %s", "fault → fast OPEN", ms(e.opened, e.openOK), ms(p.opened, p.openOK))
	t.Logf("%-34s %-16s %s", "clear → fast HEALTHY", ms(e.healthy, e.healOK), ms(p.healthy, p.healOK))
	t.Logf("%-34s %-16s %s", "client requests failed / sent", fmt.Sprintf("%d / %d", e.failed, e.total), fmt.Sprintf("%d / %d", p.failed, p.total))
	t.Logf("%-34s %-16s %s", "oldest signal age of fast", e.maxAge.Round(time.Millisecond), p.maxAge.Round(time.Millisecond))
	t.Logf("%-34s %-16s %s", "views with a signal error", fmt.Sprint(e.signalErrors), fmt.Sprint(p.signalErrors))
	t.Logf("%-34s %-16s %s", "'signals incomplete' log lines", fmt.Sprint(e.signalWarnings), fmt.Sprint(p.signalWarnings))
	if e.degradedOK && p.degradedOK {
		t.Logf("Prometheus adds %v to the detection of the brownout", (p.degraded - e.degraded).Round(10*time.Millisecond))
	}
	names := make([]string, 0, len(e.transitions))
	for n := range e.transitions {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		t.Logf("%s transitions: envoy %v", n, e.transitions[n])
		t.Logf("%s transitions: prom  %v", n, p.transitions[n])
	}
	// Same decisions: for every backend, the states reached from the fault
	// on, in the order first reached, and the final state. Not the whole
	// compressed sequence: once fast is OPEN it cycles OPEN → HALF_OPEN →
	// OPEN while its trial requests keep failing, and how many cycles fit
	// in the fault depends on when each mode's window crossed the
	// threshold and on the doubling cool-down, i.e. on the detection lag
	// this test measures, not on a different decision.
	for _, n := range names {
		if !slices.Equal(e.sinceFault[n], p.sinceFault[n]) {
			t.Errorf("%s: states reached after the fault differ: envoy %v, prometheus %v", n, e.sinceFault[n], p.sinceFault[n])
		}
		if e.final[n] != p.final[n] {
			t.Errorf("%s: final state differs: envoy %s, prometheus %s", n, e.final[n], p.final[n])
		}
	}
}
