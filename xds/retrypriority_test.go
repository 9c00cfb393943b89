package xds

import (
	"slices"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	previousprioritiesv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/priority/previous_priorities/v3"

	"github.com/detourhq/detour/policy"
)

// Every routed route's retries and hedges avoid the regions (priority
// levels) already attempted: streams and whole answers, ext_proc and wasm
// routing, with and without the controller's deadlines, static and served.
func TestRetryPolicyAvoidsAttemptedRegions(t *testing.T) {
	for _, tt := range []struct {
		name    string
		extra   string
		wasm    bool
		opts    Options
		routed  []string // every route that carries a retry policy
		noRetry []string // routes that must not retry
	}{
		{"static", "", false, Options{},
			[]string{streamRouteName, routedRouteName}, []string{fallbackRouteName}},
		{"served, own region", "", false, Options{Dynamic: true, Region: "eu"},
			[]string{streamRouteName, routedRouteName}, []string{fallbackRouteName}},
		{"served, hedged deadline", "", false, Options{Dynamic: true, Region: "eu", Control: &Control{ResponseTimeout: time.Second, FirstTokenTimeout: 2 * time.Second}},
			[]string{streamRouteName, routedRouteName}, []string{fallbackRouteName}},
		{"policy per_try_timeout", "retry: {per_try_timeout: 60s}\n", false, Options{Dynamic: true, Region: "us"},
			[]string{streamRouteName, routedRouteName}, []string{fallbackRouteName}},
		{"failure_mode_allow", "", false, Options{Dynamic: true, Region: "eu"},
			[]string{streamRouteName, routedRouteName}, []string{fallbackRouteName}},
		{"wasm", "", true, Options{Dynamic: true, Region: "eu"},
			[]string{wasmStreamRoute, wasmRoutedRoute, streamRouteName, routedRouteName}, []string{fallbackRouteName}},
		{"wasm, hedged deadline", "", true, Options{Dynamic: true, Region: "eu", Control: &Control{ResponseTimeout: time.Second}},
			[]string{wasmStreamRoute, wasmRoutedRoute, streamRouteName, routedRouteName}, []string{fallbackRouteName}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := loadPolicy(t, twoRegions+tt.extra)
			if tt.name == "failure_mode_allow" {
				p.ExtProc.FailureModeAllow = true
			}
			if tt.wasm {
				p.Routing.Mode = policy.ModeWasm
				tt.opts.Wasm = &WasmModule{Path: "detour.wasm"}
				tt.opts.localWasm = true
			}
			r, err := BuildFor(p, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			routes := map[string]*routev3.Route{}
			for _, rt := range r.Routes[0].VirtualHosts[0].Routes {
				routes[rt.Name] = rt
				// No route may retry without the predicate.
				if rp := rt.GetRoute().GetRetryPolicy(); rp != nil && !slices.Contains(tt.routed, rt.Name) {
					t.Errorf("unexpected route %s with a retry policy", rt.Name)
				}
			}
			if len(routes) != len(tt.routed)+len(tt.noRetry) {
				t.Errorf("%d routes, want %v and %v", len(routes), tt.routed, tt.noRetry)
			}
			for _, name := range tt.routed {
				rp := routes[name].GetRoute().GetRetryPolicy()
				if rp == nil {
					t.Fatalf("route %s has no retry policy", name)
				}
				if !rp.GetRefreshClusterOnRetry() {
					t.Errorf("%s: retries would stay on the first backend", name)
				}
				prio := rp.GetRetryPriority()
				if prio.GetName() != RetryPriorityPrevious {
					t.Fatalf("%s retry priority %q, want %s", name, prio.GetName(), RetryPriorityPrevious)
				}
				var cfg previousprioritiesv3.PreviousPrioritiesConfig
				if err := prio.GetTypedConfig().UnmarshalTo(&cfg); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if cfg.UpdateFrequency != 1 {
					t.Errorf("%s update_frequency %d, want 1 (every attempt)", name, cfg.UpdateFrequency)
				}
			}
			for _, name := range tt.noRetry {
				if routes[name] == nil {
					t.Fatalf("no route %s", name)
				}
				if routes[name].GetRoute().GetRetryPolicy() != nil {
					t.Errorf("%s retries", name)
				}
			}
		})
	}
}
