package xds

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
)

func TestControlAppliedToResources(t *testing.T) {
	p := loadPolicy(t, twoRegions)
	c := &Control{
		Backends: map[string]BackendControl{
			"alpha": {Health: corev3.HealthStatus_UNHEALTHY, EndpointWeights: map[string]uint32{"10.0.0.1:8001": 7}, ConsecutiveErrors: 2,
				RetryBudgetPercent: 20, MinRetryConcurrency: 10, MaxRequests: 4096, MaxPending: 4096},
		},
		FirstTokenTimeout: 3 * time.Second,
	}
	r, err := BuildFor(p, Options{Dynamic: true, Region: "eu", Control: c})
	if err != nil {
		t.Fatal(err)
	}
	var alpha, beta *clusterv3.Cluster
	for _, cl := range r.Clusters {
		switch cl.Name {
		case "alpha":
			alpha = cl
		case "beta":
			beta = cl
		}
	}
	if got := alpha.OutlierDetection.Consecutive_5Xx.GetValue(); got != 2 {
		t.Errorf("alpha consecutive_5xx = %d, want 2", got)
	}
	th := alpha.CircuitBreakers.Thresholds[0]
	if th.RetryBudget.BudgetPercent.GetValue() != 20 || th.RetryBudget.MinRetryConcurrency.GetValue() != 10 {
		t.Errorf("alpha retry budget = %v", th.RetryBudget)
	}
	if th.MaxRequests.GetValue() != 4096 || th.MaxPendingRequests.GetValue() != 4096 {
		t.Errorf("alpha limits = %v / %v", th.MaxRequests, th.MaxPendingRequests)
	}
	if got := beta.OutlierDetection.Consecutive_5Xx.GetValue(); got != uint32(p.OutlierDetection.ConsecutiveErrors) {
		t.Errorf("beta consecutive_5xx = %d: a backend without control keeps the policy's", got)
	}
	if beta.CircuitBreakers.Thresholds[0].MaxRequests != nil {
		t.Errorf("beta max_requests set without control")
	}
	for _, cla := range r.Endpoints {
		for _, l := range cla.Endpoints {
			for _, e := range l.LbEndpoints {
				wantHealth, wantWeight := corev3.HealthStatus_UNKNOWN, uint32(0)
				if cla.ClusterName == "alpha" {
					wantHealth, wantWeight = corev3.HealthStatus_UNHEALTHY, FullWeight // the other endpoint: nothing against it
					if e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress() == "10.0.0.1" {
						wantWeight = 7
					}
				}
				if e.HealthStatus != wantHealth || e.GetLoadBalancingWeight().GetValue() != wantWeight {
					t.Errorf("%s endpoint: health %v weight %d, want %v %d", cla.ClusterName, e.HealthStatus, e.GetLoadBalancingWeight().GetValue(), wantHealth, wantWeight)
				}
			}
		}
	}
	var stream *routev3.Route
	for _, rt := range r.Routes[0].VirtualHosts[0].Routes {
		if rt.GetRoute().GetRetryPolicy().GetPerTryTimeout() != nil {
			stream = rt
		}
	}
	if stream == nil || stream.GetRoute().GetRetryPolicy().GetPerTryTimeout().AsDuration() != 3*time.Second {
		t.Errorf("stream route per-try timeout not the controller's 3s: %v", stream)
	}
}

func TestControlNeverRaisesFirstTokenTimeout(t *testing.T) {
	p := loadPolicy(t, twoRegions)
	c := &Control{FirstTokenTimeout: time.Hour}
	if got := c.withFirstToken(p); got != p {
		t.Errorf("a deadline above the policy's was applied")
	}
}

// TestControlVersionsByType: a health change moves the endpoint version
// only, so Envoy gets EDS alone and keeps its clusters (and their outlier
// state); a cluster setting moves the cluster version.
func TestControlVersionsByType(t *testing.T) {
	ctx := context.Background()
	p := loadPolicy(t, twoRegions)
	s := NewServer(ctx, p, slog.New(slog.NewTextHandler(io.Discard, nil)), NewMetrics(prometheus.NewRegistry()))
	node := nodeKey{id: "envoy-1", kind: ClientEnvoy}
	versions := func() map[string]string {
		t.Helper()
		snap, err := s.build(p, node, "eu")
		if err != nil {
			t.Fatal(err)
		}
		if err := snap.Consistent(); err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, typ := range []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType} {
			out[typ] = snap.GetVersion(typ)
		}
		return out
	}
	plain := versions()
	base := wantVersion(t, p, "eu")
	for typ, v := range plain {
		if v != base {
			t.Errorf("without control %s version %s, want the policy's %s", typ, v, base)
		}
	}
	s.control = &Control{Backends: map[string]BackendControl{"alpha": {Health: corev3.HealthStatus_DEGRADED}}}
	health := versions()
	for typ, v := range health {
		changed := v != base
		if changed != (typ == resourcev3.EndpointType) {
			t.Errorf("health change: %s version %s (policy's %s)", typ, v, base)
		}
	}
	s.control = &Control{Backends: map[string]BackendControl{"alpha": {Health: corev3.HealthStatus_DEGRADED, ConsecutiveErrors: 2}}}
	both := versions()
	if both[resourcev3.ClusterType] == base || both[resourcev3.EndpointType] != health[resourcev3.EndpointType] {
		t.Errorf("cluster change: versions %v", both)
	}
	if both[resourcev3.ListenerType] != base || both[resourcev3.RouteType] != base {
		t.Errorf("cluster change moved listener or route versions: %v", both)
	}
}

// An endpoint out of service on its own is UNHEALTHY whatever its
// backend's health; its siblings keep the backend's.
func TestControlEndpointsOut(t *testing.T) {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: "alpha"}
	for _, port := range []uint32{8001, 8002} {
		cla.Endpoints = append(cla.Endpoints, &endpointv3.LocalityLbEndpoints{LbEndpoints: []*endpointv3.LbEndpoint{{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddress("10.0.0.1", port)}},
		}}})
	}
	BackendControl{Health: corev3.HealthStatus_HEALTHY, EndpointsOut: map[string]bool{"10.0.0.1:8001": true}}.applyEndpoints(cla)
	got := []corev3.HealthStatus{cla.Endpoints[0].LbEndpoints[0].HealthStatus, cla.Endpoints[1].LbEndpoints[0].HealthStatus}
	if got[0] != corev3.HealthStatus_UNHEALTHY || got[1] != corev3.HealthStatus_HEALTHY {
		t.Errorf("health %v, want [UNHEALTHY HEALTHY]", got)
	}
	if w := cla.Endpoints[1].LbEndpoints[0].LoadBalancingWeight; w != nil {
		t.Errorf("a weight was set without weights: %v", w)
	}
}
