package xds

import (
	"fmt"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	overloadv3 "github.com/envoyproxy/go-control-plane/envoy/config/overload/v3"
	downstreamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/detourhq/detour/policy"
)

// StaticBootstrap is a complete Envoy config with every resource inline:
// Envoy needs nothing else from detour but the ext_proc service.
func StaticBootstrap(p *policy.Policy) (*bootstrapv3.Bootstrap, error) {
	res, err := Build(p)
	if err != nil {
		return nil, err
	}
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
	overload := &overloadv3.OverloadManager{ResourceMonitors: []*overloadv3.ResourceMonitor{{
		Name:       "envoy.resource_monitors.global_downstream_max_connections",
		ConfigType: &overloadv3.ResourceMonitor_TypedConfig{TypedConfig: conns},
	}}}
	b := &bootstrapv3.Bootstrap{
		Node: &corev3.Node{Id: "detour", Cluster: "detour"},
		Admin: &bootstrapv3.Admin{
			Address: socketAddress(host, port),
		},
		OverloadManager: overload,
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{
			Listeners: res.Listeners,
			Clusters:  res.Clusters,
		},
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("generated bootstrap is invalid: %w", err)
	}
	return b, nil
}

// MarshalJSON renders a bootstrap as indented JSON, which Envoy reads as YAML.
func MarshalBootstrap(b *bootstrapv3.Bootstrap) ([]byte, error) {
	out, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("marshal bootstrap: %w", err)
	}
	return append(out, '\n'), nil
}
