package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/healthview/viewhttp"
)

var statusNow = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// statusView has one backend of each kind the command explains: OPEN
// with a retry time, throttled, stale signals, and a healthy one; a
// route shedding, one shedding standard too, and one admitting all.
func statusView() *healthview.Snapshot {
	retry := statusNow.Add(42 * time.Second)
	at := statusNow.Add(-90 * time.Second)
	return &healthview.Snapshot{
		Version: 1740830400123, At: statusNow.Add(-3 * time.Second), Source: "envoy",
		SignalError: "prometheus: timeout",
		Backends: map[string]healthview.Backend{
			"anthropic": {
				State: healthview.Open, Since: at, Reason: "error rate 62% > 50%", RetryAt: &retry, Opens: 2,
				Signals: healthview.Signals{Window: healthview.Duration(time.Minute), Requests: 120, ErrorRate: 0.62,
					P95: healthview.Duration(1234567 * time.Microsecond), TTFT: healthview.Duration(800 * time.Millisecond), TokensPerSecond: 41.25},
				Settings: []healthview.Setting{
					{Name: "outlier.consecutive_5xx", Value: "3", Why: "tightened after 2 openings"},
					{Name: "timeout", Value: "30s", Why: "policy"},
				},
				Transitions: []healthview.Transition{
					{From: healthview.Healthy, To: healthview.Degraded, Reason: "p95 over budget", At: at.Add(-time.Minute)},
					{From: healthview.Degraded, To: healthview.Open, Reason: "error rate 62%", At: at},
				},
				Probes: []healthview.Probe{
					{Name: "chat", OK: false, Reason: "503 from upstream", At: at.Add(10 * time.Second)},
					{Name: "models", OK: true, At: at.Add(20 * time.Second)},
				},
			},
			"openai": {
				State: healthview.Healthy, Since: statusNow.Add(-time.Hour), Reason: "within budgets",
				Throttled: true, ThrottledWhy: "429 on 30% of requests",
				Signals: healthview.Signals{Window: healthview.Duration(time.Minute), Requests: 300, ErrorRate: 0.3, TokensPerSecond: 60},
				EndpointsOut: []healthview.EndpointOut{{Endpoint: "10.0.0.7:443", Reason: "no answer for 1.2s to 30 attempts",
					Since: statusNow.Add(-2 * time.Second), Until: statusNow.Add(8 * time.Second)}},
			},
			"local": {
				State: healthview.Degraded, Since: statusNow.Add(-10 * time.Minute), Reason: "last known",
				Signals: healthview.Signals{Stale: true, Age: healthview.Duration(125400 * time.Millisecond), Window: healthview.Duration(time.Minute)},
			},
		},
		Routes: map[string]healthview.Route{
			"auto":    {Shed: healthview.Sheddable, Reason: "healthy share 0.42 < 0.5", RetryAfter: 3, HealthyShare: 0.42},
			"fast-8k": {Shed: healthview.Standard, Reason: "healthy share 0.1 < 0.25", RetryAfter: 5, HealthyShare: 0.1},
			"long":    {HealthyShare: 1},
		},
		FirstTokenTimeout: healthview.Duration(4 * time.Second), FirstTokenWhy: "4 × p95 TTFT",
		ResponseWhy: "none: controller.hedging is off",
	}
}

func clock(t time.Time) string { return t.Local().Format("15:04:05") }

// fields splits a table line on runs of spaces, so tests do not depend
// on column widths.
func lineWith(out, first string) []string {
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) > 0 && f[0] == first {
			return f
		}
	}
	return nil
}

