package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/sim"
)

// controllerYAML runs the controller fast enough to test: a half-second
// evaluation, short dwell and cool-down. Probes stay off unless a test
// turns them on, so the providers' counters are the clients' traffic.
// trialShare is controller.trial_share's default.
const trialShare = 0.05

// brownout fails 30 % of a provider's requests, spread evenly: the
// 20-odd trial requests that judge a degraded backend see 30 %. Drawn at
// random, 30 % is too close to the 25 % threshold for 20 requests to tell
// (the verdict would be luck).
var brownout = sim.Fault{Status: 500, Rate: 0.3, Even: true}

const controllerYAML = `controller:
  interval: 500ms
  dwell: 2s
  cool_down: 3s
probes: {disabled: true}`

// brownoutControllerYAML is controllerYAML with cool-downs doubling to 6 s
// at most: a brownout fails some trials of each HALF_OPEN, and a
// cool-down doubled to 24 s just before the fault ends would outlast the
// test's load.
const brownoutControllerYAML = `controller:
  interval: 500ms
  dwell: 2s
  cool_down: 3s
  max_cool_down: 6s
probes: {disabled: true}`

// Brownout: a backend failing 30 % of its requests. Its first errors make
// it DEGRADED, which moves its traffic at once; the trickle of trial
// requests it keeps getting opens it within the breaker window; no client
// request fails; once it recovers it returns to HEALTHY (through
// HALF_OPEN when it was opened).
func TestControllerBrownout(t *testing.T) {
	s := startStack(t, stackOptions{Controller: brownoutControllerYAML})
	var faultAt, clearAt time.Duration
	tl := runTimeline(t, s, 45*time.Second, []load{{rate: 40, body: chat("auto", nil, user("hello"))}}, func(tl *timeline) {
		faultAt, clearAt = tl.fault("fast", brownout, 3*time.Second, 25*time.Second)
	})
	failed, total := tl.failed()
	t.Logf("brownout: %s; fast went %v", tl.summary(), tl.transitions("fast"))
	if total < 1500 {
		t.Fatalf("only %d requests sent", total)
	}
	if ratio := float64(total-failed) / float64(total); ratio < 0.9999 {
		t.Errorf("client success %.4f%% (%d of %d failed), want ≥ 99.99%% while fast-b is healthy", 100*ratio, failed, total)
	}
	degraded, ok := tl.firstState("fast", healthview.Degraded, faultAt)
	if !ok || degraded-faultAt > 2*time.Second {
		t.Errorf("fast not DEGRADED within 2 s of the fault (%v): %v", degraded-faultAt, tl.transitions("fast"))
	}
	// A degraded backend keeps a trickle of trial requests (trial_share,
	// 5 % by default; each failed one is retried on the next backend), so
	// the traffic has moved when fast's share is down to that.
	shifted, ok := tl.shiftedAt("fast", faultAt, clearAt, trialShare, 1)
	if !ok {
		t.Errorf("fast's traffic never fell to the %v%% trial share during the fault", 100*trialShare)
	}
	opened, ok := tl.firstState("fast", healthview.Open, faultAt)
	if !ok || opened-faultAt > 30*time.Second {
		t.Errorf("fast not OPEN within the 30 s window (%v): %v", opened-faultAt, tl.transitions("fast"))
	}
	t.Logf("DEGRADED %v and OPEN %v after the fault began; traffic off fast %v after; %.2f attempts per request during the fault",
		(degraded - faultAt).Round(10*time.Millisecond), (opened - faultAt).Round(10*time.Millisecond),
		(shifted - faultAt).Round(10*time.Millisecond), tl.attemptsPerRequest(faultAt, clearAt))
	if at, ok := tl.firstState("fast", healthview.Healthy, clearAt); !ok {
		t.Errorf("fast not HEALTHY again after the fault cleared: %v", tl.transitions("fast"))
	} else {
		t.Logf("HEALTHY again %v after the fault cleared", (at - clearAt).Round(10*time.Millisecond))
	}
	t.Logf("timeline (fault from %v to %v):\n%s", faultAt.Round(100*time.Millisecond), clearAt.Round(100*time.Millisecond), tl.dump("fast"))
	if !strings.Contains(s.xdsLogText(), `backend=fast from=HEALTHY to=DEGRADED reason="error rate`) {
		t.Errorf("no transition log line:\n%s", tail(s.xdsLog, 20))
	}
}

