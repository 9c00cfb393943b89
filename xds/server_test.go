package xds

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/detourhq/detour/policy"
)

// twoRegions has IP backends (served over EDS), one of them in two
// regions, and a host-name backend (STRICT_DNS, endpoints inline).
const twoRegions = `version: 1
backends:
  - name: alpha
    model: m-alpha
    endpoints:
      - {address: "10.0.0.1:8001", region: eu}
      - {address: "10.0.1.1:8001", region: us}
    capabilities: {context_window: 8192}
  - name: beta
    model: m-beta
    endpoints:
      - {address: "10.0.0.2:8002", region: eu}
    capabilities: {context_window: 8192}
  - name: gamma
    model: m-gamma
    endpoints:
      - {address: "gamma.internal:8003", region: us}
    capabilities: {context_window: 8192}
routes:
  - name: auto
extproc:
  listen: 127.0.0.1:9002
`

// edsBackends are the backends of twoRegions whose endpoints travel over EDS.
var edsBackends = []string{"alpha", "beta"}

func loadPolicy(t testing.TB, src string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse("test", []byte(src))
	if err != nil {
		t.Fatalf("parse policy: %v", err)
	}
	return p
}

// movedAlpha is twoRegions with alpha's eu endpoint at another address:
// only alpha's load assignment changes.
func movedAlpha(t testing.TB) *policy.Policy {
	return loadPolicy(t, strings.Replace(twoRegions, "10.0.0.1:8001", "10.0.0.9:8001", 1))
}

// adsServer is an xds.Server behind a real gRPC server on an in-memory
// listener, with its metrics registry and its log.
type adsServer struct {
	srv  *Server
	reg  *prometheus.Registry
	log  *syncBuffer
	conn *grpc.ClientConn
	ads  discoveryv3.AggregatedDiscoveryServiceClient
}

func newADSServer(t *testing.T, p *policy.Policy) *adsServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a := &adsServer{reg: prometheus.NewRegistry(), log: &syncBuffer{}}
	a.srv = NewServer(ctx, p, slog.New(slog.NewTextHandler(a.log, &slog.HandlerOptions{Level: slog.LevelInfo})), NewMetrics(a.reg))
	lis := bufconn.Listen(1 << 20)
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, a.srv.XDS())
	served := make(chan struct{})
	go func() { defer close(served); g.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		g.Stop()
		<-served
		if t.Failed() {
			t.Logf("server log:\n%s", a.log)
		}
	})
	a.conn, a.ads = conn, discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	return a
}

