package xds

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	aggregatev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/clusters/aggregate/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/detourhq/detour/policy"
)

// grpcNode is a node as gRPC-Go's xDS client sends it.
func grpcNode(id, region string) *corev3.Node {
	n := &corev3.Node{
		Id:                   id,
		UserAgentName:        "gRPC Go",
		UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: "1.85.0"},
		ClientFeatures:       []string{"envoy.lb.does_not_support_overprovisioning", "xds.config.resource-in-sotw"},
	}
	if region != "" {
		n.Locality = &corev3.Locality{Region: region}
	}
	return n
}

func withMetadata(n *corev3.Node, kind string) *corev3.Node {
	n.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{ClientMetadataKey: structpb.NewStringValue(kind)}}
	return n
}

func TestClientKindOf(t *testing.T) {
	envoy := func() *corev3.Node { return &corev3.Node{Id: "e", UserAgentName: "envoy"} }
	for _, tc := range []struct {
		name    string
		node    *corev3.Node
		want    ClientKind
		wantErr string
	}{
		{"envoy", envoy(), ClientEnvoy, ""},
		{"grpc go", grpcNode("g", ""), ClientGRPC, ""},
		{"grpc java", &corev3.Node{Id: "g", UserAgentName: "gRPC Java"}, ClientGRPC, ""},
		{"grpc c-core, any case", &corev3.Node{Id: "g", UserAgentName: "GRPC C-core"}, ClientGRPC, ""},
		{"no user agent", &corev3.Node{Id: "x"}, ClientEnvoy, ""},
		{"another agent", &corev3.Node{Id: "x", UserAgentName: "my-proxy"}, ClientEnvoy, ""},
		{"metadata says grpc", withMetadata(envoy(), "grpc"), ClientGRPC, ""},
		{"metadata says envoy", withMetadata(grpcNode("g", ""), "envoy"), ClientEnvoy, ""},
		{"metadata misspelt", withMetadata(grpcNode("g", ""), "gprc"), "", `metadata detour.client is gprc, want "envoy" or "grpc"`},
		{"metadata not a string", func() *corev3.Node {
			n := envoy()
			n.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{ClientMetadataKey: structpb.NewBoolValue(true)}}
			return n
		}(), "", "metadata detour.client is true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ClientKindOf(tc.node)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ClientKindOf = %q, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ClientKindOf = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// manyHosts has a backend of several host names in two regions (an
// aggregate of LOGICAL_DNS clusters for gRPC) and one of TLS IP endpoints.
const manyHosts = `version: 1
backends:
  - name: delta
    model: m-delta
    endpoints:
      - {address: "us-1.delta.internal:443", region: us}
      - {address: "eu-1.delta.internal:443", region: eu}
      - {address: "10.0.0.4:443", region: eu}
    capabilities: {context_window: 8192}
  - name: secure
    model: m-secure
    endpoints:
      - {address: "10.0.0.5:443", region: eu, tls: {sni: api.example.com}}
    capabilities: {context_window: 8192}
routes:
  - name: auto
`

// grpcView is what a gRPC client follows from a backend's listener.
type grpcView struct {
	route    string   // the listener's RDS name
	filters  []string // the connection manager's HTTP filters
	cluster  string   // where the route sends calls
	kind     string   // the cluster's type: EDS, LOGICAL_DNS or aggregate
	children []string // an aggregate's clusters, in order
	dns      []string // LOGICAL_DNS host:port of the cluster or its children
	// prios: endpoint address → priority (EDS).
	prios map[string]uint32
}

func viewOf(t *testing.T, r *Resources, backend string) grpcView {
	t.Helper()
	var v grpcView
	byName := func(name string) *clusterv3.Cluster {
		for _, c := range r.Clusters {
			if c.Name == name {
				return c
			}
		}
		t.Fatalf("no cluster %q", name)
		return nil
	}
	for _, l := range r.Listeners {
		if l.Name != backend {
			continue
		}
		hcm := &hcmv3.HttpConnectionManager{}
		if err := l.GetApiListener().GetApiListener().UnmarshalTo(hcm); err != nil {
			t.Fatalf("listener %s: %v", l.Name, err)
		}
		v.route = hcm.GetRds().GetRouteConfigName()
		for _, f := range hcm.HttpFilters {
			v.filters = append(v.filters, f.Name)
		}
	}
	for _, rc := range r.Routes {
		if rc.Name == v.route {
			v.cluster = rc.VirtualHosts[0].Routes[0].GetRoute().GetCluster()
		}
	}
	c := byName(v.cluster)
	dnsOf := func(c *clusterv3.Cluster) string {
		sa := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
		return fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue())
	}
	switch {
	case c.GetType() == clusterv3.Cluster_EDS:
		v.kind = "EDS"
		v.prios = map[string]uint32{}
		for _, e := range r.Endpoints {
			if e.ClusterName != c.GetEdsClusterConfig().GetServiceName() {
				continue
			}
			for _, l := range e.Endpoints {
				for _, ep := range l.LbEndpoints {
					sa := ep.GetEndpoint().GetAddress().GetSocketAddress()
					v.prios[fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue())] = l.Priority
				}
			}
		}
	case c.GetType() == clusterv3.Cluster_LOGICAL_DNS:
		v.kind = "LOGICAL_DNS"
		v.dns = []string{dnsOf(c)}
	case c.GetClusterType() != nil:
		v.kind = c.GetClusterType().Name
		cfg := &aggregatev3.ClusterConfig{}
		if err := c.GetClusterType().GetTypedConfig().UnmarshalTo(cfg); err != nil {
			t.Fatal(err)
		}
		v.children = cfg.Clusters
		for _, name := range cfg.Clusters {
			child := byName(name)
			if child.GetType() != clusterv3.Cluster_LOGICAL_DNS {
				t.Errorf("aggregate child %s is %v, want LOGICAL_DNS", name, child.GetType())
			}
			v.dns = append(v.dns, dnsOf(child))
		}
	default:
		t.Fatalf("cluster %s of a type gRPC cannot resolve: %v", c.Name, c.GetClusterDiscoveryType())
	}
	return v
}

