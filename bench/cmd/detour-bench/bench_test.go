package main

import (
	"math"
	"os"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"

	"github.com/detourhq/detour/bench/loadgen"
	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/xds"
)

const benchOutput = `goos: linux
goarch: amd64
pkg: github.com/detourhq/detour/route
cpu: AMD EPYC
BenchmarkParseRequest/2KB-2         	  500000	      2300 ns/op	 890.50 MB/s	       0 B/op	       0 allocs/op
BenchmarkParseRequest/2KB-2         	  500000	      2100 ns/op	 975.10 MB/s	       0 B/op	       0 allocs/op
BenchmarkParseRequest/2KB-2         	  500000	      2500 ns/op	 819.20 MB/s	       0 B/op	       0 allocs/op
BenchmarkParseAndDecide2KB-2        	  100000	     10500 ns/op	    2048 B/op	      12 allocs/op
BenchmarkParseAndDecide2KB-2        	  100000	      9500 ns/op	    2048 B/op	      12 allocs/op
BenchmarkParseAndDecide2KB-2        	  100000	     11000 ns/op	    2048 B/op	      12 allocs/op
BenchmarkParseAndDecide2KB-2        	  100000	      9000 ns/op	    2048 B/op	      12 allocs/op
--- FAIL: BenchmarkBroken
    broken_test.go:10: oops
PASS
ok  	github.com/detourhq/detour/route	12.345s
pkg: github.com/detourhq/detour/extproc
BenchmarkProcess-16                 	   20000	     55000.5 ns/op
BenchmarkNotAResult this line is chatter
ok  	github.com/detourhq/detour/extproc	3.2s
`

func TestParseBenchOutput(t *testing.T) {
	samples, err := parseBenchOutput(strings.NewReader(benchOutput))
	if err != nil {
		t.Fatal(err)
	}
	if len(samples) != 8 {
		t.Fatalf("got %d samples, want 8: %+v", len(samples), samples)
	}
	first := samples[0]
	if first.Pkg != "github.com/detourhq/detour/route" || first.Name != "BenchmarkParseRequest/2KB" ||
		first.NsPerOp != 2300 || first.BytesPerOp != 0 || first.AllocsPerOp != 0 {
		t.Errorf("first sample = %+v", first)
	}
	last := samples[7]
	if last.Pkg != "github.com/detourhq/detour/extproc" || last.Name != "BenchmarkProcess" || last.NsPerOp != 55000.5 ||
		!math.IsNaN(last.BytesPerOp) || !math.IsNaN(last.AllocsPerOp) {
		t.Errorf("last sample = %+v (no -benchmem columns must be NaN)", last)
	}

	stats := aggregate(samples)
	if len(stats) != 3 {
		t.Fatalf("got %d benchmarks, want 3: %+v", len(stats), stats)
	}
	parse, decide, proc := stats[0], stats[1], stats[2]
	if parse.N != 3 || parse.NsMedian != 2300 || parse.NsMin != 2100 || parse.NsMax != 2500 || parse.IsDecisionTarget {
		t.Errorf("parse = %+v", parse)
	}
	if decide.N != 4 || decide.NsMedian != 10000 || decide.AllocsMedian != 12 || decide.BytesMedian != 2048 || !decide.IsDecisionTarget {
		t.Errorf("decide = %+v (median of 4 is the mean of the middle two)", decide)
	}
	if proc.N != 1 || proc.IsDecisionTarget || !math.IsNaN(proc.AllocsMedian) {
		t.Errorf("proc = %+v", proc)
	}
	if s, ok := decisionStat(stats); !ok || s.Name != "BenchmarkParseAndDecide2KB" {
		t.Errorf("decisionStat = %+v, %v", s, ok)
	}
}

func TestParseBenchLineRejects(t *testing.T) {
	for _, line := range []string{
		"",
		"BenchmarkX",
		"BenchmarkX-2 notanumber 10 ns/op",
		"BenchmarkX-2 100 abc ns/op",
		"BenchmarkX-2 100 12 B/op", // no ns/op
		"PASS",
		"ok  	github.com/detourhq/detour/route	1.2s",
	} {
		if s, ok := parseBenchLine(line); ok {
			t.Errorf("parseBenchLine(%q) = %+v, want rejected", line, s)
		}
	}
}

