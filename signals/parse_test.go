package signals

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

var quickstart = Backends("fast", "fast-b", "long", "vision")

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func parseFile(t testing.TB, name string) (map[string]Counters, time.Duration) {
	t.Helper()
	got, up, err := Parse(strings.NewReader(string(readTestdata(t, name))), quickstart)
	if err != nil {
		t.Fatalf("Parse(%s): %v", name, err)
	}
	return got, up
}

// The unfiltered capture was taken right after a fault tour on Envoy 1.40
// (testdata/capture.sh): fast answered 503s and 429s that were retried on
// fast-b, fast-b refused connections, long reset connections and then
// answered 503s with nowhere else to go, vision timed out per try.
func TestParseRealEnvoy(t *testing.T) {
	got, uptime, err := Parse(strings.NewReader(string(readTestdata(t, "envoy-1.40-full.prom"))), quickstart)
	if err != nil {
		t.Fatal(err)
	}
	if uptime != 45*time.Second {
		t.Errorf("uptime = %v, want 45s", uptime)
	}
	if len(got) != 4 {
		t.Errorf("backends = %d, want 4 (detour_extproc and detour_xds skipped)", len(got))
	}
	tests := []struct {
		backend                            string
		requests, errors, tooMany          uint64
		final2xx, final5xx, retried5xx     uint64
		connect, resets, perTry            uint64
		retries, retrySuccesses, ejections uint64
		latencyCount                       uint64
	}{
		{backend: "fast", requests: 555, errors: 72, tooMany: 5, final2xx: 478, retried5xx: 72, latencyCount: 478},
		{backend: "fast-b", requests: 77, errors: 5, final2xx: 72, connect: 5, retries: 77, retrySuccesses: 72, latencyCount: 72},
		{backend: "long", requests: 30, errors: 19, final2xx: 11, final5xx: 4, retried5xx: 12, resets: 3, retries: 20, retrySuccesses: 7, ejections: 1, latencyCount: 15},
		{backend: "vision", requests: 10, errors: 10, final5xx: 2, perTry: 8, retries: 6},
	}
	for _, tt := range tests {
		t.Run(tt.backend, func(t *testing.T) {
			c, ok := got[tt.backend]
			if !ok {
				t.Fatalf("%s missing", tt.backend)
			}
			check := func(what string, got, want uint64) {
				t.Helper()
				if got != want {
					t.Errorf("%s = %d, want %d", what, got, want)
				}
			}
			check("Requests", c.Requests(), tt.requests)
			check("Errors", c.Errors(), tt.errors)
			check("TooManyRequests", c.TooManyRequests(), tt.tooMany)
			check("Final 2xx", c.Final.Class[2], tt.final2xx)
			check("Final 5xx", c.Final.Class[5], tt.final5xx)
			check("Retried 5xx", c.Retried.Class[5], tt.retried5xx)
			check("ConnectFailures", c.ConnectFailures, tt.connect)
			check("Resets", c.Resets, tt.resets)
			check("PerTryTimeouts", c.PerTryTimeouts, tt.perTry)
			check("Retries", c.Retries, tt.retries)
			check("RetrySuccesses", c.RetrySuccesses, tt.retrySuccesses)
			check("EjectionsActive", c.EjectionsActive, tt.ejections)
			check("latency count", c.RequestTime.Count(), tt.latencyCount)
			if tt.latencyCount > 0 && len(c.RequestTime.Bounds) != 19 {
				t.Errorf("bounds = %v, want Envoy's 19 defaults", c.RequestTime.Bounds)
			}
			if c.RqOpen || c.RetryOpen || c.PendingOpen {
				t.Errorf("a circuit breaker is open: %+v", c)
			}
		})
	}
	for b, c := range got {
		if c.TTFT.Count() != 0 {
			t.Errorf("%s: TTFT in a capture taken without the measure plugin", b)
		}
	}
	// long: 4 of 15 latencies <= 0.5 ms (the local 503s), all <= 1000 ms.
	h := got["long"].RequestTime
	if h.Cumulative[0] != 4 || h.Cumulative[9] != 15 || h.Bounds[9] != 1000 {
		t.Errorf("long histogram = %v over %v", h.Cumulative, h.Bounds)
	}
}