// value reads one series of the registry given to NewMetrics (0 if absent).
func (a *adsServer) value(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := a.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue series
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

// eventually polls cond until it holds (server-side effects of a message
// the client sent happen asynchronously).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sotwStream is one state-of-the-world ADS stream, used the way Envoy uses
// it: the node on the first request, one subscription per type, every
// response ACKed or NACKed with its nonce.
type sotwStream struct {
	t      *testing.T
	stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	cancel context.CancelFunc
	node   *corev3.Node
	sent   bool
	// pending holds responses read while waiting for another type.
	pending []*discoveryv3.DiscoveryResponse
}

func (a *adsServer) sotw(t *testing.T, node *corev3.Node) *sotwStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	st, err := a.ads.StreamAggregatedResources(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(cancel)
	return &sotwStream{t: t, stream: st, cancel: cancel, node: node}
}

func envoyNode(id, region string) *corev3.Node {
	n := &corev3.Node{Id: id, Cluster: "test"}
	if region != "" {
		n.Locality = &corev3.Locality{Region: region}
	}
	return n
}

func (s *sotwStream) send(r *discoveryv3.DiscoveryRequest) {
	s.t.Helper()
	if !s.sent {
		r.Node, s.sent = s.node, true
	}
	if err := s.stream.Send(r); err != nil {
		s.t.Fatalf("send %s: %v", r.TypeUrl, err)
	}
}

// subscribe asks for typeURL (names empty: all of them) and waits for the
// answer.
func (s *sotwStream) subscribe(typeURL string, names ...string) *discoveryv3.DiscoveryResponse {
	s.t.Helper()
	s.send(&discoveryv3.DiscoveryRequest{TypeUrl: typeURL, ResourceNames: names})
	return s.expect(typeURL)
}

// ack accepts resp, as Envoy does once it has applied it.
func (s *sotwStream) ack(resp *discoveryv3.DiscoveryResponse, names ...string) {
	s.t.Helper()
	s.send(&discoveryv3.DiscoveryRequest{TypeUrl: resp.TypeUrl, ResourceNames: names, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce})
}

// expect returns the next response of typeURL.
func (s *sotwStream) expect(typeURL string) *discoveryv3.DiscoveryResponse {
	s.t.Helper()
	for i, r := range s.pending {
		if r.TypeUrl == typeURL {
			s.pending = slices.Delete(s.pending, i, i+1)
			return r
		}
	}
	for {
		r, err := s.stream.Recv()
		if err != nil {
			s.t.Fatalf("waiting for %s: %v", typeURL, err)
		}
		if r.TypeUrl == typeURL {
			return r
		}
		s.pending = append(s.pending, r)
	}
}

// sync takes every type the way Envoy does (CDS, EDS, LDS, RDS), ACKing
// each, and returns the responses by type.
func (s *sotwStream) sync() map[string]*discoveryv3.DiscoveryResponse {
	s.t.Helper()
	out := map[string]*discoveryv3.DiscoveryResponse{}
	for _, sub := range []struct {
		typeURL string
		names   []string
	}{
		{resourcev3.ClusterType, nil},
		{resourcev3.EndpointType, edsBackends},
		{resourcev3.ListenerType, nil},
		{resourcev3.RouteType, []string{RouteConfigName}},
	} {
		r := s.subscribe(sub.typeURL, sub.names...)
		s.ack(r, sub.names...)
		out[sub.typeURL] = r
	}
	return out
}

func decode[T proto.Message](t *testing.T, resources []*anypb.Any, newT func() T) map[string]T {
	t.Helper()
	out := map[string]T{}
	for _, a := range resources {
		m := newT()
		if err := a.UnmarshalTo(m); err != nil {
			t.Fatalf("resource of type %s: %v", a.TypeUrl, err)
		}
		name := ""
		switch v := any(m).(type) {
		case *clusterv3.Cluster:
			name = v.Name
		case *endpointv3.ClusterLoadAssignment:
			name = v.ClusterName
		case *listenerv3.Listener:
			name = v.Name
		case *routev3.RouteConfiguration:
			name = v.Name
		}
		out[name] = m
	}
	return out
}

func wantVersion(t *testing.T, p *policy.Policy, region string) string {
	t.Helper()
	r, err := BuildFor(p, Options{Dynamic: true, Region: region})
	if err != nil {
		t.Fatal(err)
	}
	v, err := Version(r)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func sortedKeys[T any](m map[string]T) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// A node the server has never seen gets a snapshot on its first request,
// and the four types it takes over ADS are consistent: every EDS cluster
// has its load assignment, the listener's RDS name is served.
func TestADSNewNodeGetsConsistentSnapshot(t *testing.T) {
	p := loadPolicy(t, twoRegions)
	a := newADSServer(t, p)
	if n := a.value(t, "detour_xds_snapshots_total", nil); n != 0 {
		t.Fatalf("snapshots before any Envoy: %v", n)
	}
	s := a.sotw(t, envoyNode("envoy-1", ""))
	got := s.sync()
	version := wantVersion(t, p, "")

	for _, tc := range []struct {
		typeURL, short string
		check          func(t *testing.T, r *discoveryv3.DiscoveryResponse)
	}{
		{resourcev3.ClusterType, "cluster", func(t *testing.T, r *discoveryv3.DiscoveryResponse) {
			cs := decode(t, r.Resources, func() *clusterv3.Cluster { return &clusterv3.Cluster{} })
			if want := []string{ExtProcCluster, "alpha", "beta", "gamma"}; !slices.Equal(sortedKeys(cs), sortedSlice(want)) {
				t.Errorf("clusters %v, want %v (the processor and one per backend)", sortedKeys(cs), want)
			}
			for _, name := range edsBackends {
				c := cs[name]
				if c.GetType() != clusterv3.Cluster_EDS || c.GetEdsClusterConfig().GetEdsConfig().GetAds() == nil || c.GetEdsClusterConfig().GetServiceName() != name || c.LoadAssignment != nil {
					t.Errorf("%s: type %v eds %v, want EDS over ADS named %s, nothing inline", name, c.GetType(), c.GetEdsClusterConfig(), name)
				}
			}
			if g := cs["gamma"]; g.GetType() != clusterv3.Cluster_STRICT_DNS || len(g.GetLoadAssignment().GetEndpoints()) == 0 {
				t.Errorf("gamma (a host name): type %v, want STRICT_DNS with its endpoints inline", g.GetType())
			}
		}},
		{resourcev3.EndpointType, "endpoint", func(t *testing.T, r *discoveryv3.DiscoveryResponse) {
			es := decode(t, r.Resources, func() *endpointv3.ClusterLoadAssignment { return &endpointv3.ClusterLoadAssignment{} })
			if !slices.Equal(sortedKeys(es), edsBackends) {
				t.Fatalf("load assignments %v, want %v (the IP backends)", sortedKeys(es), edsBackends)
			}
			if got, want := addresses(es["alpha"]), []string{"10.0.0.1:8001", "10.0.1.1:8001"}; !slices.Equal(got, want) {
				t.Errorf("alpha's endpoints %v, want %v", got, want)
			}
			if got, want := addresses(es["beta"]), []string{"10.0.0.2:8002"}; !slices.Equal(got, want) {
				t.Errorf("beta's endpoints %v, want %v", got, want)
			}
		}},
		{resourcev3.ListenerType, "listener", func(t *testing.T, r *discoveryv3.DiscoveryResponse) {
			ls := decode(t, r.Resources, func() *listenerv3.Listener { return &listenerv3.Listener{} })
			l, ok := ls[ListenerName]
			if len(ls) != 1 || !ok {
				t.Fatalf("listeners %v, want %s", sortedKeys(ls), ListenerName)
			}
			hcm := &hcmv3.HttpConnectionManager{}
			if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
				t.Fatal(err)
			}
			if rds := hcm.GetRds(); rds.GetRouteConfigName() != RouteConfigName || rds.GetConfigSource().GetAds() == nil {
				t.Errorf("route specifier %v, want RDS %s over ADS", hcm.GetRouteSpecifier(), RouteConfigName)
			}
		}},
		{resourcev3.RouteType, "route", func(t *testing.T, r *discoveryv3.DiscoveryResponse) {
			rs := decode(t, r.Resources, func() *routev3.RouteConfiguration { return &routev3.RouteConfiguration{} })
			if len(rs) != 1 || rs[RouteConfigName] == nil {
				t.Fatalf("route configurations %v, want %s", sortedKeys(rs), RouteConfigName)
			}
		}},
	} {
		t.Run(tc.short, func(t *testing.T) {
			r := got[tc.typeURL]
			if r.VersionInfo != version {
				t.Errorf("version %q, want %q (the digest of the node's resources)", r.VersionInfo, version)
			}
			if r.Nonce == "" {
				t.Error("response without a nonce")
			}
			tc.check(t, r)
			if n := a.value(t, "detour_xds_pushes_total", map[string]string{"type": tc.short}); n != 1 {
				t.Errorf("pushes{type=%s} = %v, want 1", tc.short, n)
			}
		})
	}
	if n := a.value(t, "detour_xds_snapshots_total", nil); n != 1 {
		t.Errorf("snapshots = %v, want 1 (one new node)", n)
	}
	if n := a.value(t, "detour_xds_snapshot_info", map[string]string{"node": "envoy-1", "version": version}); n != 1 {
		t.Errorf("snapshot_info{node=envoy-1,version=%s} = %v, want 1", version, n)
	}
	if n := testutil.CollectAndCount(a.srv.metrics.BuildTime); n != 1 {
		t.Errorf("build time series %d, want 1", n)
	}
}

func sortedSlice(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func addresses(cla *endpointv3.ClusterLoadAssignment) []string {
	var out []string
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			out = append(out, net.JoinHostPort(sa.GetAddress(), fmt.Sprint(sa.GetPortValue())))
		}
	}
	slices.Sort(out)
	return out
}

