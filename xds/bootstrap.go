package xds

import (
	"fmt"
	"strings"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	metricsv3 "github.com/envoyproxy/go-control-plane/envoy/config/metrics/v3"
	overloadv3 "github.com/envoyproxy/go-control-plane/envoy/config/overload/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	downstreamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/goccy/go-yaml"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/detourhq/detour/policy"
)

// StaticBootstrap is a complete Envoy config with every resource inline:
// Envoy needs nothing else from detour but the ext_proc service.
func StaticBootstrap(p *policy.Policy) (*bootstrapv3.Bootstrap, error) {
	return StaticBootstrapFor(p, Options{})
}

// StaticBootstrapFor is StaticBootstrap with the resources shaped by o
// (o.Dynamic is ignored: everything is inline).
func StaticBootstrapFor(p *policy.Policy, o Options) (*bootstrapv3.Bootstrap, error) {
	o.Dynamic = false
	res, err := BuildFor(p, o)
	if err != nil {
		return nil, err
	}
	b, err := baseBootstrap(p, &corev3.Node{Id: "detour", Cluster: "detour"})
	if err != nil {
		return nil, err
	}
	b.StaticResources = &bootstrapv3.Bootstrap_StaticResources{Listeners: res.Listeners, Clusters: res.Clusters}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("generated bootstrap is invalid: %w", err)
	}
	return b, nil
}

// DynamicOptions describe the Envoy a dynamic bootstrap is for.
type DynamicOptions struct {
	// NodeID must be unique per Envoy: the control plane keys snapshots by it.
	NodeID string
	// Region is the Envoy's locality: its region's endpoints come first.
	Region string
	// Delta uses incremental xDS instead of state of the world.
	Delta bool
}

// XDSCluster is the bootstrap's one static cluster: detour's control plane.
const XDSCluster = "detour_xds"

// DynamicBootstrap is the small config an Envoy starts from when detour's
// control plane serves it everything else (listeners, routes, clusters and
// endpoints over one ADS stream).
func DynamicBootstrap(p *policy.Policy, o DynamicOptions) (*bootstrapv3.Bootstrap, error) {
	if o.NodeID == "" {
		return nil, fmt.Errorf("a dynamic bootstrap needs a node id")
	}
	node := &corev3.Node{Id: o.NodeID, Cluster: "detour"}
	if o.Region != "" {
		node.Locality = &corev3.Locality{Region: o.Region}
	}
	b, err := baseBootstrap(p, node)
	if err != nil {
		return nil, err
	}
	host, port, err := splitHostPort(p.XDS.Listen)
	if err != nil {
		return nil, fmt.Errorf("xds.listen: %w", err)
	}
	h2, err := pack(&upstreamhttpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{
				ConnectionKeepalive: &corev3.KeepaliveSettings{Interval: durationpb.New(30 * time.Second), Timeout: durationpb.New(5 * time.Second)},
			}},
		}},
	})
	if err != nil {
		return nil, err
	}
	apiType := corev3.ApiConfigSource_GRPC
	if o.Delta {
		apiType = corev3.ApiConfigSource_DELTA_GRPC
	}
	b.StaticResources = &bootstrapv3.Bootstrap_StaticResources{Clusters: []*clusterv3.Cluster{{
		Name:                          XDSCluster,
		ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: clusterTypeFor(host)},
		ConnectTimeout:                durationpb.New(time.Second),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": h2},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: XDSCluster,
			Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint(host, port)}}},
		},
	}}}
	b.DynamicResources = &bootstrapv3.Bootstrap_DynamicResources{
		AdsConfig: &corev3.ApiConfigSource{
			ApiType:             apiType,
			TransportApiVersion: corev3.ApiVersion_V3,
			GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
				EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: XDSCluster},
			}}},
			// Envoy keeps serving on its last config while the control
			// plane is away, and reconnects on its own.
			SetNodeOnFirstMessageOnly: true,
		},
		LdsConfig: adsSource(),
		CdsConfig: adsSource(),
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("generated bootstrap is invalid: %w", err)
	}
	return b, nil
}

// baseBootstrap holds what both kinds of bootstrap share: node, admin and
// the overload manager.
func baseBootstrap(p *policy.Policy, node *corev3.Node) (*bootstrapv3.Bootstrap, error) {
	host, port, err := splitHostPort(p.Envoy.Admin)
	if err != nil {
		return nil, fmt.Errorf("envoy.admin: %w", err)
	}
	// A bound on client connections, so a connection flood degrades
	// into refused connections instead of exhausting memory.
	conns, err := pack(&downstreamv3.DownstreamConnectionsConfig{MaxActiveDownstreamConnections: int64(p.Envoy.MaxConnections)})
	if err != nil {
		return nil, err
	}
	return &bootstrapv3.Bootstrap{
		Node:        node,
		Admin:       &bootstrapv3.Admin{Address: socketAddress(host, port)},
		StatsConfig: &metricsv3.StatsConfig{StatsTags: StatsTags()},
		OverloadManager: &overloadv3.OverloadManager{ResourceMonitors: []*overloadv3.ResourceMonitor{{
			Name:       "envoy.resource_monitors.global_downstream_max_connections",
			ConfigType: &overloadv3.ResourceMonitor_TypedConfig{TypedConfig: conns},
		}}},
	}, nil
}

// MarshalJSON renders a bootstrap as indented JSON, which Envoy reads as YAML.
func MarshalBootstrap(b *bootstrapv3.Bootstrap) ([]byte, error) {
	out, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("marshal bootstrap: %w", err)
	}
	return append(out, '\n'), nil
}