// Per backend, a gRPC client gets a listener → route → cluster →
// endpoints chain it can follow, built from what gRPC implements, with the
// endpoints of its own region first; every resource passes ValidateAll.
func TestBuildGRPC(t *testing.T) {
	for _, tc := range []struct {
		name, policy, region, backend string
		want                          grpcView
	}{
		{"IP endpoints, eu client", twoRegions, "eu", "alpha", grpcView{kind: "EDS",
			prios: map[string]uint32{"10.0.0.1:8001": 0, "10.0.1.1:8001": 1}}},
		{"IP endpoints, us client", twoRegions, "us", "alpha", grpcView{kind: "EDS",
			prios: map[string]uint32{"10.0.0.1:8001": 1, "10.0.1.1:8001": 0}}},
		{"IP endpoints, client of no region", twoRegions, "", "alpha", grpcView{kind: "EDS",
			prios: map[string]uint32{"10.0.0.1:8001": 0, "10.0.1.1:8001": 0}}},
		{"IP endpoints, client of another region", twoRegions, "ap", "alpha", grpcView{kind: "EDS",
			prios: map[string]uint32{"10.0.0.1:8001": 0, "10.0.1.1:8001": 0}}},
		{"one region only", twoRegions, "us", "beta", grpcView{kind: "EDS",
			prios: map[string]uint32{"10.0.0.2:8002": 0}}},
		{"one host name", twoRegions, "eu", "gamma", grpcView{kind: "LOGICAL_DNS",
			dns: []string{"gamma.internal:8003"}}},
		{"several hosts, eu client", manyHosts, "eu", "delta", grpcView{kind: "envoy.clusters.aggregate",
			children: []string{"delta/1", "delta/2", "delta/0"},
			dns:      []string{"eu-1.delta.internal:443", "10.0.0.4:443", "us-1.delta.internal:443"}}},
		{"several hosts, us client", manyHosts, "us", "delta", grpcView{kind: "envoy.clusters.aggregate",
			children: []string{"delta/0", "delta/1", "delta/2"},
			dns:      []string{"us-1.delta.internal:443", "eu-1.delta.internal:443", "10.0.0.4:443"}}},
		{"several hosts, client of no region", manyHosts, "", "delta", grpcView{kind: "envoy.clusters.aggregate",
			children: []string{"delta/1", "delta/2", "delta/0"},
			dns:      []string{"eu-1.delta.internal:443", "10.0.0.4:443", "us-1.delta.internal:443"}}},
		{"TLS endpoint", manyHosts, "eu", "secure", grpcView{kind: "EDS",
			prios: map[string]uint32{"10.0.0.5:443": 0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := loadPolicy(t, tc.policy)
			r, err := BuildGRPC(p, tc.region)
			if err != nil {
				t.Fatal(err)
			}
			// One API listener per backend, named after it, and nothing else:
			// no socket listener (detour_ingress) a gRPC client would NACK.
			var names []string
			for _, l := range r.Listeners {
				names = append(names, l.Name)
				if l.GetApiListener() == nil || l.GetAddress() != nil || len(l.GetFilterChains()) != 0 {
					t.Errorf("listener %s: api_listener %v, address %v, %d filter chains; want an API listener only",
						l.Name, l.GetApiListener() != nil, l.GetAddress(), len(l.GetFilterChains()))
				}
			}
			var backends []string
			for _, b := range p.Backends {
				backends = append(backends, b.Name)
			}
			if !slices.Equal(names, backends) {
				t.Errorf("listeners %v, want one per backend %v", names, backends)
			}
			for _, m := range r.all() {
				if err := m.(validatable).ValidateAll(); err != nil {
					t.Errorf("%T: %v", m, err)
				}
			}
			// Nothing only Envoy implements: no ext_proc, no upstream
			// filters, no TLS context naming files.
			for _, c := range r.Clusters {
				if len(c.TypedExtensionProtocolOptions) != 0 || c.TransportSocket != nil || c.CircuitBreakers != nil {
					t.Errorf("cluster %s carries Envoy-only parts: protocol options %v, transport socket %v, circuit breakers %v",
						c.Name, c.TypedExtensionProtocolOptions, c.TransportSocket, c.CircuitBreakers)
				}
			}
			for _, m := range r.all() {
				b, err := proto.Marshal(m)
				if err != nil {
					t.Fatal(err)
				}
				if bytes.Contains(b, []byte("ext_proc")) || bytes.Contains(b, []byte(ExtProcCluster)) {
					t.Errorf("%T mentions detour's processor", m)
				}
			}

			got := viewOf(t, r, tc.backend)
			want := tc.want
			want.route, want.cluster, want.filters = tc.backend, tc.backend, []string{RouterFilter}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("%s as gRPC follows it:\n got %+v\nwant %+v", tc.backend, got, want)
			}
		})
	}
}