func TestIsDecisionBenchmark(t *testing.T) {
	for _, c := range []struct {
		pkg, name string
		want      bool
	}{
		{"github.com/detourhq/detour/route", "BenchmarkParseAndDecide2KB", true},
		{"github.com/detourhq/detour/route", "BenchmarkParseAndDecide/2KB", true},
		{"github.com/detourhq/detour/route", "BenchmarkParseRequest/2KB", false},
		{"github.com/detourhq/detour/route", "BenchmarkParseAndDecide/64KB", false},
		{"github.com/detourhq/detour/extproc", "BenchmarkParseAndDecide2KB", false},
	} {
		if got := isDecisionBenchmark(c.pkg, c.name); got != c.want {
			t.Errorf("isDecisionBenchmark(%s, %s) = %v, want %v", c.pkg, c.name, got, c.want)
		}
	}
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{math.NaN(), 7, 1}, 4},
	} {
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
	if got := median(nil); !math.IsNaN(got) {
		t.Errorf("median(nil) = %v, want NaN", got)
	}
	in := []float64{3, 1, 2}
	median(in)
	if in[0] != 3 || in[1] != 1 {
		t.Errorf("median modified its input: %v", in)
	}
	if got := medianDur([]time.Duration{3 * time.Millisecond, time.Millisecond, 2 * time.Millisecond}); got != 2*time.Millisecond {
		t.Errorf("medianDur = %v", got)
	}
	if got := medianDur(nil); got != 0 {
		t.Errorf("medianDur(nil) = %v", got)
	}
}

func TestReplaceGenerated(t *testing.T) {
	section := []byte("new figures\n")
	for _, c := range []struct{ name, doc, want string }{
		{
			"replace between markers",
			"# Bench\n\nintro\n\n" + beginMarker + "\nold\nstuff\n" + endMarker + "\n\nfooter\n",
			"# Bench\n\nintro\n\n" + beginMarker + "\nnew figures\n" + endMarker + "\n\nfooter\n",
		},
		{
			"append when missing",
			"# Bench\n\nintro\n\n\n",
			"# Bench\n\nintro\n\n" + beginMarker + "\nnew figures\n" + endMarker + "\n",
		},
		{
			"empty doc",
			"",
			beginMarker + "\nnew figures\n" + endMarker + "\n",
		},
		{
			"begin without end replaces to the end",
			"intro\n" + beginMarker + "\nold\n",
			"intro\n" + beginMarker + "\nnew figures\n" + endMarker + "\n",
		},
		{
			"empty generated part",
			"a\n" + beginMarker + endMarker + "\nb\n",
			"a\n" + beginMarker + "\nnew figures\n" + endMarker + "\nb\n",
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := string(replaceGenerated([]byte(c.doc), section))
			if got != c.want {
				t.Errorf("got\n%q\nwant\n%q", got, c.want)
			}
			// Idempotent: a second run replaces its own output.
			if again := string(replaceGenerated([]byte(got), section)); again != got {
				t.Errorf("second replacement changed the doc:\n%q", again)
			}
		})
	}
}

const metricsPage = `# HELP detour_extproc_decision_duration_seconds Time ...
# TYPE detour_extproc_decision_duration_seconds histogram
detour_extproc_decision_duration_seconds_bucket{le="5e-06"} 0
detour_extproc_decision_duration_seconds_bucket{le="1e-05"} 40
detour_extproc_decision_duration_seconds_bucket{le="2.5e-05"} 90
detour_extproc_decision_duration_seconds_bucket{le="5e-05"} 100
detour_extproc_decision_duration_seconds_bucket{le="+Inf"} 100
detour_extproc_decision_duration_seconds_sum 0.0015
detour_extproc_decision_duration_seconds_count 100
detour_extproc_decisions_total{backend="provider",reason="cheapest",route="auto"} 100
`

