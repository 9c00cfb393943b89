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
// when the policy changes. gRPC's own xDS clients are served too, with
// resources of their own (see ClientKindOf and BuildGRPC).
type Server struct {
	// caches holds each kind of client's snapshots (see NewServer).
	caches  map[ClientKind]cachev3.SnapshotCache
	xds     serverv3.Server
	log     *slog.Logger
	metrics *Metrics

	mu      sync.Mutex
	policy  *policy.Policy
	control *Control
	wasm    *WasmModule
	nodes   map[nodeKey]string // node → region, for every client seen
}

// nodeKey names a client: an Envoy and a gRPC client given the same node
// id are still two clients with their own resources.
type nodeKey struct {
	id   string
	kind ClientKind
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
			Help: "Discovery responses sent to xDS clients (Envoys, gRPC), by resource type (cluster, listener, route, endpoint).",
		}, []string{"type"}),
		Nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_xds_nacks_total",
			Help: "Updates an xDS client (Envoy, gRPC) rejected, by resource type; each is also logged with the client's reason.",
		}, []string{"type"}),
		Connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "detour_xds_connected_streams",
			Help: "Open xDS streams from xDS clients (Envoys, gRPC).",
		}),
		Snapshots: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "detour_xds_snapshots_total",
			Help: "Per-client snapshots set (a new Envoy or gRPC client, or a new policy for each).",
		}),
		BuildTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "detour_xds_snapshot_build_seconds",
			Help:    "Time to build one client's resources from the policy.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 4, 10),
		}),
		Reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_xds_policy_reloads_total",
			Help: "Policy file changes seen, by result: ok (applied) or invalid (rejected; the last good policy stays).",
		}, []string{"result"}),
		VersionInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "detour_xds_snapshot_info",
			Help: "1 for the snapshot version each xDS client node (Envoy, gRPC) was last given.",
		}, []string{"node", "version"}),
	}
	reg.MustRegister(m.Pushes, m.Nacks, m.Connected, m.Snapshots, m.BuildTime, m.Reloads, m.VersionInfo)
	return m
}

// NewServer serves p until SetPolicy replaces it.
func NewServer(ctx context.Context, p *policy.Policy, log *slog.Logger, m *Metrics) *Server {
	s := &Server{log: log, metrics: m, policy: p, nodes: map[nodeKey]string{}}
	s.caches = map[ClientKind]cachev3.SnapshotCache{
		// ADS mode orders an update's responses (clusters before their
		// endpoints, listeners before routes) as Envoy wants, and answers
		// a request only when it names every resource of its type in the
		// snapshot, which Envoy's wildcard and EDS requests do.
		ClientEnvoy: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, cacheLogger{log}),
		// gRPC asks for the listeners of its channels only, a few of the
		// snapshot's: ADS mode would never answer it. Without it each
		// request gets the named resources there are, and a name that is
		// not (a channel to an unknown backend) does not hold the others up.
		ClientGRPC: cachev3.NewSnapshotCache(false, cachev3.IDHash{}, cacheLogger{log}),
	}
	// An unclassifiable node gets "" and the mux refuses its watch; the
	// request callback has already refused the stream with the reason.
	classify := func(n *corev3.Node) string {
		k, _ := ClientKindOf(n)
		return string(k)
	}
	caches := map[string]cachev3.Cache{}
	for k, c := range s.caches {
		caches[string(k)] = c
	}
	mux := &cachev3.MuxCache{
		Classify:      func(r *cachev3.Request) string { return classify(r.GetNode()) },
		ClassifyDelta: func(r *cachev3.DeltaRequest) string { return classify(r.GetNode()) },
		Caches:        caches,
	}
	s.xds = serverv3.NewServer(ctx, mux, s.callbacks())
	return s
}

// SetWasmModule gives Envoys detour's proxy-wasm plugin (nil: none). Call
// it before serving: snapshots already built keep what they had.
func (s *Server) SetWasmModule(m *WasmModule) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.wasm = m
}

// XDS is the go-control-plane server to register on a gRPC server.
func (s *Server) XDS() serverv3.Server { return s.xds }

