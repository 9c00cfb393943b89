package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/detourhq/detour/healthview"
)

// ctlSeries is n requests at rate per second from 0, each answered by
// who(i) with attempts(i) attempts.
func ctlSeries(n int, rate float64, who func(i int) (string, int)) []ctlOutcome {
	out := make([]ctlOutcome, n)
	for i := range out {
		b, a := who(i)
		out[i] = ctlOutcome{At: time.Duration(float64(i) * float64(time.Second) / rate), Status: 200, Backend: b, Attempts: a}
	}
	return out
}

func TestCtlShiftedAt(t *testing.T) {
	t.Parallel()
	const rate = 40 // 25 ms apart
	at := func(i int) time.Duration { return time.Duration(i) * 25 * time.Millisecond }
	tests := []struct {
		name        string
		who         func(i int) (string, int)
		from, until time.Duration
		want        time.Duration
		wantOK      bool
	}{
		{
			name: "moves at 2 s after a fault at 1 s",
			who:  func(i int) (string, int) { return pick(at(i) < 3*time.Second, "fast", "fast-b"), 1 },
			from: time.Second, until: 10 * time.Second,
			want: 2 * time.Second, wantOK: true,
		},
		{
			name: "a retried request went to fast",
			who: func(i int) (string, int) {
				if at(i) < 3*time.Second {
					return "fast-b", 2 // fast failed, fast-b answered
				}
				return "fast-b", 1
			},
			from: time.Second, until: 10 * time.Second,
			want: 2 * time.Second, wantOK: true,
		},
		{
			name: "already off fast",
			who:  func(int) (string, int) { return "fast-b", 1 },
			from: time.Second, until: 10 * time.Second,
			want: 0, wantOK: true,
		},
		{
			name: "a 5 % trickle plus one request is allowed",
			who:  func(i int) (string, int) { return pick(i%20 == 0, "fast", "fast-b"), 1 },
			from: 0, until: 10 * time.Second,
			want: 0, wantOK: true,
		},
		{
			name: "a 10 % trickle is not",
			who:  func(i int) (string, int) { return pick(i%10 == 0, "fast", "fast-b"), 1 },
			from: 0, until: 10 * time.Second,
			wantOK: false,
		},
		{
			name: "back to fast before the fault ends: never",
			who:  func(i int) (string, int) { return pick(at(i) >= 8*time.Second, "fast", "fast-b"), 1 },
			from: 0, until: 10 * time.Second,
			wantOK: false,
		},
		{
			name: "a relapse restarts the clock",
			who: func(i int) (string, int) {
				return pick(at(i) < 2*time.Second || (at(i) >= 5*time.Second && at(i) < 5500*time.Millisecond), "fast", "fast-b"), 1
			},
			from: 0, until: 10 * time.Second,
			want: 5500 * time.Millisecond, wantOK: true,
		},
		{
			name: "no complete window",
			who:  func(int) (string, int) { return "fast-b", 1 },
			from: 9500 * time.Millisecond, until: 10 * time.Second,
			wantOK: false,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, ok := ctlShiftedAt(ctlSeries(400, rate, tc.who), "fast", tc.from, tc.until, 0.05)
			if ok != tc.wantOK || (ok && got != tc.want) {
				t.Errorf("ctlShiftedAt = %v, %v; want %v, %v", got, ok, tc.want, tc.wantOK)
			}
		})
	}
}

func pick(c bool, a, b string) string {
	if c {
		return a
	}
	return b
}

func TestCtlAttemptsPerRequest(t *testing.T) {
	t.Parallel()
	o := []ctlOutcome{
		{At: 0, Attempts: 5},                       // before
		{At: time.Second, Attempts: 1},             // in
		{At: 1500 * time.Millisecond, Attempts: 2}, // in
		{At: 1600 * time.Millisecond},              // no header: not counted
		{At: 2 * time.Second, Attempts: 9},         // at until: out
	}
	if got := ctlAttemptsPerRequest(o, time.Second, 2*time.Second); got != 1.5 {
		t.Errorf("attempts per request = %v, want 1.5", got)
	}
	if got := ctlAttemptsPerRequest(o, 3*time.Second, 4*time.Second); got != 0 {
		t.Errorf("no requests: %v, want 0", got)
	}
}

func TestPromSum(t *testing.T) {
	t.Parallel()
	page := []byte(`# HELP detour_controller_pushes_total Pushes.
# TYPE detour_controller_pushes_total counter
detour_controller_pushes_total{kind="cluster"} 3
detour_controller_pushes_total{kind="route",x="a}b"} 4.5
detour_controller_pushes_total_other 100
detour_controller_pushes 7
`)
	if got, ok := promSum(page, "detour_controller_pushes_total"); !ok || got != 7.5 {
		t.Errorf("labelled: %v, %v; want 7.5", got, ok)
	}
	if got, ok := promSum([]byte("detour_controller_pushes_total 2\n"), "detour_controller_pushes_total"); !ok || got != 2 {
		t.Errorf("unlabelled: %v, %v; want 2", got, ok)
	}
	if _, ok := promSum([]byte("go_goroutines 12\n"), "detour_controller_pushes_total"); ok {
		t.Error("absent metric reported present")
	}
}

