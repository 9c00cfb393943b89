package xds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachetypes "github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/detourhq/detour/policy"
)

// Server is detour's control plane: it serves each Envoy that connects the
// resources of the policy in force, built for that Envoy's region, over ADS
// (state of the world or delta), and pushes a new snapshot to every Envoy
// when the policy changes.
type Server struct {
	cache   cachev3.SnapshotCache
	xds     serverv3.Server
	log     *slog.Logger
	metrics *Metrics

	mu     sync.Mutex
	policy *policy.Policy
	nodes  map[string]string // node id → region, for every Envoy seen
}

// Metrics are the control plane's Prometheus series.
type Metrics struct {
	Pushes      *prometheus.CounterVec
	Nacks       *prometheus.CounterVec
	Connected   prometheus.Gauge
	Snapshots   prometheus.Counter
	BuildTime   prometheus.Histogram
	Reloads     *prometheus.CounterVec
	VersionInfo *prometheus.GaugeVec
}

// NewMetrics registers the control plane's series on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_xds_pushes_total",
			Help: "Discovery responses sent to Envoys, by resource type (cluster, listener, route, endpoint).",
		}, []string{"type"}),
		Nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_xds_nacks_total",
			Help: "Updates an Envoy rejected, by resource type; each is also logged with Envoy's reason.",
		}, []string{"type"}),
		Connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "detour_xds_connected_streams",
			Help: "Open xDS streams from Envoys.",
		}),
		Snapshots: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "detour_xds_snapshots_total",
			Help: "Per-Envoy snapshots set (a new Envoy, or a new policy for each Envoy).",
		}),
		BuildTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "detour_xds_snapshot_build_seconds",
			Help:    "Time to build one Envoy's resources from the policy.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 4, 10),
		}),
		Reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_xds_policy_reloads_total",
			Help: "Policy file changes seen, by result: ok (applied) or invalid (rejected; the last good policy stays).",
		}, []string{"result"}),
		VersionInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "detour_xds_snapshot_info",
			Help: "1 for the snapshot version each Envoy node was last given.",
		}, []string{"node", "version"}),
	}
	reg.MustRegister(m.Pushes, m.Nacks, m.Connected, m.Snapshots, m.BuildTime, m.Reloads, m.VersionInfo)
	return m
}

// NewServer serves p until SetPolicy replaces it.
func NewServer(ctx context.Context, p *policy.Policy, log *slog.Logger, m *Metrics) *Server {
	s := &Server{log: log, metrics: m, policy: p, nodes: map[string]string{}}
	s.cache = cachev3.NewSnapshotCache(true, cachev3.IDHash{}, cacheLogger{log})
	s.xds = serverv3.NewServer(ctx, s.cache, s.callbacks())
	return s
}

// XDS is the go-control-plane server to register on a gRPC server.
func (s *Server) XDS() serverv3.Server { return s.xds }

// SetPolicy builds and sets a new snapshot for every Envoy seen; Envoys that
// connect later get it too. Nothing changes when any build fails.
func (s *Server) SetPolicy(ctx context.Context, p *policy.Policy) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// One build per region, not per node: nodes of a region share it.
	byRegion := map[string]*cachev3.Snapshot{}
	snaps := map[string]*cachev3.Snapshot{}
	for node, region := range s.nodes {
		snap, ok := byRegion[region]
		if !ok {
			var err error
			if snap, err = s.build(p, node, region); err != nil {
				return err
			}
			byRegion[region] = snap
		}
		snaps[node] = snap
	}
	for node, snap := range snaps {
		if err := s.set(ctx, node, snap); err != nil {
			return err
		}
	}
	s.policy = p
	return nil
}

