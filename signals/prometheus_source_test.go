package signals

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// fakePrometheus answers every query with the given samples, each a
// label set and a value.
func fakePrometheus(t *testing.T, samples func() []map[string]string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/query" {
			http.NotFound(w, r)
			return
		}
		var result []map[string]any
		for _, s := range samples() {
			metric := map[string]string{}
			for k, v := range s {
				if k != "value" {
					metric[k] = v
				}
			}
			result = append(result, map[string]any{"metric": metric, "value": []any{1_800_000_000.0, s["value"]}})
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"status": "success", "data": map[string]any{"resultType": "vector", "result": result}})
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestPrometheusSourceDecodes(t *testing.T) {
	two := func(cluster string) (string, bool) {
		switch cluster {
		case "openai-eu", "openai-us", "openai":
			return "openai", true
		}
		return "", false
	}
	sample := func(signal, cluster, value string, extra ...string) map[string]string {
		m := map[string]string{labelSignal: signal, labelCluster: cluster, "value": value}
		for i := 0; i+1 < len(extra); i += 2 {
			m[extra[i]] = extra[i+1]
		}
		return m
	}
	var totalGood string
	samples := func() []map[string]string {
		return []map[string]string{
			sample("w:"+famRqXX, "openai-eu", "90.4", labelCodeClass, "2"),
			sample("w:"+famRqXX, "openai-eu", "10.2", labelCodeClass, "5"),
			sample("w:"+famRqXX, "openai-us", "99.6", labelCodeClass, "2"),
			sample("w:"+famConnectFail, "openai-us", "0.8"),
			sample("w:"+famRqCode, "openai-us", "3", labelCode, "429"),
			sample("f:"+famRqXX, "openai-eu", "20", labelCodeClass, "5"),
			sample("t:"+famRqXX, "openai-eu", totalGood, labelCodeClass, "2"),
			sample("w:"+famRqXX, "detour_extproc", "500", labelCodeClass, "2"),
			sample("q:"+famRqTime, "openai-eu", "120"),
			sample("q:"+famRqTime, "openai-us", "80"),
			sample("n:"+famRqTime, "openai-eu", "100"),
			sample("n:"+famRqTime, "openai-us", "100"),
			sample("s:"+famRqTime, "openai-eu", "5000"),
			sample("s:"+famRqTime, "openai-us", "3000"),
			{labelSignal: "q:" + famTokenRate, labelBackend: "openai", "value": "40"},
			{labelSignal: "n:" + famTokenRate, labelBackend: "openai", "value": "7"},
			{labelSignal: "q:" + famTTFT, labelBackend: "openai", "value": "NaN"},
			sample("g:"+famEjectionsAct, "openai-eu", "1"),
			sample("g:"+famEjectionsAct, "openai-us", "1"),
			sample("g:"+famCBRetryOpen, "openai-us", "1"),
			{labelSignal: sigRestarts, "value": "0"},
			{labelSignal: sigNewest, "value": "1799999998.5"},
		}
	}
	srv := fakePrometheus(t, samples)
	p, err := NewPrometheusSource(PrometheusSourceConfig{URL: srv.URL, Backend: two, StaleAfter: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	tests := []struct {
		total     string
		now       time.Time
		wantTotal uint64
		stale     bool
	}{
		{"1000", now, 1000, false},
		{"1200", now, 1200, false},
		// An Envoy restarted: the sum dropped by 1100; the total keeps growing from 1200.
		{"100", now, 1200, false},
		{"150", now.Add(10 * time.Second), 1250, true},
	}
	for i, tt := range tests {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			totalGood = tt.total
			got, err := p.Collect(context.Background(), tt.now)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 {
				t.Fatalf("backends = %v, want openai only", got)
			}
			st := got["openai"]
			// 90 + 10 + 100 + 1 responses and failures; the 429s are not requests here (they come from the class family).
			if st.Requests != 201 || st.Errors != 11 || st.TooManyRequests != 3 || st.Failures != 20 || st.ErrorRate != 11.0/201 {
				t.Errorf("counts: %+v", st)
			}
			if st.P95 != 120*time.Millisecond || st.LatencySamples != 200 || st.MeanLatency != 40*time.Millisecond ||
				st.TokensPerSecond != 40 || st.RateSamples != 7 || st.TTFT != 0 || st.TTFTSamples != 0 {
				t.Errorf("latency: %+v", st)
			}
			if st.EjectionsActive != 2 || !st.RetryOpen || st.RqOpen || st.Restarted {
				t.Errorf("gauges: %+v", st)
			}
			if st.TotalRequests != tt.wantTotal || st.Stale != tt.stale || !st.At.Equal(time.UnixMilli(1_799_999_998_500)) {
				t.Errorf("total %d stale %v at %v, want %d, %v", st.TotalRequests, st.Stale, st.At, tt.wantTotal, tt.stale)
			}
		})
	}
}

func TestPrometheusSourceConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  PrometheusSourceConfig
		want string // in the error; "" for none
	}{
		{"defaults", PrometheusSourceConfig{URL: "http://127.0.0.1:9090", Backend: quickstart}, ""},
		{"no url", PrometheusSourceConfig{Backend: quickstart}, "URL"},
		{"no backend", PrometheusSourceConfig{URL: "http://x"}, "BackendFunc"},
		{"braces", PrometheusSourceConfig{URL: "http://x", Backend: quickstart, Selector: `{job="envoy"}`}, "without braces"},
		{"sub-second window", PrometheusSourceConfig{URL: "http://x", Backend: quickstart, Length: time.Millisecond}, "at least 1s"},
		{"negative", PrometheusSourceConfig{URL: "http://x", Backend: quickstart, StaleAfter: -time.Second}, "StaleAfter"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := NewPrometheusSource(tt.cfg)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				q := p.Query()
				if !strings.Contains(q, "[30s]") || !strings.Contains(q, "[1m]") || strings.Contains(q, ",}") {
					t.Errorf("query:\n%s", q)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestPrometheusSourceQueryFails(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"status":"error","errorType":"bad_data","error":"parse error"}`))
	}))
	defer srv.Close()
	p, err := NewPrometheusSource(PrometheusSourceConfig{URL: srv.URL, Backend: quickstart})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Collect(context.Background(), time.Now()); err == nil || !strings.Contains(err.Error(), srv.URL) {
		t.Errorf("err = %v, want one naming the server", err)
	}
}