func TestParseHistogram(t *testing.T) {
	h, err := parseHistogram([]byte(metricsPage), decisionMetric)
	if err != nil {
		t.Fatal(err)
	}
	if h.Count != 100 || h.Sum != 0.0015 || len(h.Buckets) != 5 || !math.IsInf(h.Buckets[4].LE, 1) {
		t.Fatalf("h = %+v", h)
	}
	if m := h.mean(); math.Abs(m-15e-6) > 1e-12 {
		t.Errorf("mean = %v, want 15e-6", m)
	}
	// Rank 50 lies in (10µs, 25µs] which holds ranks 41..90: 10 + 15·10/50 = 13µs.
	if q := h.quantile(0.5); math.Abs(q-13e-6) > 1e-12 {
		t.Errorf("p50 = %v, want 13e-6", q)
	}
	// Rank 99 lies in (25µs, 50µs] holding 91..100: 25 + 25·9/10 = 47.5µs.
	if q := h.quantile(0.99); math.Abs(q-47.5e-6) > 1e-12 {
		t.Errorf("p99 = %v, want 47.5e-6", q)
	}

	earlier, err := parseHistogram([]byte(strings.NewReplacer(
		`"1e-05"} 40`, `"1e-05"} 10`, `"2.5e-05"} 90`, `"2.5e-05"} 10`,
		`"5e-05"} 100`, `"5e-05"} 10`, `"+Inf"} 100`, `"+Inf"} 10`,
		"_sum 0.0015", "_sum 0.0001", "_count 100", "_count 10",
	).Replace(metricsPage)), decisionMetric)
	if err != nil {
		t.Fatal(err)
	}
	d := h.sub(earlier)
	if d.Count != 90 || math.Abs(d.Sum-0.0014) > 1e-12 || d.Buckets[1].Count != 30 || d.Buckets[4].Count != 90 {
		t.Errorf("delta = %+v", d)
	}

	if _, err := parseHistogram([]byte("other_metric 1\n"), decisionMetric); err == nil {
		t.Error("missing histogram: no error")
	}
	var empty histogram
	if !math.IsNaN(empty.mean()) || !math.IsNaN(empty.quantile(0.99)) {
		t.Error("empty histogram: want NaN mean and quantile")
	}
}

func TestVerdict(t *testing.T) {
	if got := verdict(200*time.Microsecond, targetAddedP50, fmtMsUnit); got != "**met**, 0.100 ms under the target" {
		t.Errorf("met: %q", got)
	}
	if got := verdict(1500*time.Microsecond, targetAddedP99, fmtMsUnit); got != "**missed** by 0.500 ms (1.5× the target)" {
		t.Errorf("missed: %q", got)
	}
}

func TestMedianSummaryAndFigures(t *testing.T) {
	res := func(p50, p99 time.Duration, rps float64) loadgen.Result {
		return loadgen.Result{Latency: loadgen.Summary{N: 1, P50: p50, P90: p50, P99: p99, Max: p99}, Throughput: rps, OK: 1, Sent: 1}
	}
	ms := time.Millisecond
	r := &report{E2E: &e2eResult{
		Fixed: []roundRun{
			{Round: 1, Side: sideA, Res: res(1*ms, 3*ms, 0)}, {Round: 1, Side: sideB, Res: res(2*ms, 5*ms, 0)},
			{Round: 2, Side: sideA, Res: res(3*ms, 9*ms, 0)}, {Round: 2, Side: sideB, Res: res(4*ms, 20*ms, 0)},
			{Round: 3, Side: sideA, Res: res(2*ms, 4*ms, 0)}, {Round: 3, Side: sideB, Res: res(3*ms, 6*ms, 0)},
		},
		Closed: []roundRun{
			{Round: 1, Side: sideA, Res: res(0, 0, 1000)}, {Round: 1, Side: sideB, Res: res(0, 0, 800)},
			{Round: 2, Side: sideA, Res: res(0, 0, 1200)}, {Round: 2, Side: sideB, Res: res(0, 0, 900)},
		},
	}}
	f := r.figures()
	if f.medA.P50 != 2*ms || f.medB.P50 != 3*ms || f.addedP50 != ms || f.addedP99 != 2*ms {
		t.Errorf("figures = %+v", f)
	}
	if f.rpsA != 1100 || f.rpsB != 850 || math.Abs(f.ratio-850.0/1100) > 1e-12 {
		t.Errorf("throughput figures = %+v", f)
	}
	// Side A's p99 ranges 3..9 ms and B's 5..20 ms: both flagged.
	if w := r.noiseWarnings(); len(w) != 2 {
		t.Errorf("noise warnings = %q, want one per side", w)
	}
}