// Each Envoy gets the endpoints in its own region at priority 0 and the
// others at 1; an Envoy in a region no endpoint is in, or in none, gets
// all at 0. The region is part of the version.
func TestADSRegionPriorities(t *testing.T) {
	p := loadPolicy(t, twoRegions)
	a := newADSServer(t, p)
	versions := map[string]string{}
	for _, tc := range []struct {
		region string
		want   map[string]uint32 // alpha's locality region → priority
	}{
		{"eu", map[string]uint32{"eu": 0, "us": 1}},
		{"us", map[string]uint32{"eu": 1, "us": 0}},
		{"ap", map[string]uint32{"eu": 0, "us": 0}},
		{"", map[string]uint32{"eu": 0, "us": 0}},
	} {
		t.Run("region="+tc.region, func(t *testing.T) {
			s := a.sotw(t, envoyNode("envoy-"+tc.region, tc.region))
			r := s.subscribe(resourcev3.EndpointType, edsBackends...)
			es := decode(t, r.Resources, func() *endpointv3.ClusterLoadAssignment { return &endpointv3.ClusterLoadAssignment{} })
			got := map[string]uint32{}
			for _, l := range es["alpha"].GetEndpoints() {
				got[l.GetLocality().GetRegion()] = l.GetPriority()
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("alpha's priorities %v, want %v", got, tc.want)
			}
			// beta is only in eu: at 0 everywhere (priorities start at 0).
			for _, l := range es["beta"].GetEndpoints() {
				if l.GetPriority() != 0 {
					t.Errorf("beta's %s at priority %d, want 0", l.GetLocality().GetRegion(), l.GetPriority())
				}
			}
			if want := wantVersion(t, p, tc.region); r.VersionInfo != want {
				t.Errorf("version %s, want %s", r.VersionInfo, want)
			}
			versions[tc.region] = r.VersionInfo
		})
	}
	if versions["eu"] == versions["us"] {
		t.Errorf("eu and us Envoys got the same version %s for different resources", versions["eu"])
	}
	// Same resources (every region equally far): same version.
	if versions["ap"] != versions[""] {
		t.Errorf("ap %s and no region %s differ though their resources are the same", versions["ap"], versions[""])
	}
}

