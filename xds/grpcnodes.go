package xds

import (
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	aggregatev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/clusters/aggregate/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/detourhq/detour/policy"
)

// ClientKind is the kind of xDS client a node is, which decides the
// resources it is given.
type ClientKind string

const (
	// ClientEnvoy gets detour's Envoy resources: the ingress listener with
	// the ext_proc filter, its routes, the processor's cluster and the
	// backends' clusters and endpoints.
	ClientEnvoy ClientKind = "envoy"
	// ClientGRPC (gRPC's own xDS client, "proxyless") gets, per backend, an
	// API listener named after the backend, a route configuration to the
	// backend's cluster, the cluster and its endpoints: a channel to
	// xds:///<backend> resolves to the backend's endpoints.
	ClientGRPC ClientKind = "grpc"
)

// ClientMetadataKey is the node metadata field that names a client's kind
// ("envoy" or "grpc") when its user agent does not, or says otherwise.
const ClientMetadataKey = "detour.client"

// ClientKindOf tells a gRPC xDS client from an Envoy by its node.
//
// The node metadata field ClientMetadataKey decides when present; any
// other value than "envoy" or "grpc" is an error (a typo must not quietly
// give a client resources it would reject). Otherwise user_agent_name
// decides: every gRPC implementation sends one beginning with "gRPC"
// ("gRPC Go", "gRPC Java", "gRPC C-core", ...), Envoy sends "envoy". A
// node with neither (an older or unknown client) is taken for an Envoy,
// as every client was before gRPC clients were served.
func ClientKindOf(node *corev3.Node) (ClientKind, error) {
	if v, ok := node.GetMetadata().GetFields()[ClientMetadataKey]; ok {
		switch k := ClientKind(v.GetStringValue()); k {
		case ClientEnvoy, ClientGRPC:
			return k, nil
		}
		return "", fmt.Errorf("node %s: metadata %s is %v, want %q or %q", node.GetId(), ClientMetadataKey, v.AsInterface(), ClientEnvoy, ClientGRPC)
	}
	if strings.HasPrefix(strings.ToLower(node.GetUserAgentName()), "grpc") {
		return ClientGRPC, nil
	}
	return ClientEnvoy, nil
}

// BuildGRPC generates what a gRPC xDS client in region needs to resolve
// each backend by name: for backend B, the API listener B (a channel's
// target is xds:///B), its route configuration B over RDS, the cluster B
// and, for IP endpoints, the load assignment B over EDS, with the same
// region priorities an Envoy of that region gets.
//
// Only what gRPC implements is in them: the connection manager has the
// router filter alone, and the clusters carry none of the Envoy-only parts
// of the Envoy variant (upstream ext_proc filters, retry budget, buffer
// limits, TLS context). gRPC ignores the first three, which would only
// mislead; it takes TLS from certificate-provider instances, not a CA file
// path, so a gRPC client's own channel credentials decide TLS. These
// resources are for clients that find a provider's endpoints through
// detour; detour's per-request routing and rewriting stay Envoy's.
func BuildGRPC(p *policy.Policy, region string) (*Resources, error) {
	r := &Resources{}
	router, err := pack(&routerv3.Router{})
	if err != nil {
		return nil, err
	}
	for i := range p.Backends {
		b := &p.Backends[i]
		l, err := apiListener(b.Name, router)
		if err != nil {
			return nil, err
		}
		r.Listeners = append(r.Listeners, l)
		r.Routes = append(r.Routes, backendRoute(b.Name))
		cs, cla, err := grpcClusters(p, b, region)
		if err != nil {
			return nil, err
		}
		r.Clusters = append(r.Clusters, cs...)
		if cla != nil {
			r.Endpoints = append(r.Endpoints, cla)
		}
	}
	for _, m := range r.all() {
		if err := validate(m); err != nil {
			return nil, err
		}
	}
	if err := r.checkGRPCReferences(); err != nil {
		return nil, err
	}
	return r, nil
}

