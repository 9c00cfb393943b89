package main

// The controller benchmark (-only controller, its own section of the
// report between <!-- bench-controller:begin/end -->): detour's
// live-metrics controller (in `detour xds`) against the static baseline
// (the same policy with `controller: {disabled: true}`: Envoy's retries and
// outlier detection as the policy sets them). Four simulated providers
// like the quickstart's (fast, fast-b, long, vision); "fast", the
// cheapest, is made to misbehave in four scenarios while a fixed-rate load
// of "auto" chats goes through Envoy. Each scenario runs once per mode, on
// a fresh `detour extproc`, `detour xds` and Envoy (so no controller state
// or Envoy counter carries over), the providers staying up throughout.
//
// Per scenario and mode the client side records every request (timed at
// its start, with its status, x-detour-backend and x-envoy-attempt-count,
// and for streams the time to the first content chunk), and a poller reads
// every 100 ms the controller's view (GET /v1/status on the xds metrics
// address) and Envoy's cluster.fast.outlier_detection.ejections_active.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/detourhq/detour/bench/loadgen"
	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/healthview/viewhttp"
	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/sim"
	"github.com/detourhq/detour/xds"
)

// Markers delimiting the controller benchmark's generated section.
const (
	ctlBeginMarker = "<!-- bench-controller:begin -->"
	ctlEndMarker   = "<!-- bench-controller:end -->"
)

// Modes of the controller comparison.
const (
	modeController = "controller"
	modeBaseline   = "baseline"
)

var ctlModes = []string{modeController, modeBaseline}

const (
	// ctlFaulty is the backend the scenarios break: the cheapest, so
	// detour's first choice for "auto".
	ctlFaulty = "fast"
	// ctlTrialShare is controller.trial_share (its default): the share of
	// requests a DEGRADED or HALF_OPEN backend keeps as trials.
	ctlTrialShare = policy.DefaultTrialShare
	// ctlPoll is how often the controller's view and Envoy's ejection
	// gauge are read.
	ctlPoll = 100 * time.Millisecond
	// Shift windows: width and step.
	ctlShiftWindow = time.Second
	ctlShiftStep   = 100 * time.Millisecond
	// ctlMaxInFlight bounds the load loop's concurrent requests.
	ctlMaxInFlight = 1024
	// ctlTimeout bounds one request.
	ctlTimeout = 30 * time.Second
	// The slow scenario waits, before the fault, until the controller's
	// first-token deadline follows the measured TTFT (below the policy's
	// 10 s), at least ctlFTTMinWait and at most ctlFTTMaxWait.
	ctlFTTBelow   = 10 * time.Second
	ctlFTTMinWait = 3 * time.Second
	ctlFTTMaxWait = 15 * time.Second
	// ctlInterval is controller.interval in the controller mode. A fresh
	// stack is ready once the controller has published its first view,
	// which ties the run's clock to the controller's cycle: each
	// scenario's fault is put off by a random part of an interval (the
	// same in both modes) so that it falls at a random phase of it.
	ctlInterval = 500 * time.Millisecond
	// ctlReadyTimeout bounds the wait for a fresh stack to route to fast
	// (and, with the controller, for its first view).
	ctlReadyTimeout = 15 * time.Second
)

// ctlControllerYAML is the controller mode's policy tail: the settings of
// the e2e controller tests (e2e/controller_test.go).
const ctlControllerYAML = `controller:
  interval: 500ms
  dwell: 2s
  cool_down: 3s
probes: {disabled: true}
`

// ctlBaselineYAML is the baseline's: no controller, no probes.
const ctlBaselineYAML = `controller: {disabled: true}
probes: {disabled: true}
`

// ctlBackend is one simulated backend of the quickstart-like policy.
type ctlBackend struct {
	Name, Model     string
	Context, MaxOut int
	Tools, Vision   bool
	In, Out         float64
}

// ctlBackends mirror examples/quickstart/policy.yaml (and the e2e suite's
// quickstartBackends).
var ctlBackends = []ctlBackend{
	{Name: "fast", Model: "fast-8k", Context: 8192, MaxOut: 4096, Tools: true, In: 0.10, Out: 0.40},
	{Name: "fast-b", Model: "fast-8k", Context: 8192, MaxOut: 4096, Tools: true, In: 0.12, Out: 0.48},
	{Name: "long", Model: "long-200k", Context: 200000, MaxOut: 8192, In: 1.00, Out: 4.00},
	{Name: "vision", Model: "vision-128k", Context: 128000, MaxOut: 16384, Tools: true, Vision: true, In: 2.50, Out: 10.00},
}

// ctlLoad is one fixed-rate stream of requests.
type ctlLoad struct {
	Rate   float64
	Stream bool
	// Priority, when set, is sent as x-detour-priority.
	Priority string
}

// ctlScenario is one fault pattern on fast.
type ctlScenario struct {
	Name, Title string
	Fault       sim.Fault
	Loads       []ctlLoad
	// Lead is the time before the fault (the slow scenario waits for the
	// controller's first-token deadline instead, see WaitFTT).
	Lead time.Duration
	// For is how long the fault lasts.
	For time.Duration
	// Flap > 0 alternates the fault on and off every Flap during For.
	Flap time.Duration
	// Wasm loads the measurement plugin (TTFT is measured in Envoy).
	Wasm bool
	// WaitFTT: before the fault, wait until the controller's first-token
	// deadline is below ctlFTTBelow (the baseline waits as long as the
	// controller mode did).
	WaitFTT bool
}

var ctlScenarios = []ctlScenario{
	{Name: "brownout", Title: "Brownout: fast fails 30 % of its requests with 500",
		Fault: sim.Fault{Status: http.StatusInternalServerError, Rate: 0.3, Even: true},
		Loads: []ctlLoad{{Rate: 40}}, Lead: 3 * time.Second, For: 20 * time.Second},
	{Name: "slow", Title: "Slow backend: fast's first token takes 3 s",
		Fault: sim.Fault{TTFTMS: 3000},
		Loads: []ctlLoad{{Rate: 20, Stream: true}, {Rate: 10}}, For: 20 * time.Second, Wasm: true, WaitFTT: true},
	{Name: "throttle", Title: "429 storm: fast throttles 60 % of its requests (Retry-After 5 s)",
		Fault: sim.Fault{Status: http.StatusTooManyRequests, Rate: 0.6, RetryAfterS: 5},
		Loads: []ctlLoad{{Rate: 40}}, Lead: 3 * time.Second, For: 15 * time.Second},
	{Name: "flapping", Title: "Flapping: fast answers 503 for 2 s, then works for 2 s, for 40 s",
		Fault: sim.Fault{Status: http.StatusServiceUnavailable},
		Loads: []ctlLoad{{Rate: 20}}, Lead: 2 * time.Second, For: 40 * time.Second, Flap: 2 * time.Second},
}

