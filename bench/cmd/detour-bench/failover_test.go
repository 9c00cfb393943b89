package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"

	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/sim"
	"github.com/detourhq/detour/xds"
)

// schedule builds records every 5 ms (200 req/s) for d; who(t) says how
// the request scheduled at t fared.
func schedule(d time.Duration, who func(t time.Duration) reqRecord) []reqRecord {
	var out []reqRecord
	for t := time.Duration(0); t < d; t += 5 * time.Millisecond {
		r := who(t)
		r.Sched = t
		out = append(out, r)
	}
	return out
}

var (
	byPrimary   = reqRecord{Status: 200, Server: primaryName}
	bySecondary = reqRecord{Status: 200, Server: secondaryName}
	failed503   = reqRecord{Status: 503, Server: primaryName}
)

func TestShiftTime(t *testing.T) {
	ms := time.Millisecond
	fault := time.Second
	for _, c := range []struct {
		name   string
		fault  time.Duration
		w      time.Duration
		who    func(time.Duration) reqRecord
		want   time.Duration
		wantOK bool
	}{
		{
			name: "immediate", fault: fault, w: shiftWindow,
			who: func(t time.Duration) reqRecord {
				if t < fault {
					return byPrimary
				}
				return bySecondary
			},
			want: 0, wantOK: true,
		},
		{
			name: "fault between two requests", fault: fault + 2*ms, w: shiftWindow,
			who: func(t time.Duration) reqRecord {
				if t < fault+2*ms {
					return byPrimary
				}
				return bySecondary
			},
			want: 3 * ms, wantOK: true, // the first request after the fault is at 1005 ms
		},
		{
			name: "primary keeps answering for 300 ms", fault: fault, w: shiftWindow,
			who: func(t time.Duration) reqRecord {
				if t < fault+300*ms {
					return byPrimary
				}
				return bySecondary
			},
			want: 300 * ms, wantOK: true,
		},
		{
			name: "failures for 450 ms count as not shifted", fault: fault, w: shiftWindow,
			who: func(t time.Duration) reqRecord {
				switch {
				case t < fault:
					return byPrimary
				case t < fault+450*ms:
					return failed503
				}
				return bySecondary
			},
			want: 450 * ms, wantOK: true,
		},
		{
			name: "one later miss in a 40-request window resets the shift", fault: fault, w: shiftWindow,
			who: func(t time.Duration) reqRecord {
				if t < fault || t == 2*time.Second {
					return failed503
				}
				return bySecondary
			},
			want: time.Second + 5*ms, wantOK: true, // from the request after the miss
		},
		{
			name: "a 200-request window tolerates one miss", fault: fault, w: time.Second,
			who: func(t time.Duration) reqRecord {
				if t < fault || t == 2*time.Second {
					return failed503
				}
				return bySecondary
			},
			want: 0, wantOK: true,
		},
		{
			name: "dropped requests are misses", fault: fault, w: shiftWindow,
			who: func(t time.Duration) reqRecord {
				if t < fault+100*ms {
					return reqRecord{Err: errDropped}
				}
				return bySecondary
			},
			want: 100 * ms, wantOK: true,
		},
		{
			name: "never", fault: fault, w: shiftWindow,
			who: func(t time.Duration) reqRecord {
				if t >= fault && t%(100*ms) == 0 {
					return failed503
				}
				return bySecondary
			},
			wantOK: false,
		},
		{
			name: "moves then falls back at the end", fault: fault, w: shiftWindow,
			who: func(t time.Duration) reqRecord {
				if t >= 3*time.Second {
					return byPrimary
				}
				return bySecondary
			},
			wantOK: false,
		},
		{
			name: "no complete window", fault: 3900 * ms, w: shiftWindow,
			who:    func(time.Duration) reqRecord { return bySecondary },
			wantOK: false,
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			recs := schedule(4*time.Second, c.who)
			got, ok := shiftTime(recs, c.fault, secondaryName, c.w, shiftShare)
			if ok != c.wantOK || (ok && got != c.want) {
				t.Errorf("shiftTime = %v, %v; want %v, %v", got, ok, c.want, c.wantOK)
			}
		})
	}
	if _, ok := shiftTime(nil, fault, secondaryName, shiftWindow, shiftShare); ok {
		t.Error("no records: shifted")
	}
}