// The filtered scrape taken a second after the unfiltered one, with no
// traffic in between, holds the same counters: StatsFilter keeps all that
// Parse reads.
func TestStatsFilterKeepsWhatParseReads(t *testing.T) {
	full, _ := parseFile(t, "envoy-1.40-full.prom")
	filtered, _ := parseFile(t, "seq/29.prom")
	if len(full) != len(filtered) {
		t.Fatalf("backends: full %d, filtered %d", len(full), len(filtered))
	}
	for b, want := range full {
		got := filtered[b]
		if got.Final != want.Final || got.Retried != want.Retried || got.Requests() != want.Requests() ||
			got.Errors() != want.Errors() || got.Retries != want.Retries || got.RetrySuccesses != want.RetrySuccesses ||
			got.RetryOverflows != want.RetryOverflows || got.EjectionsActive != want.EjectionsActive ||
			got.RequestTime.Count() != want.RequestTime.Count() {
			t.Errorf("%s: filtered %+v\nfull %+v", b, got, want)
		}
	}
	full29, err := os.ReadFile(filepath.Join("testdata", "seq", "29.prom"))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(full29); n > 16<<10 {
		t.Errorf("filtered scrape is %d bytes; want it small", n)
	}
}

// The capture scripts must scrape with the filter the Scraper uses.
func TestCaptureScriptUsesStatsFilter(t *testing.T) {
	for _, script := range []string{"capture.sh", "capture-measure.sh"} {
		m := regexp.MustCompile(`(?m)^filter='(.*)'$`).FindSubmatch(readTestdata(t, script))
		if m == nil || string(m[1]) != StatsFilter {
			t.Fatalf("%s filter differs from StatsFilter:\n%s\n%s", script, m, StatsFilter)
		}
	}
	if _, err := regexp.Compile(StatsFilter); err != nil {
		t.Fatal(err)
	}
}

