package signals

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseHosts(t *testing.T) {
	f, err := os.Open("testdata/clusters/quickstart.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := ParseHosts(f, Backends("fast", "fast-b", "long", "vision"))
	if err != nil {
		t.Fatal(err)
	}
	// A real Envoy 1.40 capture: fast served 4 attempts, one a 503.
	if h := got["fast"]["127.0.0.1:8101"]; h != (HostCounters{Total: 4, Errors: 1, Success: 3}) {
		t.Errorf("fast = %+v", h)
	}
	if h := got["fast-b"]["127.0.0.1:8102"]; h != (HostCounters{Total: 1, Success: 1}) {
		t.Errorf("fast-b = %+v", h)
	}
	if _, ok := got["long"]["127.0.0.1:8103"]; !ok {
		t.Error("an idle host is missing")
	}
	if _, ok := got["detour_extproc"]; ok {
		t.Error("a cluster that is no backend was kept")
	}
	for _, bad := range []string{`{`, `{"cluster_statuses":[{"name":"fast","host_statuses":[{"address":{"socket_address":{"address":"a","port_value":1}},"stats":[{"name":"rq_total","value":"x"}]}]}]}`} {
		if _, err := ParseHosts(strings.NewReader(bad), Backends("fast")); !errors.Is(err, ErrMalformed) {
			t.Errorf("%q: %v, want ErrMalformed", bad, err)
		}
	}
}

func TestHostSourceWindows(t *testing.T) {
	var total, errs atomic.Uint64
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/clusters" || r.URL.Query().Get("format") != "json" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte(`{"cluster_statuses":[{"name":"fast","host_statuses":[{"address":{"socket_address":{"address":"10.0.0.1","port_value":80}},"stats":[{"name":"rq_total","value":"` +
			strconv.FormatUint(total.Load(), 10) + `"},{"name":"rq_error","value":"` + strconv.FormatUint(errs.Load(), 10) + `"}]}]}]}`))
	}))
	defer ts.Close()
	s, err := NewHostSource([]string{ts.URL}, ts.Client(), Backends("fast"), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	ctx := context.Background()
	total.Store(100)
	if w, err := s.Collect(ctx, t0); err != nil || len(w) != 0 {
		t.Fatalf("first sample: %v %v, want no window yet", w, err)
	}
	total.Store(200)
	errs.Store(30)
	w, err := s.Collect(ctx, t0.Add(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if h := w["fast"]["10.0.0.1:80"]; h != (HostWindow{Requests: 100, Errors: 30, TotalRequests: 200, TotalErrors: 30}) || h.ErrorRate() != 0.3 {
		t.Errorf("window = %+v", h)
	}
	// 40 s later the first sample has left the window.
	total.Store(250)
	w, _ = s.Collect(ctx, t0.Add(40*time.Second))
	if h := w["fast"]["10.0.0.1:80"]; h != (HostWindow{Requests: 50, TotalRequests: 250, TotalErrors: 30}) {
		t.Errorf("slid window = %+v", h)
	}
	// A restart: counters go back; the new values are the increase.
	total.Store(5)
	errs.Store(1)
	w, _ = s.Collect(ctx, t0.Add(41*time.Second))
	if h := w["fast"]["10.0.0.1:80"]; h != (HostWindow{Requests: 5, Errors: 1, TotalRequests: 5, TotalErrors: 1}) {
		t.Errorf("after a restart = %+v", h)
	}
	ts.Close()
	if _, err := s.Collect(ctx, t0.Add(42*time.Second)); err == nil || !strings.Contains(err.Error(), "envoy "+ts.URL) {
		t.Errorf("a dead Envoy: %v", err)
	}
}

// An endpoint that keeps taking attempts and answers none (a black hole, a
// stalled server) shows how long it has been silent and how many attempts
// it took meanwhile; one that answers, or has nothing in flight, does not.
func TestHostSourceUnanswered(t *testing.T) {
	var total, success, active atomic.Uint64
	var ejected atomic.Bool
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u := func(v *atomic.Uint64) string { return strconv.FormatUint(v.Load(), 10) }
		w.Write([]byte(`{"cluster_statuses":[{"name":"fast","host_statuses":[{"address":{"socket_address":{"address":"10.0.0.1","port_value":80}},` +
			`"stats":[{"name":"rq_total","value":"` + u(&total) + `"},{"name":"rq_success","value":"` + u(&success) + `"},{"type":"GAUGE","name":"rq_active","value":"` + u(&active) + `"}],` +
			`"health_status":{"eds_health_status":"HEALTHY","failed_outlier_check":` + strconv.FormatBool(ejected.Load()) + `}}]}]}`))
	}))
	defer ts.Close()
	s, err := NewHostSource([]string{ts.URL}, ts.Client(), Backends("fast"), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	ctx := context.Background()
	step := func(at time.Duration, tot, ok, act uint64) HostWindow {
		t.Helper()
		total.Store(tot)
		success.Store(ok)
		active.Store(act)
		w, err := s.Collect(ctx, t0.Add(at))
		if err != nil {
			t.Fatal(err)
		}
		return w["fast"]["10.0.0.1:80"]
	}
	step(0, 100, 98, 2)
	if h := step(time.Second, 130, 127, 3); h.Unanswered != 0 || h.Active != 3 {
		t.Errorf("answering: %+v", h)
	}
	// From here on nothing is answered while attempts keep arriving.
	step(2*time.Second, 160, 127, 33)
	h := step(3500*time.Millisecond, 205, 127, 78)
	if h.Unanswered != 2500*time.Millisecond || h.Started != 78 {
		t.Errorf("silent: Unanswered %v Started %d, want 2.5s and 78 (3 in flight + 75 sent)", h.Unanswered, h.Started)
	}
	// Nothing in flight: an idle endpoint is not silent.
	if h := step(4*time.Second, 205, 127, 0); h.Unanswered != 0 || h.Started != 0 {
		t.Errorf("idle: %+v", h)
	}
	// Idle, then one attempt: silent only from the sample that saw it in
	// flight, not since the last answer.
	step(5*time.Second, 206, 127, 1)
	if h := step(5500*time.Millisecond, 206, 127, 1); h.Unanswered != 500*time.Millisecond || h.Started != 1 {
		t.Errorf("one new attempt: %+v", h)
	}
	ejected.Store(true)
	if h := step(6*time.Second, 206, 128, 0); !h.Ejected {
		t.Errorf("ejection not seen: %+v", h)
	}
	// Stalled: each attempt is answered (its headers count as a success)
	// and none ends; the silence runs from the last attempt that ended.
	step(7*time.Second, 216, 138, 0)
	step(8*time.Second, 226, 148, 10)
	if h := step(10*time.Second, 246, 168, 30); h.Unanswered != 2*time.Second || h.Started != 30 {
		t.Errorf("stalled: Unanswered %v Started %d, want 2s and 30", h.Unanswered, h.Started)
	}
	if h := step(11*time.Second, 247, 169, 0); h.Unanswered != 0 {
		t.Errorf("ejection not seen: %+v", h)
	}
}

// FuzzParseHosts: an Envoy's /clusters answer must never crash the
// controller; an error wraps ErrMalformed; only the backends asked for are
// kept.
func FuzzParseHosts(f *testing.F) {
	if b, err := os.ReadFile("testdata/clusters/quickstart.json"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(`{"cluster_statuses":[{"name":"fast","host_statuses":[{"address":{"socket_address":{"address":"::1","port_value":1}},"stats":[{"name":"rq_total","value":"18446744073709551615"}]}]}]}`))
	f.Add([]byte(`{"cluster_statuses":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := ParseHosts(bytes.NewReader(b), Backends("fast", "fast-b"))
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		for backend := range got {
			if backend != "fast" && backend != "fast-b" {
				t.Fatalf("backend %q was not asked for", backend)
			}
		}
	})
}