// The gRPC resources are deterministic (replicas agree on the version),
// depend on the region, and differ from an Envoy's.
func TestBuildGRPCVersion(t *testing.T) {
	version := func(p *policy.Policy, region string) string {
		r, err := BuildGRPC(p, region)
		if err != nil {
			t.Fatal(err)
		}
		v, err := Version(r)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	eu := version(loadPolicy(t, twoRegions), "eu")
	for range 5 {
		if again := version(loadPolicy(t, twoRegions), "eu"); again != eu {
			t.Fatalf("two builds of one policy: versions %s and %s", eu, again)
		}
	}
	if us := version(loadPolicy(t, twoRegions), "us"); us == eu {
		t.Errorf("eu and us clients get the same version %s for different priorities", eu)
	}
	if envoy := wantVersion(t, loadPolicy(t, twoRegions), "eu"); envoy == eu {
		t.Errorf("gRPC and Envoy resources share the version %s", eu)
	}
	if moved := version(movedAlpha(t), "eu"); moved == eu {
		t.Errorf("version %s unchanged after a policy change", eu)
	}
}

// The reference check catches a chain a gRPC client could not follow, and
// a resource no chain reaches.
func TestGRPCReferences(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(r *Resources)
		want   string
	}{
		{"intact", func(*Resources) {}, ""},
		{"route missing", func(r *Resources) { r.Routes = r.Routes[1:] }, `listener alpha refers to route configuration "alpha", which is not served`},
		{"cluster missing", func(r *Resources) {
			r.Clusters = slices.DeleteFunc(r.Clusters, func(c *clusterv3.Cluster) bool { return c.Name == "beta" })
		}, `route configuration beta refers to cluster "beta", which is not served`},
		{"load assignment missing", func(r *Resources) { r.Endpoints = r.Endpoints[1:] }, `cluster alpha refers to load assignment "alpha", which is not served`},
		{"aggregate child missing", func(r *Resources) {
			r.Clusters = slices.DeleteFunc(r.Clusters, func(c *clusterv3.Cluster) bool { return c.Name == "delta/0" })
		}, `cluster delta refers to cluster "delta/0", which is not served`},
		{"route unreferenced", func(r *Resources) {
			r.Routes = append(r.Routes, &routev3.RouteConfiguration{Name: "stray"})
		}, `route configuration "stray" is served but nothing refers to it`},
		{"load assignment unreferenced", func(r *Resources) {
			r.Endpoints = append(r.Endpoints, &endpointv3.ClusterLoadAssignment{ClusterName: "stray"})
		}, `load assignment "stray" is served but nothing refers to it`},
		{"listener not an API listener", func(r *Resources) {
			r.Listeners[0] = &listenerv3.Listener{Name: "alpha"}
		}, "listener alpha"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := loadPolicy(t, twoRegions)
			p.Backends = append(p.Backends, loadPolicy(t, manyHosts).Backends...)
			r, err := BuildGRPC(p, "eu")
			if err != nil {
				t.Fatal(err)
			}
			tc.mutate(r)
			err = r.checkGRPCReferences()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("check = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func wantGRPCVersion(t *testing.T, p *policy.Policy, region string) string {
	t.Helper()
	r, err := BuildGRPC(p, region)
	if err != nil {
		t.Fatal(err)
	}
	v, err := Version(r)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func names(r *discoveryv3.DiscoveryResponse) []string {
	var out []string
	for _, a := range r.Resources {
		var name string
		switch a.TypeUrl {
		case resourcev3.ListenerType:
			m := &listenerv3.Listener{}
			a.UnmarshalTo(m)
			name = m.Name
		case resourcev3.RouteType:
			m := &routev3.RouteConfiguration{}
			a.UnmarshalTo(m)
			name = m.Name
		case resourcev3.ClusterType:
			m := &clusterv3.Cluster{}
			a.UnmarshalTo(m)
			name = m.Name
		case resourcev3.EndpointType:
			m := &endpointv3.ClusterLoadAssignment{}
			a.UnmarshalTo(m)
			name = m.ClusterName
		}
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// A gRPC client subscribes by name, one channel's resources at a time, as
// gRPC-Go does: each request is answered with the named resources, at the
// version of the gRPC resources for the client's region.
func TestADSGRPCClientFollowsOneBackend(t *testing.T) {
	p := loadPolicy(t, twoRegions)
	a := newADSServer(t, p)
	s := a.sotw(t, grpcNode("grpc-1", "us"))
	version := wantGRPCVersion(t, p, "us")
	for _, step := range []struct {
		typeURL string
		want    []string
	}{
		{resourcev3.ListenerType, []string{"alpha"}},
		{resourcev3.RouteType, []string{"alpha"}},
		{resourcev3.ClusterType, []string{"alpha"}},
		{resourcev3.EndpointType, []string{"alpha"}},
	} {
		r := s.subscribe(step.typeURL, "alpha")
		if got := names(r); !slices.Equal(got, step.want) {
			t.Fatalf("%s: got %v, want %v", shortType(step.typeURL), got, step.want)
		}
		if r.VersionInfo != version {
			t.Errorf("%s at version %s, want %s", shortType(step.typeURL), r.VersionInfo, version)
		}
		if step.typeURL == resourcev3.EndpointType {
			es := decode(t, r.Resources, func() *endpointv3.ClusterLoadAssignment { return &endpointv3.ClusterLoadAssignment{} })
			prios := map[string]uint32{}
			for _, l := range es["alpha"].Endpoints {
				prios[l.Locality.Region] = l.Priority
			}
			if fmt.Sprint(prios) != fmt.Sprint(map[string]uint32{"eu": 1, "us": 0}) {
				t.Errorf("alpha's priorities for a us client: %v, want us 0, eu 1", prios)
			}
		}
		s.ack(r, "alpha")
	}
	if n := a.value(t, "detour_xds_snapshot_info", map[string]string{"node": "grpc-1", "version": version}); n != 1 {
		t.Errorf("snapshot_info{node=grpc-1,version=%s} = %v, want 1", version, n)
	}
	if !strings.Contains(a.log.String(), "client=grpc") {
		t.Errorf("the gRPC client is not logged as one:\n%s", a.log)
	}
}

// A name nobody serves does not hold up the names that are served (the
// snapshot cache in ADS mode answers only a request naming every resource
// of the type), and the answer says the unknown one does not exist.
func TestADSGRPCUnknownNameDoesNotStall(t *testing.T) {
	for _, tc := range []struct {
		name      string
		typeURL   string
		requested []string
		want      []string
	}{
		{"listener among known", resourcev3.ListenerType, []string{"nope", "beta"}, []string{"beta"}},
		{"listener alone", resourcev3.ListenerType, []string{"nope"}, nil},
		{"cluster among known", resourcev3.ClusterType, []string{"gamma", "nope"}, []string{"gamma"}},
		{"route among known", resourcev3.RouteType, []string{"alpha", "nope"}, []string{"alpha"}},
		{"endpoints among known", resourcev3.EndpointType, []string{"nope", "beta"}, []string{"beta"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newADSServer(t, loadPolicy(t, twoRegions))
			s := a.sotw(t, grpcNode("grpc-1", "eu"))
			s.send(&discoveryv3.DiscoveryRequest{TypeUrl: tc.typeURL, ResourceNames: tc.requested})
			got := make(chan *discoveryv3.DiscoveryResponse, 1)
			go func() {
				// Not s.expect: it would fail the test from this goroutine
				// once the stream is cancelled.
				r, err := s.stream.Recv()
				if err == nil {
					got <- r
				}
			}()
			select {
			case r := <-got:
				if r.TypeUrl != tc.typeURL {
					t.Fatalf("got %s, want %s", r.TypeUrl, tc.typeURL)
				}
				if n := names(r); !slices.Equal(n, tc.want) {
					t.Errorf("asked for %v, got %v, want %v", tc.requested, n, tc.want)
				}
			case <-time.After(3 * time.Second):
				t.Fatalf("asked for %v: no answer in 3s", tc.requested)
			}
		})
	}
}

// Envoys and gRPC clients on one server each get their own kind of
// resources: no API listener reaches an Envoy (it takes API listeners from
// its bootstrap only), no detour_ingress reaches gRPC (it would NACK the
// ext_proc filter), even when they ask for every listener.
func TestADSClientsGetTheirOwnResources(t *testing.T) {
	p := loadPolicy(t, twoRegions)
	for _, tc := range []struct {
		name          string
		node          *corev3.Node
		listeners     []string
		apiListeners  bool
		clusters      []string
		version       string
		wantConnected string
	}{
		{"envoy", &corev3.Node{Id: "envoy-1", UserAgentName: "envoy", Locality: &corev3.Locality{Region: "eu"}},
			[]string{ListenerName}, false, []string{"alpha", "beta", ExtProcCluster, "gamma"}, wantVersion(t, p, "eu"), "client=envoy"},
		{"grpc", grpcNode("grpc-1", "eu"),
			[]string{"alpha", "beta", "gamma"}, true, []string{"alpha", "beta", "gamma"}, wantGRPCVersion(t, p, "eu"), "client=grpc"},
		{"envoy by metadata", withMetadata(grpcNode("grpc-as-envoy", "eu"), "envoy"),
			[]string{ListenerName}, false, []string{"alpha", "beta", ExtProcCluster, "gamma"}, wantVersion(t, p, "eu"), "client=envoy"},
		{"grpc by metadata", withMetadata(&corev3.Node{Id: "other", Locality: &corev3.Locality{Region: "eu"}}, "grpc"),
			[]string{"alpha", "beta", "gamma"}, true, []string{"alpha", "beta", "gamma"}, wantGRPCVersion(t, p, "eu"), "client=grpc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newADSServer(t, p)
			s := a.sotw(t, tc.node)
			// Wildcard: everything of the type this client is given.
			l := s.subscribe(resourcev3.ListenerType)
			if got := names(l); !slices.Equal(got, tc.listeners) {
				t.Errorf("listeners %v, want %v", got, tc.listeners)
			}
			for _, m := range decode(t, l.Resources, func() *listenerv3.Listener { return &listenerv3.Listener{} }) {
				if (m.GetApiListener() != nil) != tc.apiListeners {
					t.Errorf("listener %s: api listener %v, want %v", m.Name, m.GetApiListener() != nil, tc.apiListeners)
				}
			}
			c := s.subscribe(resourcev3.ClusterType)
			if got := names(c); !slices.Equal(got, tc.clusters) {
				t.Errorf("clusters %v, want %v", got, tc.clusters)
			}
			if l.VersionInfo != tc.version || c.VersionInfo != tc.version {
				t.Errorf("versions %s, %s; want %s", l.VersionInfo, c.VersionInfo, tc.version)
			}
			if !strings.Contains(a.log.String(), tc.wantConnected) {
				t.Errorf("log lacks %s:\n%s", tc.wantConnected, a.log)
			}
		})
	}

	// One node id used by an Envoy and a gRPC client at once: two clients.
	a := newADSServer(t, p)
	e := a.sotw(t, &corev3.Node{Id: "shared", UserAgentName: "envoy"})
	g := a.sotw(t, grpcNode("shared", ""))
	if got := names(e.subscribe(resourcev3.ListenerType)); !slices.Equal(got, []string{ListenerName}) {
		t.Errorf("Envoy sharing its id with a gRPC client: listeners %v", got)
	}
	if got := names(g.subscribe(resourcev3.ListenerType, "alpha")); !slices.Equal(got, []string{"alpha"}) {
		t.Errorf("gRPC client sharing its id with an Envoy: listeners %v", got)
	}
}

// A misspelt client kind refuses the stream with the reason, rather than
// serving resources the client would reject.
func TestADSBadClientKindRefused(t *testing.T) {
	a := newADSServer(t, loadPolicy(t, twoRegions))
	s := a.sotw(t, withMetadata(grpcNode("grpc-1", ""), "proxyless"))
	s.send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ListenerType, ResourceNames: []string{"alpha"}})
	_, err := s.stream.Recv()
	if err == nil || !strings.Contains(err.Error(), "detour.client") {
		t.Fatalf("stream ended with %v, want a refusal naming detour.client", err)
	}
	if n := a.value(t, "detour_xds_snapshots_total", nil); n != 0 {
		t.Errorf("snapshots = %v for a client of unknown kind", n)
	}
}

// A policy change reaches a connected gRPC client as a new version of what
// it subscribed to, built for its region, and an Envoy of the same region
// gets its own new version.
func TestADSSetPolicyPushesToGRPCClient(t *testing.T) {
	a := newADSServer(t, loadPolicy(t, twoRegions))
	g := a.sotw(t, grpcNode("grpc-1", "eu"))
	for _, typeURL := range []string{resourcev3.ListenerType, resourcev3.RouteType, resourcev3.ClusterType, resourcev3.EndpointType} {
		g.ack(g.subscribe(typeURL, "alpha"), "alpha")
	}
	e := a.sotw(t, envoyNode("envoy-1", "eu"))
	e.sync()

	np := movedAlpha(t)
	if err := a.srv.SetPolicy(context.Background(), np); err != nil {
		t.Fatal(err)
	}
	r := g.expect(resourcev3.EndpointType)
	if want := wantGRPCVersion(t, np, "eu"); r.VersionInfo != want {
		t.Errorf("gRPC client: endpoints at version %s, want %s", r.VersionInfo, want)
	}
	es := decode(t, r.Resources, func() *endpointv3.ClusterLoadAssignment { return &endpointv3.ClusterLoadAssignment{} })
	if got := addresses(es["alpha"]); !slices.Equal(got, []string{"10.0.0.9:8001", "10.0.1.1:8001"}) {
		t.Errorf("gRPC client: alpha's endpoints %v after the change", got)
	}
	if r := e.expect(resourcev3.EndpointType); r.VersionInfo != wantVersion(t, np, "eu") {
		t.Errorf("Envoy: endpoints at version %s, want %s", r.VersionInfo, wantVersion(t, np, "eu"))
	}
}

// A gRPC client's resources for a 1,000-backend policy (two regions each):
// four resources per backend, built once per region like an Envoy's.
// Measured: ~35 ms/op, 10.5 MB and 116k allocs/op (2-vCPU AMD EPYC, go1.26;
// BuildFor ~34 ms in the same run).
func BenchmarkBuildGRPC1000Backends(b *testing.B) {
	p := policyWithBackends(b, 1000)
	b.ReportAllocs()
	for b.Loop() {
		r, err := BuildGRPC(p, "eu")
		if err != nil {
			b.Fatal(err)
		}
		if len(r.Listeners) != 1000 || len(r.Routes) != 1000 || len(r.Clusters) != 1000 || len(r.Endpoints) != 1000 {
			b.Fatalf("%d listeners, %d routes, %d clusters, %d load assignments", len(r.Listeners), len(r.Routes), len(r.Clusters), len(r.Endpoints))
		}
	}
}