func TestCtlFigures(t *testing.T) {
	t.Parallel()
	ms := time.Millisecond
	r := &ctlRun{
		Mode: modeController, FaultAt: time.Second, ClearAt: 3 * time.Second,
		Outcomes: []ctlOutcome{
			{At: 500 * ms, Status: 200, Backend: "fast", Attempts: 1, Total: 5 * ms},
			{At: 1000 * ms, Status: 200, Backend: "fast-b", Attempts: 2, Total: 20 * ms, Stream: true, TTFT: 15 * ms},
			{At: 1100 * ms, Status: 500, Backend: "fast", Attempts: 2},
			{At: 1500 * ms, Status: 200, Backend: "fast-b", Attempts: 1, Total: 4 * ms, Stream: true, TTFT: 3 * ms},
			{At: 2000 * ms, Err: "timeout"},
			{At: 3500 * ms, Status: 200, Backend: "fast", Attempts: 1, Total: 5 * ms},
		},
		Views: []ctlView{
			{At: 900 * ms, State: healthview.Healthy, Throttled: true}, // before the fault: ignored
			{At: 1000 * ms, State: healthview.Healthy},
			{At: 1300 * ms, State: healthview.Healthy, Throttled: true},
			{At: 1400 * ms, State: healthview.Degraded},
			{At: 1500 * ms, State: healthview.Degraded},
		},
		Ejections: []ctlGauge{{At: 800 * ms, Value: 1}, {At: 1200 * ms}, {At: 1700 * ms, Value: 1}},
	}
	f := r.figures()
	if f.Sent != 6 || f.Failed != 2 || f.FailedDuring != 2 || f.During != 4 {
		t.Errorf("counts: %+v", f)
	}
	if !f.Viewed || !f.Detected || f.Detect != 300*ms || f.DetectState != "HEALTHY+throttled" {
		t.Errorf("detect: %v %v %v %q", f.Viewed, f.Detected, f.Detect, f.DetectState)
	}
	if !f.Ejected || f.Eject != 700*ms {
		t.Errorf("eject: %v %v", f.Ejected, f.Eject)
	}
	// Went to fast: the retried one, the failed one from fast; not the
	// plain fast-b one, nor the timeout (no headers).
	if f.FastShare != 0.5 {
		t.Errorf("fast share %v, want 0.5", f.FastShare)
	}
	if f.Attempts != 5.0/3 {
		t.Errorf("attempts %v", f.Attempts)
	}
	if f.TTFT.N != 2 || f.TTFT.Max != 15*ms || f.Lat.N != 2 {
		t.Errorf("TTFT %+v, latency %+v", f.TTFT, f.Lat)
	}
	if got := strings.Join(f.States, ","); got != "HEALTHY+throttled,HEALTHY,HEALTHY+throttled,DEGRADED" {
		t.Errorf("states %s", got)
	}
	base := (&ctlRun{Mode: modeBaseline, FaultAt: time.Second, ClearAt: 2 * time.Second}).figures()
	if base.Viewed || fmtCtlDetect(base) != "n/a (no controller)" {
		t.Errorf("baseline detect: %q", fmtCtlDetect(base))
	}
}

func TestFmtRatio(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		a, b float64
		want string
	}{
		{1.01, 1.3, "×0.78"}, {6.2, 3007, "×0.0021"}, {0.034, 1, "×0.034"}, {3009, 3014, "×1.00"}, {3, 3, "×1.00"}, {2, 1, "×2.00"}, {0, 1, "–"}, {1, 0, "–"},
	} {
		if got := fmtRatio(tc.a, tc.b); got != tc.want {
			t.Errorf("fmtRatio(%v, %v) = %q, want %q", tc.a, tc.b, got, tc.want)
		}
	}
}