func TestSummarizeFailover(t *testing.T) {
	ms := time.Millisecond
	recs := schedule(2*time.Second, func(t time.Duration) reqRecord {
		switch {
		case t < time.Second:
			r := byPrimary
			r.Latency = 2 * ms
			return r
		case t < time.Second+50*ms:
			return failed503
		case t == time.Second+50*ms:
			return reqRecord{Err: errDropped}
		case t == time.Second+55*ms:
			return reqRecord{Err: "timeout"}
		}
		r := bySecondary
		r.Latency = 60 * ms
		return r
	})
	f := summarizeFailover(recs, time.Second, secondaryName)
	if f.Scheduled != 400 || f.Sent != 399 || f.After != 200 {
		t.Errorf("scheduled %d, sent %d, after %d", f.Scheduled, f.Sent, f.After)
	}
	if f.Failed != 12 || f.FailedAfter != 12 ||
		f.FailedBy["HTTP 503"] != 10 || f.FailedBy[errDropped] != 1 || f.FailedBy["timeout"] != 1 {
		t.Errorf("failed %d (after %d): %v", f.Failed, f.FailedAfter, f.FailedBy)
	}
	if f.ServedBefore[primaryName] != 200 || f.ServedAfter[secondaryName] != 188 || f.ServedAfter[primaryName] != 0 {
		t.Errorf("served before %v, after %v", f.ServedBefore, f.ServedAfter)
	}
	if f.LatBefore.P50 != 2*ms || f.LatAfter.P99 != 60*ms || f.LatAfter.N != 188 {
		t.Errorf("latency before %v, after %v", f.LatBefore, f.LatAfter)
	}
	if !f.Shifted || f.Shift != 60*ms {
		t.Errorf("shift = %v, %v; want 60ms", f.Shift, f.Shifted)
	}

	rows := timeline(recs, time.Second)
	if len(rows) != 2 || rows[0].Served[primaryName] != 200 || rows[1].Failed != 12 || rows[1].Served[secondaryName] != 188 {
		t.Errorf("timeline = %+v", rows)
	}
}

func testFailoverAddrs() failoverAddrs {
	return failoverAddrs{
		primary: "127.0.0.1:8101", primaryAdmin: "127.0.0.1:9101", secondary: "127.0.0.1:8102", secondaryAdmin: "127.0.0.1:9102",
		extproc: "127.0.0.1:9002", metrics: "127.0.0.1:9190", xds: "127.0.0.1:18000", xdsMetrics: "127.0.0.1:9191",
		listenDetour: "127.0.0.1:10001", adminDetour: "127.0.0.1:9901", listenBase: "127.0.0.1:10002", adminBase: "127.0.0.1:9902",
		listenDyn: "127.0.0.1:10003", adminDyn: "127.0.0.1:9903",
	}
}

func TestFailoverPolicy(t *testing.T) {
	a := testFailoverAddrs()
	for _, preferred := range []string{primaryName, secondaryName} {
		p, err := policy.Parse("failover", failoverPolicy(a, preferred))
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Backends) != 2 || p.Backends[0].Name != preferred || p.Backends[1].Name != other(preferred) {
			t.Fatalf("backends = %+v", p.Backends)
		}
		if p.Backends[0].Model != p.Backends[1].Model {
			t.Error("the backends must serve the same model")
		}
		if p.Backends[0].Price.Input >= p.Backends[1].Price.Input {
			t.Errorf("%s is not the cheaper: %+v", preferred, p.Backends)
		}
		if p.Envoy.Listen != a.listenDyn || p.XDS.Listen != a.xds || p.ExtProc.Listen != a.extproc {
			t.Errorf("addresses: envoy %s, xds %s, extproc %s", p.Envoy.Listen, p.XDS.Listen, p.ExtProc.Listen)
		}
	}
}

