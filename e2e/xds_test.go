package e2e

import (
	"bufio"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/detourhq/detour/sim"
)

// waitFor polls cond every 20 ms until it holds or the deadline passes, and
// returns how long that took.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// An edited policy reaches Envoy and detour without a restart and without
// cutting a stream in flight; an invalid edit changes nothing.
func TestPolicyHotReload(t *testing.T) {
	s := startStack(t, stackOptions{})
	// A stream that lasts about 1.5 s.
	req, _ := http.NewRequest(http.MethodPost, s.URL("/v1/chat/completions"),
		strings.NewReader(string(chat("auto", map[string]any{"stream": true}, user("a long answer")))))
	req.Header.Set("x-sim-tokens", "30")
	req.Header.Set("x-sim-tokens-per-second", "20")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	// The edit: fast and fast-b cost more than long now, so "auto" prefers
	// long for a short chat.
	o := s.edit()
	o.Backends[0].In, o.Backends[0].Out = 9, 9
	o.Backends[1].In, o.Backends[1].Out = 9, 9
	edited := time.Now()
	s.WritePolicy(s.PolicyText(o))
	took := waitFor(t, 3*time.Second, "new requests follow the edited policy", func() bool {
		r := post(t, s.URL("/v1/chat/completions"), chat("auto", nil, user("hi")))
		return r.Status == 200 && r.Header.Get("x-sim-name") == "long"
	})
	t.Logf("edit applied after %s", took.Round(time.Millisecond))
	if took > time.Second {
		t.Errorf("the edit took %s to apply, want < 1s", took)
	}

	// The stream started before the edit completes.
	sc := bufio.NewScanner(resp.Body)
	done := false
	for sc.Scan() {
		if sc.Text() == "data: [DONE]" {
			done = true
		}
	}
	if !done {
		t.Errorf("the stream in flight during the edit did not complete (ended %s after the edit)", time.Since(edited))
	}

	// An invalid edit: rejected, counted, the last good policy stays.
	s.WritePolicy(s.PolicyText(o) + "\nbogus_key: 1\n")
	// Both processes have read it once each counts it (the request below
	// then shows the last good policy, not one not yet reloaded).
	waitMetric(t, s.MetricsAddr, `detour_extproc_policy_reloads_total{result="invalid"}`, 1, 5*time.Second)
	waitMetric(t, s.XDSMetricsAddr, `detour_xds_policy_reloads_total{result="invalid"}`, 1, 5*time.Second)
	r := post(t, s.URL("/v1/chat/completions"), chat("auto", nil, user("hi")))
	if r.Status != 200 || r.Header.Get("x-sim-name") != "long" {
		t.Errorf("after an invalid edit: %d from %q, want 200 from long (the last good policy)", r.Status, r.Header.Get("x-sim-name"))
	}
	if m := s.Metrics(); !strings.Contains(m, `detour_extproc_policy_reloads_total{result="invalid"} 1`) {
		t.Errorf("ext_proc did not count the invalid edit:\n%s", grepLines(m, "policy_reloads"))
	}
	if m := s.XDSMetrics(); !strings.Contains(m, `detour_xds_policy_reloads_total{result="invalid"} 1`) {
		t.Errorf("xds did not count the invalid edit:\n%s", grepLines(m, "policy_reloads"))
	}
	if log := s.xdsLog.String(); !strings.Contains(log, "bogus_key") {
		t.Errorf("xds did not log the problem with its position")
	}
	// Envoy took every update it was sent.
	if st := s.EnvoyStats("update_rejected"); strings.Contains(st, "update_rejected: 1") || strings.Contains(st, "update_rejected: 2") {
		t.Errorf("Envoy rejected an update:\n%s", st)
	}
}