// Slow backend: fast's first token takes 3 s. The controller has set the
// first-token deadline from the healthy TTFT it measured (its floor, 1 s),
// so a stream stuck on fast moves to fast-b after one deadline; fast is
// DEGRADED (slow responses, abandoned attempts) and traffic prefers
// fast-b. Clients' time to first token stays under the health threshold
// plus one deadline.
func TestControllerSlowBackend(t *testing.T) {
	s := startStack(t, stackOptions{Controller: controllerYAML, Wasm: "measure"})
	var faultAt, clearAt time.Duration
	loads := []load{
		{rate: 20, body: chat("auto", map[string]any{"stream": true}, user("hello")), stream: true},
		{rate: 10, body: chat("auto", nil, user("hello"))},
	}
	var deadlineAt time.Duration
	tl := runTimeline(t, s, 35*time.Second, loads, func(tl *timeline) {
		// Envoy flushes its histograms every 5 s: wait until the
		// controller has followed the measured TTFT to its deadline.
		for tl.now() < 12*time.Second && (s.firstTokenDeadline() >= 10*time.Second || tl.now() < 6*time.Second) {
			time.Sleep(100 * time.Millisecond)
		}
		deadlineAt = tl.now()
		faultAt, clearAt = tl.fault("fast", sim.Fault{TTFTMS: 3000}, 0, 20*time.Second)
	})
	failed, total := tl.failed()
	t.Logf("slow backend: %s; fast went %v; fast-b went %v", tl.summary(), tl.transitions("fast"), tl.transitions("fast-b"))
	if failed != 0 {
		t.Errorf("%d of %d requests failed", failed, total)
	}
	left, ok := tl.firstNotState("fast", healthview.Healthy, faultAt)
	if !ok {
		t.Fatalf("fast stayed HEALTHY: %v", tl.transitions("fast"))
	}
	shifted, ok := tl.shiftedAt("fast", faultAt, clearAt, trialShare, 1)
	if !ok {
		t.Errorf("fast's traffic never fell to the %v%% trial share", 100*trialShare)
	}
	deadline := s.firstTokenDeadline()
	before := tl.ttftQuantile(0.99, 0, faultAt)
	during := tl.ttftQuantile(0.99, faultAt, clearAt)
	after := tl.ttftQuantile(0.99, shifted, clearAt)
	t.Logf("fast left HEALTHY %v after the fault (%v); traffic off fast %v after; first-token deadline %v; client TTFT p99 before %v, during the fault %v, after the shift %v",
		(left - faultAt).Round(10*time.Millisecond), tl.stateAfter("fast", left), (shifted - faultAt).Round(10*time.Millisecond),
		deadline, before.Round(time.Millisecond), during.Round(time.Millisecond), after.Round(time.Millisecond))
	if deadline <= 0 || deadline >= 10*time.Second {
		t.Errorf("first-token deadline %v: the controller did not follow the measured TTFT", deadline)
	}
	if bound := 500*time.Millisecond + deadline; during > bound {
		t.Errorf("client TTFT p99 during the fault %v > threshold + one deadline %v", during, bound)
	}
	t.Logf("deadline followed TTFT by %v; timeline:\n%s", deadlineAt.Round(100*time.Millisecond), tl.dump("fast"))
}