// Two replicas of the control plane, each with its own parse of the same
// policy, give an Envoy of one region the same version: an Envoy moving
// between them gets nothing new. A changed policy gives another version,
// an unchanged one keeps it.
func TestADSVersionAgreesAcrossReplicas(t *testing.T) {
	first, second := newADSServer(t, loadPolicy(t, twoRegions)), newADSServer(t, loadPolicy(t, twoRegions))
	get := func(a *adsServer, node string) map[string]string {
		s := a.sotw(t, envoyNode(node, "eu"))
		out := map[string]string{}
		for typeURL, r := range s.sync() {
			out[typeURL] = r.VersionInfo
		}
		s.cancel()
		return out
	}
	v1, v2 := get(first, "envoy-a"), get(second, "envoy-b")
	if fmt.Sprint(v1) != fmt.Sprint(v2) {
		t.Fatalf("replicas disagree:\n%v\n%v", v1, v2)
	}
	before := v1[resourcev3.ClusterType]
	for typeURL, v := range v1 {
		if v != before {
			t.Errorf("%s at version %s, clusters at %s: one snapshot, one version", typeURL, v, before)
		}
	}

	// An unchanged policy (parsed again) keeps the version.
	if err := first.srv.SetPolicy(context.Background(), loadPolicy(t, twoRegions)); err != nil {
		t.Fatal(err)
	}
	if n := first.value(t, "detour_xds_snapshot_info", map[string]string{"node": "envoy-a", "version": before}); n != 1 {
		t.Errorf("after an unchanged policy: snapshot_info{version=%s} = %v, want 1", before, n)
	}
	// A change: a new version on both replicas, the same.
	for _, a := range []*adsServer{first, second} {
		if err := a.srv.SetPolicy(context.Background(), movedAlpha(t)); err != nil {
			t.Fatal(err)
		}
	}
	w1, w2 := get(first, "envoy-a"), get(second, "envoy-b")
	if w1[resourcev3.ClusterType] == before {
		t.Errorf("version %s unchanged after a policy change", before)
	}
	if fmt.Sprint(w1) != fmt.Sprint(w2) {
		t.Errorf("after the same change the replicas disagree:\n%v\n%v", w1, w2)
	}
	if want := wantVersion(t, movedAlpha(t), "eu"); w1[resourcev3.ClusterType] != want {
		t.Errorf("version %s, want %s", w1[resourcev3.ClusterType], want)
	}
}