// ctlSend reads the headers the figures need and times a stream's first
// content chunk, not its role chunk.
func TestCtlSend(t *testing.T) {
	t.Parallel()
	const delay = 150 * time.Millisecond
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("x-detour-backend", "fast-b")
		w.Header().Set("x-envoy-attempt-count", "2")
		if !strings.Contains(string(b), `"stream":true`) {
			fmt.Fprint(w, `{"model":"fast-8k"}`)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n")
		w.(http.Flusher).Flush()
		time.Sleep(delay)
		fmt.Fprint(w, "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n")
	}))
	defer srv.Close()
	ctx := context.Background()
	o := ctlSend(ctx, srv.Client(), srv.URL, ctlChatBody(true), true, time.Second)
	if !o.ok() || o.Backend != "fast-b" || o.Attempts != 2 || o.At != time.Second || !o.Stream {
		t.Fatalf("stream outcome %+v", o)
	}
	if o.TTFT < delay || o.TTFT > o.Total {
		t.Errorf("TTFT %v (total %v), want ≥ %v", o.TTFT, o.Total, delay)
	}
	o = ctlSend(ctx, srv.Client(), srv.URL, ctlChatBody(false), false, 0)
	if !o.ok() || o.TTFT != 0 || o.Attempts != 2 {
		t.Errorf("non-stream outcome %+v", o)
	}
	srv.Close()
	if o := ctlSend(ctx, http.DefaultClient, srv.URL, ctlChatBody(false), false, 0); o.ok() || o.Err == "" {
		t.Errorf("closed server: %+v", o)
	}
}

func TestControllerMarkdown(t *testing.T) {
	t.Parallel()
	rep := &report{Started: time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC), Command: "go run ./bench/cmd/detour-bench -only controller"}
	if md := string(controllerMarkdown(rep, nil, "boom")); !strings.Contains(md, "**Not measured**: boom") {
		t.Errorf("no result:\n%s", md)
	}
	sc := ctlScenarios[1] // slow: streams, wait for the deadline
	mk := func(mode string, backend string) *ctlRun {
		return &ctlRun{Mode: mode, FaultAt: time.Second, ClearAt: 3 * time.Second, FTT: time.Second, HasPushes: mode == modeController, Pushes: 4,
			Outcomes: ctlSeries(120, 40, func(int) (string, int) { return backend, 1 }),
			Upstream: map[string]int64{"fast": 3, "fast-b": 117}}
	}
	res := &controllerResult{Module: "/x/detour.wasm", Scenarios: []ctlScenarioResult{
		{Scenario: sc, Runs: map[string]*ctlRun{modeController: mk(modeController, "fast-b"), modeBaseline: mk(modeBaseline, "fast")}},
		{Scenario: ctlScenarios[3], Err: "baseline mode: envoy exited"},
	}}
	md := string(controllerMarkdown(rep, res, ""))
	for _, want := range []string{
		"## Latest run: live-metrics controller", "#### 8.1 Slow backend", "| **time to shift** | **0.00 s** | **never** |",
		"n/a (no controller)", "| upstream attempts: fast / fast-b / long / vision | 3 / 117 / 0 / 0 |",
		"interval: 500ms, dwell: 2s, cool_down: 3s", "`controller: {disabled: true}`", `{"ttft_ms":3000}`,
		"#### 8.2 Flapping", "**Not measured**: baseline mode: envoy exited",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, ctlBeginMarker) || strings.Contains(md, ctlEndMarker) {
		t.Error("the section must not carry its markers")
	}
}

func TestParseFlagsController(t *testing.T) {
	t.Parallel()
	o, err := parseFlags([]string{"-only", "controller"}, io.Discard)
	if err != nil || o.skipController || !o.skipE2E || !o.skipFailover || !o.skipMicro || !o.skipWasm {
		t.Errorf("-only controller: %+v, %v", o, err)
	}
	o, err = parseFlags([]string{"-skip-controller"}, io.Discard)
	if err != nil || !o.skipController || o.skipE2E || o.skipWasm {
		t.Errorf("-skip-controller: %+v, %v", o, err)
	}
	if o, err := parseFlags(nil, io.Discard); err != nil || o.skipController {
		t.Errorf("default run must include the controller part: %+v, %v", o, err)
	}
	if _, err := parseFlags([]string{"-skip-e2e", "-skip-micro", "-skip-failover", "-skip-wasm"}, io.Discard); err != nil {
		t.Errorf("the controller part is left: %v", err)
	}
}

// The generator replaces from the first occurrence of a begin marker, so
// BENCHMARKS.md must carry each marker once, as the marker itself (the
// prose names them without the comment brackets).
func TestBenchmarksMarkersOnce(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../../../BENCHMARKS.md")
	if errors.Is(err, fs.ErrNotExist) {
		t.Skip("no BENCHMARKS.md")
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range [][2]string{{beginMarker, endMarker}, {wasmBeginMarker, wasmEndMarker}, {ctlBeginMarker, ctlEndMarker}, {cacheBeginMarker, cacheEndMarker}} {
		b, e := bytes.Count(doc, []byte(m[0])), bytes.Count(doc, []byte(m[1]))
		if b > 1 || e > 1 || b != e {
			t.Errorf("%s occurs %d times, %s %d times; want once each", m[0], b, m[1], e)
		}
		if b == 1 && bytes.Index(doc, []byte(m[0])) > bytes.Index(doc, []byte(m[1])) {
			t.Errorf("%s after %s", m[0], m[1])
		}
	}
}