// ensureNode gives a node its snapshot on its first request.
func (s *Server) ensureNode(ctx context.Context, node *corev3.Node) error {
	if node == nil || node.GetId() == "" {
		return fmt.Errorf("xds request without a node id")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	region := node.GetLocality().GetRegion()
	if known, ok := s.nodes[node.Id]; ok && known == region {
		return nil
	}
	snap, err := s.build(s.policy, node.Id, region)
	if err != nil {
		return err
	}
	if err := s.set(ctx, node.Id, snap); err != nil {
		return err
	}
	s.nodes[node.Id] = region
	s.log.Info("envoy connected", "node", node.Id, "region", region, "version", snap.GetVersion(resourcev3.ClusterType))
	return nil
}

func (s *Server) build(p *policy.Policy, node, region string) (*cachev3.Snapshot, error) {
	start := time.Now()
	res, err := BuildFor(p, Options{Dynamic: true, Region: region})
	if err != nil {
		return nil, fmt.Errorf("build resources for %s: %w", node, err)
	}
	s.metrics.BuildTime.Observe(time.Since(start).Seconds())
	items := map[resourcev3.Type][]cachetypes.Resource{}
	for _, l := range res.Listeners {
		items[resourcev3.ListenerType] = append(items[resourcev3.ListenerType], l)
	}
	for _, r := range res.Routes {
		items[resourcev3.RouteType] = append(items[resourcev3.RouteType], r)
	}
	for _, c := range res.Clusters {
		items[resourcev3.ClusterType] = append(items[resourcev3.ClusterType], c)
	}
	for _, e := range res.Endpoints {
		items[resourcev3.EndpointType] = append(items[resourcev3.EndpointType], e)
	}
	version, err := Version(res)
	if err != nil {
		return nil, err
	}
	snap, err := cachev3.NewSnapshot(version, items)
	if err != nil {
		return nil, fmt.Errorf("snapshot for %s: %w", node, err)
	}
	if err := snap.Consistent(); err != nil {
		return nil, fmt.Errorf("snapshot for %s is inconsistent: %w", node, err)
	}
	return snap, nil
}

func (s *Server) set(ctx context.Context, node string, snap *cachev3.Snapshot) error {
	if err := s.cache.SetSnapshot(ctx, node, snap); err != nil {
		return fmt.Errorf("set snapshot for %s: %w", node, err)
	}
	s.metrics.Snapshots.Inc()
	s.metrics.VersionInfo.DeletePartialMatch(prometheus.Labels{"node": node})
	s.metrics.VersionInfo.WithLabelValues(node, snap.GetVersion(resourcev3.ClusterType)).Set(1)
	return nil
}

// Version is a digest of the resources: the same policy and region give
// the same version on every replica, and any change gives another.
func Version(r *Resources) (string, error) {
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	for _, m := range r.all() {
		b, err := opts.Marshal(m)
		if err != nil {
			return "", fmt.Errorf("version: %w", err)
		}
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// streamKey names an xDS stream: go-control-plane numbers state-of-the-world
// and delta streams separately, so the kind is part of the name.
type streamKey struct {
	delta bool
	id    int64
}

// sentKey is a SotW stream and resource type: what a NACK rejects.
type sentKey struct {
	stream  int64
	typeURL string
}

var resourceTypes = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}

func (s *Server) callbacks() serverv3.Callbacks {
	// Envoy sends its node on a stream's first message only
	// (set_node_on_first_message_only): remember it per stream.
	var streamNodes sync.Map // streamKey → *corev3.Node
	// The version last sent on each SotW stream and type. A NACK carries
	// the last version the client accepted, so the cache would send the
	// rejected one again at once, to be rejected again, in a tight loop
	// (go-control-plane #962): a NACK is answered only by a new version.
	var lastSent sync.Map // sentKey → version
	onRequest := func(ctx context.Context, stream streamKey, node *corev3.Node, typeURL string, errDetail *statuspb.Status) error {
		if node.GetId() != "" {
			streamNodes.Store(stream, node)
		} else if n, ok := streamNodes.Load(stream); ok {
			node = n.(*corev3.Node)
		}
		if err := s.ensureNode(ctx, node); err != nil {
			s.log.Error("cannot serve envoy", "err", err)
			return err
		}
		if errDetail != nil {
			s.metrics.Nacks.WithLabelValues(shortType(typeURL)).Inc()
			s.log.Error("envoy rejected an update", "node", node.GetId(), "type", shortType(typeURL), "reason", errDetail.GetMessage())
		}
		return nil
	}
	return serverv3.CallbackFuncs{
		StreamOpenFunc: func(context.Context, int64, string) error {
			s.metrics.Connected.Inc()
			return nil
		},
		StreamClosedFunc: func(id int64, _ *corev3.Node) {
			streamNodes.Delete(streamKey{false, id})
			for _, t := range resourceTypes {
				lastSent.Delete(sentKey{id, t})
			}
			s.metrics.Connected.Dec()
		},
		DeltaStreamOpenFunc: func(context.Context, int64, string) error {
			s.metrics.Connected.Inc()
			return nil
		},
		DeltaStreamClosedFunc: func(id int64, _ *corev3.Node) {
			streamNodes.Delete(streamKey{true, id})
			s.metrics.Connected.Dec()
		},
		StreamRequestFunc: func(id int64, r *discoveryv3.DiscoveryRequest) error {
			if r.GetErrorDetail() != nil {
				if v, ok := lastSent.Load(sentKey{id, r.GetTypeUrl()}); ok {
					r.VersionInfo = v.(string)
				}
			}
			return onRequest(context.Background(), streamKey{false, id}, r.GetNode(), r.GetTypeUrl(), r.GetErrorDetail())
		},
		StreamDeltaRequestFunc: func(id int64, r *discoveryv3.DeltaDiscoveryRequest) error {
			return onRequest(context.Background(), streamKey{true, id}, r.GetNode(), r.GetTypeUrl(), r.GetErrorDetail())
		},
		StreamResponseFunc: func(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
			lastSent.Store(sentKey{id, resp.GetTypeUrl()}, resp.GetVersionInfo())
			s.metrics.Pushes.WithLabelValues(shortType(resp.GetTypeUrl())).Inc()
		},
		StreamDeltaResponseFunc: func(_ int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
			s.metrics.Pushes.WithLabelValues(shortType(resp.GetTypeUrl())).Inc()
		},
	}
}

func shortType(typeURL string) string {
	switch typeURL {
	case resourcev3.ClusterType:
		return "cluster"
	case resourcev3.ListenerType:
		return "listener"
	case resourcev3.RouteType:
		return "route"
	case resourcev3.EndpointType:
		return "endpoint"
	}
	return "other"
}

// cacheLogger sends go-control-plane's logs to slog.
type cacheLogger struct{ log *slog.Logger }

func (l cacheLogger) Debugf(format string, args ...any) { l.log.Debug(fmt.Sprintf(format, args...)) }
func (l cacheLogger) Infof(format string, args ...any)  { l.log.Debug(fmt.Sprintf(format, args...)) }
func (l cacheLogger) Warnf(format string, args ...any)  { l.log.Warn(fmt.Sprintf(format, args...)) }
func (l cacheLogger) Errorf(format string, args ...any) { l.log.Error(fmt.Sprintf(format, args...)) }