// Flapping: fast fails every request for 2 s, then works for 2 s, for
// 40 s. Without hysteresis every flip would be a push (20); the dwell and
// the doubling cool-down bound them.
func TestControllerFlappingBoundsPushes(t *testing.T) {
	s := startStack(t, stackOptions{Controller: controllerYAML})
	pushes := func() float64 { return sumSeries(s.XDSMetrics(), "detour_controller_pushes_total") }
	var before, after float64
	flips := 0
	tl := runTimeline(t, s, 44*time.Second, []load{{rate: 20, body: chat("auto", nil, user("hello"))}}, func(tl *timeline) {
		time.Sleep(2 * time.Second)
		before = pushes()
		for tl.now() < 42*time.Second {
			s.Sim("fast").SetFault(sim.Fault{Status: 503})
			time.Sleep(2 * time.Second)
			s.Sim("fast").ClearFault()
			time.Sleep(2 * time.Second)
			flips += 2
		}
		after = pushes()
	})
	failed, total := tl.failed()
	n := after - before
	t.Logf("flapping: %d flips in 40 s, %v pushes (endpoint, cluster and route changes), %d of %d requests failed; fast went %v",
		flips, n, failed, total, tl.transitions("fast"))
	if failed != 0 {
		t.Errorf("%d requests failed", failed)
	}
	if n >= float64(flips) {
		t.Errorf("%v pushes for %d flips: the hysteresis does not hold", n, flips)
	}
}

// 429 storm: fast throttles 60 % of its requests (Retry-After 5 s). It is
// not failing, so its circuit stays closed, but it ranks after the
// backends with room until it stops; throttled requests are retried on
// fast-b within the retry budget (no overflow), and no client sees a 429.
func TestControllerThrottleStorm(t *testing.T) {
	s := startStack(t, stackOptions{Controller: controllerYAML})
	var faultAt, clearAt time.Duration
	tl := runTimeline(t, s, 30*time.Second, []load{{rate: 40, body: chat("auto", nil, user("hello"))}}, func(tl *timeline) {
		faultAt, clearAt = tl.fault("fast", sim.Fault{Status: 429, Rate: 0.6, RetryAfterS: 5}, 3*time.Second, 15*time.Second)
	})
	failed, total := tl.failed()
	t.Logf("429 storm: %d of %d failed; fast went %v", failed, total, tl.transitions("fast"))
	if failed != 0 {
		t.Errorf("%d requests failed", failed)
	}
	throttled, ok := tl.firstState("fast", healthview.Healthy+"+THROTTLED", faultAt)
	if !ok {
		t.Fatalf("fast never marked throttled: %v", tl.transitions("fast"))
	}
	shifted, ok := tl.shiftedAt("fast", faultAt, clearAt, trialShare, 1)
	if !ok {
		t.Errorf("fast's traffic never fell to the %v%% trial share", 100*trialShare)
	}
	overflow := metricValue(s.EnvoyPrometheus(), `envoy_cluster_upstream_rq_retry_overflow{envoy_cluster_name="fast"}`)
	t.Logf("throttled %v after the storm began, traffic off fast %v after; %.2f attempts per request during the storm (%.2f after the shift); retry overflows %v",
		(throttled - faultAt).Round(10*time.Millisecond), (shifted - faultAt).Round(10*time.Millisecond),
		tl.attemptsPerRequest(faultAt, clearAt), tl.attemptsPerRequest(shifted, clearAt), overflow)
	if overflow != 0 {
		t.Errorf("%v retries overflowed the budget", overflow)
	}
	if st := tl.stateAfter("fast", clearAt-time.Second); !strings.HasPrefix(st, healthview.Healthy) {
		t.Errorf("a throttling backend's circuit opened: %s", st)
	}
	t.Logf("timeline:\n%s", tl.dump("fast"))
}

// Shedding: both backends of fast-8k are OPEN. Standard and sheddable
// requests to it are refused with 429 and Retry-After (in the OpenAI
// error shape) while critical ones still go, to the OPEN backends as the
// last resort; auto, with long and vision healthy, sheds nothing. In both
// routing modes: the ext_proc service or the wasm router refuses.
func TestControllerShedsByPriority(t *testing.T) {
	inBothModes(t, stackOptions{Controller: `controller:
  interval: 500ms
  dwell: 2s
  cool_down: 20s
probes: {disabled: true}`}, testShedsByPriority)
}