func TestPrintStatus(t *testing.T) {
	v := statusView()
	a := v.Backends["anthropic"]
	tests := []struct {
		name    string
		view    *healthview.Snapshot
		verbose bool
		want    []string // substrings, in order
		lines   map[string]string
		absent  []string
	}{
		{
			name: "summary",
			view: v,
			want: []string{
				"controller view 1740830400123, 3s ago, signals from envoy\n",
				"signals incomplete: prometheus: timeout\n",
				"BACKEND", "anthropic", "local", "openai",
				"ROUTE", "auto", "fast-8k", "long",
				"first-token deadline: 4s (4 × p95 TTFT)\n",
				"response deadline: none: controller.hedging is off\n",
				"endpoint out: openai 10.0.0.7:443 for 8s: no answer for 1.2s to 30 attempts\n",
			},
			lines: map[string]string{
				"anthropic": "anthropic OPEN 1m30s 120/1m0s 62.0% 1.235s 800ms 41.2 error rate 62% > 50% (retried in 42s)",
				"openai":    "openai HEALTHY+THROTTLED 1h0m0s 300/1m0s 30.0% - - 60 429 on 30% of requests; within budgets",
				"local":     "local DEGRADED 10m0s 0/1m0s 0.0% - - - last known [signals 2m5s old]",
				"auto":      "auto 0.42 sheddable healthy share 0.42 < 0.5",
				"fast-8k":   "fast-8k 0.10 standard, sheddable healthy share 0.1 < 0.25",
				"long":      "long 1.00 nothing",
			},
			absent: []string{"outlier.consecutive_5xx", "probe"},
		},
		{
			name:    "verbose: settings, transitions, probes",
			view:    v,
			verbose: true,
			want: []string{
				"first-token deadline",
				"\nanthropic\n",
				"outlier.consecutive_5xx", "3", "tightened after 2 openings\n",
				"timeout", "30s", "policy\n",
				"  " + clock(a.Transitions[0].At) + "  HEALTHY → DEGRADED: p95 over budget\n",
				"  " + clock(a.Transitions[1].At) + "  DEGRADED → OPEN: error rate 62%\n",
				"  probe " + clock(a.Probes[0].At) + " chat FAILED: 503 from upstream\n",
				"  probe " + clock(a.Probes[1].At) + " models ok\n",
				"\nlocal\n",
				"\nopenai\n",
			},
		},
		{
			name: "empty view",
			view: &healthview.Snapshot{Version: 5, Source: "disabled"},
			want: []string{
				"controller view 5, - ago, signals from disabled\n",
				"BACKEND", "ROUTE",
				"first-token deadline: 0s ()\n",
			},
			absent: []string{"signals incomplete"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			printStatus(&buf, tc.view, tc.verbose, statusNow)
			out := buf.String()
			rest := out
			for _, w := range tc.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("output lacks %q (in order):\n%s", w, out)
				}
				rest = rest[i+len(w):]
			}
			for first, want := range tc.lines {
				if got := strings.Join(lineWith(out, first), " "); got != want {
					t.Errorf("line %s:\n got %q\nwant %q", first, got, want)
				}
			}
			for _, s := range tc.absent {
				if strings.Contains(out, s) {
					t.Errorf("output has %q:\n%s", s, out)
				}
			}
			if testing.Verbose() {
				t.Logf("\n%s", out)
			}
		})
	}
}

func TestRunStatus(t *testing.T) {
	view := statusView()
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.URL.Path != viewhttp.Path || r.URL.RawQuery != "" {
			http.Error(w, "unexpected "+r.URL.String(), http.StatusNotFound)
			return
		}
		json.NewEncoder(w).Encode(view)
	}))
	defer srv.Close()
	gone := httptest.NewServer(http.NotFoundHandler())
	goneURL := gone.URL + viewhttp.Path
	gone.Close()
	url := srv.URL + viewhttp.Path

	tests := []struct {
		name     string
		args     []string
		code     int
		inStdout []string
		inStderr []string
		check    func(t *testing.T, out string)
	}{
		{name: "table", args: []string{"--url", url}, inStdout: []string{
			"controller view 1740830400123", "anthropic", "OPEN", "retry due", "HEALTHY+THROTTLED", "signals 2m5s old", "standard, sheddable",
		}},
		{name: "verbose", args: []string{"-v", "--url", url}, inStdout: []string{"tightened after 2 openings", "DEGRADED → OPEN", "FAILED: 503 from upstream"}},
		{name: "json equals the view", args: []string{"--json", "--url", url}, check: func(t *testing.T, out string) {
			var got healthview.Snapshot
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("not JSON: %v\n%s", err, out)
			}
			if !reflect.DeepEqual(&got, roundTrip(t, view)) {
				t.Errorf("JSON view differs:\n%s", out)
			}
		}},
		{name: "a server error", args: []string{"--url", srv.URL + "/elsewhere"}, code: 1, inStderr: []string{"detour status:", "is `detour xds` running?", "404"}},
		{name: "unreachable", args: []string{"--url", goneURL, "--timeout", "1s"}, code: 1, inStderr: []string{"is `detour xds` running?", "health view"}},
		{name: "a bad flag", args: []string{"--nope"}, code: 1, inStderr: []string{"flag provided but not defined"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCmd(append([]string{"status"}, tc.args...)...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d (stderr %q)", code, tc.code, errOut)
			}
			for _, w := range tc.inStdout {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tc.inStderr {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errOut)
				}
			}
			if tc.check != nil {
				tc.check(t, out)
			}
		})
	}
	if hits.Load() == 0 {
		t.Error("the server was never asked")
	}
}

// runStatus's error wraps Fetch's: callers can tell a cancelled wait.
func TestRunStatusCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errb bytes.Buffer
	err := runStatus(ctx, []string{"--url", "http://127.0.0.1:1" + viewhttp.Path}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "detour xds") {
		t.Fatalf("err %v", err)
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err %v does not wrap context.Canceled", err)
	}
}

func roundTrip(t *testing.T, v *healthview.Snapshot) *healthview.Snapshot {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out healthview.Snapshot
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return &out
}
