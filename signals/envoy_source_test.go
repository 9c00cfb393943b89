package signals

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeEnvoy serves the measure captures in turn; down makes it answer 503.
type fakeEnvoy struct {
	*httptest.Server
	n    atomic.Int32
	down atomic.Bool
}

func newFakeEnvoy(t *testing.T, bodies ...[]byte) *fakeEnvoy {
	t.Helper()
	f := &fakeEnvoy{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		i := min(int(f.n.Add(1))-1, len(bodies)-1)
		_, _ = w.Write(bodies[i])
	}))
	t.Cleanup(f.Close)
	return f
}

func TestEnvoySourceMerges(t *testing.T) {
	before, after := readTestdata(t, "measure/00.prom"), readTestdata(t, "measure/01.prom")
	envoys := []*fakeEnvoy{newFakeEnvoy(t, before, after), newFakeEnvoy(t, before, after), newFakeEnvoy(t, before, after)}
	var clock atomic.Int64
	t0 := time.Unix(1_800_000_000, 0)
	now := func() time.Time { return t0.Add(time.Duration(clock.Load())) }
	cfg := EnvoySourceConfig{Client: &http.Client{Timeout: time.Second}, Backend: quickstart, Window: DefaultWindowConfig(), Now: now}
	for _, e := range envoys {
		cfg.Admins = append(cfg.Admins, e.URL)
	}
	src, err := NewEnvoySource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := src.Collect(ctx, now()); err != nil {
		t.Fatal(err)
	}
	clock.Store(int64(5 * time.Second))
	got, err := src.Collect(ctx, now())
	if err != nil {
		t.Fatal(err)
	}
	fast := got["fast"]
	// Three Envoys saw the same 40 responses each between the captures.
	if fast.Requests != 120 || fast.TotalRequests != 180 || fast.Errors != 0 || fast.Stale || fast.Span != 5*time.Second {
		t.Errorf("fast = %+v", fast)
	}
	if fast.TTFT != 242500*time.Microsecond || fast.TTFTSamples != 120 || fast.TokensPerSecond != 75 || fast.RateSamples != 60 ||
		fast.MeanLatency.Round(time.Microsecond) != 230141*time.Microsecond {
		t.Errorf("fast measurements = %+v", fast)
	}
	if len(got) != 2 {
		t.Errorf("backends = %d, want fast and long", len(got))
	}

	// One Envoy goes down: the error names it, the others carry on.
	envoys[1].down.Store(true)
	clock.Store(int64(10 * time.Second))
	got, err = src.Collect(ctx, now())
	var se *StatusError
	if !errors.As(err, &se) || !strings.Contains(err.Error(), envoys[1].URL) || strings.Contains(err.Error(), envoys[0].URL) {
		t.Errorf("err = %v, want a StatusError naming only %s", err, envoys[1].URL)
	}
	if f := got["fast"]; f.Stale || f.TotalRequests != 180 || f.Age != 0 {
		t.Errorf("one Envoy down: fast %+v", f)
	}
	// Past StaleAfter the silent Envoy's window no longer counts, but its
	// totals do (they must not go back), and the result is not stale.
	clock.Store(int64(25 * time.Second))
	got, _ = src.Collect(ctx, now())
	if f := got["fast"]; f.Stale || f.TotalRequests != 180 || f.TTFTSamples != 80 {
		t.Errorf("one Envoy stale: fast %+v", f)
	}
	// All down: still the last known stats, now stale.
	for _, e := range envoys {
		e.down.Store(true)
	}
	clock.Store(int64(40 * time.Second))
	got, err = src.Collect(ctx, now())
	if err == nil || len(strings.Split(err.Error(), "\n")) != 3 {
		t.Errorf("err = %v, want one line per Envoy", err)
	}
	if f := got["fast"]; !f.Stale || f.TotalRequests != 180 || f.Age != 15*time.Second {
		t.Errorf("all down: fast %+v", f)
	}
}

func TestNewEnvoySourceValidates(t *testing.T) {
	tests := []struct {
		name string
		cfg  EnvoySourceConfig
		want string
	}{
		{"no admins", EnvoySourceConfig{Client: http.DefaultClient, Backend: quickstart, Window: DefaultWindowConfig()}, "admin address"},
		{"no client", EnvoySourceConfig{Admins: []string{"http://a"}, Backend: quickstart, Window: DefaultWindowConfig()}, "http.Client"},
		{"no backend", EnvoySourceConfig{Admins: []string{"http://a"}, Client: http.DefaultClient, Window: DefaultWindowConfig()}, "BackendFunc"},
		{"zero window", EnvoySourceConfig{Admins: []string{"http://a"}, Client: http.DefaultClient, Backend: quickstart}, "Length"},
		{"twice", EnvoySourceConfig{Admins: []string{"http://a", "http://a"}, Client: http.DefaultClient, Backend: quickstart, Window: DefaultWindowConfig()}, "twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewEnvoySource(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestMergeStats(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name  string
		in    []Stats
		check func(t *testing.T, m Stats)
	}{
		{
			name: "counts add, rate recomputed, worst percentiles, weighted mean",
			in: []Stats{
				{Requests: 100, Errors: 10, LatencySamples: 100, P95: 50 * ms, MeanLatency: 20 * ms, TTFTSamples: 10, TTFT: 300 * ms, RateSamples: 5, TokensPerSecond: 80, EjectionsActive: 1},
				{Requests: 300, Errors: 0, LatencySamples: 300, P95: 90 * ms, MeanLatency: 40 * ms, TTFTSamples: 30, TTFT: 200 * ms, RateSamples: 5, TokensPerSecond: 60, RqOpen: true, EjectionsActive: 1},
				{}, // an Envoy with no traffic: no samples, so its zero p95 is not the best
			},
			check: func(t *testing.T, m Stats) {
				if m.Requests != 400 || m.Errors != 10 || m.ErrorRate != 0.025 || m.P95 != 90*ms || m.MeanLatency != 35*ms ||
					m.TTFT != 300*ms || m.TokensPerSecond != 60 || m.RateSamples != 10 || !m.RqOpen || m.EjectionsActive != 2 {
					t.Errorf("%+v", m)
				}
			},
		},
		{
			name: "stale ones skipped while one is fresh",
			in:   []Stats{{Requests: 10, Errors: 10, Stale: true, TotalRequests: 50}, {Requests: 10, TotalRequests: 20, Age: time.Second}},
			check: func(t *testing.T, m Stats) {
				if m.Stale || m.Errors != 0 || m.Requests != 10 || m.TotalRequests != 70 {
					t.Errorf("%+v", m)
				}
			},
		},
		{
			name: "all stale: all count",
			in:   []Stats{{Requests: 10, Errors: 10, Stale: true}, {Requests: 10, Stale: true}},
			check: func(t *testing.T, m Stats) {
				if !m.Stale || m.Errors != 10 || m.ErrorRate != 0.5 {
					t.Errorf("%+v", m)
				}
			},
		},
		{
			name: "none",
			check: func(t *testing.T, m Stats) {
				if !m.Stale {
					t.Errorf("no Envoys: %+v, want Stale", m)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.check(t, MergeStats(tt.in...)) })
	}
}