func testShedsByPriority(t *testing.T, s *stack) {
	s.Sim("fast").SetFault(sim.Fault{Status: 500})
	s.Sim("fast-b").SetFault(sim.Fault{Status: 500})
	body := chat("fast-8k", nil, user("hello"))
	deadline := time.Now().Add(15 * time.Second)
	for {
		post(t, s.URL("/v1/chat/completions"), body, "x-detour-priority", "critical")
		v := s.controllerView()
		if v.Routes["fast-8k"].Shed == healthview.Standard {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fast-8k never shed: %+v", v.Routes["fast-8k"])
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The providers are fine again, but their circuits stay open for the
	// cool-down: only critical requests reach them. (The routers' long
	// polls were waiting for this view: each has it a round trip later.)
	s.Sim("fast").ClearFault()
	s.Sim("fast-b").ClearFault()
	time.Sleep(300 * time.Millisecond)
	for _, prio := range []string{"", "standard", "sheddable"} {
		var hdr []string
		if prio != "" {
			hdr = []string{"x-detour-priority", prio}
		}
		r := post(t, s.URL("/v1/chat/completions"), body, hdr...)
		assertOpenAIError(t, r, 429, "capacity_shed")
		if ra := r.Header.Get("retry-after"); ra == "" || ra == "0" {
			t.Errorf("priority %q: Retry-After %q", prio, ra)
		}
		if k := r.Header.Get("x-detour-error"); k != "shed" {
			t.Errorf("priority %q: x-detour-error %q", prio, k)
		}
	}
	r := post(t, s.URL("/v1/chat/completions"), body, "x-detour-priority", "critical")
	if r.Status != 200 {
		t.Errorf("critical request: %d %s", r.Status, r.Body)
	}
	r = post(t, s.URL("/v1/chat/completions"), chat("auto", nil, user("hello")), "x-detour-priority", "sheddable")
	if r.Status != 200 || r.Header.Get("x-detour-backend") != "long" {
		t.Errorf("auto (long and vision healthy): %d from %q", r.Status, r.Header.Get("x-detour-backend"))
	}
	extprocShed, wasmShed := 3.0, 0.0
	if s.opts.Wasm == "route" {
		extprocShed, wasmShed = 0, 3
	}
	if n := sumSeries(s.Metrics(), "detour_extproc_shed_total"); n != extprocShed {
		t.Errorf("detour_extproc_shed_total = %v, want %v", n, extprocShed)
	}
	if n := sumSeries(s.EnvoyPrometheus(), `detour_wasm_rejections_total{kind="shed"}`); n != wasmShed {
		t.Errorf("the plugin shed %v requests, want %v", n, wasmShed)
	}
}

// Probes judge idle backends: with no client traffic at all, a backend
// whose first token takes 1.5 s is DEGRADED and one that answers 500 is
// OPEN, from the probes alone; a backend with credentials passes the auth
// check (a request without its key is refused) and its probes carry the
// key.
func TestControllerProbesJudgeIdleBackends(t *testing.T) {
	t.Setenv("DETOUR_E2E_VISION_KEY", "sk-vision-e2e")
	backends := quickstartBackends()
	backends[3].APIKey, backends[3].KeyEnv = "sk-vision-e2e", "DETOUR_E2E_VISION_KEY"
	s := startStack(t, stackOptions{Backends: backends, Controller: `controller:
  interval: 500ms
  dwell: 2s
  cool_down: 30s
probes:
  idle_interval: 1s
  budget_per_hour: 10000`})
	s.Sim("long").SetFault(sim.Fault{TTFTMS: 1500})
	s.Sim("fast-b").SetFault(sim.Fault{Status: 500})
	deadline := time.Now().Add(40 * time.Second)
	var v *healthview.Snapshot
	for {
		v = s.controllerView()
		if v.Backends["long"].State == healthview.Degraded && v.Backends["fast-b"].State == healthview.Open {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not judged from probes: long %s (%s), fast-b %s (%s)", v.Backends["long"].State, v.Backends["long"].Reason,
				v.Backends["fast-b"].State, v.Backends["fast-b"].Reason)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("long: %s; fast-b: %s", v.Backends["long"].Reason, v.Backends["fast-b"].Reason)
	if !strings.Contains(v.Backends["long"].Reason, "TTFT") {
		t.Errorf("long degraded for %q, want its time to first token", v.Backends["long"].Reason)
	}
	for _, b := range []string{"fast", "vision"} {
		if st := v.Backends[b].State; st != healthview.Healthy {
			t.Errorf("%s is %s (%s)", b, st, v.Backends[b].Reason)
		}
	}
	auth := false
	for _, p := range v.Backends["vision"].Probes {
		if p.Name == "auth" {
			auth = true
			if !p.OK {
				t.Errorf("vision's auth check failed: %s", p.Reason)
			}
		}
	}
	if !auth {
		t.Errorf("no auth check of vision among its probes: %+v", v.Backends["vision"].Probes)
	}
	if n := metricValue(s.XDSMetrics(), `detour_probe_results_total{backend="fast-b",probe="short",result="failed"}`); n == 0 {
		t.Error("fast-b's failed probes not counted")
	}
	// No client request was sent: every request the providers saw was a probe.
	if n := sumSeries(s.Metrics(), "detour_extproc_decisions_total"); n != 0 {
		t.Errorf("%v client decisions", n)
	}
}

// Endpoint weights: fast has two endpoints (fast and fast-far, both in
// this Envoy's priority) and one of them fails 40 % of its requests. The
// thresholds are raised so the backend as a whole stays HEALTHY (its
// overall error rate is about 20 %): the controller weighs the failing
// endpoint down (100 × (1 − 2 × 0.4) ≈ 20) over EDS, and Envoy sends it a
// smaller share of fast's requests than before.
func TestControllerEndpointWeights(t *testing.T) {
	backends := quickstartBackends()
	backends[0].FarRegion = "far"
	s := startStack(t, stackOptions{Backends: backends, Controller: controllerYAML + `
health: {error_rate: 0.5}
circuit_breaker: {error_rate: 0.6}`})
	share := func(d time.Duration) (float64, int64) {
		s.ResetSims()
		s.Sim("fast-far").SetFault(sim.Fault{Status: 500, Rate: 0.4, Even: true})
		tl := runTimeline(t, s, d, []load{{rate: 40, body: chat("auto", nil, user("hello"))}}, nil)
		if failed, total := tl.failed(); failed != 0 {
			t.Errorf("%d of %d requests failed", failed, total)
		}
		near, far := s.Sim("fast").Stats().Requests, s.Sim("fast-far").Stats().Requests
		return float64(far) / float64(near+far), near + far
	}
	before, n := share(4 * time.Second)
	t.Logf("before weights: fast-far took %.0f%% of fast's %d attempts", 100*before, n)
	deadline := time.Now().Add(20 * time.Second)
	var weights, low string
	for weights == "" {
		for _, st := range s.controllerView().Backends["fast"].Settings {
			if st.Name == "endpoint_weights" {
				weights = st.Value + " (" + st.Why + ")"
				for _, kv := range strings.Fields(st.Value) {
					if _, w, _ := strings.Cut(kv, "="); w != "100" {
						low = w
					}
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no endpoint weights pushed: %+v", s.controllerView().Backends["fast"])
		}
		time.Sleep(100 * time.Millisecond)
	}
	after, n := share(8 * time.Second)
	t.Logf("weights %s; after: fast-far took %.0f%% of fast's %d attempts", weights, 100*after, n)
	if st := s.controllerView().Backends["fast"].State; st != healthview.Healthy {
		t.Errorf("fast is %s: the test wants it HEALTHY, weighed per endpoint", st)
	}
	if after >= 0.35 || after >= before {
		t.Errorf("fast-far's share %.2f with weights (%.2f before): not weighed down", after, before)
	}
	dump := s.EnvoyStatsPath("/config_dump?include_eds")
	if !strings.Contains(dump, `"load_balancing_weight": `+low) || !strings.Contains(dump, `"load_balancing_weight": 100`) {
		t.Errorf("Envoy's config does not hold the weights %s", weights)
	}
}