func TestBaselineBootstrap(t *testing.T) {
	a := addrs{"127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003", "127.0.0.1:8004",
		"127.0.0.1:8005", "127.0.0.1:8006", "127.0.0.1:8007", "127.0.0.1:8008"}
	p, err := policy.Parse("bench", benchPolicy(a, ""))
	if err != nil {
		t.Fatal(err)
	}
	withExtProc, err := xds.StaticBootstrap(p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := baselineBootstrap(p)
	if err != nil {
		t.Fatal(err)
	}
	orig, base := hcmOf(t, withExtProc), hcmOf(t, b)
	if n := len(base.HttpFilters); n != 1 || base.HttpFilters[0].Name != xds.RouterFilter {
		t.Errorf("baseline filters = %v, want only the router", base.HttpFilters)
	}
	vh := base.GetRouteConfig().VirtualHosts[0]
	if len(vh.Routes) != 1 {
		t.Fatalf("baseline routes = %v, want one", vh.Routes)
	}
	r := vh.Routes[0]
	if r.GetMatch().GetPrefix() != "/" || len(r.GetMatch().GetHeaders()) != 0 || r.GetRoute().GetCluster() != backendName {
		t.Errorf("baseline route = %v", r)
	}
	origRoute := orig.GetRouteConfig().VirtualHosts[0].Routes[0]
	if !proto.Equal(r.GetRoute().GetTimeout(), origRoute.GetRoute().GetTimeout()) ||
		!proto.Equal(r.GetRequestBodyBufferLimit(), origRoute.GetRequestBodyBufferLimit()) {
		t.Errorf("baseline route lost the timeout or body limit: %v vs %v", r, origRoute)
	}
	// Everything else is detour's config as generated.
	base.HttpFilters, orig.HttpFilters = nil, nil
	base.RouteSpecifier, orig.RouteSpecifier = nil, nil
	if !proto.Equal(base, orig) {
		t.Error("baseline changed more of the connection manager than filters and routes")
	}
	if got, want := b.StaticResources.Listeners[0].PerConnectionBufferLimitBytes.GetValue(),
		withExtProc.StaticResources.Listeners[0].PerConnectionBufferLimitBytes.GetValue(); got != want {
		t.Errorf("buffer limit %d, want %d", got, want)
	}
	// No cluster calls detour per attempt either.
	for _, c := range b.StaticResources.Clusters {
		a := c.TypedExtensionProtocolOptions["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
		if a == nil {
			continue
		}
		opts := &upstreamhttpv3.HttpProtocolOptions{}
		if err := a.UnmarshalTo(opts); err != nil {
			t.Fatal(err)
		}
		if len(opts.HttpFilters) != 0 {
			t.Errorf("baseline cluster %s keeps upstream filters %v", c.Name, opts.HttpFilters)
		}
	}
}

func TestParseStatCPU(t *testing.T) {
	// Field 2 may hold spaces and parentheses; utime = 250, stime = 50 ticks.
	line := "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 3 0 1000 1000000 200 18446744073709551615\n"
	d, err := parseStatCPU(line)
	if err != nil {
		t.Fatal(err)
	}
	if d != 3*time.Second {
		t.Errorf("cpu = %v, want 3s", d)
	}
	for _, bad := range []string{"", "1 (x) S 1 2", "1 (x) S 1 1 1 0 -1 0 0 0 0 0 x 5 0"} {
		if _, err := parseStatCPU(bad); err == nil {
			t.Errorf("parseStatCPU(%q): no error", bad)
		}
	}
	if _, err := processCPU(os.Getpid()); err != nil {
		t.Errorf("own process: %v", err)
	}
	got := perRequest(cpuSnapshot{"a": time.Second, "b": 0}, cpuSnapshot{"a": 3 * time.Second, "c": time.Second}, 1000)
	if len(got) != 1 || got["a"] != 2*time.Millisecond {
		t.Errorf("perRequest = %v", got)
	}
}

func TestMarkdown(t *testing.T) {
	ms := time.Millisecond
	res := func(p50, p99 time.Duration, rps float64) loadgen.Result {
		return loadgen.Result{Latency: loadgen.Summary{N: 10, P50: p50, P90: p50, P99: p99, Max: p99}, Throughput: rps, OK: 10, Sent: 10}
	}
	cpu := map[string]time.Duration{procLoadgen: 100 * time.Microsecond, procEnvoy: 200 * time.Microsecond, procProvider: 100 * time.Microsecond}
	cpuB := map[string]time.Duration{procLoadgen: 100 * time.Microsecond, procEnvoy: 300 * time.Microsecond, procExtProc: 150 * time.Microsecond, procProvider: 100 * time.Microsecond}
	h, err := parseHistogram([]byte(metricsPage), decisionMetric)
	if err != nil {
		t.Fatal(err)
	}
	failed := res(ms, ms, 500)
	failed.Failed, failed.Sent, failed.Errors, failed.ByStatus = 2, 12, map[string]int{"timeout": 1}, map[int]int{200: 10, 503: 1, 0: 1}
	r := &report{
		Options: options{rate: 500, duration: 15 * time.Second, warmup: 3 * time.Second, rounds: 1, workers: 32},
		Machine: machine{CPUs: 2},
		E2E: &e2eResult{
			BodyBytes:     2000,
			Fixed:         []roundRun{{Round: 1, Side: sideA, Res: failed, CPU: cpu}, {Round: 1, Side: sideB, Res: res(1200*time.Microsecond, 2500*time.Microsecond, 500), CPU: cpuB}},
			Closed:        []roundRun{{Round: 1, Side: sideA, Res: res(0, 0, 1000), CPU: cpu}, {Round: 1, Side: sideB, Res: res(0, 0, 800), CPU: cpuB}},
			DecisionFixed: h, DecisionClosed: h,
		},
		Micro: []benchStat{{Pkg: "github.com/detourhq/detour/route", Name: "BenchmarkParseAndDecide2KB", N: 5, NsMedian: 25000, NsMin: 24000, NsMax: 26000, BytesMedian: 0, AllocsMedian: 0, IsDecisionTarget: true}},
	}
	md := string(r.markdown())
	for _, want := range []string{
		"| added p50 latency at 500 req/s ≤ 0.300 ms | 0.200 ms | **met**, 0.100 ms under the target |",
		"| added p99 latency at 500 req/s ≤ 1.000 ms | 1.500 ms | **missed** by 0.500 ms (1.5× the target) |",
		"| 25.0 µs (`BenchmarkParseAndDecide2KB`) | **missed** by 5.0 µs",
		"2 (timeout: 1, HTTP 503: 1)",
		"| **B − A** | **+0.0** | **+100.0** | **+150.0** | **+0.0** | **+250.0** |",
		"A/B total CPU = 0.62, against a measured throughput ratio of 0.80",
		"`detour extproc` burns 150.0 µs per request, of which the decision is 15.0 µs",
		"| route | `BenchmarkParseAndDecide2KB` (target ≤ 20.0 µs) | 25000 |",
		"requests failed or were dropped",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
	if strings.Contains(md, beginMarker) || strings.Contains(md, endMarker) {
		t.Error("the generated section must not contain the markers")
	}
	if t.Failed() {
		t.Log(md)
	}
}

// hcmOf unpacks the connection manager of a bootstrap's first listener.
func hcmOf(t *testing.T, b *bootstrapv3.Bootstrap) *hcmv3.HttpConnectionManager {
	t.Helper()
	hcm := &hcmv3.HttpConnectionManager{}
	if err := b.StaticResources.Listeners[0].FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
		t.Fatal(err)
	}
	return hcm
}