func TestFailoverBaselineBootstrap(t *testing.T) {
	p, err := policy.Parse("failover", failoverPolicy(testFailoverAddrs(), primaryName))
	if err != nil {
		t.Fatal(err)
	}
	detour, err := xds.StaticBootstrap(p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := failoverBaselineBootstrap(p)
	if err != nil {
		t.Fatal(err)
	}
	orig, base := hcmOf(t, detour), hcmOf(t, b)

	// What detour generates has everything the baseline must not.
	origRoute := orig.GetRouteConfig().VirtualHosts[0].Routes[0]
	if origRoute.GetRoute().GetRetryPolicy() == nil || origRoute.GetRoute().GetInlineClusterSpecifierPlugin() == nil {
		t.Fatal("detour's routed route has no retry policy or priority groups: the test is stale")
	}

	if n := len(base.HttpFilters); n != 1 || base.HttpFilters[0].Name != xds.RouterFilter {
		t.Errorf("baseline filters = %v, want only the router", base.HttpFilters)
	}
	vh := base.GetRouteConfig().VirtualHosts[0]
	if len(vh.Routes) != 1 || vh.RetryPolicy != nil {
		t.Fatalf("baseline virtual host = %v", vh)
	}
	r := vh.Routes[0]
	if r.GetMatch().GetPrefix() != "/" || r.GetRoute().GetCluster() != primaryName {
		t.Errorf("baseline route = %v, want a catch-all to %s", r, primaryName)
	}
	if r.GetRoute().GetRetryPolicy() != nil || r.GetRoute().GetHedgePolicy() != nil {
		t.Errorf("baseline route keeps a retry policy: %v", r.GetRoute().GetRetryPolicy())
	}
	if !proto.Equal(r.GetRoute().GetTimeout(), origRoute.GetRoute().GetTimeout()) {
		t.Error("baseline route lost the timeout")
	}
	names := map[string]bool{}
	for _, c := range b.StaticResources.Clusters {
		names[c.Name] = true
		if c.OutlierDetection != nil || c.CircuitBreakers != nil {
			t.Errorf("baseline cluster %s keeps outlier detection or circuit breakers", c.Name)
		}
		if a := c.TypedExtensionProtocolOptions["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]; a != nil {
			opts := &upstreamhttpv3.HttpProtocolOptions{}
			if err := a.UnmarshalTo(opts); err != nil {
				t.Fatal(err)
			}
			if len(opts.HttpFilters) != 0 {
				t.Errorf("baseline cluster %s keeps upstream filters", c.Name)
			}
		}
	}
	if !names[primaryName] || !names[secondaryName] {
		t.Errorf("baseline clusters = %v, want both backends", names)
	}
	for _, c := range detour.StaticResources.Clusters {
		if c.Name == primaryName && (c.OutlierDetection == nil || c.CircuitBreakers == nil) {
			t.Error("detour's cluster has no outlier detection or circuit breakers: the test is stale")
		}
	}
	// Everything else of the connection manager is detour's, as generated.
	base.HttpFilters, orig.HttpFilters = nil, nil
	base.RouteSpecifier, orig.RouteSpecifier = nil, nil
	if !proto.Equal(base, orig) {
		t.Error("the baseline changed more of the connection manager than filters and routes")
	}
	// The latency baseline keeps detour's cluster settings.
	lat, err := baselineBootstrap(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range lat.StaticResources.Clusters {
		if c.Name == primaryName && c.OutlierDetection == nil {
			t.Error("baselineBootstrap dropped outlier detection")
		}
	}
}

func TestParseEnvoyStats(t *testing.T) {
	page := []byte(`cluster.primary.upstream_rq_retry_overflow: 12
cluster.primary.lb_healthy_panic: 800
cluster.secondary.upstream_rq_retry: 40
cluster.other.upstream_rq_retry: 7
http.detour.rds.detour_routes.version_text: "4f2a9c0d1e2b3a4c"
cluster.primary.upstream_rq_retry_success: notanumber
`)
	got := parseCounters(page, failoverCounters)
	if len(got) != 3 || got["cluster.primary.upstream_rq_retry_overflow"] != 12 || got["cluster.secondary.upstream_rq_retry"] != 40 {
		t.Errorf("parseCounters = %v", got)
	}
	d := counterDelta(map[string]int64{"a": 5, "b": 1}, map[string]int64{"a": 5, "b": 3, "c": 2})
	if len(d) != 2 || d["b"] != 2 || d["c"] != 2 {
		t.Errorf("counterDelta = %v", d)
	}
	v, err := parseTextReadout(page, routesStat)
	if err != nil || v != "4f2a9c0d1e2b3a4c" {
		t.Errorf("parseTextReadout = %q, %v", v, err)
	}
	if _, err := parseTextReadout([]byte("x: 1\n"), routesStat); err == nil {
		t.Error("missing readout: no error")
	}
	// The filter sent to Envoy matches exactly the stat.
	re := regexp.MustCompile("^" + regexp.QuoteMeta(routesStat) + "$")
	if !re.MatchString(routesStat) || re.MatchString(routesStat+"x") {
		t.Error("routes stat filter")
	}
}

func TestReloadSummary(t *testing.T) {
	ms := time.Millisecond
	r := &reloadResult{Edits: []reloadEdit{
		{To: secondaryName, Traffic: 60 * ms, Routes: 70 * ms},
		{To: primaryName, Traffic: 90 * ms, Routes: 65 * ms},
		{To: secondaryName, Traffic: 55 * ms, Routes: 58 * ms},
	}}
	s := r.summary()
	if s.both.N != 3 || s.both.P50 != 70*ms || s.both.Max != 90*ms || s.traffic.P50 != 60*ms || s.routes.Max != 70*ms {
		t.Errorf("summary = %+v", s)
	}
}

// TestFailoverLoad runs the load loop against a fake pair of providers
// that switches when the fault is injected.
func TestFailoverLoad(t *testing.T) {
	var faulted atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		name := primaryName
		if faulted.Load() {
			name = secondaryName
		}
		w.Header().Set(sim.HeaderName, name)
		_, _ = io.WriteString(w, `{"ok":true}`)
	}))
	defer srv.Close()
	l := failoverLoad{rate: 200, duration: 600 * time.Millisecond, faultAt: 200 * time.Millisecond, maxInFlight: 64, timeout: 5 * time.Second}
	recs, fault, err := l.run(context.Background(), srv.Client(), chatRequest(srv.URL, shortChatBody()), func(context.Context) error {
		faulted.Store(true)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 120 {
		t.Fatalf("%d records, want 120", len(recs))
	}
	if fault < 200*time.Millisecond || fault > 400*time.Millisecond {
		t.Errorf("fault at %v, want about 200ms", fault)
	}
	f := summarizeFailover(recs, fault, secondaryName)
	if f.Failed != 0 || f.Sent != 120 {
		t.Errorf("failed %d (%v), sent %d", f.Failed, f.FailedBy, f.Sent)
	}
	if !f.Shifted || f.Shift > 50*time.Millisecond {
		t.Errorf("shift = %v, %v", f.Shift, f.Shifted)
	}
	for i, r := range recs {
		if r.Sched != time.Duration(i)*5*time.Millisecond {
			t.Fatalf("record %d scheduled at %v", i, r.Sched)
		}
	}

	// A cancelled run is an error, not a result.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := l.run(ctx, srv.Client(), chatRequest(srv.URL, nil), func(context.Context) error { return nil }); err == nil {
		t.Error("cancelled run: no error")
	}
}