func TestParse(t *testing.T) {
	both := func(cluster string) (string, bool) {
		switch cluster {
		case "openai-eu", "openai-us":
			return "openai", true
		case "x":
			return "x", true
		}
		return "", false
	}
	tests := []struct {
		name  string
		in    string
		check func(t *testing.T, got map[string]Counters)
	}{
		{
			name: "counters with a _total suffix",
			in: "# TYPE envoy_cluster_upstream_rq_xx_total counter\n" +
				`envoy_cluster_upstream_rq_xx_total{envoy_response_code_class="5",envoy_cluster_name="x"} 7` + "\n",
			check: func(t *testing.T, got map[string]Counters) {
				if c := got["x"]; c.Final.Class[5] != 7 {
					t.Errorf("5xx = %d, want 7", c.Final.Class[5])
				}
			},
		},
		{
			name: "untyped samples",
			in: `envoy_cluster_upstream_cx_connect_fail{envoy_cluster_name="x"} 3` + "\n" +
				`envoy_cluster_circuit_breakers_default_rq_retry_open{envoy_cluster_name="x"} 1` + "\n",
			check: func(t *testing.T, got map[string]Counters) {
				if c := got["x"]; c.ConnectFailures != 3 || !c.RetryOpen || c.RqOpen {
					t.Errorf("got %+v", c)
				}
			},
		},
		{
			name: "two clusters of one backend add up",
			in: "# TYPE envoy_cluster_upstream_rq counter\n" +
				`envoy_cluster_upstream_rq{envoy_response_code="429",envoy_cluster_name="openai-eu"} 2` + "\n" +
				`envoy_cluster_upstream_rq{envoy_response_code="503",envoy_cluster_name="openai-eu"} 9` + "\n" +
				`envoy_cluster_upstream_rq{envoy_response_code="429",envoy_cluster_name="openai-us"} 3` + "\n" +
				"# TYPE envoy_cluster_outlier_detection_ejections_active gauge\n" +
				`envoy_cluster_outlier_detection_ejections_active{envoy_cluster_name="openai-eu"} 1` + "\n" +
				`envoy_cluster_outlier_detection_ejections_active{envoy_cluster_name="openai-us"} 1` + "\n" +
				"# TYPE envoy_cluster_circuit_breakers_default_rq_open gauge\n" +
				`envoy_cluster_circuit_breakers_default_rq_open{envoy_cluster_name="openai-us"} 1` + "\n" +
				"# TYPE envoy_cluster_upstream_rq_time histogram\n" +
				`envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="openai-eu",le="10"} 1` + "\n" +
				`envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="openai-eu",le="+Inf"} 2` + "\n" +
				`envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="openai-eu"} 30` + "\n" +
				`envoy_cluster_upstream_rq_time_count{envoy_cluster_name="openai-eu"} 2` + "\n" +
				`envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="openai-us",le="10"} 3` + "\n" +
				`envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="openai-us",le="+Inf"} 3` + "\n" +
				`envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="openai-us"} 6` + "\n" +
				`envoy_cluster_upstream_rq_time_count{envoy_cluster_name="openai-us"} 3` + "\n",
			check: func(t *testing.T, got map[string]Counters) {
				c := got["openai"]
				if c.Final.TooMany != 5 || c.EjectionsActive != 2 || !c.RqOpen {
					t.Errorf("got %+v", c)
				}
				if h := c.RequestTime; len(h.Cumulative) != 2 || h.Cumulative[0] != 4 || h.Cumulative[1] != 5 || h.Sum != 36 {
					t.Errorf("histogram = %+v", h)
				}
				if len(got) != 1 {
					t.Errorf("backends = %v", got)
				}
			},
		},
		{
			name: "histogram without +Inf takes the count",
			in: "# TYPE envoy_cluster_upstream_rq_time histogram\n" +
				`envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="x",le="10"} 1` + "\n" +
				`envoy_cluster_upstream_rq_time_count{envoy_cluster_name="x"} 4` + "\n",
			check: func(t *testing.T, got map[string]Counters) {
				if h := got["x"].RequestTime; len(h.Bounds) != 1 || h.Count() != 4 {
					t.Errorf("histogram = %+v", h)
				}
			},
		},
		{
			name: "other clusters, other families, and no cluster label are skipped",
			in: `envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="detour_extproc"} 5` + "\n" +
				`envoy_cluster_upstream_rq_xx{envoy_response_code_class="2"} 5` + "\n" +
				`envoy_cluster_upstream_rq_xx{envoy_response_code_class="9",envoy_cluster_name="x"} 5` + "\n" +
				`envoy_http_downstream_rq_xx{envoy_response_code_class="2",envoy_http_conn_manager_prefix="x"} 5` + "\n",
			check: func(t *testing.T, got map[string]Counters) {
				if c, ok := got["x"]; !ok || c.Requests() != 0 || len(got) != 1 {
					t.Errorf("got %+v", got)
				}
			},
		},
		{
			name: "detour measure histograms by backend label",
			in: "# TYPE detour_ttft_milliseconds histogram\n" +
				`detour_ttft_milliseconds_bucket{backend="x",le="100"} 3` + "\n" +
				`detour_ttft_milliseconds_bucket{backend="x",le="+Inf"} 4` + "\n" +
				`detour_ttft_milliseconds_sum{backend="x"} 500` + "\n" +
				`detour_ttft_milliseconds_count{backend="x"} 4` + "\n" +
				`detour_ttft_milliseconds_bucket{backend="other",le="100"} 9` + "\n" +
				`detour_ttft_milliseconds_bucket{backend="other",le="+Inf"} 9` + "\n" +
				"# TYPE detour_response_milliseconds histogram\n" +
				`detour_response_milliseconds_bucket{backend="x",le="+Inf"} 2` + "\n" +
				`detour_response_milliseconds_count{backend="x"} 2` + "\n" +
				"# TYPE detour_output_tokens_per_second histogram\n" +
				`detour_output_tokens_per_second_bucket{backend="x",le="50"} 1` + "\n" +
				`detour_output_tokens_per_second_bucket{backend="x",le="+Inf"} 1` + "\n" +
				`detour_output_tokens_per_second_sum{backend="x"} 42` + "\n" +
				`detour_output_tokens_per_second_count{backend="x"} 1` + "\n",
			check: func(t *testing.T, got map[string]Counters) {
				c := got["x"]
				if h := c.TTFT; h.Count() != 4 || h.Cumulative[0] != 3 || h.Sum != 500 {
					t.Errorf("TTFT = %+v", h)
				}
				if h := c.ResponseTime; h.Count() != 2 || len(h.Bounds) != 0 {
					t.Errorf("ResponseTime = %+v", h)
				}
				if h := c.TokenRate; h.Count() != 1 || h.Sum != 42 {
					t.Errorf("TokenRate = %+v", h)
				}
				if len(got) != 1 {
					t.Errorf("backends = %v; the plugin's overflow series \"other\" is not a backend", got)
				}
			},
		},
		{
			name:  "empty body",
			in:    "",
			check: func(t *testing.T, got map[string]Counters) { _ = got },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _, err := Parse(strings.NewReader(tt.in), both)
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, got)
		})
	}
}