// SetPolicy reaches an Envoy already connected: every type it subscribed
// to comes again at the new version, on the same stream.
func TestADSSetPolicyPushesToConnectedStream(t *testing.T) {
	a := newADSServer(t, loadPolicy(t, twoRegions))
	s := a.sotw(t, envoyNode("envoy-1", "eu"))
	old := s.sync()
	oldVersion := old[resourcev3.ClusterType].VersionInfo

	np := movedAlpha(t)
	if err := a.srv.SetPolicy(context.Background(), np); err != nil {
		t.Fatal(err)
	}
	want := wantVersion(t, np, "eu")
	for _, typeURL := range []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType} {
		r := s.expect(typeURL)
		if r.VersionInfo != want || r.VersionInfo == oldVersion {
			t.Errorf("%s pushed at version %s, want %s (was %s)", typeURL, r.VersionInfo, want, oldVersion)
		}
		if r.Nonce == old[typeURL].Nonce {
			t.Errorf("%s pushed with the old nonce", typeURL)
		}
		if typeURL == resourcev3.EndpointType {
			es := decode(t, r.Resources, func() *endpointv3.ClusterLoadAssignment { return &endpointv3.ClusterLoadAssignment{} })
			if got := addresses(es["alpha"]); !slices.Contains(got, "10.0.0.9:8001") {
				t.Errorf("alpha's endpoints %v after the change, want 10.0.0.9:8001", got)
			}
		}
	}
	if n := a.value(t, "detour_xds_snapshot_info", map[string]string{"node": "envoy-1", "version": want}); n != 1 {
		t.Errorf("snapshot_info{version=%s} = %v, want 1", want, n)
	}
	if n := a.value(t, "detour_xds_snapshot_info", map[string]string{"node": "envoy-1", "version": oldVersion}); n != 0 {
		t.Errorf("snapshot_info still has the old version %s", oldVersion)
	}
	if n := a.value(t, "detour_xds_snapshots_total", nil); n != 2 {
		t.Errorf("snapshots = %v, want 2 (first request, policy change)", n)
	}
}

// An update Envoy rejects (error_detail with the response's nonce) is
// counted by type and logged with Envoy's reason.
func TestADSNACKCounted(t *testing.T) {
	for _, tc := range []struct {
		short, typeURL string
		names          []string
	}{
		{"cluster", resourcev3.ClusterType, nil},
		{"endpoint", resourcev3.EndpointType, edsBackends},
		{"listener", resourcev3.ListenerType, nil},
		{"route", resourcev3.RouteType, []string{RouteConfigName}},
	} {
		t.Run(tc.short, func(t *testing.T) {
			t.Parallel()
			a := newADSServer(t, loadPolicy(t, twoRegions))
			s := a.sotw(t, envoyNode("envoy-"+tc.short, ""))
			r := s.subscribe(tc.typeURL, tc.names...)
			reason := "test rejects the " + tc.short + " update"
			s.send(&discoveryv3.DiscoveryRequest{
				TypeUrl: tc.typeURL, ResourceNames: tc.names, ResponseNonce: r.Nonce,
				ErrorDetail: &statuspb.Status{Code: int32(codes.InvalidArgument), Message: reason},
			})
			eventually(t, "the NACK is counted", func() bool {
				return a.value(t, "detour_xds_nacks_total", map[string]string{"type": tc.short}) == 1
			})
			if n := testutil.CollectAndCount(a.srv.metrics.Nacks); n != 1 {
				t.Errorf("nacks_total has %d series, want 1 (type %s only)", n, tc.short)
			}
			if n, err := testutil.GatherAndCount(a.reg, "detour_xds_nacks_total"); err != nil || n != 1 {
				t.Errorf("registry: %d nacks series (%v), want 1", n, err)
			}
			log := a.log.String()
			if !strings.Contains(log, reason) || !strings.Contains(log, "envoy-"+tc.short) {
				t.Errorf("the rejection is not logged with its reason and node:\n%s", log)
			}
			// The stream lives on: an ACK afterwards is not a NACK.
			s.ack(r, tc.names...)
			time.Sleep(20 * time.Millisecond)
			if n := a.value(t, "detour_xds_nacks_total", map[string]string{"type": tc.short}); n != 1 {
				t.Errorf("after an ACK nacks = %v, want still 1", n)
			}
		})
	}
}

// The connected-streams gauge follows SotW and delta streams opening and
// closing.
func TestADSConnectedStreamsGauge(t *testing.T) {
	a := newADSServer(t, loadPolicy(t, twoRegions))
	connected := func() float64 { return a.value(t, "detour_xds_connected_streams", nil) }
	if n := connected(); n != 0 {
		t.Fatalf("connected before any stream: %v", n)
	}
	s1 := a.sotw(t, envoyNode("envoy-1", ""))
	s1.subscribe(resourcev3.ClusterType)
	s2 := a.sotw(t, envoyNode("envoy-2", "eu"))
	s2.subscribe(resourcev3.ClusterType)
	d := a.delta(t, envoyNode("envoy-3", "us"))
	d.subscribe(resourcev3.ClusterType)
	if n := connected(); n != 3 {
		t.Errorf("connected = %v with 3 open streams", n)
	}
	// Envoy going away cleanly (half-close) and abruptly (cancel).
	if err := s2.stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a half-closed stream leaves the gauge", func() bool { return connected() == 2 })
	s1.cancel()
	d.cancel()
	eventually(t, "cancelled streams leave the gauge", func() bool { return connected() == 0 })
}