func TestParseFlagsParts(t *testing.T) {
	o, err := parseFlags([]string{"-only", "failover"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !o.skipE2E || !o.skipMicro || o.skipFailover {
		t.Errorf("-only failover: %+v", o)
	}
	o, err = parseFlags([]string{"-only", "latency,micro"}, io.Discard)
	if err != nil || o.skipE2E || o.skipMicro || !o.skipFailover {
		t.Errorf("-only latency,micro: %+v, %v", o, err)
	}
	o, err = parseFlags([]string{"-only", "wasm"}, io.Discard)
	if err != nil || !o.skipE2E || !o.skipMicro || !o.skipFailover || o.skipWasm {
		t.Errorf("-only wasm: %+v, %v", o, err)
	}
	o, err = parseFlags(nil, io.Discard)
	if err != nil || o.skipE2E || o.skipMicro || o.skipFailover || o.skipWasm {
		t.Errorf("default run must include every part: %+v, %v", o, err)
	}
	for _, bad := range [][]string{
		{"-only", "speed"},
		{"-failover-fault-at", "30s"},
		{"-skip-e2e", "-skip-micro", "-skip-failover", "-skip-wasm", "-skip-controller", "-skip-cache"},
		{"-reload-edits", "-1"},
	} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("parseFlags(%q): no error", bad)
		}
	}
}