// estimateController is roughly how long the controller part takes.
func estimateController() time.Duration {
	var d time.Duration
	for _, s := range ctlScenarios {
		lead := s.Lead
		if s.WaitFTT {
			lead = 8 * time.Second
		}
		d += 2 * (lead + s.For + 5*time.Second) // + fresh stack and settle
	}
	return d
}

// --- records

// ctlOutcome is one client request.
type ctlOutcome struct {
	// At is when the request started, from the start of the run.
	At     time.Duration
	Stream bool
	Status int
	// Backend is the x-detour-backend response header.
	Backend string
	// Sim is the simulated provider that answered (x-sim-name), Reason
	// detour's reason for its first choice (x-detour-reason).
	Sim, Reason string
	// Priority is the x-detour-priority the request carried.
	Priority string
	// ErrCode is a non-200 answer's OpenAI error code ("capacity_shed",
	// "rate_limit_exceeded", ...); RetryAfter its Retry-After header.
	ErrCode, RetryAfter string
	// Attempts is Envoy's x-envoy-attempt-count (0 if absent).
	Attempts int
	// TTFT is, for a 200 stream, the time to its first content chunk.
	TTFT time.Duration
	// Total is the time to the end of the body.
	Total time.Duration
	Err   string
}

func (o ctlOutcome) ok() bool { return o.Err == "" && o.Status == http.StatusOK }

// wentTo reports whether the request went to backend: it answered it, or
// the request took more than one attempt (only backend is faulty, so a
// retried request tried it first).
func (o ctlOutcome) wentTo(backend string) bool {
	return o.Backend == backend || o.Attempts > 1
}

// ctlView is fast's standing in one read of the controller's view.
type ctlView struct {
	At        time.Duration
	State     string
	Throttled bool
	// FTT is the first-token deadline the controller pushed.
	FTT time.Duration
}

// label is the state as printed: "DEGRADED", "HEALTHY+throttled".
func (v ctlView) label() string {
	if v.Throttled {
		return v.State + "+throttled"
	}
	return v.State
}

// bad reports whether the view shows the backend not HEALTHY or throttled.
func (v ctlView) bad() bool { return (v.State != "" && v.State != healthview.Healthy) || v.Throttled }

// ctlGauge is one read of Envoy's ejections_active gauge for fast.
type ctlGauge struct {
	At    time.Duration
	Value int64
}

// ctlRun is one scenario run in one mode.
type ctlRun struct {
	Mode string
	// FaultAt, ClearAt: when the fault was set and cleared (the admin
	// call sent), from the start of the run.
	FaultAt, ClearAt time.Duration
	Outcomes         []ctlOutcome // by start time
	Views            []ctlView    // controller mode only
	Ejections        []ctlGauge
	// Pushes is the controller's pushes between the fault and its end
	// (detour_controller_pushes_total summed); HasPushes false when the
	// metric is absent (baseline).
	Pushes    float64
	HasPushes bool
	// FTT is the controller's first-token deadline when the fault was set.
	FTT time.Duration
	// Flips counts the fault's on/off changes (flapping).
	Flips int
	// EjectionsEnforced is Envoy's outlier ejections of fast over the run.
	EjectionsEnforced int64
	// Upstream is the providers' request counts over the run (every
	// attempt Envoy made).
	Upstream map[string]int64
}

// ctlScenarioResult is both modes of one scenario.
type ctlScenarioResult struct {
	Scenario ctlScenario
	Runs     map[string]*ctlRun
	Err      string
}

// controllerResult is everything the controller part measured.
type controllerResult struct {
	Module    string
	Scenarios []ctlScenarioResult
}

// --- figures

// ctlFigures summarise one run.
type ctlFigures struct {
	Sent, Failed, FailedDuring, During int
	// Detect is the first view, at or after the fault, showing fast not
	// HEALTHY or throttled (DetectState says which); Detected false if
	// none. Viewed false when there was no view (baseline).
	Viewed, Detected bool
	Detect           time.Duration
	DetectState      string
	// Eject is the first read of ejections_active > 0 at or after the
	// fault.
	Ejected bool
	Eject   time.Duration
	// Shift: ctlShiftedAt for fast over the fault.
	Shifted bool
	Shift   time.Duration
	// Attempts per request and the share of requests that went to fast,
	// over requests started during the fault.
	Attempts, FastShare float64
	// Latency (to the end of the body) of the 200 answers started during
	// the fault; TTFT of the 200 streams started during it.
	Lat, TTFT loadgen.Summary
	States    []string
}

func (r *ctlRun) figures() ctlFigures {
	f := ctlFigures{Sent: len(r.Outcomes)}
	var lat, ttft []time.Duration
	went := 0
	for _, o := range r.Outcomes {
		during := o.At >= r.FaultAt && o.At < r.ClearAt
		if !o.ok() {
			f.Failed++
			if during {
				f.FailedDuring++
			}
		}
		if !during {
			continue
		}
		f.During++
		if o.wentTo(ctlFaulty) {
			went++
		}
		if o.ok() {
			lat = append(lat, o.Total)
			if o.Stream {
				ttft = append(ttft, o.TTFT)
			}
		}
	}
	if f.During > 0 {
		f.FastShare = float64(went) / float64(f.During)
	}
	f.Lat, f.TTFT = loadgen.Summarize(lat), loadgen.Summarize(ttft)
	f.Attempts = ctlAttemptsPerRequest(r.Outcomes, r.FaultAt, r.ClearAt)
	f.Shift, f.Shifted = ctlShiftedAt(r.Outcomes, ctlFaulty, r.FaultAt, r.ClearAt, ctlTrialShare)
	f.Viewed = len(r.Views) > 0
	if v, ok := ctlFirstBad(r.Views, r.FaultAt); ok {
		f.Detected, f.Detect, f.DetectState = true, v.At-r.FaultAt, v.label()
	}
	for _, g := range r.Ejections {
		if g.At >= r.FaultAt && g.Value > 0 {
			f.Ejected, f.Eject = true, g.At-r.FaultAt
			break
		}
	}
	f.States = ctlTransitions(r.Views)
	return f
}

