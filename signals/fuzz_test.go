package signals

import (
	"bytes"
	"errors"
	"math"
	"testing"
	"time"
)

// FuzzParse feeds arbitrary bodies through the parsing path and a Window:
// no panic, and whatever parses satisfies the invariants the Window and
// the quantile estimate rely on.
func FuzzParse(f *testing.F) {
	f.Add(readTestdata(f, "seq/16.prom"))
	f.Add(readTestdata(f, "seq/29.prom"))
	f.Add(readTestdata(f, "measure/01.prom"))
	f.Add([]byte("# TYPE envoy_cluster_upstream_rq_time histogram\n" +
		`envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="fast",le="1"} 1` + "\n" +
		`envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="fast",le="+Inf"} 2` + "\n" +
		`envoy_cluster_upstream_rq_time_count{envoy_cluster_name="fast"} 2` + "\n"))
	f.Add([]byte(`envoy_cluster_upstream_rq_xx_total{envoy_response_code_class="5",envoy_cluster_name="long"} 3` + "\n"))
	f.Add([]byte("envoy_server_uptime 12\n"))
	f.Fuzz(func(t *testing.T, body []byte) {
		got, uptime, err := Parse(bytes.NewReader(body), quickstart)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		if uptime < 0 {
			t.Fatalf("uptime %v", uptime)
		}
		for b, c := range got {
			for _, h := range c.hists() {
				checkHist(t, b, h)
			}
		}
		// Twice, then reset: a Window takes any parsed scrape.
		w, err := NewWindow(DefaultWindowConfig())
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Unix(1_800_000_000, 0)
		for i, s := range []map[string]Counters{got, got, {}, got} {
			if err := w.Add(&Scrape{At: t0.Add(time.Duration(i) * time.Second), Uptime: uptime, Backends: s}); err != nil {
				t.Fatal(err)
			}
		}
		for b := range got {
			st := w.Stats(b, t0.Add(4*time.Second))
			if st.Errors > st.Requests || st.ErrorRate < 0 || st.ErrorRate > 1 || st.P95 < 0 || st.TTFT < 0 ||
				st.TotalTime < 0 || st.MeanLatency < 0 || !(st.TokensPerSecond >= 0) {
				t.Fatalf("%s: %+v", b, st)
			}
		}
	})
}

// checkHist asserts what the Window and the quantile estimate rely on.
func checkHist(t *testing.T, b string, h *Histogram) {
	t.Helper()
	if len(h.Cumulative) > 0 && len(h.Cumulative) != len(h.Bounds)+1 {
		t.Fatalf("%s: %d buckets for %d bounds", b, len(h.Cumulative), len(h.Bounds))
	}
	for i := 1; i < len(h.Cumulative); i++ {
		if h.Cumulative[i] < h.Cumulative[i-1] {
			t.Fatalf("%s: buckets not cumulative: %v", b, h.Cumulative)
		}
	}
	for i := 1; i < len(h.Bounds); i++ {
		if !(h.Bounds[i] > h.Bounds[i-1]) {
			t.Fatalf("%s: bounds not ascending: %v", b, h.Bounds)
		}
	}
	if q := h.Quantile(0.95); math.IsNaN(q) || (len(h.Bounds) > 0 && q > h.Bounds[len(h.Bounds)-1] && !math.IsInf(h.Bounds[len(h.Bounds)-1], 0)) {
		t.Fatalf("%s: p95 %v outside the bounds %v", b, q, h.Bounds)
	}
}