// A request without a node id is refused: the server cannot build for an
// Envoy it cannot name, and says so in the stream's status.
func TestADSRequestWithoutNodeRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		node  *corev3.Node
		delta bool
	}{
		{"sotw/no node", nil, false},
		{"sotw/empty id", &corev3.Node{Cluster: "c", Locality: &corev3.Locality{Region: "eu"}}, false},
		{"delta/no node", nil, true},
		{"delta/empty id", &corev3.Node{Cluster: "c"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newADSServer(t, loadPolicy(t, twoRegions))
			var err error
			if tc.delta {
				d := a.delta(t, tc.node)
				d.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType})
				_, err = d.stream.Recv()
			} else {
				s := a.sotw(t, tc.node)
				s.send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType})
				_, err = s.stream.Recv()
			}
			if err == nil || !strings.Contains(err.Error(), "without a node id") {
				t.Fatalf("stream ended with %v, want a refusal naming the missing node id", err)
			}
			if n := a.value(t, "detour_xds_snapshots_total", nil); n != 0 {
				t.Errorf("snapshots = %v for a node without an id", n)
			}
			eventually(t, "the refused stream leaves the gauge", func() bool {
				return a.value(t, "detour_xds_connected_streams", nil) == 0
			})
		})
	}
}

// deltaStream is one incremental ADS stream.
type deltaStream struct {
	t      *testing.T
	stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	cancel context.CancelFunc
	node   *corev3.Node
	sent   bool
}

func (a *adsServer) delta(t *testing.T, node *corev3.Node) *deltaStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	st, err := a.ads.DeltaAggregatedResources(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(cancel)
	return &deltaStream{t: t, stream: st, cancel: cancel, node: node}
}

func (d *deltaStream) send(r *discoveryv3.DeltaDiscoveryRequest) {
	d.t.Helper()
	if !d.sent {
		r.Node, d.sent = d.node, true
	}
	if err := d.stream.Send(r); err != nil {
		d.t.Fatalf("send %s: %v", r.TypeUrl, err)
	}
}

// subscribe asks for names of typeURL (none: all), waits for the answer
// and ACKs it.
func (d *deltaStream) subscribe(typeURL string, names ...string) *discoveryv3.DeltaDiscoveryResponse {
	d.t.Helper()
	d.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL, ResourceNamesSubscribe: names})
	r := d.recv(typeURL)
	d.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL, ResponseNonce: r.Nonce})
	return r
}

func (d *deltaStream) recv(typeURL string) *discoveryv3.DeltaDiscoveryResponse {
	d.t.Helper()
	r, err := d.stream.Recv()
	if err != nil {
		d.t.Fatalf("waiting for %s: %v", typeURL, err)
	}
	if r.TypeUrl != typeURL {
		d.t.Fatalf("got %s, want %s", r.TypeUrl, typeURL)
	}
	return r
}

func deltaNames(r *discoveryv3.DeltaDiscoveryResponse) []string {
	var out []string
	for _, res := range r.Resources {
		if res.Version == "" || res.Resource == nil {
			return []string{"(" + res.Name + " without version or body)"}
		}
		out = append(out, res.Name)
	}
	slices.Sort(out)
	return out
}