func TestMarkdownFailover(t *testing.T) {
	p, err := policy.Parse("failover", failoverPolicy(testFailoverAddrs(), primaryName))
	if err != nil {
		t.Fatal(err)
	}
	ms := time.Millisecond
	side := func(name string, recs []reqRecord, upstream map[string]int64, envoy map[string]int64) failoverSideResult {
		return failoverSideResult{Side: name, Fault: time.Second, Figures: summarizeFailover(recs, time.Second, secondaryName),
			Timeline: timeline(recs, time.Second), Upstream: upstream, Envoy: envoy}
	}
	det := schedule(3*time.Second, func(t time.Duration) reqRecord {
		if t < time.Second {
			return byPrimary
		}
		return bySecondary
	})
	base := schedule(3*time.Second, func(t time.Duration) reqRecord {
		if t < time.Second {
			return byPrimary
		}
		return failed503
	})
	r := &report{
		Options: options{skipE2E: true, skipMicro: true},
		Failover: &failoverResult{Rate: 200, Duration: 3 * time.Second, FaultAt: time.Second, BodyBytes: 200, Policy: p,
			Sides: []failoverSideResult{
				side(sideDetour, det, map[string]int64{primaryName: 600, secondaryName: 400},
					map[string]int64{"cluster.primary.lb_healthy_panic": 400}),
				side(sideBaseline, base, map[string]int64{primaryName: 600}, map[string]int64{"cluster.primary.upstream_rq_5xx": 400}),
			},
			Reload: &reloadResult{Edits: []reloadEdit{{To: secondaryName, Traffic: 60 * ms, Routes: 70 * ms}, {To: primaryName, Traffic: 1200 * ms, Routes: 65 * ms}}},
		},
	}
	md := string(r.markdown())
	for _, want := range []string{
		"| failover, a provider answers 503 while another is healthy: failed client requests = 0 | 0 of 600 (baseline: 400) | **met** |",
		"served by the fallback < 1 s | 0.000 ms (baseline: never) | **met**, 1000.000 ms under the target |",
		"| policy edit → in force in Envoy, p99 < 1 s | 1200.000 ms (p50 70.000, max 1200.000; 2 edits) | **missed** by 200.000 ms",
		"| **failed client requests** | **0** | **400** (HTTP 503: 400) |",
		"| **extra upstream attempts** (attempts − client requests sent) | **+400** (1.00 per request after the fault) | **+0** |",
		"| 1 (fault) | 0 / 200 / 0 | 0 / 0 / 200 |",
		"| `cluster.primary.lb_healthy_panic` | 400 | 0 |",
		"### 4. Failover", "### 5. Policy edit", "Every edit (both, ms, in order): 70, 1200.",
		"up to 3 retries, back-off 100ms base / 1.2s cap",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
	if strings.Contains(md, "### 1.") || strings.Contains(md, "### 6.") {
		t.Error("skipped parts rendered")
	}
	if t.Failed() {
		t.Log(md)
	}

	// A detour side that loses a request every 100 ms never reaches 99 %.
	leaky := schedule(3*time.Second, func(t time.Duration) reqRecord {
		switch {
		case t < time.Second:
			return byPrimary
		case t%(100*ms) == 0:
			return failed503
		}
		return bySecondary
	})
	r.Failover.Sides[0] = side(sideDetour, leaky, map[string]int64{primaryName: 600, secondaryName: 380},
		map[string]int64{"cluster.primary.upstream_rq_retry_overflow": 20})
	md = string(r.markdown())
	for _, want := range []string{
		"| 20 of 600 (baseline: 400) | **missed**: HTTP 503: 20 |",
		"| never (baseline: never) | **missed**: not reached; 95.0 % of the requests after the fault were served by secondary |",
		"`upstream_rq_retry_overflow` counts 20 retries",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}

	r.Failover, r.FailoverErr = nil, "boom"
	md = string(r.markdown())
	if !strings.Contains(md, "**The failover run failed:**") || !strings.Contains(md, "boom") || !strings.Contains(md, "**not measured**") {
		t.Errorf("failed run:\n%s", md)
	}
}
