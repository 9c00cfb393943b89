// Command xdsclient is gRPC-Go's own xDS client pointed at a control plane:
// an independent consumer of what `detour xds` serves, for the e2e suite.
//
// gRPC reads its bootstrap (server, node) from GRPC_XDS_BOOTSTRAP_CONFIG.
// For each -target (xds:///name) the program opens a channel, which makes
// gRPC's xDS client subscribe to the Listener "name" and, from there, to
// what it references (RouteConfiguration, Clusters, ClusterLoadAssignments).
// It then reports, as JSON on stdout, every resource gRPC's xDS client holds
// and what it made of it, read through gRPC's public CSDS service
// (google.golang.org/grpc/xds/csds); each channel's state, the error of one
// RPC, and the addresses the channel dialled: where gRPC's balancers sent
// the channel after resolving the target through xDS. gRPC-Go offers no
// public API that watches a single cluster: its xdsclient packages are
// internal, so a channel is the only way in.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	aggregatev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/clusters/aggregate/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/xds/csds"
	"google.golang.org/protobuf/types/known/anypb"

	_ "google.golang.org/grpc/xds" // registers the xds:/// resolver and gRPC's xDS balancers
)

// Report is the program's output.
type Report struct {
	Targets []Target `json:"targets"`
	Clients []Client `json:"clients"`
}

// Target is one channel.
type Target struct {
	Target   string `json:"target"`
	State    string `json:"state"`
	RPCError string `json:"rpc_error,omitempty"`
	// Dialled are the addresses the channel connected to, in the order
	// first dialled.
	Dialled []string `json:"dialled,omitempty"`
}

// Client is one of gRPC's xDS clients (one per channel target).
type Client struct {
	Scope     string     `json:"scope"`
	Node      string     `json:"node"`
	Resources []Resource `json:"resources"`
}

// Resource is one xDS resource as gRPC's xDS client holds it.
type Resource struct {
	Type    string `json:"type"` // short: listener, route, cluster, endpoint
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
	// Status is gRPC's verdict: REQUESTED (asked, nothing received yet),
	// ACKED, NACKED, DOES_NOT_EXIST, ...
	Status string `json:"status"`
	// Error is why gRPC rejected the resource (NACKED).
	Error        string `json:"error,omitempty"`
	ErrorVersion string `json:"error_version,omitempty"`
	// Refs are the resources this one leads gRPC to: a listener's route
	// configuration ("route NAME"), a route's clusters ("cluster NAME"), a
	// cluster's load assignment ("endpoint NAME"), its aggregated clusters
	// or its DNS name ("dns HOST:PORT").
	Refs []string `json:"refs,omitempty"`
	// Endpoints of a ClusterLoadAssignment gRPC accepted, as
	// "address region=R priority=P weight=W".
	Endpoints []string `json:"endpoints,omitempty"`
}

func main() {
	var targets []string
	flag.Func("target", "an xds:///name target (repeatable)", func(s string) error {
		targets = append(targets, s)
		return nil
	})
	wait := flag.Duration("wait", 5*time.Second, "how long to wait for gRPC's xDS client to settle")
	flag.Parse()
	if len(targets) == 0 {
		fmt.Fprintln(os.Stderr, "xdsclient: give at least one -target")
		os.Exit(2)
	}
	if os.Getenv("GRPC_XDS_BOOTSTRAP_CONFIG") == "" && os.Getenv("GRPC_XDS_BOOTSTRAP") == "" {
		fmt.Fprintln(os.Stderr, "xdsclient: set GRPC_XDS_BOOTSTRAP_CONFIG to gRPC's xDS bootstrap JSON")
		os.Exit(2)
	}
	rep, err := run(targets, *wait)
	if err != nil {
		fmt.Fprintln(os.Stderr, "xdsclient:", err)
		os.Exit(1)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(rep); err != nil {
		fmt.Fprintln(os.Stderr, "xdsclient:", err)
		os.Exit(1)
	}
}

func run(targets []string, wait time.Duration) (*Report, error) {
	var conns []*grpc.ClientConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	dialled := make([]*dialLog, len(targets))
	for i, t := range targets {
		dialled[i] = &dialLog{}
		c, err := grpc.NewClient(t, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(dialled[i].dial))
		if err != nil {
			return nil, fmt.Errorf("channel %s: %w", t, err)
		}
		c.Connect()
		conns = append(conns, c)
	}
	cs, err := csds.NewClientStatusDiscoveryServer()
	if err != nil {
		return nil, err
	}
	defer cs.Close()

	// Settled: every channel has left CONNECTING/IDLE and every resource
	// has an answer, or the time is up (a resource never answered stays
	// REQUESTED).
	deadline := time.Now().Add(wait)
	var dump *statusv3.ClientStatusResponse
	for {
		dump, err = cs.FetchClientStatus(context.Background(), &statusv3.ClientStatusRequest{})
		if err != nil {
			return nil, fmt.Errorf("csds: %w", err)
		}
		if settled(conns, dump) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}

	rep := &Report{}
	for i, c := range conns {
		tr := Target{Target: targets[i], State: c.GetState().String(), Dialled: dialled[i].addrs()}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, err := healthpb.NewHealthClient(c).Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err != nil {
			tr.RPCError = err.Error()
		}
		rep.Targets = append(rep.Targets, tr)
	}
	for _, cfg := range dump.GetConfig() {
		cl := Client{Scope: cfg.GetClientScope(), Node: cfg.GetNode().GetId()}
		for _, g := range cfg.GetGenericXdsConfigs() {
			r := Resource{
				Type: shortType(g.GetTypeUrl()), Name: g.GetName(), Version: g.GetVersionInfo(),
				Status:       g.GetClientStatus().String(),
				Error:        g.GetErrorState().GetDetails(),
				ErrorVersion: g.GetErrorState().GetVersionInfo(),
			}
			if g.GetXdsConfig() != nil {
				if err := describe(&r, g.GetXdsConfig()); err != nil {
					return nil, fmt.Errorf("%s %s: %w", r.Type, r.Name, err)
				}
			}
			cl.Resources = append(cl.Resources, r)
		}
		rep.Clients = append(rep.Clients, cl)
	}
	return rep, nil
}

func settled(conns []*grpc.ClientConn, dump *statusv3.ClientStatusResponse) bool {
	for _, c := range conns {
		if s := c.GetState(); s == connectivity.Idle || s == connectivity.Connecting {
			return false
		}
	}
	if len(dump.GetConfig()) < len(conns) {
		return false
	}
	for _, cfg := range dump.GetConfig() {
		if len(cfg.GetGenericXdsConfigs()) == 0 {
			return false
		}
		for _, g := range cfg.GetGenericXdsConfigs() {
			switch g.GetClientStatus() {
			case adminv3.ClientResourceStatus_REQUESTED, adminv3.ClientResourceStatus_UNKNOWN:
				return false
			}
		}
	}
	return true
}

// dialLog records the addresses a channel dials, then dials them.
type dialLog struct {
	mu   sync.Mutex
	seen []string
}

func (d *dialLog) dial(ctx context.Context, addr string) (net.Conn, error) {
	d.mu.Lock()
	if !slices.Contains(d.seen, addr) {
		d.seen = append(d.seen, addr)
	}
	d.mu.Unlock()
	return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
}

func (d *dialLog) addrs() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.seen)
}