// apiListener is the listener a gRPC channel to xds:///name starts from:
// no address, a connection manager that takes its routes over RDS.
func apiListener(name string, router *anypb.Any) (*listenerv3.Listener, error) {
	hcm, err := pack(&hcmv3.HttpConnectionManager{
		StatPrefix: name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource: adsSource(), RouteConfigName: name,
		}},
		// gRPC NACKs a listener naming any filter it does not implement
		// (ext_proc among them): the router is the one every gRPC has.
		HttpFilters: []*hcmv3.HttpFilter{{Name: RouterFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}},
	})
	if err != nil {
		return nil, err
	}
	return &listenerv3.Listener{Name: name, ApiListener: &listenerv3.ApiListener{ApiListener: hcm}}, nil
}

// backendRoute sends every call of a channel to the backend's cluster.
func backendRoute(name string) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: name,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    name,
			Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Name:   name,
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: name}}},
			}},
		}},
	}
}

// grpcClusters builds b's cluster as gRPC can take it, with the clusters it
// refers to and its load assignment when that travels over EDS.
//
// gRPC resolves EDS, LOGICAL_DNS (exactly one host) and aggregate clusters,
// not Envoy's STATIC or STRICT_DNS. So IP endpoints go over EDS, as for
// Envoy; a single host name is a LOGICAL_DNS cluster; several endpoints
// with a host name among them become one LOGICAL_DNS cluster each under an
// aggregate cluster named b, in region order (own region first). An
// aggregate fails over from one child to the next rather than balancing
// across them: for a backend of several host names a gRPC client uses one
// at a time.
func grpcClusters(p *policy.Policy, b *policy.Backend, region string) ([]*clusterv3.Cluster, *endpointv3.ClusterLoadAssignment, error) {
	dns := false
	for _, e := range b.Endpoints {
		host, _, err := splitHostPort(e.Address)
		if err != nil {
			return nil, nil, fmt.Errorf("backend %s: %w", b.Name, err)
		}
		if net.ParseIP(host) == nil {
			dns = true
		}
	}
	base := func(name string) *clusterv3.Cluster {
		return &clusterv3.Cluster{
			Name:             name,
			ConnectTimeout:   durationpb.New(2 * time.Second),
			LbPolicy:         clusterv3.Cluster_ROUND_ROBIN,
			OutlierDetection: outlierDetection(p),
		}
	}
	if !dns {
		cla, err := loadAssignment(b, region)
		if err != nil {
			return nil, nil, err
		}
		c := base(b.Name)
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}
		c.EdsClusterConfig = &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: b.Name}
		return []*clusterv3.Cluster{c}, cla, nil
	}
	logicalDNS := func(name string, e policy.Endpoint) (*clusterv3.Cluster, error) {
		host, port, err := splitHostPort(e.Address)
		if err != nil {
			return nil, fmt.Errorf("backend %s: %w", b.Name, err)
		}
		ep := lbEndpoint(host, port)
		ep.Metadata = endpointMetadata(b)
		c := base(name)
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_LOGICAL_DNS}
		c.LoadAssignment = &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			Locality: &corev3.Locality{Region: e.Region}, LbEndpoints: []*endpointv3.LbEndpoint{ep},
		}}}
		return c, nil
	}
	if len(b.Endpoints) == 1 {
		c, err := logicalDNS(b.Name, b.Endpoints[0])
		if err != nil {
			return nil, nil, err
		}
		return []*clusterv3.Cluster{c}, nil, nil
	}
	// Children are named b/<index in the policy>: '/' is in no backend's
	// name, so they cannot clash with another backend's cluster.
	order := make([]int, len(b.Endpoints))
	for i := range order {
		order[i] = i
	}
	own := func(i int) bool { return region != "" && b.Endpoints[i].Region == region }
	slices.SortStableFunc(order, func(i, j int) int {
		if own(i) != own(j) {
			if own(i) {
				return -1
			}
			return 1
		}
		return strings.Compare(b.Endpoints[i].Region, b.Endpoints[j].Region)
	})
	var children []*clusterv3.Cluster
	var names []string
	for _, i := range order {
		c, err := logicalDNS(fmt.Sprintf("%s/%d", b.Name, i), b.Endpoints[i])
		if err != nil {
			return nil, nil, err
		}
		children = append(children, c)
		names = append(names, c.Name)
	}
	cfg, err := pack(&aggregatev3.ClusterConfig{Clusters: names})
	if err != nil {
		return nil, nil, err
	}
	// ROUND_ROBIN, not the CLUSTER_PROVIDED Envoy wants for an aggregate:
	// gRPC NACKs any other policy than round robin, ring hash or least
	// request, and this cluster is served to gRPC only.
	agg := &clusterv3.Cluster{
		Name: b.Name,
		ClusterDiscoveryType: &clusterv3.Cluster_ClusterType{ClusterType: &clusterv3.Cluster_CustomClusterType{
			Name: "envoy.clusters.aggregate", TypedConfig: cfg,
		}},
		ConnectTimeout: durationpb.New(2 * time.Second),
		LbPolicy:       clusterv3.Cluster_ROUND_ROBIN,
	}
	return append([]*clusterv3.Cluster{agg}, children...), nil, nil
}