// Envoy keeps serving on its last config while the control plane is away,
// and takes new config again once it is back.
func TestXDSDownKeepsServing(t *testing.T) {
	s := startStack(t, stackOptions{})
	s.StopXDS()
	for i := 0; i < 5; i++ {
		if r := post(t, s.URL("/v1/chat/completions"), chat("auto", nil, user("hi"))); r.Status != 200 {
			t.Fatalf("with xds down: status %d %s", r.Status, r.Body)
		}
	}
	s.StartXDS()
	o := s.edit()
	o.Backends[0].In, o.Backends[0].Out = 9, 9
	s.WritePolicy(s.PolicyText(o))
	took := waitFor(t, 10*time.Second, "a change after xds restarted", func() bool {
		r := post(t, s.URL("/v1/chat/completions"), chat("auto", nil, user("hi")))
		return r.Status == 200 && r.Header.Get("x-sim-name") == "fast-b"
	})
	t.Logf("resynced and applied %s after the edit", took.Round(time.Millisecond))
}

// Each Envoy prefers the endpoints in its own region; when they are lost,
// traffic moves to the other region without failed requests.
func TestRegionFailover(t *testing.T) {
	backends := quickstartBackends()
	backends[0].Region, backends[0].FarRegion = "near", "far"
	s := startStack(t, stackOptions{Backends: backends, Region: "near"})
	for i := 0; i < 5; i++ {
		r := post(t, s.URL("/v1/chat/completions"), chat("fast-8k", nil, user("hi")))
		if r.Status != 200 || r.Header.Get("x-sim-name") != "fast" {
			t.Fatalf("before: %d from %q, want fast in the Envoy's own region", r.Status, r.Header.Get("x-sim-name"))
		}
	}
	s.Sim("fast").SetFault(sim.Fault{Refuse: true})
	var served []string
	for i := 0; i < 20; i++ {
		r := post(t, s.URL("/v1/chat/completions"), chat("fast-8k", nil, user("hi")))
		if r.Status != 200 {
			t.Fatalf("request %d after the region was lost: status %d %s", i, r.Status, r.Body)
		}
		served = append(served, r.Header.Get("x-sim-name"))
	}
	if last := served[len(served)-1]; last != "fast-far" {
		t.Errorf("served by %v; once the near endpoint is ejected, want the far region (fast-far)", served)
	}
	t.Logf("served by %v", served)
}

func grepLines(text, sub string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// The other ways to give Envoy its config: a static bootstrap (no control
// plane) and incremental (delta) xDS route and fail over the same way.
func TestStaticAndDeltaConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts stackOptions
	}{
		{"static", stackOptions{Static: true}},
		{"delta xDS", stackOptions{Delta: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startStack(t, tc.opts)
			if r := post(t, s.URL("/v1/chat/completions"), chat("auto", nil, user("hi"))); r.Status != 200 || r.Header.Get("x-sim-name") != "fast" {
				t.Fatalf("%d from %q: %s", r.Status, r.Header.Get("x-sim-name"), r.Body)
			}
			s.Sim("fast").SetFault(sim.Fault{Status: 503})
			if r := post(t, s.URL("/v1/chat/completions"), chat("auto", nil, user("hi"))); r.Status != 200 || r.Header.Get("x-sim-name") != "fast-b" {
				t.Fatalf("failover: %d from %q: %s", r.Status, r.Header.Get("x-sim-name"), r.Body)
			}
			s.Sim("fast").ClearFault()
			if tc.opts.Static {
				return
			}
			o := s.edit()
			o.Backends[0].In, o.Backends[0].Out = 9, 9
			s.WritePolicy(s.PolicyText(o))
			took := waitFor(t, 5*time.Second, "the edit over delta xDS", func() bool {
				r := post(t, s.URL("/v1/chat/completions"), chat("auto", nil, user("hi")))
				return r.Status == 200 && r.Header.Get("x-sim-name") == "fast-b"
			})
			t.Logf("edit applied over delta xDS after %s", took.Round(time.Millisecond))
		})
	}
}