// Snippet is what an existing Envoy adds to its own config to join detour
// while keeping its listeners and routes: the router-stage ext_proc filter
// for the connection manager that carries LLM traffic, RDS for that
// manager's routes, and the control plane as the source of its clusters.
type Snippet struct {
	// HTTPFilter goes into the LLM connection manager's http_filters,
	// before the router.
	HTTPFilter *hcmv3.HttpFilter
	// ResumeFilter goes right after HTTPFilter (nil with resume off): it
	// moves answers that stall mid-way (decision 0015).
	ResumeFilter *hcmv3.HttpFilter
	// RDS replaces that connection manager's route_config.
	RDS *hcmv3.Rds
	// EarlyHeaderMutation goes into its early_header_mutation_extensions:
	// clients must not steer routing with detour's headers.
	EarlyHeaderMutation *corev3.TypedExtensionConfig
	// LocalReplyConfig gives Envoy's own error replies the OpenAI shape.
	LocalReplyConfig *hcmv3.LocalReplyConfig
	// XDSCluster is added to static_resources.clusters.
	XDSCluster *clusterv3.Cluster
	// DynamicResources becomes the bootstrap's dynamic_resources (CDS over
	// ADS; the Envoy's own listeners stay static).
	DynamicResources *bootstrapv3.Bootstrap_DynamicResources
}

// JoinSnippet builds the pieces of config an existing Envoy needs.
func JoinSnippet(p *policy.Policy, o DynamicOptions) (*Snippet, error) {
	o.NodeID = "join" // unused: the joining Envoy keeps its own node
	b, err := DynamicBootstrap(p, o)
	if err != nil {
		return nil, err
	}
	ep, err := pack(ExtProcFilterConfig(p))
	if err != nil {
		return nil, err
	}
	ehm, err := EarlyHeaderMutation()
	if err != nil {
		return nil, err
	}
	lrc, err := localReplyConfig(p)
	if err != nil {
		return nil, err
	}
	dyn := b.DynamicResources
	dyn.LdsConfig = nil
	var resume *hcmv3.HttpFilter
	if p.ResumeOn() {
		a, err := pack(ResumeFilterConfig(p))
		if err != nil {
			return nil, err
		}
		resume = &hcmv3.HttpFilter{Name: ResumeFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}}
	}
	return &Snippet{
		ResumeFilter:        resume,
		HTTPFilter:          &hcmv3.HttpFilter{Name: ExtProcFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: ep}},
		RDS:                 &hcmv3.Rds{ConfigSource: adsSource(), RouteConfigName: RouteConfigName},
		EarlyHeaderMutation: ehm,
		LocalReplyConfig:    lrc,
		XDSCluster:          b.StaticResources.Clusters[0],
		DynamicResources:    dyn,
	}, nil
}

// MarshalSnippet renders the snippet as commented YAML, one key per piece,
// for people to paste into their Envoy config.
func MarshalSnippet(s *Snippet) ([]byte, error) {
	parts := []struct {
		comment, key string
		msg          proto.Message
	}{
		{"Add to the http_filters of the connection manager that carries LLM traffic, before the router.", "http_filter", s.HTTPFilter},
		{"Add right after it (still before the router): moves answers that stall mid-way (resume).", "resume_http_filter", s.ResumeFilter},
		{"Use as that connection manager's route source, in place of its route_config.", "rds", s.RDS},
		{"Add to that connection manager's early_header_mutation_extensions: clients must not pick the backend.", "early_header_mutation", s.EarlyHeaderMutation},
		{"Use as that connection manager's local_reply_config: Envoy's own errors in OpenAI's shape.", "local_reply_config", s.LocalReplyConfig},
		{"Add to static_resources.clusters: detour's control plane.", "cluster", s.XDSCluster},
		{"Use as the bootstrap's dynamic_resources: clusters and routes come from detour; your listeners stay static.", "dynamic_resources", s.DynamicResources},
	}
	out := []byte("# detour: the pieces an existing Envoy adds to join (keys are for reading; paste the values).\n")
	for _, part := range parts {
		if h, ok := part.msg.(*hcmv3.HttpFilter); ok && h == nil {
			continue // a piece the policy turns off
		}
		j, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(part.msg)
		if err != nil {
			return nil, fmt.Errorf("marshal snippet: %w", err)
		}
		y, err := yaml.JSONToYAML(j)
		if err != nil {
			return nil, fmt.Errorf("snippet to YAML: %w", err)
		}
		out = fmt.Appendf(out, "\n# %s\n%s:\n", part.comment, part.key)
		for _, line := range strings.Split(strings.TrimRight(string(y), "\n"), "\n") {
			out = append(out, "  "+line+"\n"...)
		}
	}
	return out, nil
}

// StatsTags turn the labels the wasm plugin writes into its stat names
// (detour_ttft_milliseconds.backend.fast) into Prometheus labels
// (detour_ttft_milliseconds{backend="fast"}). An Envoy that joins detour
// with its own bootstrap adds them to its stats_config.
func StatsTags() []*metricsv3.TagSpecifier {
	var tags []*metricsv3.TagSpecifier
	for _, label := range []string{"backend", "class", "kind", "outcome"} {
		tags = append(tags, &metricsv3.TagSpecifier{
			TagName: label,
			TagValue: &metricsv3.TagSpecifier_Regex{
				Regex: `^(?:wasmcustom\.)?detour_\w+(?:\.\w+\.[\w-]+)*?(\.` + label + `\.([\w-]+))`,
			},
		})
	}
	return tags
}