func TestParseMalformed(t *testing.T) {
	tests := []struct{ name, in string }{
		{"html", "<html><body>oops</body></html>\n"},
		{"expfmt panics on it", "#TYPE e histogrAm\nA{}0\n{e,A=\"\"0"},
		{"truncated line", `envoy_cluster_upstream_rq_xx{envoy_cluster_name="x"`},
		{"negative counter", `envoy_cluster_upstream_cx_connect_fail{envoy_cluster_name="x"} -1` + "\n"},
		{"fractional counter", `envoy_cluster_upstream_cx_connect_fail{envoy_cluster_name="x"} 1.5` + "\n"},
		{"NaN gauge", `envoy_cluster_outlier_detection_ejections_active{envoy_cluster_name="x"} NaN` + "\n"},
		{"huge counter", `envoy_cluster_upstream_rq_retry{envoy_cluster_name="x"} 1e300` + "\n"},
		{"negative uptime", "envoy_server_uptime -5\n"},
		{"buckets not cumulative", "# TYPE envoy_cluster_upstream_rq_time histogram\n" +
			`envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="x",le="1"} 5` + "\n" +
			`envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="x",le="2"} 3` + "\n" +
			`envoy_cluster_upstream_rq_time_count{envoy_cluster_name="x"} 5` + "\n"},
		{"count below buckets", "# TYPE envoy_cluster_upstream_rq_time histogram\n" +
			`envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="x",le="1"} 5` + "\n" +
			`envoy_cluster_upstream_rq_time_count{envoy_cluster_name="x"} 3` + "\n"},
		{"buckets out of order", "# TYPE envoy_cluster_upstream_rq_time histogram\n" +
			`envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="x",le="2"} 1` + "\n" +
			`envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="x",le="1"} 1` + "\n"},
		{"measure buckets not cumulative", "# TYPE detour_ttft_milliseconds histogram\n" +
			`detour_ttft_milliseconds_bucket{backend="x",le="1"} 5` + "\n" +
			`detour_ttft_milliseconds_bucket{backend="x",le="2"} 3` + "\n"},
		{"histogram family as a gauge", "# TYPE envoy_cluster_upstream_rq_time gauge\n" +
			`envoy_cluster_upstream_rq_time{envoy_cluster_name="x"} 1` + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := Parse(strings.NewReader(tt.in), Backends("x"))
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
		})
	}
}

func TestQuantile(t *testing.T) {
	bounds := []float64{10, 100, 1000}
	tests := []struct {
		name      string
		cum, base []uint64
		q, want   float64
	}{
		{"empty", []uint64{0, 0, 0, 0}, nil, 0.95, 0},
		{"all in the first bucket", []uint64{10, 10, 10, 10}, nil, 0.5, 5},
		{"interpolated in the second", []uint64{0, 100, 100, 100}, nil, 0.95, 10 + 90*0.95},
		{"in +Inf: highest bound", []uint64{0, 0, 0, 10}, nil, 0.95, 1000},
		{"delta against a base", []uint64{100, 100, 120, 120}, []uint64{100, 100, 100, 100}, 0.5, 550},
		{"base of other length ignored", []uint64{0, 0, 20, 20}, []uint64{1}, 1, 1000},
		{"malformed lengths", []uint64{1}, nil, 0.5, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := quantile(bounds, tt.cum, tt.base, tt.q); got != tt.want {
				t.Errorf("quantile = %v, want %v", got, tt.want)
			}
		})
	}
}

func BenchmarkParseFull(b *testing.B) {
	body := string(readTestdata(b, "envoy-1.40-full.prom"))
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, _, err := Parse(strings.NewReader(body), quickstart); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseFiltered(b *testing.B) {
	body := string(readTestdata(b, "seq/29.prom"))
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, _, err := Parse(strings.NewReader(body), quickstart); err != nil {
			b.Fatal(err)
		}
	}
}
