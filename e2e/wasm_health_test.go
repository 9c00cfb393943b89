package e2e

import (
	"testing"
	"time"

	"github.com/detourhq/detour/healthview"
)

// Wasm mode follows the controller's view: the router plugin long-polls
// /v1/status through Envoy (detour_wasm_source) and ranks the backends of
// each decision by health, as the ext_proc service does. A brownout on
// fast (30 % of its requests fail) makes it DEGRADED; the plugin moves its
// traffic to the trial trickle, no client request fails, and the ext_proc
// service decides nothing.
func TestWasmHealthBrownout(t *testing.T) {
	s := startStack(t, stackOptions{Wasm: "route", Controller: controllerYAML})
	// Every worker's VM polls on its own; wait until they hold a view.
	begin := time.Now()
	views := func() float64 { return sumSeries(s.EnvoyPrometheus(), "detour_wasm_health_views_total") }
	for views() == 0 {
		if time.Since(begin) > 15*time.Second {
			t.Fatalf("the plugin took no view of the controller in 15 s:\n%s", grepLines(s.EnvoyPrometheus(), "detour_wasm"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("first view taken %v after Envoy was up", time.Since(begin).Round(10*time.Millisecond))

	var faultAt, clearAt time.Duration
	tl := runTimeline(t, s, 22*time.Second, []load{{rate: 40, body: chat("auto", nil, user("hello"))}}, func(tl *timeline) {
		faultAt, clearAt = tl.fault("fast", brownout, 3*time.Second, 15*time.Second)
	})
	failed, total := tl.failed()
	t.Logf("wasm brownout: %s; fast went %v", tl.summary(), tl.transitions("fast"))
	if total < 700 {
		t.Fatalf("only %d requests sent", total)
	}
	if failed != 0 {
		t.Errorf("%d of %d client requests failed", failed, total)
	}
	degraded, ok := tl.firstState("fast", healthview.Degraded, faultAt)
	if !ok || degraded-faultAt > 2*time.Second {
		t.Fatalf("fast not DEGRADED within 2 s of the fault (%v): %v", degraded-faultAt, tl.transitions("fast"))
	}
	// Before the plugin followed the view, wasm mode kept sending fast its
	// full share (Envoy's EDS health does not choose between clusters):
	// falling to the trial share is the plugin's doing.
	shifted, ok := tl.shiftedAt("fast", faultAt, clearAt, trialShare, envoyWorkers)
	if !ok {
		t.Errorf("fast's traffic never fell to the %v%% trial share during the fault:\n%s", 100*trialShare, tl.dump("fast"))
	} else if shifted-degraded > 2*time.Second {
		t.Errorf("traffic moved %v after fast went DEGRADED, want within 2 s; requests that counted against fast:\n%s", shifted-degraded, tl.offenders("fast", faultAt, clearAt))
	}
	t.Logf("DEGRADED %v after the fault; traffic off fast %v after the fault (%v after DEGRADED, states sampled every 100 ms); %.2f attempts per request during the fault",
		(degraded - faultAt).Round(10*time.Millisecond), (shifted - faultAt).Round(10*time.Millisecond),
		(shifted - degraded).Round(10*time.Millisecond), tl.attemptsPerRequest(faultAt, clearAt))
	prom := s.EnvoyPrometheus()
	t.Logf("plugin: %v views taken, %v failed reads, %v decisions (all workers)",
		sumSeries(prom, "detour_wasm_health_views_total"), sumSeries(prom, "detour_wasm_health_view_errors_total"),
		sumSeries(prom, "detour_wasm_decisions_total"))
	if n := sumSeries(prom, "detour_wasm_health_views_total"); n < 2 {
		t.Errorf("the plugin took %v views: it did not follow the change", n)
	}
	s.checkWasmDecided()
	s.checkNoRejectedUpdates()
	if n := sumSeries(prom, "detour_wasm_panics_total"); n != 0 {
		t.Errorf("the plugin panicked %v times", n)
	}
}