// checkGRPCReferences checks that every name a gRPC client is led to is
// served and nothing is served that no name leads to. go-control-plane's
// Snapshot.Consistent cannot: it does not follow an API listener's RDS
// name, so it counts the route configurations as unreferenced.
func (r *Resources) checkGRPCReferences() error {
	routes, clusters, endpoints := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, rc := range r.Routes {
		routes[rc.Name] = false
	}
	for _, c := range r.Clusters {
		clusters[c.Name] = false
	}
	for _, e := range r.Endpoints {
		endpoints[e.ClusterName] = false
	}
	use := func(set map[string]bool, kind, name, from string) error {
		if _, ok := set[name]; !ok {
			return fmt.Errorf("gRPC resources: %s refers to %s %q, which is not served", from, kind, name)
		}
		set[name] = true
		return nil
	}
	for _, l := range r.Listeners {
		hcm := &hcmv3.HttpConnectionManager{}
		if err := l.GetApiListener().GetApiListener().UnmarshalTo(hcm); err != nil {
			return fmt.Errorf("gRPC resources: listener %s: %w", l.Name, err)
		}
		if err := use(routes, "route configuration", hcm.GetRds().GetRouteConfigName(), "listener "+l.Name); err != nil {
			return err
		}
	}
	for _, rc := range r.Routes {
		for _, vh := range rc.VirtualHosts {
			for _, rt := range vh.Routes {
				if err := use(clusters, "cluster", rt.GetRoute().GetCluster(), "route configuration "+rc.Name); err != nil {
					return err
				}
			}
		}
	}
	for _, c := range r.Clusters {
		if c.GetType() == clusterv3.Cluster_EDS {
			if err := use(endpoints, "load assignment", c.GetEdsClusterConfig().GetServiceName(), "cluster "+c.Name); err != nil {
				return err
			}
		}
		if ct := c.GetClusterType(); ct != nil {
			cfg := &aggregatev3.ClusterConfig{}
			if err := ct.GetTypedConfig().UnmarshalTo(cfg); err != nil {
				return fmt.Errorf("gRPC resources: cluster %s: %w", c.Name, err)
			}
			for _, child := range cfg.Clusters {
				if err := use(clusters, "cluster", child, "cluster "+c.Name); err != nil {
					return err
				}
			}
		}
	}
	for _, s := range []struct {
		kind string
		set  map[string]bool
	}{{"route configuration", routes}, {"cluster", clusters}, {"load assignment", endpoints}} {
		for _, name := range slices.Sorted(maps.Keys(s.set)) {
			if !s.set[name] {
				return fmt.Errorf("gRPC resources: %s %q is served but nothing refers to it", s.kind, name)
			}
		}
	}
	return nil
}