// describe fills in what a resource gRPC holds refers to (and a load
// assignment's endpoints).
func describe(r *Resource, config *anypb.Any) error {
	switch r.Type {
	case "listener":
		l := &listenerv3.Listener{}
		if err := config.UnmarshalTo(l); err != nil {
			return err
		}
		hcm := &hcmv3.HttpConnectionManager{}
		if api := l.GetApiListener().GetApiListener(); api != nil {
			if err := api.UnmarshalTo(hcm); err != nil {
				return err
			}
		}
		if name := hcm.GetRds().GetRouteConfigName(); name != "" {
			r.Refs = append(r.Refs, "route "+name)
		}
	case "route":
		rc := &routev3.RouteConfiguration{}
		if err := config.UnmarshalTo(rc); err != nil {
			return err
		}
		for _, vh := range rc.GetVirtualHosts() {
			for _, rt := range vh.GetRoutes() {
				if c := rt.GetRoute().GetCluster(); c != "" && !slices.Contains(r.Refs, "cluster "+c) {
					r.Refs = append(r.Refs, "cluster "+c)
				}
			}
		}
	case "cluster":
		c := &clusterv3.Cluster{}
		if err := config.UnmarshalTo(c); err != nil {
			return err
		}
		switch {
		case c.GetType() == clusterv3.Cluster_EDS:
			name := c.GetEdsClusterConfig().GetServiceName()
			if name == "" {
				name = c.GetName()
			}
			r.Refs = append(r.Refs, "endpoint "+name)
		case c.GetType() == clusterv3.Cluster_LOGICAL_DNS:
			for _, e := range endpoints(c.GetLoadAssignment()) {
				r.Refs = append(r.Refs, "dns "+strings.Fields(e)[0])
			}
		case c.GetClusterType() != nil:
			agg := &aggregatev3.ClusterConfig{}
			if err := c.GetClusterType().GetTypedConfig().UnmarshalTo(agg); err != nil {
				return err
			}
			for _, name := range agg.GetClusters() {
				r.Refs = append(r.Refs, "cluster "+name)
			}
		}
	case "endpoint":
		cla := &endpointv3.ClusterLoadAssignment{}
		if err := config.UnmarshalTo(cla); err != nil {
			return err
		}
		r.Endpoints = endpoints(cla)
	}
	return nil
}

func endpoints(cla *endpointv3.ClusterLoadAssignment) []string {
	var out []string
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			out = append(out, fmt.Sprintf("%s region=%s priority=%d weight=%d",
				net.JoinHostPort(sa.GetAddress(), fmt.Sprint(sa.GetPortValue())),
				l.GetLocality().GetRegion(), l.GetPriority(), l.GetLoadBalancingWeight().GetValue()))
		}
	}
	return out
}

func shortType(typeURL string) string {
	name := typeURL[strings.LastIndex(typeURL, "/")+1:]
	switch name {
	case "envoy.config.listener.v3.Listener":
		return "listener"
	case "envoy.config.route.v3.RouteConfiguration":
		return "route"
	case "envoy.config.cluster.v3.Cluster":
		return "cluster"
	case "envoy.config.endpoint.v3.ClusterLoadAssignment":
		return "endpoint"
	}
	return name
}
