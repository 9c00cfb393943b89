package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/sim"
	"github.com/detourhq/detour/xds"
)

// controlStack is a stack whose Envoy is served by a control plane in this
// process with c laid over the policy, in place of `detour xds` (whose
// controller is off in these stacks and computes its values from live
// signals, so a test cannot choose them).
func controlStack(t *testing.T, o stackOptions, c *xds.Control) *stack {
	t.Helper()
	o.NoEnvoy = true
	s := startStack(t, o)
	s.StopXDS()
	p, err := policy.LoadFile(s.policyPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := xds.NewServer(ctx, p, slog.New(slog.NewTextHandler(io.Discard, nil)), xds.NewMetrics(prometheus.NewRegistry()))
	mux := http.NewServeMux()
	if o.Wasm != "" {
		wm, err := xds.LoadWasmModule(wasmModule)
		if err != nil {
			t.Fatal(err)
		}
		srv.SetWasmModule(wm)
		// Envoy fetches the plugin from the control plane's HTTP address.
		mux.Handle("GET "+wm.WasmURLPath(), xds.WasmHandler(wm))
	}
	if err := srv.SetControl(ctx, c); err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, srv.XDS())
	gl, err := net.Listen("tcp", s.XDSAddr)
	if err != nil {
		t.Fatal(err)
	}
	hl, err := net.Listen("tcp", s.XDSMetricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: mux}
	go g.Serve(gl)
	go func() {
		if err := hs.Serve(hl); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("control plane HTTP: %v", err)
		}
	}()
	// Registered after startStack's: runs before Envoy stops.
	t.Cleanup(func() {
		cancel()
		g.Stop()
		hs.Close()
	})
	s.startEnvoy()
	return s
}

// What Envoy 1.40 does with the controller's response deadline
// (xds.Control.ResponseTimeout: per_try_timeout with
// hedge_on_per_try_timeout on the non-stream routed routes), pinned so a
// change of Envoy's shows here. The race works: a late attempt is not cut,
// and the first complete answer wins while the other attempt is reset. But
// the hedged attempt goes to the SAME backend: refresh_cluster_on_retry
// does not re-run the cluster specifier for a hedge (it does for a retry
// after a failure or a hard per-try timeout, see TestFirstTokenDeadline),
// in either routing mode. And every attempt arms its own per-try timer, so
// hedges cascade up to retry.attempts attempts in flight. The backends
// here have their endpoints in one region (one priority level), so the
// retry priority (previous_priorities) has no other level to send a hedge
// to, and a black-holed backend is not rescued: it gets every attempt.
// With a second region it is (TestRetryAvoidsAttemptedRegions).
func TestResponseDeadlineHedgeOnEnvoy(t *testing.T) {
	const deadline = 500 * time.Millisecond
	for _, mode := range []string{"extproc", "wasm"} {
		t.Run(mode, func(t *testing.T) {
			o := stackOptions{}
			if mode == "wasm" {
				o.Wasm = "route"
			}
			s := controlStack(t, o, &xds.Control{ResponseTimeout: deadline})
			waitFor(t, 5*time.Second, "Envoy has the hedged deadline", func() bool {
				dump := s.EnvoyStatsPath("/config_dump?resource=dynamic_route_configs")
				return strings.Contains(dump, `"hedge_on_per_try_timeout": true`)
			})
			t.Run("slow first answer wins", func(t *testing.T) { testHedgeKeepsSlowFirst(t, s) })
			t.Run("black hole gets every attempt", func(t *testing.T) { testHedgeStaysOnBlackHole(t, s, deadline) })
			t.Run("stream not hedged", func(t *testing.T) { testStreamNotHedged(t, s) })
			t.Logf("Envoy stats:\n%s", s.EnvoyStats(`cluster\.fast(-b)?\.(upstream_rq_(per_try_timeout|retry|retry_success|retry_limit_exceeded|timeout|total|rx_reset|tx_reset)|outlier_detection\.ejections_(active|total))$`))
			if mode == "wasm" {
				s.checkWasmDecided()
			}
		})
	}
}

// requestsEnded waits until name's simulator has recorded n requests
// (recorded when each ends) and returns them.
func requestsEnded(t *testing.T, s *stack, name string, n int, within time.Duration) []sim.RequestRecord {
	t.Helper()
	var recs []sim.RequestRecord
	waitFor(t, within, fmt.Sprintf("%d requests of %s ended", n, name), func() bool {
		recs = s.Sim(name).Requests(0)
		return len(recs) >= n
	})
	return recs
}