// SetPolicy builds and sets a new snapshot for every Envoy seen; Envoys that
// connect later get it too. Nothing changes when any build fails.
func (s *Server) SetPolicy(ctx context.Context, p *policy.Policy) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// One build per kind and region, not per node: nodes of a region
	// share it.
	type buildKey struct {
		kind   ClientKind
		region string
	}
	byRegion := map[buildKey]*cachev3.Snapshot{}
	snaps := map[nodeKey]*cachev3.Snapshot{}
	for node, region := range s.nodes {
		snap, ok := byRegion[buildKey{node.kind, region}]
		if !ok {
			var err error
			if snap, err = s.build(p, node, region); err != nil {
				return err
			}
			byRegion[buildKey{node.kind, region}] = snap
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

// SetControl lays the controller's computed settings over the policy for
// every Envoy (nil: none) and pushes what changed. Each resource type
// has its own version, so a change of endpoint health alone is pushed as
// EDS only: clusters, and the outlier state Envoy keeps in them, stay.
func (s *Server) SetControl(ctx context.Context, c *Control) error {
	s.mu.Lock()
	old := s.control
	s.control = c
	p := s.policy
	s.mu.Unlock()
	if err := s.SetPolicy(ctx, p); err != nil {
		s.mu.Lock()
		s.control = old
		s.mu.Unlock()
		return err
	}
	return nil
}

// ensureNode gives a node its snapshot on its first request.
func (s *Server) ensureNode(ctx context.Context, node *corev3.Node) error {
	if node == nil || node.GetId() == "" {
		return fmt.Errorf("xds request without a node id")
	}
	kind, err := ClientKindOf(node)
	if err != nil {
		return err
	}
	key := nodeKey{node.Id, kind}
	s.mu.Lock()
	defer s.mu.Unlock()
	region := node.GetLocality().GetRegion()
	if known, ok := s.nodes[key]; ok && known == region {
		return nil
	}
	snap, err := s.build(s.policy, key, region)
	if err != nil {
		return err
	}
	if err := s.set(ctx, key, snap); err != nil {
		return err
	}
	s.nodes[key] = region
	s.log.Info("xds client connected", "node", node.Id, "client", kind, "user_agent", node.GetUserAgentName(), "region", region, "version", snap.GetVersion(resourcev3.ClusterType))
	return nil
}

func (s *Server) build(p *policy.Policy, node nodeKey, region string) (*cachev3.Snapshot, error) {
	start := time.Now()
	var res *Resources
	var err error
	if node.kind == ClientGRPC {
		res, err = BuildGRPC(p, region)
	} else {
		res, err = BuildFor(p, Options{Dynamic: true, Region: region, Wasm: s.wasm})
	}
	if err != nil {
		return nil, fmt.Errorf("build resources for %s (%s): %w", node.id, node.kind, err)
	}
	// The controller's settings: built apart, so each type's version says
	// whether the controller changed it.
	var controlled *Resources
	if s.control != nil && node.kind == ClientEnvoy {
		if controlled, err = BuildFor(p, Options{Dynamic: true, Region: region, Wasm: s.wasm, Control: s.control}); err != nil {
			return nil, fmt.Errorf("build controlled resources for %s: %w", node.id, err)
		}
	}
	s.metrics.BuildTime.Observe(time.Since(start).Seconds())
	items := snapshotItems(res)
	version, err := Version(res)
	if err != nil {
		return nil, err
	}
	if controlled != nil {
		items = snapshotItems(controlled)
	}
	snap, err := cachev3.NewSnapshot(version, items)
	if err != nil {
		return nil, fmt.Errorf("snapshot for %s: %w", node.id, err)
	}
	if controlled != nil {
		if err := versionByType(snap, res, controlled, version); err != nil {
			return nil, fmt.Errorf("snapshot for %s: %w", node.id, err)
		}
	}
	// gRPC's resources are checked by BuildGRPC: Consistent does not
	// follow an API listener to its route configuration.
	if node.kind != ClientGRPC {
		if err := snap.Consistent(); err != nil {
			return nil, fmt.Errorf("snapshot for %s is inconsistent: %w", node.id, err)
		}
	}
	return snap, nil
}

func (s *Server) set(ctx context.Context, node nodeKey, snap *cachev3.Snapshot) error {
	if err := s.caches[node.kind].SetSnapshot(ctx, node.id, snap); err != nil {
		return fmt.Errorf("set snapshot for %s: %w", node.id, err)
	}
	s.metrics.Snapshots.Inc()
	s.metrics.VersionInfo.DeletePartialMatch(prometheus.Labels{"node": node.id})
	s.metrics.VersionInfo.WithLabelValues(node.id, snap.GetVersion(resourcev3.ClusterType)).Set(1)
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
			s.log.Error("cannot serve xds client", "err", err)
			return err
		}
		if errDetail != nil {
			kind, _ := ClientKindOf(node)
			s.metrics.Nacks.WithLabelValues(shortType(typeURL)).Inc()
			s.log.Error("xds client rejected an update", "node", node.GetId(), "client", kind, "type", shortType(typeURL), "reason", errDetail.GetMessage())
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