// Delta ADS serves the same resources, and a policy change sends only the
// resources that changed.
func TestDeltaADS(t *testing.T) {
	a := newADSServer(t, loadPolicy(t, twoRegions))
	d := a.delta(t, envoyNode("envoy-delta", "eu"))
	for _, tc := range []struct {
		typeURL string
		names   []string
		want    []string
	}{
		{resourcev3.ClusterType, nil, sortedSlice([]string{ExtProcCluster, "alpha", "beta", "gamma"})},
		{resourcev3.EndpointType, edsBackends, edsBackends},
		{resourcev3.ListenerType, nil, []string{ListenerName}},
		{resourcev3.RouteType, []string{RouteConfigName}, []string{RouteConfigName}},
	} {
		r := d.subscribe(tc.typeURL, tc.names...)
		if got := deltaNames(r); !slices.Equal(got, tc.want) {
			t.Errorf("%s: resources %v, want %v", tc.typeURL, got, tc.want)
		}
	}
	if n := a.value(t, "detour_xds_snapshots_total", nil); n != 1 {
		t.Errorf("snapshots = %v, want 1", n)
	}
	if n := a.value(t, "detour_xds_pushes_total", map[string]string{"type": "endpoint"}); n != 1 {
		t.Errorf("pushes{endpoint} = %v, want 1", n)
	}

	// Only alpha's load assignment changes: only it is sent.
	if err := a.srv.SetPolicy(context.Background(), movedAlpha(t)); err != nil {
		t.Fatal(err)
	}
	r := d.recv(resourcev3.EndpointType)
	if got := deltaNames(r); !slices.Equal(got, []string{"alpha"}) {
		t.Fatalf("after moving alpha's endpoint, delta sent %v, want [alpha]", got)
	}
	cla := &endpointv3.ClusterLoadAssignment{}
	if err := r.Resources[0].Resource.UnmarshalTo(cla); err != nil {
		t.Fatal(err)
	}
	if got := addresses(cla); !slices.Contains(got, "10.0.0.9:8001") {
		t.Errorf("alpha's endpoints %v, want 10.0.0.9:8001", got)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// policyWithBackends generates a valid policy of n IP backends, each in two
// regions.
func policyWithBackends(tb testing.TB, n int) *policy.Policy {
	tb.Helper()
	p := &policy.Policy{Version: 1, Routes: []policy.Route{{Name: "auto"}}}
	for i := range n {
		p.Backends = append(p.Backends, policy.Backend{
			Name:  fmt.Sprintf("backend-%04d", i),
			Model: fmt.Sprintf("model-%d", i%20),
			Endpoints: []policy.Endpoint{
				{Address: fmt.Sprintf("10.%d.%d.1:8000", i/256, i%256), Region: "eu"},
				{Address: fmt.Sprintf("10.%d.%d.2:8000", i/256, i%256), Region: "us"},
			},
			Capabilities: policy.Capabilities{ContextWindow: 8192, Tools: true},
			Price:        policy.Price{Input: float64(i%7) / 10, Output: float64(i%5) / 10},
		})
	}
	p.ApplyDefaults()
	if probs := p.Validate(); len(probs) > 0 {
		tb.Fatalf("generated policy is invalid: %v", probs)
	}
	return p
}

// One Envoy's resources for a 1,000-backend policy (two regions each).
// Measured: ~28.5 ms/op, 8.2 MB and 112k allocs/op (2-vCPU AMD EPYC, go1.26).
func BenchmarkBuildFor1000Backends(b *testing.B) {
	p := policyWithBackends(b, 1000)
	b.ReportAllocs()
	for b.Loop() {
		r, err := BuildFor(p, Options{Dynamic: true, Region: "eu"})
		if err != nil {
			b.Fatal(err)
		}
		if len(r.Clusters) != 1001 || len(r.Endpoints) != 1000 {
			b.Fatalf("%d clusters, %d load assignments", len(r.Clusters), len(r.Endpoints))
		}
	}
}

// What the server does per node and policy change: build, digest, snapshot,
// consistency check. Measured: ~47 ms/op, 10.3 MB and 142k allocs/op (same
// machine); SetPolicy pays it once per known node, under the server's lock.
func BenchmarkSnapshot1000Backends(b *testing.B) {
	p := policyWithBackends(b, 1000)
	s := &Server{metrics: NewMetrics(prometheus.NewRegistry())}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.build(p, nodeKey{"envoy", ClientEnvoy}, "eu"); err != nil {
			b.Fatal(err)
		}
	}
}

// Envoy sends its node on a stream's first message only; the server must
// remember it for the stream's life, whatever other streams (SotW or
// delta, which go-control-plane numbers separately) come and go.
func TestADSNodeRememberedPerStream(t *testing.T) {
	a := newADSServer(t, loadPolicy(t, twoRegions))
	d := a.delta(t, envoyNode("envoy-delta", "eu"))
	d.subscribe(resourcev3.ClusterType)
	s := a.sotw(t, envoyNode("envoy-sotw", "us"))
	s.sync()
	// The SotW stream goes away.
	s.cancel()
	eventually(t, "the SotW stream closes", func() bool { return a.value(t, "detour_xds_connected_streams", nil) == 1 })
	// The delta stream's next request carries no node, as Envoy's do.
	r := d.subscribe(resourcev3.EndpointType, edsBackends...)
	if got := deltaNames(r); !slices.Equal(got, edsBackends) {
		t.Errorf("endpoints %v, want %v", got, edsBackends)
	}
	// And SotW: later requests without a node on a live stream.
	s2 := a.sotw(t, envoyNode("envoy-sotw-2", "us"))
	s2.sync()
	if strings.Contains(a.log.String(), "without a node id") {
		t.Errorf("a request of a known stream was refused:\n%s", a.log)
	}
}

// After a NACK the server waits for a new version instead of sending the
// rejected one again: the client would only reject it again, in a loop as
// fast as the network allows (go-control-plane sends a version differing
// from the request's version_info at once, and a NACK's version_info is
// the last version accepted; envoyproxy/go-control-plane#962). Envoy and
// gRPC both NACK this way.
func TestADSNACKedVersionNotResent(t *testing.T) {
	for _, tc := range []struct {
		name string
		// update: the rejected version is a policy change after an
		// accepted one (Envoy's NACK carries the accepted version).
		update bool
	}{
		{"first version rejected", false},
		{"update rejected", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a := newADSServer(t, loadPolicy(t, twoRegions))
			s := a.sotw(t, envoyNode("envoy-1", "eu"))
			r := s.subscribe(resourcev3.ClusterType)
			accepted := ""
			if tc.update {
				s.ack(r)
				accepted = r.VersionInfo
				if err := a.srv.SetPolicy(context.Background(), movedAlpha(t)); err != nil {
					t.Fatal(err)
				}
				r = s.expect(resourcev3.ClusterType)
			}
			s.send(&discoveryv3.DiscoveryRequest{
				TypeUrl: resourcev3.ClusterType, VersionInfo: accepted, ResponseNonce: r.Nonce,
				ErrorDetail: &statuspb.Status{Code: int32(codes.InvalidArgument), Message: "rejected"},
			})
			responses := make(chan *discoveryv3.DiscoveryResponse, 100)
			go func() {
				defer close(responses)
				for {
					resp, err := s.stream.Recv()
					if err != nil {
						return
					}
					responses <- resp
				}
			}()
			select {
			case resp := <-responses:
				time.Sleep(100 * time.Millisecond)
				t.Errorf("the rejected version %s was sent again at once (and %d more times in 100 ms; nacks_total %v)",
					resp.VersionInfo, len(responses), a.value(t, "detour_xds_nacks_total", map[string]string{"type": "cluster"}))
				return
			case <-time.After(300 * time.Millisecond):
			}
			// A new version still reaches the client.
			np := movedAlpha(t)
			np.Retry.Attempts++
			if err := a.srv.SetPolicy(context.Background(), np); err != nil {
				t.Fatal(err)
			}
			select {
			case resp := <-responses:
				if want := wantVersion(t, np, "eu"); resp.GetVersionInfo() != want {
					t.Errorf("after a NACK, then a change: version %s, want %s", resp.GetVersionInfo(), want)
				}
			case <-time.After(5 * time.Second):
				t.Error("after a NACK, a policy change was not sent")
			}
		})
	}
}