// ctlFirstBad is the first view at or after from that shows the backend
// not HEALTHY or throttled.
func ctlFirstBad(views []ctlView, from time.Duration) (ctlView, bool) {
	for _, v := range views {
		if v.At >= from && v.bad() {
			return v, true
		}
	}
	return ctlView{}, false
}

// ctlTransitions lists the distinct states the views went through, in
// order.
func ctlTransitions(views []ctlView) []string {
	var out []string
	for _, v := range views {
		if v.State == "" {
			continue
		}
		if l := v.label(); len(out) == 0 || out[len(out)-1] != l {
			out = append(out, l)
		}
	}
	return out
}

// ctlShiftedAt is the start, from `from`, of the first window of width
// ctlShiftWindow (sliding by ctlShiftStep from `from`) from which on the
// share of requests that went to backend (ctlOutcome.wentTo) stays at or
// under maxShare plus one request in every window that ends by until.
// ok is false when the last such window still misses it, or there is
// none. outcomes must be sorted by start time. (The rule of the e2e
// suite's timeline.shiftedAt.)
func ctlShiftedAt(outcomes []ctlOutcome, backend string, from, until time.Duration, maxShare float64) (time.Duration, bool) {
	var good []bool
	for at := from; at+ctlShiftWindow <= until; at += ctlShiftStep {
		lo, _ := slices.BinarySearchFunc(outcomes, at, func(o ctlOutcome, t time.Duration) int { return cmpDur(o.At, t) })
		mine, all := 0, 0
		for _, o := range outcomes[lo:] {
			if o.At >= at+ctlShiftWindow {
				break
			}
			all++
			if o.wentTo(backend) {
				mine++
			}
		}
		// One request of slack: a window's edge can catch one more.
		good = append(good, mine <= int(maxShare*float64(all))+1)
	}
	k := len(good)
	for k > 0 && good[k-1] {
		k--
	}
	if k == len(good) {
		return 0, false
	}
	return time.Duration(k) * ctlShiftStep, true
}

// ctlAttemptsPerRequest is Envoy's attempts per request started in
// [from, until), over the responses that carried the count.
func ctlAttemptsPerRequest(outcomes []ctlOutcome, from, until time.Duration) float64 {
	n, reqs := 0, 0
	for _, o := range outcomes {
		if o.At >= from && o.At < until && o.Attempts > 0 {
			n += o.Attempts
			reqs++
		}
	}
	if reqs == 0 {
		return 0
	}
	return float64(n) / float64(reqs)
}

