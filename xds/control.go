package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	cachetypes "github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/detourhq/detour/policy"
)

// Control is what detour's controller computed from live signals, laid
// over the policy's own settings when resources are built. The zero value
// (or nil) changes nothing.
type Control struct {
	// Backends by name; a backend without an entry keeps the policy's
	// settings.
	Backends map[string]BackendControl
	// FirstTokenTimeout replaces retry.first_token_timeout on the stream
	// route (never above it: the holding filter's own timeout is built
	// from the policy's value); 0 keeps it.
	FirstTokenTimeout time.Duration
	// ResponseTimeout is the controller's per-attempt deadline for
	// non-streaming requests, hedged: an attempt still running at the
	// deadline keeps running while Envoy sends another, and the first
	// complete answer wins (hedge.go; on Envoy 1.40 the hedge goes to the
	// same backend, in another region). 0 = the policy's
	// (retry.per_try_timeout, a hard timeout, which also overrides this
	// value when set).
	ResponseTimeout time.Duration
}

// BackendControl is one backend's computed settings; zero fields keep the
// policy's (or Envoy's) value.
type BackendControl struct {
	// Health is given to each of the backend's endpoints over EDS.
	Health corev3.HealthStatus
	// EndpointsOut are endpoints ("ip:port") pushed UNHEALTHY whatever
	// Health says: taken out of service on their own while the backend's
	// others serve.
	EndpointsOut map[string]bool
	// EndpointWeights are load-balancing weights by endpoint ("ip:port"),
	// from each endpoint's own error rate, out of FullWeight; when any is
	// set, an endpoint without one gets FullWeight.
	EndpointWeights map[string]uint32
	// ConsecutiveErrors tightens outlier detection (5xx and gateway
	// failures in a row before an ejection).
	ConsecutiveErrors uint32
	// RetryBudgetPercent and MinRetryConcurrency replace the retry budget.
	RetryBudgetPercent  float64
	MinRetryConcurrency uint32
	// MaxRequests and MaxPending are the cluster's concurrency limits.
	MaxRequests, MaxPending uint32
}

// FullWeight is the weight of an endpoint with nothing against it.
const FullWeight = 100

func (c *Control) backend(name string) BackendControl {
	if c == nil {
		return BackendControl{}
	}
	return c.Backends[name]
}

// applyCluster lays bc over a backend cluster built from the policy.
func (bc BackendControl) applyCluster(c *clusterv3.Cluster) {
	if n := bc.ConsecutiveErrors; n > 0 && c.OutlierDetection != nil {
		c.OutlierDetection.Consecutive_5Xx = wrapperspb.UInt32(n)
		c.OutlierDetection.ConsecutiveGatewayFailure = wrapperspb.UInt32(n)
	}
	if c.CircuitBreakers == nil || len(c.CircuitBreakers.Thresholds) == 0 {
		return
	}
	th := c.CircuitBreakers.Thresholds[0]
	if bc.RetryBudgetPercent > 0 && th.RetryBudget != nil {
		th.RetryBudget.BudgetPercent = &typev3.Percent{Value: bc.RetryBudgetPercent}
		th.RetryBudget.MinRetryConcurrency = wrapperspb.UInt32(bc.MinRetryConcurrency)
	}
	if bc.MaxRequests > 0 {
		th.MaxRequests = wrapperspb.UInt32(bc.MaxRequests)
	}
	if bc.MaxPending > 0 {
		th.MaxPendingRequests = wrapperspb.UInt32(bc.MaxPending)
	}
}

// applyEndpoints lays bc over a backend's load assignment.
func (bc BackendControl) applyEndpoints(cla *endpointv3.ClusterLoadAssignment) {
	if cla == nil || (bc.Health == corev3.HealthStatus_UNKNOWN && len(bc.EndpointWeights) == 0 && len(bc.EndpointsOut) == 0) {
		return
	}
	for _, l := range cla.Endpoints {
		for _, e := range l.LbEndpoints {
			if bc.Health != corev3.HealthStatus_UNKNOWN {
				e.HealthStatus = bc.Health
			}
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			if sa == nil {
				continue
			}
			addr := net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
			if bc.EndpointsOut[addr] {
				e.HealthStatus = corev3.HealthStatus_UNHEALTHY
			}
			if len(bc.EndpointWeights) > 0 {
				// Every endpoint gets a weight on the same scale: an unset
				// one would count as 1 against the others' 100.
				w := bc.EndpointWeights[addr]
				if w == 0 {
					w = FullWeight
				}
				e.LoadBalancingWeight = wrapperspb.UInt32(w)
			}
		}
	}
}

// withFirstToken is p with the controller's first-token deadline on the
// stream route, or p itself.
func (c *Control) withFirstToken(p *policy.Policy) *policy.Policy {
	if c == nil || c.FirstTokenTimeout <= 0 || c.FirstTokenTimeout >= p.Retry.FirstTokenTimeout.D() {
		return p
	}
	q := *p
	q.Retry.FirstTokenTimeout = policy.Duration(c.FirstTokenTimeout)
	return &q
}

// snapshotItems are r's resources by type, as a snapshot takes them.
func snapshotItems(r *Resources) map[resourcev3.Type][]cachetypes.Resource {
	items := map[resourcev3.Type][]cachetypes.Resource{}
	for _, l := range r.Listeners {
		items[resourcev3.ListenerType] = append(items[resourcev3.ListenerType], l)
	}
	for _, rc := range r.Routes {
		items[resourcev3.RouteType] = append(items[resourcev3.RouteType], rc)
	}
	for _, c := range r.Clusters {
		items[resourcev3.ClusterType] = append(items[resourcev3.ClusterType], c)
	}
	for _, e := range r.Endpoints {
		items[resourcev3.EndpointType] = append(items[resourcev3.EndpointType], e)
	}
	return items
}

// versionByType gives each type of snap (built from controlled) the
// policy's version where the controller left that type as the policy has
// it, and the policy's version plus a digest of the type otherwise: an
// Envoy is sent only the types that changed.
func versionByType(snap *cachev3.Snapshot, base, controlled *Resources, version string) error {
	types := []struct {
		url  resourcev3.Type
		idx  cachetypes.ResponseType
		b, c []proto.Message
	}{
		{resourcev3.ClusterType, cachetypes.Cluster, msgs(base.Clusters), msgs(controlled.Clusters)},
		{resourcev3.EndpointType, cachetypes.Endpoint, msgs(base.Endpoints), msgs(controlled.Endpoints)},
		{resourcev3.ListenerType, cachetypes.Listener, msgs(base.Listeners), msgs(controlled.Listeners)},
		{resourcev3.RouteType, cachetypes.Route, msgs(base.Routes), msgs(controlled.Routes)},
	}
	for _, t := range types {
		bd, err := digest(t.b)
		if err != nil {
			return err
		}
		cd, err := digest(t.c)
		if err != nil {
			return err
		}
		if bd == cd {
			continue
		}
		var items []cachetypes.Resource
		for _, m := range t.c {
			items = append(items, m.(cachetypes.Resource))
		}
		snap.Resources[t.idx] = cachev3.NewResources(version+"."+cd[:8], items)
	}
	return nil
}

func msgs[T proto.Message](in []T) []proto.Message {
	out := make([]proto.Message, len(in))
	for i, m := range in {
		out[i] = m
	}
	return out
}

func digest(ms []proto.Message) (string, error) {
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	for _, m := range ms {
		b, err := opts.Marshal(m)
		if err != nil {
			return "", fmt.Errorf("digest: %w", err)
		}
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