// Delta: a NACKed resource is not sent again until it changes.
func TestDeltaADSNACKedNotResent(t *testing.T) {
	a := newADSServer(t, loadPolicy(t, twoRegions))
	d := a.delta(t, envoyNode("envoy-delta", "eu"))
	d.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: edsBackends})
	r := d.recv(resourcev3.EndpointType)
	d.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: r.Nonce,
		ErrorDetail: &statuspb.Status{Code: int32(codes.InvalidArgument), Message: "rejected"}})
	eventually(t, "the NACK is counted", func() bool {
		return a.value(t, "detour_xds_nacks_total", map[string]string{"type": "endpoint"}) == 1
	})
	responses := make(chan *discoveryv3.DeltaDiscoveryResponse, 100)
	go func() {
		defer close(responses)
		for {
			resp, err := d.stream.Recv()
			if err != nil {
				return
			}
			responses <- resp
		}
	}()
	select {
	case resp := <-responses:
		t.Fatalf("the rejected resources %v were sent again at once", deltaNames(resp))
	case <-time.After(300 * time.Millisecond):
	}
	if err := a.srv.SetPolicy(context.Background(), movedAlpha(t)); err != nil {
		t.Fatal(err)
	}
	select {
	case resp := <-responses:
		if got := deltaNames(resp); !slices.Equal(got, []string{"alpha"}) {
			t.Errorf("after the change: %v, want [alpha]", got)
		}
	case <-time.After(5 * time.Second):
		t.Error("after a NACK, a change was not sent")
	}
}