// promSum sums the samples of metric name (any labels) in a Prometheus
// text page; ok is false when there are none.
func promSum(page []byte, name string) (sum float64, ok bool) {
	for line := range strings.Lines(string(page)) {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		switch {
		case strings.HasPrefix(rest, "{"):
			end := strings.LastIndex(rest, "}")
			if end < 0 {
				continue
			}
			rest = rest[end+1:]
		case strings.HasPrefix(rest, " "):
		default:
			continue // another metric with this prefix
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		sum += v
		ok = true
	}
	return sum, ok
}

// --- the stack

// ctlSims are the four simulated providers, up for the whole part.
type ctlSims struct {
	procs       map[string]*child
	addr, admin map[string]string
}

func startCtlSims(ctx context.Context, c e2eConfig, dir string) (_ *ctlSims, err error) {
	a, err := freeAddrs(ctx, 2*len(ctlBackends))
	if err != nil {
		return nil, err
	}
	s := &ctlSims{procs: map[string]*child{}, addr: map[string]string{}, admin: map[string]string{}}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	for i, b := range ctlBackends {
		s.addr[b.Name], s.admin[b.Name] = a[2*i], a[2*i+1]
		if s.procs[b.Name], err = startChild(ctx, "sim-"+b.Name, filepath.Join(dir, "sim-"+b.Name+".log"), c.childOutput, c.detourBin,
			"sim", "--name", b.Name, "--listen", a[2*i], "--admin", a[2*i+1], "--model", b.Model, "--log-level", "warn"); err != nil {
			return nil, err
		}
	}
	for _, b := range ctlBackends {
		if err := waitHTTP(ctx, s.procs[b.Name], "http://"+s.addr[b.Name]+"/v1/models", 15*time.Second); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// reset clears every provider's faults and counters.
func (s *ctlSims) reset(ctx context.Context) error {
	for _, b := range ctlBackends {
		if err := simAdmin(ctx, http.MethodDelete, s.admin[b.Name], "/_sim/faults", nil, nil); err != nil {
			return fmt.Errorf("sim %s: %w", b.Name, err)
		}
		if err := simAdmin(ctx, http.MethodDelete, s.admin[b.Name], "/_sim/stats", nil, nil); err != nil {
			return fmt.Errorf("sim %s: %w", b.Name, err)
		}
	}
	return nil
}

func (s *ctlSims) stats(ctx context.Context) (map[string]int64, error) {
	out := map[string]int64{}
	for _, b := range ctlBackends {
		var st sim.Stats
		if err := simAdmin(ctx, http.MethodGet, s.admin[b.Name], "/_sim/stats", nil, &st); err != nil {
			return nil, fmt.Errorf("sim %s: %w", b.Name, err)
		}
		out[b.Name] = st.Requests
	}
	return out, nil
}

func (s *ctlSims) setFault(ctx context.Context, f *sim.Fault) error {
	if f == nil {
		return simAdmin(ctx, http.MethodDelete, s.admin[ctlFaulty], "/_sim/faults", nil, nil)
	}
	return simAdmin(ctx, http.MethodPost, s.admin[ctlFaulty], "/_sim/faults", *f, nil)
}

func (s *ctlSims) children() []*child {
	var out []*child
	for _, b := range ctlBackends {
		if c := s.procs[b.Name]; c != nil {
			out = append(out, c)
		}
	}
	return out
}

func (s *ctlSims) close() {
	for _, c := range s.children() {
		c.stop(5 * time.Second)
	}
}

// ctlAddrs are one run's detour and Envoy addresses.
type ctlAddrs struct {
	listen, admin, extproc, metrics, xds, xdsMetrics string
}

// controllerPolicy is the quickstart-like policy of one run: the four
// providers, "auto" (cheapest), the measurement plugin when measure, and
// the mode's controller settings.
func controllerPolicy(a ctlAddrs, sims map[string]string, module string, measure bool, mode string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# generated by detour-bench (controller, %s mode)\nversion: 1\nbackends:\n", mode)
	for _, be := range ctlBackends {
		fmt.Fprintf(&b, `  - name: %s
    model: %s
    endpoints: [{address: %q, region: local}]
    capabilities:
      context_window: %d
      max_output_tokens: %d
      tools: %t
      vision: %t
      json_mode: true
    price: {input: %.2f, output: %.2f}
`, be.Name, be.Model, sims[be.Name], be.Context, be.MaxOut, be.Tools, be.Vision, be.In, be.Out)
	}
	fmt.Fprintf(&b, `routes:
  - name: auto
    objective: cheapest
envoy:
  listen: %q
  admin: %q
extproc:
  listen: %q
  metrics: %q
xds:
  listen: %q
  metrics: %q
wasm:
  module: %q
  measure: %t
`, a.listen, a.admin, a.extproc, a.metrics, a.xds, a.xdsMetrics, module, measure)
	if mode == modeController {
		b.WriteString(ctlControllerYAML)
	} else {
		b.WriteString(ctlBaselineYAML)
	}
	return b.Bytes()
}

// ctlStack is one run's `detour extproc`, `detour xds` and Envoy (fed by
// `detour xds` over ADS).
type ctlStack struct {
	a          ctlAddrs
	extproc    *child
	xds        *child
	envoy      *envoyProc
	url        string
	viewURL    string
	xdsMetrics string
}

var ctlEjectionsActive = regexp.MustCompile(`^cluster\.` + ctlFaulty + `\.outlier_detection\.ejections_active$`)
var ctlEjectionsEnforced = regexp.MustCompile(`^cluster\.` + ctlFaulty + `\.outlier_detection\.ejections_enforced_total$`)

func startCtlStack(ctx context.Context, c e2eConfig, sims *ctlSims, dir, name, module string, measure bool, mode string) (_ *ctlStack, err error) {
	ad, err := freeAddrs(ctx, 6)
	if err != nil {
		return nil, err
	}
	a := ctlAddrs{listen: ad[0], admin: ad[1], extproc: ad[2], metrics: ad[3], xds: ad[4], xdsMetrics: ad[5]}
	s := &ctlStack{a: a, url: "http://" + a.listen + chatPath, viewURL: "http://" + a.xdsMetrics + viewhttp.Path,
		xdsMetrics: "http://" + a.xdsMetrics + "/metrics"}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	policyPath := filepath.Join(dir, name+"-policy.yaml")
	if err := os.WriteFile(policyPath, controllerPolicy(a, sims.addr, module, measure, mode), 0o644); err != nil {
		return nil, fmt.Errorf("write policy: %w", err)
	}
	p, err := policy.LoadFile(policyPath)
	if err != nil {
		return nil, fmt.Errorf("controller policy: %w", err)
	}
	boot, err := xds.DynamicBootstrap(p, xds.DynamicOptions{NodeID: "detour-bench-" + name})
	if err != nil {
		return nil, fmt.Errorf("dynamic bootstrap: %w", err)
	}
	bootPath := filepath.Join(dir, name+"-envoy.json")
	if err := writeBootstrap(bootPath, boot); err != nil {
		return nil, err
	}
	if s.extproc, err = startChild(ctx, name+"-extproc", filepath.Join(dir, name+"-extproc.log"), c.childOutput, c.detourBin,
		"extproc", "--policy", policyPath, "--log-level", "warn"); err != nil {
		return nil, err
	}
	if s.xds, err = startChild(ctx, name+"-xds", filepath.Join(dir, name+"-xds.log"), c.childOutput, c.detourBin,
		"xds", "--policy", policyPath, "--log-level", "info"); err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, s.extproc, "http://"+a.metrics+"/healthz", 15*time.Second); err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, s.xds, s.xdsMetrics, 15*time.Second); err != nil {
		return nil, err
	}
	if s.envoy, err = startEnvoy(ctx, name+"-envoy", c.envoyBin, bootPath, a.admin, dir, c.childOutput); err != nil {
		return nil, err
	}
	return s, nil
}

// ready waits until a chat goes to fast through Envoy and, with the
// controller, until its view shows every backend HEALTHY.
func (s *ctlStack) ready(ctx context.Context, client *http.Client, mode string) error {
	deadline := time.Now().Add(ctlReadyTimeout)
	body := ctlChatBody(false)
	var last string
	for {
		o := ctlSend(ctx, client, s.url, body, false, 0)
		ok := o.ok() && o.Backend == ctlFaulty
		if ok && mode == modeController {
			v, err := viewhttp.Fetch(ctx, adminClient, s.viewURL, 0)
			switch {
			case err != nil:
				ok, last = false, err.Error()
			case len(v.Backends) < len(ctlBackends):
				ok, last = false, fmt.Sprintf("the view has %d backends", len(v.Backends))
			default:
				for name, b := range v.Backends {
					if b.State != healthview.Healthy || b.Throttled {
						ok, last = false, fmt.Sprintf("%s is %s", name, b.State)
					}
				}
			}
		} else if !ok {
			last = fmt.Sprintf("status %d %s from %q", o.Status, o.Err, o.Backend)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s: %s", ctlReadyTimeout, last)
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

func (s *ctlStack) alive() error {
	return allAlive([]*child{s.extproc, s.xds}, []*envoyProc{s.envoy})
}

func (s *ctlStack) close() {
	if s.envoy != nil {
		s.envoy.stop()
	}
	for _, c := range []*child{s.xds, s.extproc} {
		if c != nil {
			c.stop(5 * time.Second)
		}
	}
}

// pushes sums detour_controller_pushes_total on the xds /metrics.
func (s *ctlStack) pushes(ctx context.Context) (float64, bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.xdsMetrics, nil)
	if err != nil {
		return 0, false
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	page, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return 0, false
	}
	return promSum(page, "detour_controller_pushes_total")
}

// --- requests

// ctlChatBody is a short "auto" chat, streaming or not.
func ctlChatBody(stream bool) []byte {
	return fmt.Appendf(nil, `{"model":"auto","messages":[{"role":"user","content":"hello"}],"stream":%t}`, stream)
}

// ctlSend sends one chat and records it; at is its start, from the run's
// start.
func ctlSend(ctx context.Context, client *http.Client, url string, body []byte, stream bool, at time.Duration) ctlOutcome {
	return sendChat(ctx, client, url, body, stream, nil, at)
}

// sendChat is ctlSend with request headers.
func sendChat(ctx context.Context, client *http.Client, url string, body []byte, stream bool, hdr map[string]string, at time.Duration) ctlOutcome {
	o := ctlOutcome{At: at, Stream: stream}
	ctx, cancel := context.WithTimeout(ctx, ctlTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		o.Err = err.Error()
		return o
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	t0 := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		o.Err = errKind(err)
		o.Total = time.Since(t0)
		return o
	}
	defer resp.Body.Close()
	o.Status = resp.StatusCode
	o.Backend = resp.Header.Get("x-detour-backend")
	o.Sim = resp.Header.Get(sim.HeaderName)
	o.Reason = resp.Header.Get("x-detour-reason")
	o.Attempts, _ = strconv.Atoi(resp.Header.Get("x-envoy-attempt-count"))
	if stream && resp.StatusCode == http.StatusOK {
		// The first content chunk: the first data line after the role
		// chunk (which the provider sends with its headers).
		br := bufio.NewReader(resp.Body)
		done := false
		for {
			line, err := br.ReadString('\n')
			data, isData := strings.CutPrefix(line, "data:")
			data = strings.TrimSpace(data)
			switch {
			case !isData:
			case data == "[DONE]":
				done = true
			case strings.HasPrefix(data, `{"error"`):
				// A mid-stream error event (OpenAI's way, and detour's when
				// a stalled answer cannot be resumed): the answer is cut.
				o.ErrCode = errorCode([]byte(data))
				o.Err = "stream error event"
			case !strings.Contains(line, `"role"`) && o.TTFT == 0:
				o.TTFT = time.Since(t0)
			}
			if err != nil {
				if !errors.Is(err, io.EOF) {
					o.Err = "body " + errKind(err)
				} else if !done && o.Err == "" {
					// Ended cleanly but without OpenAI's terminator: a
					// truncated answer is a failed one.
					o.Err = "stream without [DONE]"
				}
				break
			}
		}
	} else if resp.StatusCode != http.StatusOK {
		o.RetryAfter = resp.Header.Get("Retry-After")
		data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		if err != nil {
			o.Err = "body " + errKind(err)
		} else {
			o.ErrCode = errorCode(data)
		}
	} else if data, err := io.ReadAll(resp.Body); err != nil {
		o.Err = "body " + errKind(err)
	} else if !json.Valid(data) {
		o.Err = "body not JSON" // a cut answer that still ended cleanly
	}
	o.Total = time.Since(t0)
	return o
}

// errorCode is the code of an OpenAI error body or event; "" if none.
func errorCode(data []byte) string {
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	_ = json.Unmarshal(data, &e)
	return e.Error.Code
}

// ctlLoop sends loads at their fixed rates from start until stop closes;
// request i of a load is due at start + i/rate and is timed when it
// starts. Requests due while ctlMaxInFlight are in flight are recorded as
// dropped.
func ctlLoop(ctx context.Context, client *http.Client, url string, loads []ctlLoad, body func(stream bool) []byte, start time.Time, stop <-chan struct{}) []ctlOutcome {
	var (
		mu  sync.Mutex
		out []ctlOutcome
		wg  sync.WaitGroup
	)
	record := func(o ctlOutcome) {
		mu.Lock()
		out = append(out, o)
		mu.Unlock()
	}
	sem := make(chan struct{}, ctlMaxInFlight)
	var loops sync.WaitGroup
	for _, l := range loads {
		body := body(l.Stream)
		loops.Go(func() {
			timer := time.NewTimer(0)
			<-timer.C
			defer timer.Stop()
			for i := 0; ; i++ {
				due := start.Add(time.Duration(float64(i) * float64(time.Second) / l.Rate))
				timer.Reset(max(time.Until(due), 0))
				select {
				case <-ctx.Done():
					return
				case <-stop:
					return
				case <-timer.C:
				}
				select {
				case sem <- struct{}{}:
				default:
					record(ctlOutcome{At: time.Since(start), Stream: l.Stream, Priority: l.Priority, Err: errDropped})
					continue
				}
				wg.Go(func() {
					defer func() { <-sem }()
					var hdr map[string]string
					if l.Priority != "" {
						hdr = map[string]string{"x-detour-priority": l.Priority}
					}
					o := sendChat(ctx, client, url, body, l.Stream, hdr, time.Since(start))
					o.Priority = l.Priority
					record(o)
				})
			}
		})
	}
	loops.Wait()
	wg.Wait()
	slices.SortFunc(out, func(a, b ctlOutcome) int { return cmpDur(a.At, b.At) })
	return out
}

// --- one run

// runCtl runs one scenario in one mode on a fresh stack. The fault starts
// after the scenario's lead plus jitter; wait is, for the slow scenario's
// baseline, the lead to wait (the controller mode's, jitter included). It
// returns the lead it waited.
func runCtl(ctx context.Context, c e2eConfig, sims *ctlSims, dir, module string, sc ctlScenario, mode string, jitter, wait time.Duration) (*ctlRun, time.Duration, error) {
	if err := sims.reset(ctx); err != nil {
		return nil, 0, err
	}
	name := sc.Name + "-" + mode
	st, err := startCtlStack(ctx, c, sims, dir, name, module, sc.Wasm, mode)
	if err != nil {
		return nil, 0, err
	}
	defer st.close()
	client := loadgen.NewClient(ctlMaxInFlight)
	defer client.CloseIdleConnections()
	if err := st.ready(ctx, client, mode); err != nil {
		return nil, 0, err
	}
	if err := sims.reset(ctx); err != nil {
		return nil, 0, err
	}
	r := &ctlRun{Mode: mode}
	e0, _ := envoyCounters(ctx, st.a.admin, ctlEjectionsEnforced)

	start := time.Now()
	stop := make(chan struct{})
	var views []ctlView
	var gauges []ctlGauge
	var latest ctlView
	var mu sync.Mutex
	pollDone := make(chan struct{})
	var poller sync.WaitGroup
	poller.Go(func() {
		tick := time.NewTicker(ctlPoll)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-pollDone:
				return
			case <-tick.C:
			}
			at := time.Since(start)
			if mode == modeController {
				if v, err := viewhttp.Fetch(ctx, adminClient, st.viewURL, 0); err == nil {
					b := v.Backends[ctlFaulty]
					cv := ctlView{At: at, State: b.State, Throttled: b.Throttled, FTT: time.Duration(v.FirstTokenTimeout)}
					mu.Lock()
					views = append(views, cv)
					latest = cv
					mu.Unlock()
				}
			}
			if g, err := envoyCounters(ctx, st.a.admin, ctlEjectionsActive); err == nil {
				var n int64
				for _, v := range g {
					n += v
				}
				mu.Lock()
				gauges = append(gauges, ctlGauge{At: at, Value: n})
				mu.Unlock()
			}
		}
	})
	var outcomes []ctlOutcome
	var load sync.WaitGroup
	load.Go(func() { outcomes = ctlLoop(ctx, client, st.url, sc.Loads, ctlChatBody, start, stop) })

	script := func() error {
		lead := sc.Lead + jitter
		if sc.WaitFTT {
			if mode == modeController {
				for {
					mu.Lock()
					v := latest
					mu.Unlock()
					now := time.Since(start)
					if now >= ctlFTTMaxWait || (now >= ctlFTTMinWait && v.FTT > 0 && v.FTT < ctlFTTBelow) {
						break
					}
					if err := sleepCtx(ctx, ctlPoll); err != nil {
						return err
					}
				}
				lead = time.Since(start) + jitter
			} else {
				lead = wait
			}
		}
		if err := sleepCtx(ctx, time.Until(start.Add(lead))); err != nil {
			return err
		}
		var p0 float64
		p0, r.HasPushes = st.pushes(ctx)
		mu.Lock()
		r.FTT = latest.FTT
		mu.Unlock()
		f := sc.Fault
		span, err := runFault(ctx, start, sc.For, sc.Flap,
			func() error { return sims.setFault(ctx, &f) }, func() error { return sims.setFault(ctx, nil) })
		r.FaultAt, r.ClearAt, r.Flips = span.FaultAt, span.ClearAt, span.Flips
		if err != nil {
			return err
		}
		if p1, ok := st.pushes(ctx); ok && r.HasPushes {
			r.Pushes = p1 - p0
		} else {
			r.HasPushes = false
		}
		return nil
	}
	serr := script()
	close(stop)
	load.Wait()
	close(pollDone)
	poller.Wait()
	if serr != nil {
		return nil, 0, serr
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	r.Outcomes, r.Views, r.Ejections = outcomes, views, gauges
	if e1, err := envoyCounters(ctx, st.a.admin, ctlEjectionsEnforced); err == nil {
		for k, v := range e1 {
			r.EjectionsEnforced += v - e0[k]
		}
	}
	if r.Upstream, err = sims.stats(ctx); err != nil {
		return nil, 0, err
	}
	if err := st.alive(); err != nil {
		return nil, 0, err
	}
	return r, r.FaultAt, nil
}

// runController runs every scenario, controller mode first (the slow
// scenario's baseline waits as long as its controller mode did), and
// returns what it measured. A scenario that fails is reported as such;
// the others still run.
func runController(ctx context.Context, c e2eConfig, module string) (*controllerResult, error) {
	dir := filepath.Join(c.workDir, "controller")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if _, err := os.Stat(module); err != nil {
		return nil, fmt.Errorf("wasm module: %w", err)
	}
	sims, err := startCtlSims(ctx, c, dir)
	if err != nil {
		return nil, err
	}
	defer sims.close()
	c.log.Info("controller benchmark", "scenarios", len(ctlScenarios), "estimated", estimateController().Round(time.Second), "logs", dir)
	res := &controllerResult{Module: module}
	var errs []error
	for _, sc := range ctlScenarios {
		sr := ctlScenarioResult{Scenario: sc, Runs: map[string]*ctlRun{}}
		var wait time.Duration
		jitter := rand.N(ctlInterval)
		for _, mode := range ctlModes {
			if err := sleepCtx(ctx, settle); err != nil {
				return nil, err
			}
			r, lead, err := runCtl(ctx, c, sims, dir, module, sc, mode, jitter, wait)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if err != nil {
				sr.Err = fmt.Sprintf("%s mode: %v", mode, err)
				errs = append(errs, fmt.Errorf("scenario %s, %s mode: %w", sc.Name, mode, err))
				c.log.Warn("controller scenario failed", "scenario", sc.Name, "mode", mode, "err", err)
				break
			}
			if mode == modeController {
				wait = lead
			}
			f := r.figures()
			c.log.Info("controller", "scenario", sc.Name, "mode", mode, "fault_at", r.FaultAt.Round(time.Millisecond), "sent", f.Sent, "failed", f.Failed,
				"detect", fmtCtlDetect(f), "eject", fmtCtlFound(f.Ejected, f.Eject, "none"),
				"shift", fmtCtlFound(f.Shifted, f.Shift, "never"), "attempts", fmt.Sprintf("%.3f", f.Attempts),
				"pushes", r.Pushes, "states", strings.Join(f.States, " → "))
			sr.Runs[mode] = r
		}
		res.Scenarios = append(res.Scenarios, sr)
		if err := sims.reset(ctx); err != nil {
			return nil, err
		}
		if err := allAlive(sims.children(), nil); err != nil {
			return nil, err
		}
	}
	return res, errors.Join(errs...)
}

// --- report

func fmtSec(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

func fmtCtlFound(ok bool, d time.Duration, otherwise string) string {
	if !ok {
		return otherwise
	}
	return fmtSec(d)
}

func fmtCtlDetect(f ctlFigures) string {
	switch {
	case !f.Viewed:
		return "n/a (no controller)"
	case !f.Detected:
		return "not detected"
	}
	return fmt.Sprintf("%s (%s)", fmtSec(f.Detect), f.DetectState)
}

// fmtRatio is a/b as "×0.52" (two significant digits below 0.1:
// "×0.0021"), "–" when either is 0 or unknown.
func fmtRatio(a, b float64) string {
	r := a / b
	if a == 0 || b == 0 || math.IsNaN(r) || math.IsInf(r, 0) {
		return "–"
	}
	if r < 0.1 {
		return "×" + strconv.FormatFloat(r, 'g', 2, 64)
	}
	return fmt.Sprintf("×%.2f", r)
}

// controllerMarkdown renders the controller section (without markers):
// its own run header and one table per scenario.
func controllerMarkdown(r *report, res *controllerResult, runErr string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "<!-- Generated by bench/cmd/detour-bench (`make bench`, or `-only controller`): everything between the markers is replaced on each run that includes the controller part. -->\n\n")
	m := r.Machine
	fmt.Fprintf(&b, "## Latest run: live-metrics controller\n\n")
	fmt.Fprintf(&b, "- **Date:** %s UTC (whole run took %s)\n", r.Started.Format("2006-01-02 15:04"), r.Elapsed.Round(time.Second))
	fmt.Fprintf(&b, "- **Command:** `%s`\n", r.Command)
	fmt.Fprintf(&b, "- **Machine:** %d CPUs (nproc), %s, %s RAM, kernel %s\n", m.CPUs, m.CPUModel, m.MemTotal, m.Kernel)
	fmt.Fprintf(&b, "- **Software:** %s, Envoy %s, detour at commit %s\n", m.Go, m.Envoy, m.Commit)
	fmt.Fprintf(&b, "- **Load average (1/5/15 min):** %s before, %s after\n\n", r.LoadBefore, r.LoadAfter)
	fmt.Fprintf(&b, "### 8. Live-metrics controller: time to detect, time to shift\n\n")
	if res == nil {
		fmt.Fprintf(&b, "**Not measured**: %s\n\n", runErr)
		return b.Bytes()
	}
	fmt.Fprintf(&b, "Four `detour sim` providers like the quickstart's (`fast`, `fast-b`, `long`, `vision`); `fast`, the cheapest, "+
		"is broken while a fixed-rate load of `\"model\": \"auto\"` chats goes through Envoy (dynamic bootstrap, fed by `detour xds`). "+
		"Every scenario runs twice in this run, each time on a fresh `detour extproc`, `detour xds` and Envoy (`--concurrency %d`): "+
		"**detour controller** with the e2e tests' settings (`controller: {interval: 500ms, dwell: 2s, cool_down: 3s}`, `probes: {disabled: true}`, "+
		"trial share %.0f %%), and the **static baseline**, the identical policy with `controller: {disabled: true}` "+
		"(Envoy's retries and outlier detection as the policy sets them; the ext_proc service ranks every backend healthy). "+
		"The slow scenario loads the measurement plugin (`wasm: {module: %s, measure: true}`); the others run without it. "+
		"A run starts once the stack routes to `fast` (and, with the controller, its view shows every backend HEALTHY); "+
		"the fault starts after the scenario's lead plus a random 0–%s, the same in both modes, so that it falls at a random phase of the controller's evaluation cycle.\n\n",
		envoyThreads, 100*ctlTrialShare, filepath.Base(res.Module), ctlInterval)
	fmt.Fprintf(&b, "Every request is timed at its start. *Failed*: requests without a 200 (exact count, whole run). "+
		"*Time to detect*: from the fault to the first read (every %s) of the controller's view (`GET /v1/status`) showing `fast` not HEALTHY or throttled; "+
		"the baseline has no controller (n/a), so for both modes the time to Envoy's own outlier ejection is given as well "+
		"(admin stat `cluster.fast.outlier_detection.ejections_active` > 0, read every %s). "+
		"*Time to shift*: from the fault to the start of the first %s window, sliding by %s, from which on the share of requests that went to `fast` "+
		"(answered by it, per `x-detour-backend`, or taking more than one attempt, per `x-envoy-attempt-count`) stays ≤ %.0f %% + one request "+
		"in every window until the fault ends; \"never\" if the last window still misses it. "+
		"Attempts per request, latency and stream TTFT (to the first content chunk) are over the requests started during the fault. "+
		"Ratios are controller / baseline.\n\n",
		ctlPoll, ctlPoll, ctlShiftWindow, ctlShiftStep, 100*ctlTrialShare)

	for i, sr := range res.Scenarios {
		sc := sr.Scenario
		fmt.Fprintf(&b, "#### 8.%d %s\n\n", i+1, sc.Title)
		var loads []string
		for _, l := range sc.Loads {
			kind := "non-streaming"
			if l.Stream {
				kind = "streaming"
			}
			loads = append(loads, fmt.Sprintf("%g req/s %s", l.Rate, kind))
		}
		fmt.Fprintf(&b, "Fault `%s` on `fast`", ctlFaultJSON(sc.Fault))
		if r := sr.Runs[modeController]; r != nil {
			fmt.Fprintf(&b, " from %s into the run", fmtSec(r.FaultAt))
		}
		if sc.Flap > 0 {
			fmt.Fprintf(&b, ", on for %s and off for %s in turn for %s", sc.Flap, sc.Flap, sc.For)
		} else {
			fmt.Fprintf(&b, " for %s", sc.For)
		}
		fmt.Fprintf(&b, "; load %s.", strings.Join(loads, " + "))
		if sc.Flap > 0 {
			fmt.Fprintf(&b, " The figures \"during the fault\" and the time to shift span the whole %s, on and off phases alike.", sc.For)
		}
		ctl, base := sr.Runs[modeController], sr.Runs[modeBaseline]
		if sc.WaitFTT && ctl != nil {
			fmt.Fprintf(&b, " Before the fault the run waited %s (both modes) for the controller's first-token deadline to follow the measured TTFT: it was %s when the fault began (the policy's, and the baseline's, is %s).",
				fmtSec(ctl.FaultAt), ctl.FTT, ctlFTTBelow)
		}
		b.WriteString("\n\n")
		if ctl == nil || base == nil {
			fmt.Fprintf(&b, "**Not measured**: %s\n\n", sr.Err)
			continue
		}
		fc, fb := ctl.figures(), base.figures()
		b.WriteString("| | detour controller | static baseline | controller / baseline |\n| --- | ---: | ---: | ---: |\n")
		fmt.Fprintf(&b, "| requests sent | %d | %d | |\n", fc.Sent, fb.Sent)
		fmt.Fprintf(&b, "| **failed** (non-200) | **%d** | **%d** | |\n", fc.Failed, fb.Failed)
		fmt.Fprintf(&b, "| … of them started during the fault | %d of %d | %d of %d | |\n", fc.FailedDuring, fc.During, fb.FailedDuring, fb.During)
		fmt.Fprintf(&b, "| **time to detect** (controller view) | **%s** | %s | |\n", fmtCtlDetect(fc), fmtCtlDetect(fb))
		fmt.Fprintf(&b, "| Envoy ejects `fast` (outlier detection) | %s | %s | |\n",
			fmtCtlFound(fc.Ejected, fc.Eject, "none"), fmtCtlFound(fb.Ejected, fb.Eject, "none"))
		shiftRatio := "–"
		if fc.Shifted && fb.Shifted && fb.Shift > 0 {
			shiftRatio = fmtRatio(fc.Shift.Seconds(), fb.Shift.Seconds())
		}
		fmt.Fprintf(&b, "| **time to shift** | **%s** | **%s** | %s |\n",
			fmtCtlFound(fc.Shifted, fc.Shift, "never"), fmtCtlFound(fb.Shifted, fb.Shift, "never"), shiftRatio)
		fmt.Fprintf(&b, "| share of requests that went to `fast` during the fault | %.1f %% | %.1f %% | %s |\n",
			100*fc.FastShare, 100*fb.FastShare, fmtRatio(fc.FastShare, fb.FastShare))
		fmt.Fprintf(&b, "| **attempts per request** during the fault | **%.3f** | **%.3f** | **%s** |\n",
			fc.Attempts, fb.Attempts, fmtRatio(fc.Attempts, fb.Attempts))
		fmt.Fprintf(&b, "| latency p50 / p99 during the fault (200s, ms) | %s / %s | %s / %s | %s / %s |\n",
			fmtMs1(fc.Lat.P50), fmtMs1(fc.Lat.P99), fmtMs1(fb.Lat.P50), fmtMs1(fb.Lat.P99),
			fmtRatio(float64(fc.Lat.P50), float64(fb.Lat.P50)), fmtRatio(float64(fc.Lat.P99), float64(fb.Lat.P99)))
		if fc.TTFT.N > 0 || fb.TTFT.N > 0 {
			fmt.Fprintf(&b, "| **stream TTFT p50 / p99** during the fault (ms) | **%s / %s** | **%s / %s** | **%s / %s** |\n",
				fmtMs1(fc.TTFT.P50), fmtMs1(fc.TTFT.P99), fmtMs1(fb.TTFT.P50), fmtMs1(fb.TTFT.P99),
				fmtRatio(float64(fc.TTFT.P50), float64(fb.TTFT.P50)), fmtRatio(float64(fc.TTFT.P99), float64(fb.TTFT.P99)))
		}
		fmt.Fprintf(&b, "| controller pushes during the fault%s | %s | %s | |\n", ctlFlipsNote(sc, ctl), fmtPushes(ctl), fmtPushes(base))
		fmt.Fprintf(&b, "| Envoy outlier ejections of `fast` (enforced) | %d | %d | |\n", ctl.EjectionsEnforced, base.EjectionsEnforced)
		fmt.Fprintf(&b, "| upstream attempts: fast / fast-b / long / vision | %s | %s | |\n", fmtUpstream(ctl.Upstream), fmtUpstream(base.Upstream))
		states := "–"
		if len(fc.States) > 0 {
			states = strings.Join(fc.States, " → ")
		}
		fmt.Fprintf(&b, "\n`fast`'s states in the controller's view: %s.\n\n", states)
	}
	if runErr != "" {
		fmt.Fprintf(&b, "**Errors:** %s\n\n", runErr)
	}
	return b.Bytes()
}

func ctlFlipsNote(sc ctlScenario, r *ctlRun) string {
	if sc.Flap > 0 && r != nil {
		return fmt.Sprintf(" (%d flips)", r.Flips)
	}
	return ""
}

func fmtPushes(r *ctlRun) string {
	if !r.HasPushes {
		return "–"
	}
	return fmt.Sprintf("%.0f", r.Pushes)
}

func fmtUpstream(u map[string]int64) string {
	var parts []string
	for _, b := range ctlBackends {
		parts = append(parts, strconv.FormatInt(u[b.Name], 10))
	}
	return strings.Join(parts, " / ")
}

// fmtMs1 is d in ms with one decimal, "–" for 0.
func fmtMs1(d time.Duration) string {
	if d == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond))
}

// ctlFaultJSON is the fault as the sim admin API takes it, without zero
// fields.
func ctlFaultJSON(f sim.Fault) string {
	var parts []string
	if f.Status != 0 {
		parts = append(parts, fmt.Sprintf(`"status":%d`, f.Status))
	}
	if f.Rate != 0 {
		parts = append(parts, fmt.Sprintf(`"rate":%g`, f.Rate))
	}
	if f.Even {
		parts = append(parts, `"even":true`)
	}
	if f.RetryAfterS != 0 {
		parts = append(parts, fmt.Sprintf(`"retry_after_s":%d`, f.RetryAfterS))
	}
	if f.TTFTMS != 0 {
		parts = append(parts, fmt.Sprintf(`"ttft_ms":%d`, f.TTFTMS))
	}
	return "{" + strings.Join(parts, ",") + "}"
}