// slowFirstAnswer makes fast answer after 800 ms, past the deadline, and
// rival after 2 s, and checks the client gets fast's whole answer, uncut.
func slowFirstAnswer(t *testing.T, s *stack, rival string) (response, time.Duration) {
	t.Helper()
	s.ResetSims()
	s.Sim("fast").SetFault(sim.Fault{LatencyMS: 800})
	s.Sim(rival).SetFault(sim.Fault{LatencyMS: 2000})
	defer s.Sim("fast").ClearFault()
	defer s.Sim(rival).ClearFault()
	start := time.Now()
	r := post(t, s.URL("/v1/chat/completions"), chat("auto", nil, user("hello")))
	took := time.Since(start)
	if r.Status != 200 || r.Header.Get("x-sim-name") != "fast" || !strings.Contains(string(r.Body), `"content":"tok0`) {
		t.Fatalf("status %d from %q, want fast's whole answer: %s", r.Status, r.Header.Get("x-sim-name"), r.Body)
	}
	if took < 800*time.Millisecond || took > 1500*time.Millisecond {
		t.Errorf("answered after %s, want fast's 800 ms", took)
	}
	return r, took
}

// fast answers after 800 ms, past the deadline; fast-b would take 2 s. The
// late attempt is not cut: the client gets fast's answer, and the hedged
// attempt, which went to fast again, is reset.
func testHedgeKeepsSlowFirst(t *testing.T, s *stack) {
	r, took := slowFirstAnswer(t, s, "fast-b")
	recs := requestsEnded(t, s, "fast", 2, 2*time.Second)
	statuses := map[int]int{}
	for _, rec := range recs {
		statuses[rec.Status]++
	}
	if len(recs) != 2 || statuses[200] != 1 || statuses[499] != 1 {
		t.Errorf("fast's attempts ended %v, want one answer and one hedge reset (499)", statuses)
	}
	if n := len(s.Sim("fast-b").Requests(0)); n != 0 {
		t.Errorf("fast-b got %d attempts: the hedge now goes to the next backend (update xds/hedge.go)", n)
	}
	t.Logf("fast answered after %s (x-envoy-attempt-count %s); its hedged duplicate, also on fast, reset (%v)",
		took.Round(time.Millisecond), r.Header.Get("x-envoy-attempt-count"), statuses)
}

// fast accepts and never answers: every hedge goes to fast too (its one
// region: the retry priority falls back to it), one per deadline (plus
// back-off), up to retry.attempts; fast-b is never tried and the client
// waits for its own timeout.
func testHedgeStaysOnBlackHole(t *testing.T, s *stack, deadline time.Duration) {
	s.ResetSims()
	s.Sim("fast").SetFault(sim.Fault{LatencyMS: 60_000})
	defer s.Sim("fast").ClearFault()
	c := &http.Client{Timeout: 3 * time.Second}
	start := time.Now()
	resp, err := c.Post(s.URL("/v1/chat/completions"), "application/json", strings.NewReader(string(chat("auto", nil, user("hello")))))
	if err == nil {
		resp.Body.Close()
		t.Fatalf("answered %d by %q after %s: the hedge now rescues a black hole in one region (update xds/hedge.go)",
			resp.StatusCode, resp.Header.Get("x-sim-name"), time.Since(start).Round(time.Millisecond))
	}
	// The client left: Envoy resets every attempt.
	recs := requestsEnded(t, s, "fast", 4, 2*time.Second)
	for _, rec := range recs {
		if rec.Status != 499 {
			t.Errorf("fast's attempt ended %d, want 499", rec.Status)
		}
	}
	if len(recs) != 4 { // retry.attempts
		t.Errorf("fast got %d attempts, want retry.attempts (4)", len(recs))
	}
	if n := len(s.Sim("fast-b").Requests(0)); n != 0 {
		t.Errorf("fast-b got %d attempts", n)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Time.Before(recs[j].Time) })
	var arrivals []string
	for _, rec := range recs {
		arrivals = append(arrivals, rec.Time.Sub(start).Round(10*time.Millisecond).String())
	}
	t.Logf("no answer within the client's 3 s (deadline %s); fast got %d attempts, arriving at %v; fast-b none", deadline, len(recs), arrivals)
}

// Streams keep their first-token deadline (10 s by default here): a stream
// slower than the response deadline is neither raced nor cut.
func testStreamNotHedged(t *testing.T, s *stack) {
	s.ResetSims()
	s.Sim("fast").SetFault(sim.Fault{TTFTMS: 1000})
	defer s.Sim("fast").ClearFault()
	r := stream(t, s.URL("/v1/chat/completions"), chat("auto", map[string]any{"stream": true}, user("hello")))
	if r.status != 200 || r.header.Get("x-sim-name") != "fast" || !strings.Contains(r.body, "data: [DONE]") {
		t.Fatalf("status %d from %q: %s", r.status, r.header.Get("x-sim-name"), r.body)
	}
	if n := len(s.Sim("fast").Requests(0)); n != 1 {
		t.Errorf("fast got %d attempts of one stream", n)
	}
	if n := len(s.Sim("fast-b").Requests(0)); n != 0 {
		t.Errorf("fast-b got %d attempts of a stream", n)
	}
	t.Logf("stream: first token after %s from fast, no second attempt", r.firstToken.Round(time.Millisecond))
}
