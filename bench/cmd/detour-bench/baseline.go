package main

import (
	"errors"
	"fmt"
	"slices"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/xds"
)

// baselineBootstrap is detour's static bootstrap for p with the ext_proc
// HTTP filter and the clusters' per-attempt ext_proc removed, and the routes
// replaced by one plain route to the first backend's cluster. Everything else (listener buffer limit, timeouts,
// early header mutation, local reply mapping, clusters) stays as detour
// generates it, so the two sides differ only by detour's work.
func baselineBootstrap(p *policy.Policy) (*bootstrapv3.Bootstrap, error) {
	return baselineBootstrapFor(p, xds.Options{})
}

// baselineBootstrapFor is baselineBootstrap with the resources shaped by o
// (the Envoy's region, say).
func baselineBootstrapFor(p *policy.Policy, o xds.Options) (*bootstrapv3.Bootstrap, error) {
	if len(p.Backends) == 0 {
		return nil, errors.New("policy has no backend")
	}
	b, err := xds.StaticBootstrapFor(p, o)
	if err != nil {
		return nil, err
	}
	cluster := p.Backends[0].Name
	if err := eachHCM(b, func(hcm *hcmv3.HttpConnectionManager) error { return withoutExtProc(hcm, cluster) }); err != nil {
		return nil, err
	}
	for _, c := range b.GetStaticResources().GetClusters() {
		if err := withoutUpstreamFilters(c); err != nil {
			return nil, fmt.Errorf("cluster %s: %w", c.GetName(), err)
		}
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("baseline bootstrap is invalid: %w", err)
	}
	return b, nil
}

// eachHCM applies fn to every HTTP connection manager of b's static
// listeners, in place; it is an error if there is none.
func eachHCM(b *bootstrapv3.Bootstrap, fn func(*hcmv3.HttpConnectionManager) error) error {
	n := 0
	for _, l := range b.GetStaticResources().GetListeners() {
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				done, err := editHCM(f, fn)
				if err != nil {
					return fmt.Errorf("listener %s: %w", l.GetName(), err)
				}
				if done {
					n++
				}
			}
		}
	}
	if n == 0 {
		return errors.New("no HTTP connection manager found in detour's bootstrap")
	}
	return nil
}

// editHCM applies fn to f's config if f is an HTTP connection manager, and
// reports whether it was.
func editHCM(f *listenerv3.Filter, fn func(*hcmv3.HttpConnectionManager) error) (bool, error) {
	tc := f.GetTypedConfig()
	hcm := &hcmv3.HttpConnectionManager{}
	if tc == nil || !tc.MessageIs(hcm) {
		return false, nil
	}
	if err := tc.UnmarshalTo(hcm); err != nil {
		return false, fmt.Errorf("unpack http_connection_manager: %w", err)
	}
	if err := fn(hcm); err != nil {
		return false, err
	}
	a, err := anypb.New(hcm)
	if err != nil {
		return false, fmt.Errorf("repack http_connection_manager: %w", err)
	}
	f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
	return true, nil
}

// withoutExtProc removes detour's ext_proc filters (routing and resume)
// from hcm and routes every
// request of its inline route config to cluster.
func withoutExtProc(hcm *hcmv3.HttpConnectionManager, cluster string) error {
	before := len(hcm.HttpFilters)
	hcm.HttpFilters = slices.DeleteFunc(hcm.HttpFilters, func(f *hcmv3.HttpFilter) bool {
		return f.GetName() == xds.ExtProcFilter || f.GetName() == xds.ResumeFilter
	})
	if len(hcm.HttpFilters) == before {
		return fmt.Errorf("no %s filter to remove", xds.ExtProcFilter)
	}
	rc := hcm.GetRouteConfig()
	if rc == nil {
		return errors.New("no inline route config")
	}
	for _, vh := range rc.GetVirtualHosts() {
		r, err := plainRoute(vh, cluster)
		if err != nil {
			return fmt.Errorf("virtual host %s: %w", vh.GetName(), err)
		}
		vh.Routes = []*routev3.Route{r}
	}
	return nil
}

// plainRoute derives from vh's first forwarding route (detour's routed
// route, which keeps the timeout and body buffer limit) a catch-all route
// to cluster.
func plainRoute(vh *routev3.VirtualHost, cluster string) (*routev3.Route, error) {
	for _, r := range vh.GetRoutes() {
		if r.GetRoute() == nil {
			continue
		}
		out := proto.Clone(r).(*routev3.Route)
		out.Name = "baseline"
		out.Match = &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}
		out.GetRoute().ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: cluster}
		out.TypedPerFilterConfig = nil // detour's filters are gone
		return out, nil
	}
	return nil, errors.New("no forwarding route to derive the baseline route from")
}

// withoutUpstreamFilters drops the per-attempt filters (detour's upstream
// ext_proc) from a backend cluster: the baseline makes no call to detour.
func withoutUpstreamFilters(c *clusterv3.Cluster) error {
	const key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	a := c.GetTypedExtensionProtocolOptions()[key]
	if a == nil {
		return nil
	}
	opts := &upstreamhttpv3.HttpProtocolOptions{}
	if err := a.UnmarshalTo(opts); err != nil {
		return fmt.Errorf("unpack protocol options: %w", err)
	}
	if len(opts.HttpFilters) == 0 {
		return nil
	}
	opts.HttpFilters = nil
	packed, err := anypb.New(opts)
	if err != nil {
		return fmt.Errorf("pack protocol options: %w", err)
	}
	c.TypedExtensionProtocolOptions[key] = packed
	return nil
}

// failoverBaselineBootstrap is the failover benchmark's baseline: what a
// user with plain Envoy in front of one provider has. It is
// baselineBootstrap (no ext_proc at either stage, one plain route to the
// first backend's cluster) with Envoy's defaults in place of detour's
// failover settings: the route has no retry policy (Envoy then retries
// nothing), and the clusters have no outlier detection and no circuit
// breaker thresholds (Envoy's defaults: no ejection; 1024 connections,
// pending and active requests, 3 concurrent retries). The second backend's
// cluster stays defined but nothing routes to it.
func failoverBaselineBootstrap(p *policy.Policy) (*bootstrapv3.Bootstrap, error) {
	return plainEnvoyBootstrap(p, xds.Options{})
}

// plainEnvoyBootstrap is failoverBaselineBootstrap with the resources
// shaped by o (the chaos suite's baseline: Envoy in region east).
func plainEnvoyBootstrap(p *policy.Policy, o xds.Options) (*bootstrapv3.Bootstrap, error) {
	b, err := baselineBootstrapFor(p, o)
	if err != nil {
		return nil, err
	}
	err = eachHCM(b, func(hcm *hcmv3.HttpConnectionManager) error {
		for _, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
			vh.RetryPolicy, vh.HedgePolicy = nil, nil
			for _, r := range vh.GetRoutes() {
				if a := r.GetRoute(); a != nil {
					a.RetryPolicy, a.HedgePolicy = nil, nil
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, c := range b.GetStaticResources().GetClusters() {
		c.OutlierDetection, c.CircuitBreakers = nil, nil
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("failover baseline bootstrap is invalid: %w", err)
	}
	return b, nil
}
