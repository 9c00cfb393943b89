package xds

import (
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/detourhq/detour/examples"
	"github.com/detourhq/detour/policy"
)

// The response deadline: the controller's hedged deadline on the
// non-stream routed routes (the processor's and, in wasm mode, the
// plugin's) unless the policy sets retry.per_try_timeout, which stays a
// hard timeout; the stream routes never hedge.
func TestResponseDeadline(t *testing.T) {
	for _, tt := range []struct {
		name      string
		extra     string
		control   *Control
		wantTry   time.Duration // the non-stream routes' per-try timeout
		wantHedge bool
	}{
		{"no control", "", nil, 0, false},
		{"control without a deadline", "", &Control{FirstTokenTimeout: 3 * time.Second}, 0, false},
		{"controller deadline", "", &Control{ResponseTimeout: 2 * time.Second}, 2 * time.Second, true},
		{"controller deadline and first-token deadline", "", &Control{ResponseTimeout: 2 * time.Second, FirstTokenTimeout: 3 * time.Second}, 2 * time.Second, true},
		{"policy per_try_timeout stays hard", "retry: {per_try_timeout: 60s}\n", nil, 60 * time.Second, false},
		{"policy per_try_timeout wins over the controller", "retry: {per_try_timeout: 60s}\n", &Control{ResponseTimeout: 2 * time.Second}, 60 * time.Second, false},
	} {
		for _, wasm := range []bool{false, true} {
			name := tt.name
			if wasm {
				name += "/wasm"
			}
			t.Run(name, func(t *testing.T) {
				p := parsePolicy(t, string(examples.QuickstartPolicy)+tt.extra)
				o := Options{Control: tt.control}
				if wasm {
					p.Routing.Mode = policy.ModeWasm
					o.Wasm = &WasmModule{Path: "detour.wasm"}
				}
				rc, err := routeConfig(p, o)
				if err != nil {
					t.Fatal(err)
				}
				routes := map[string]*routev3.Route{}
				for _, r := range rc.VirtualHosts[0].Routes {
					routes[r.Name] = r
				}
				nonStream, streams := []string{routedRouteName}, []string{streamRouteName}
				if wasm {
					nonStream, streams = append(nonStream, wasmRoutedRoute), append(streams, wasmStreamRoute)
				}
				for _, name := range nonStream {
					ra := routes[name].GetRoute()
					if ra == nil {
						t.Fatalf("no route %s", name)
					}
					if got := ra.GetRetryPolicy().GetPerTryTimeout().AsDuration(); got != tt.wantTry {
						t.Errorf("%s per-try timeout %v, want %v", name, got, tt.wantTry)
					}
					if got := ra.GetHedgePolicy().GetHedgeOnPerTryTimeout(); got != tt.wantHedge {
						t.Errorf("%s hedge_on_per_try_timeout %v, want %v", name, got, tt.wantHedge)
					}
					if h := ra.GetHedgePolicy(); h != nil && (h.InitialRequests != nil || h.AdditionalRequestChance != nil) {
						t.Errorf("%s hedges more than on the deadline: %v", name, h)
					}
					if !ra.GetRetryPolicy().GetRefreshClusterOnRetry() {
						t.Errorf("%s: a retry would not go to the next backend", name)
					}
				}
				firstToken := 10 * time.Second // the policy default
				if tt.control != nil && tt.control.FirstTokenTimeout > 0 {
					firstToken = tt.control.FirstTokenTimeout
				}
				for _, name := range streams {
					ra := routes[name].GetRoute()
					if ra == nil {
						t.Fatalf("no route %s", name)
					}
					if ra.GetHedgePolicy() != nil {
						t.Errorf("stream route %s hedges: %v", name, ra.GetHedgePolicy())
					}
					if got := ra.GetRetryPolicy().GetPerTryTimeout().AsDuration(); got != firstToken {
						t.Errorf("stream route %s per-try timeout %v, want the first-token deadline %v", name, got, firstToken)
					}
				}
				if fb := routes[fallbackRouteName].GetRoute(); fb.GetHedgePolicy() != nil {
					t.Errorf("fallback route hedges")
				}
			})
		}
	}
}

// The deadline reaches the resources an Envoy is served.
func TestResponseDeadlineServed(t *testing.T) {
	p := loadPolicy(t, twoRegions)
	r, err := BuildFor(p, Options{Dynamic: true, Region: "eu", Control: &Control{ResponseTimeout: 1500 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	var hedged int
	for _, rt := range r.Routes[0].VirtualHosts[0].Routes {
		if rt.GetRoute().GetHedgePolicy().GetHedgeOnPerTryTimeout() {
			hedged++
			if rt.Name != routedRouteName || rt.GetRoute().GetRetryPolicy().GetPerTryTimeout().AsDuration() != 1500*time.Millisecond {
				t.Errorf("hedged route %s with per-try timeout %v", rt.Name, rt.GetRoute().GetRetryPolicy().GetPerTryTimeout().AsDuration())
			}
		}
	}
	if hedged != 1 {
		t.Errorf("%d hedged routes, want the non-stream routed one", hedged)
	}
}
