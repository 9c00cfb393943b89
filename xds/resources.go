// Package xds turns a policy into Envoy configuration: the listener, route,
// clusters and endpoints that send LLM traffic through detour. The same
// resources are written into a static bootstrap (`detour bootstrap
// --static`) or served over ADS.
package xds

import (
	"fmt"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	celv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/filters/cel/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	upstreamcodecv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/upstream_codec/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	earlyhmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/early_header_mutation/header_mutation/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	previousprioritiesv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/priority/previous_priorities/v3"
	prioritygroupv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/router/cluster_specifiers/priority_group/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/detourhq/detour/extproc"
	"github.com/detourhq/detour/policy"
)

// Names of the resources detour generates.
const (
	ListenerName      = "detour_ingress"
	RouteConfigName   = "detour_routes"
	ExtProcCluster    = "detour_extproc"
	ExtProcFilter     = "envoy.filters.http.ext_proc"
	RouterFilter      = "envoy.filters.http.router"
	VirtualHostName   = "llm"
	extProcStatName   = "detour"
	routedRouteName   = "detour_routed"
	fallbackRouteName = "detour_unrouted"
	bodyLimitHeadroom = 64 << 10
)

// Resources is one consistent set of Envoy resources built from a policy.
type Resources struct {
	Listeners []*listenerv3.Listener
	Routes    []*routev3.RouteConfiguration
	Clusters  []*clusterv3.Cluster
	// Endpoints are served over EDS (dynamic mode only).
	Endpoints []*endpointv3.ClusterLoadAssignment
}

// Options shape the resources for one Envoy.
type Options struct {
	// Dynamic: the listener takes its routes over RDS and IP-addressed
	// backends their endpoints over EDS, all through ADS. Otherwise every
	// resource is inline, for a static bootstrap.
	Dynamic bool
	// Region is the Envoy's own region (its node locality). A backend's
	// endpoints there get priority 0, those elsewhere priority 1, so losing
	// the region moves the traffic to the next. Empty: all priority 0.
	Region string
	// Wasm is detour's proxy-wasm module; nil leaves the plugin out
	// (no in-Envoy measurement, and no route can be in wasm mode).
	Wasm *WasmModule
	// localWasm loads the module from Wasm.Path even in dynamic mode.
	localWasm bool
	// Control lays the controller's computed settings over the policy's.
	Control *Control
}

// Build generates every resource for p with all endpoints at priority 0,
// inline: what a static bootstrap holds.
func Build(p *policy.Policy) (*Resources, error) { return BuildFor(p, Options{}) }

// BuildFor generates every resource for p as one Envoy should see it. The
// output depends only on p and o, so several detour replicas agree on it
// without talking to each other.
func BuildFor(p *policy.Policy, o Options) (*Resources, error) {
	r := &Resources{}
	if p.UsesWasmRouting() && o.Wasm == nil {
		return nil, fmt.Errorf("routing mode wasm needs detour's wasm module (wasm.module): none was found")
	}
	rc, err := routeConfig(p, o)
	if err != nil {
		return nil, err
	}
	r.Routes = append(r.Routes, rc)
	l, err := listener(p, rc, o)
	if err != nil {
		return nil, err
	}
	r.Listeners = append(r.Listeners, l)
	ec, err := extProcCluster(p)
	if err != nil {
		return nil, err
	}
	r.Clusters = append(r.Clusters, ec)
	if measure, routing := wasmOn(p, o.Wasm); o.Dynamic && (measure || routing) {
		wc, err := wasmSourceCluster(p)
		if err != nil {
			return nil, err
		}
		r.Clusters = append(r.Clusters, wc)
	}
	for i := range p.Backends {
		c, cla, err := backendCluster(p, &p.Backends[i], o)
		if err != nil {
			return nil, err
		}
		r.Clusters = append(r.Clusters, c)
		if cla != nil {
			r.Endpoints = append(r.Endpoints, cla)
		}
	}
	for _, m := range r.all() {
		if err := validate(m); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// adsSource says "over the ADS stream" in a resource that references another.
func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

func (r *Resources) all() []proto.Message {
	var out []proto.Message
	for _, l := range r.Listeners {
		out = append(out, l)
	}
	for _, rc := range r.Routes {
		out = append(out, rc)
	}
	for _, c := range r.Clusters {
		out = append(out, c)
	}
	for _, e := range r.Endpoints {
		out = append(out, e)
	}
	return out
}

type validatable interface{ ValidateAll() error }

func validate(m proto.Message) error {
	v, ok := m.(validatable)
	if !ok {
		return nil
	}
	if err := v.ValidateAll(); err != nil {
		return fmt.Errorf("generated %T is invalid: %w", m, err)
	}
	return nil
}

// pack validates an inner typed config (ValidateAll does not look inside
// Any) and wraps it. The bytes are marshalled deterministically: anypb.New
// writes map fields (Struct, typed_extension_protocol_options) in random
// order, so two builds of one policy would differ and replicas would
// disagree on the resources.
func pack(m proto.Message) (*anypb.Any, error) {
	if err := validate(m); err != nil {
		return nil, err
	}
	a := new(anypb.Any)
	err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true})
	if err != nil {
		return nil, fmt.Errorf("pack %T: %w", m, err)
	}
	return a, nil
}

// extProcRetry retries opening a request's processing stream that could
// not reach its processor (restarting), after a short back-off. Only
// failures before the processor answered are retried (connect failure,
// refused stream, UNAVAILABLE, a reset before any answer), so no request
// is processed twice. The retries stay inside the filter's message
// timeout. With several replicas the policy below replaces it: at once on
// another replica.
func extProcRetry() *corev3.RetryPolicy {
	return &corev3.RetryPolicy{
		RetryOn:    "connect-failure,refused-stream,unavailable,reset",
		NumRetries: wrapperspb.UInt32(extProcRetries),
		RetryBackOff: &corev3.BackoffStrategy{
			BaseInterval: durationpb.New(extProcRetryBase),
			MaxInterval:  durationpb.New(extProcRetryMax),
		},
	}
}

// The processing stream's retries: up to 20, with fully jittered back-off
// from 50 ms up to 500 ms, so about 4 s of them on average: more than the
// default 4 s message timeout, which ends them. The chaos suite's
// processor restart (SIGKILL, restarted 2 s later, listening ~0.1 s after
// that) needs ~2.3 s; 6 retries up to 400 ms (~0.8 s on average, bounded
// by the old 2 s timeout) lost 37 requests of 1,221 there.
const (
	extProcRetries   = 20
	extProcRetryBase = 50 * time.Millisecond
	extProcRetryMax  = 500 * time.Millisecond
	// extProcMaxStreams bounds concurrent processing streams (and their
	// retries): as many as the listener takes connections by default.
	extProcMaxStreams = policy.DefaultMaxConnections
)

// extProcBase is what both of detour's ext_proc filters share: the
// service, its failure behaviour, and request headers only (each adds what
// it needs).
func extProcBase(p *policy.Policy, statPrefix string) *extprocfilterv3.ExternalProcessor {
	gs := &corev3.GrpcService{
		TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: ExtProcCluster}},
		Timeout:         durationpb.New(10 * time.Second),
		RetryPolicy:     extProcRetry(),
	}
	if len(p.ExtProc.Replicas) > 1 {
		// A stream that cannot connect (a replica that just died, before
		// its health check fails), or whose replica died before answering
		// anything (reset before the response started), is opened on
		// another replica with the messages sent so far (Envoy buffers
		// them when a retry policy is set): the dead replica decided
		// nothing, so the retry is safe. Measured on Envoy 1.40 (e2e):
		// without it, a kill under load cost one request in each case.
		pred, err := anypb.New(&previoushostsv3.PreviousHostsPredicate{})
		if err == nil {
			gs.RetryPolicy = &corev3.RetryPolicy{
				RetryOn:    "connect-failure,refused-stream,reset",
				NumRetries: wrapperspb.UInt32(2),
				RetryBackOff: &corev3.BackoffStrategy{
					BaseInterval: durationpb.New(5 * time.Millisecond),
					MaxInterval:  durationpb.New(50 * time.Millisecond),
				},
				RetryHostPredicate: []*corev3.RetryPolicy_RetryHostPredicate{{
					Name:       "envoy.retry_host_predicates.previous_hosts",
					ConfigType: &corev3.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: pred},
				}},
				HostSelectionRetryMaxAttempts: 3,
			}
		}
	}
	return &extprocfilterv3.ExternalProcessor{
		GrpcService:      gs,
		FailureModeAllow: p.ExtProc.FailureModeAllow,
		// A dead or hung processor is an unavailable service, not a bug
		// in the request: 503 tells clients to retry.
		StatusOnError: &typev3.HttpStatus{Code: typev3.StatusCode_ServiceUnavailable},
		ProcessingMode: &extprocfilterv3.ProcessingMode{
			RequestHeaderMode:   extprocfilterv3.ProcessingMode_SEND,
			RequestBodyMode:     extprocfilterv3.ProcessingMode_NONE,
			RequestTrailerMode:  extprocfilterv3.ProcessingMode_SKIP,
			ResponseHeaderMode:  extprocfilterv3.ProcessingMode_SKIP,
			ResponseBodyMode:    extprocfilterv3.ProcessingMode_NONE,
			ResponseTrailerMode: extprocfilterv3.ProcessingMode_SKIP,
		},
		MessageTimeout: durationpb.New(p.ExtProc.MessageTimeout.D()),
		StatPrefix:     statPrefix,
	}
}

// ExtProcFilterConfig is the router-stage ext_proc filter: request headers
// and the buffered body go to detour; responses stream straight through.
func ExtProcFilterConfig(p *policy.Policy) *extprocfilterv3.ExternalProcessor {
	c := extProcBase(p, extProcStatName)
	c.ProcessingMode.RequestBodyMode = extprocfilterv3.ProcessingMode_BUFFERED
	// The response cache asks for response phases per request (decision
	// 0012): only requests it may store or replace pay for them.
	c.AllowModeOverride = p.CacheOn()
	// A queued request's answer comes after the wait: detour extends the
	// message timeout for it, up to the longest wait plus the usual one.
	if wait := p.LongestQueueWait(); wait > 0 {
		c.MaxMessageTimeout = durationpb.New(wait + p.ExtProc.MessageTimeout.D())
	}
	c.MetadataOptions = &extprocfilterv3.MetadataOptions{
		ReceivingNamespaces: &extprocfilterv3.MetadataOptions_MetadataNamespaces{Untyped: []string{extproc.MetadataNamespace, extproc.PriorityGroupsNamespace}},
	}
	return c
}

// RouteConfig routes each request to the cluster named by the header the
// ext_proc service sets.
func RouteConfig(p *policy.Policy) (*routev3.RouteConfiguration, error) {
	return routeConfig(p, Options{})
}

func routeConfig(p *policy.Policy, o Options) (*routev3.RouteConfiguration, error) {
	p = o.Control.withFirstToken(p)
	action := func() *routev3.RouteAction {
		return &routev3.RouteAction{
			Timeout: durationpb.New(p.Envoy.RequestTimeout.D()),
		}
	}
	routed := action()
	pg, err := priorityGroupPlugin(p)
	if err != nil {
		return nil, err
	}
	routed.ClusterSpecifier = &routev3.RouteAction_InlineClusterSpecifierPlugin{InlineClusterSpecifierPlugin: pg}
	routed.RetryPolicy = retryPolicy(p)
	routes := []*routev3.Route{{
		Name: routedRouteName,
		Match: &routev3.RouteMatch{
			PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
			Headers: []*routev3.HeaderMatcher{{
				Name:                 extproc.HeaderBackend,
				HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true},
			}},
		},
		Action: &routev3.Route_Route{Route: routed},
	}}
	// Streams the processor routed come first: the same route with the
	// first-token deadline (firsttoken.go).
	stream, err := streamRoute(p, routes[0])
	if err != nil {
		return nil, err
	}
	if p.HoldWholeAnswers() {
		// Whole answers are held until complete by the resume filter
		// (resume.go), so that one whose body stops can be asked again.
		a, err := resumePerRoute(false)
		if err != nil {
			return nil, err
		}
		if routes[0].TypedPerFilterConfig == nil {
			routes[0].TypedPerFilterConfig = map[string]*anypb.Any{}
		}
		routes[0].TypedPerFilterConfig[ResumeFilter] = a
	}
	routes = append([]*routev3.Route{stream}, routes...)
	// Whole answers race a late attempt (hedge.go): set after the stream
	// route was cloned from this one, which must not hedge.
	deadline := o.Control.responseDeadline(p)
	hedgeOnDeadline(routed, deadline)
	// Without the header the processor did not route the request: only
	// possible when failure_mode_allow let it past a dead processor.
	fallback := &routev3.Route{
		Name:  fallbackRouteName,
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
	}
	if p.ExtProc.FailureModeAllow {
		a := action()
		a.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: p.Backends[0].Name}
		fallback.Action = &routev3.Route_Route{Route: a}
	} else {
		fallback.Action = &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{
			Status: 503,
			Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{
				InlineString: `{"error":{"message":"detour did not route this request","type":"server_error","param":null,"code":"not_routed"}}`,
			}},
		}}
	}
	routes = append(routes, fallback)
	_, wasmRouting := wasmOn(p, o.Wasm)
	if wasmRouting {
		wr, err := wasmRoutes(p, uint64(p.Limits.MaxBodyBytes)+bodyLimitHeadroom, deadline)
		if err != nil {
			return nil, err
		}
		routes = append(wr, routes...)
	}
	for _, r := range routes {
		r.RequestBodyBufferLimit = wrapperspb.UInt64(uint64(p.Limits.MaxBodyBytes) + bodyLimitHeadroom)
	}
	rc := &routev3.RouteConfiguration{
		Name: RouteConfigName,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    VirtualHostName,
			Domains: []string{"*"},
			Routes:  routes,
			// The wasm routes' matcher reads the attempt number from it.
			IncludeRequestAttemptCount: wasmRouting,
			// Clients see how many attempts their answer took, and detour's
			// measure plugin times only first-attempt answers against the
			// backend that gave them.
			IncludeAttemptCountInResponse: true,
			// The body limit is read from the route matched before the
			// processor runs (the fallback), so it is set on the virtual host
			// and on every route (a probe of Envoy 1.40 showed the virtual
			// host's alone leaves the 1 MiB connection default in force).
			// Headroom: the rewritten body is checked again, and a longer
			// model id must not push a body at the limit over it; detour's
			// processor enforces the exact limit itself.
			RequestBodyBufferLimit: wrapperspb.UInt64(uint64(p.Limits.MaxBodyBytes) + bodyLimitHeadroom),
			// Every response says which backend served it; the processor
			// puts its decision in dynamic metadata.
			ResponseHeadersToAdd: []*corev3.HeaderValueOption{
				// The backend that answered, which after a failover is not
				// the one first chosen: read from the endpoint's metadata.
				responseHeader(extproc.HeaderBackend, "%UPSTREAM_METADATA("+extproc.MetadataNamespace+":backend)%"),
				responseHeader(extproc.HeaderModel, "%UPSTREAM_METADATA("+extproc.MetadataNamespace+":model)%"),
				// Why the first choice was made (empty, so not added,
				// when no processor decided: wasm routing, fallback).
				responseHeader(extproc.HeaderReason, "%DYNAMIC_METADATA("+extproc.MetadataNamespace+":reason)%"),
			},
		}},
	}
	return rc, nil
}

// priorityGroupPlugin sends attempt N of a request to the Nth backend of
// the order detour's processor chose for it (dynamic metadata in
// extproc.PriorityGroupsNamespace). The configured groups only serve a
// request the processor did not order, which the route's header match
// rules out; they name every backend in policy order.
func priorityGroupPlugin(p *policy.Policy) (*routev3.ClusterSpecifierPlugin, error) {
	spec := &prioritygroupv3.PriorityGroupClusterSpecifier{OverrideMetadataNamespace: extproc.PriorityGroupsNamespace}
	for _, b := range p.Backends {
		spec.PriorityGroups = append(spec.PriorityGroups, &prioritygroupv3.PriorityGroup{
			Name:     b.Name,
			Clusters: []*prioritygroupv3.ClusterWeight{{ClusterName: b.Name, Weight: wrapperspb.UInt32(1)}},
		})
	}
	a, err := pack(spec)
	if err != nil {
		return nil, err
	}
	return &routev3.ClusterSpecifierPlugin{Extension: &corev3.TypedExtensionConfig{
		Name: "envoy.router.cluster_specifier_plugin.priority_group", TypedConfig: a,
	}}, nil
}

// RetryOn is what a retry follows: provider errors, throttling and every
// connection failure. A response that has started streaming is never
// retried (Envoy cannot), so a client never sees two answers.
const RetryOn = "5xx,reset,connect-failure,refused-stream,retriable-status-codes"

// retryPolicy moves a failed attempt to the next backend of the request's
// order (refresh_cluster_on_retry re-runs the priority-group specifier).
// Retry-After is deliberately not honoured here: the next attempt goes to
// another backend, which the first one's throttling says nothing about.
// Each retry, and each hedge, also avoids the regions already attempted
// (avoidAttemptedRegions).
func retryPolicy(p *policy.Policy) *routev3.RetryPolicy {
	rp := &routev3.RetryPolicy{
		RetryOn:               RetryOn,
		RetriableStatusCodes:  []uint32{429},
		NumRetries:            wrapperspb.UInt32(uint32(p.Retry.Attempts - 1)),
		RefreshClusterOnRetry: true,
		RetryBackOff: &routev3.RetryPolicy_RetryBackOff{
			BaseInterval: durationpb.New(p.Retry.BaseDelay.D()),
			MaxInterval:  durationpb.New(p.Retry.MaxDelay.D()),
		},
		RetryPriority: avoidAttemptedRegions(),
	}
	if d := p.Retry.PerTryTimeout.D(); d > 0 {
		rp.PerTryTimeout = durationpb.New(d)
	}
	return rp
}

// RetryPriorityPrevious is Envoy's retry priority plugin that takes the
// priority levels already attempted out of the next attempt's priority
// load.
const RetryPriorityPrevious = "envoy.retry_priorities.previous_priorities"

// avoidAttemptedRegions sends every retry and hedge of a request away from
// the priority levels, which are regions (loadAssignment), of the hosts its
// earlier attempts went to, whatever cluster they were on: a region that
// black-holes (accepts, never answers) fails every backend there alike,
// and otherwise each retry to the next backend, and each hedge (which
// stays on the same backend, hedge.go), would go to that backend's
// endpoints in the same dead region. Once every level of the cluster has
// been attempted, Envoy falls back to the original load, so a backend with
// endpoints in one region only still takes its retries (e2e
// TestRetryAvoidsAttemptedRegions). The cost: a retry after an ordinary
// failure of one backend also leaves the Envoy's own region if the next
// backend has endpoints elsewhere.
func avoidAttemptedRegions() *routev3.RetryPolicy_RetryPriority {
	a, err := anypb.New(&previousprioritiesv3.PreviousPrioritiesConfig{UpdateFrequency: 1})
	if err != nil {
		panic(err) // a constant, valid message: cannot fail
	}
	return &routev3.RetryPolicy_RetryPriority{
		Name:       RetryPriorityPrevious,
		ConfigType: &routev3.RetryPolicy_RetryPriority_TypedConfig{TypedConfig: a},
	}
}

func responseHeader(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: k, Value: v},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

// Listener is the client-facing HTTP listener with the ext_proc filter and
// its route configuration inline.
func Listener(p *policy.Policy, rc *routev3.RouteConfiguration) (*listenerv3.Listener, error) {
	return listener(p, rc, Options{})
}

func listener(p *policy.Policy, rc *routev3.RouteConfiguration, o Options) (*listenerv3.Listener, error) {
	host, port, err := splitHostPort(p.Envoy.Listen)
	if err != nil {
		return nil, fmt.Errorf("envoy.listen: %w", err)
	}
	epc, err := pack(ExtProcFilterConfig(p))
	if err != nil {
		return nil, err
	}
	ups, err := routerUpstreamFilters(p, o)
	if err != nil {
		return nil, err
	}
	router, err := pack(&routerv3.Router{UpstreamHttpFilters: ups})
	if err != nil {
		return nil, err
	}
	lrc, err := localReplyConfig(p)
	if err != nil {
		return nil, err
	}
	ehm, err := EarlyHeaderMutation()
	if err != nil {
		return nil, err
	}
	filters, err := listenerHTTPFilters(p, o, epc, router)
	if err != nil {
		return nil, err
	}
	logs, err := accessLogs(p)
	if err != nil {
		return nil, err
	}
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix:     "detour",
		CodecType:      hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: rc},
		HttpFilters:    filters,
		// Generations outlast Envoy's stream idle default while a model
		// thinks before its first token.
		StreamIdleTimeout: durationpb.New(p.Envoy.RequestTimeout.D()),
		LocalReplyConfig:  lrc,
		// Clients must not choose the backend by sending detour's own
		// headers: routing happens before any later filter could strip
		// them, so they go at the connection manager's door.
		EarlyHeaderMutationExtensions: []*corev3.TypedExtensionConfig{ehm},
		AccessLog:                     logs,
	}
	if o.Dynamic {
		hcm.RouteSpecifier = &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{ConfigSource: adsSource(), RouteConfigName: rc.Name}}
	}
	hcmAny, err := pack(hcm)
	if err != nil {
		return nil, err
	}
	return &listenerv3.Listener{
		Name:    ListenerName,
		Address: socketAddress(host, port),
		// The ext_proc filter buffers the whole body in the connection's
		// buffer; with only the route-level request_body_buffer_limit,
		// Envoy 1.40 still answered 413 above its 1 MiB default here.
		PerConnectionBufferLimitBytes: wrapperspb.UInt32(uint32(p.Limits.MaxBodyBytes) + bodyLimitHeadroom),
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       "envoy.filters.network.http_connection_manager",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcmAny},
			}},
		}},
	}, nil
}

// EarlyHeaderMutation strips detour's own headers from client requests
// before routing, so no client can choose a backend by sending them (a
// later HTTP filter would be too late: the route is already picked).
func EarlyHeaderMutation() (*corev3.TypedExtensionConfig, error) {
	var muts []*mutationrulesv3.HeaderMutation
	// x-envoy-attempt-count picks a wasm-routed request's backend per
	// attempt: a client's copy would skip the first choice.
	for _, h := range []string{extproc.HeaderBackend, extproc.HeaderModel, extproc.HeaderRoute, extproc.HeaderStream, extproc.HeaderReason, attemptCountHdr} {
		muts = append(muts, &mutationrulesv3.HeaderMutation{Action: &mutationrulesv3.HeaderMutation_Remove{Remove: h}})
	}
	a, err := pack(&earlyhmv3.HeaderMutation{Mutations: muts})
	if err != nil {
		return nil, err
	}
	return &corev3.TypedExtensionConfig{Name: "envoy.http.early_header_mutation.header_mutation", TypedConfig: a}, nil
}

// localReplyConfig gives Envoy's own error replies (processor down, no
// healthy upstream, timeouts, body too large) the OpenAI error shape.
// Replies detour's processor sends already have that shape and carry the
// dynamic metadata detour.reply=true, so the first mapper leaves them alone.
func localReplyConfig(p *policy.Policy) (*hcmv3.LocalReplyConfig, error) {
	format := func(typ, code string) *corev3.SubstitutionFormatString {
		return &corev3.SubstitutionFormatString{
			Format: &corev3.SubstitutionFormatString_JsonFormat{JsonFormat: &structpb.Struct{Fields: map[string]*structpb.Value{
				"error": structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
					"message": structpb.NewStringValue("%LOCAL_REPLY_BODY%"),
					"type":    structpb.NewStringValue(typ),
					"param":   structpb.NewNullValue(),
					"code":    structpb.NewStringValue(code),
				}}),
			}}},
			ContentType: "application/json",
		}
	}
	inline := func(s string) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: s}}
	}
	status := func(op accesslogv3.ComparisonFilter_Op, code uint32) *accesslogv3.AccessLogFilter {
		return &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_StatusCodeFilter{StatusCodeFilter: &accesslogv3.StatusCodeFilter{
			Comparison: &accesslogv3.ComparisonFilter{Op: op, Value: &corev3.RuntimeUInt32{DefaultValue: code, RuntimeKey: "detour.local_reply.unused"}},
		}}}
	}
	cel, err := pack(&celv3.ExpressionFilter{Expression: "response.code_details.startsWith('ext_proc_error')"})
	if err != nil {
		return nil, err
	}
	// The wasm plugin cannot set metadata; its replies carry response code
	// details detour_<kind>.
	wasmReply, err := pack(&celv3.ExpressionFilter{Expression: "response.code_details.startsWith('detour_')"})
	if err != nil {
		return nil, err
	}
	return &hcmv3.LocalReplyConfig{Mappers: []*hcmv3.ResponseMapper{
		{Filter: &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_OrFilter{OrFilter: &accesslogv3.OrFilter{Filters: []*accesslogv3.AccessLogFilter{
			{FilterSpecifier: &accesslogv3.AccessLogFilter_MetadataFilter{MetadataFilter: &accesslogv3.MetadataFilter{
				Matcher: &matcherv3.MetadataMatcher{
					Filter: extproc.MetadataNamespace,
					Path:   []*matcherv3.MetadataMatcher_PathSegment{{Segment: &matcherv3.MetadataMatcher_PathSegment_Key{Key: "reply"}}},
					Value:  &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_BoolMatch{BoolMatch: true}},
				},
				MatchIfKeyNotFound: wrapperspb.Bool(false),
			}}},
			{FilterSpecifier: &accesslogv3.AccessLogFilter_ExtensionFilter{ExtensionFilter: &accesslogv3.ExtensionFilter{
				Name: "envoy.access_loggers.extension_filters.cel", ConfigType: &accesslogv3.ExtensionFilter_TypedConfig{TypedConfig: wasmReply},
			}}},
		}}}}},
		{
			Filter: &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ExtensionFilter{ExtensionFilter: &accesslogv3.ExtensionFilter{
				Name: "envoy.access_loggers.extension_filters.cel", ConfigType: &accesslogv3.ExtensionFilter_TypedConfig{TypedConfig: cel},
			}}},
			Body:               inline("detour's routing service (ext_proc) is unavailable or did not answer in time"),
			BodyFormatOverride: format("server_error", "router_unavailable"),
			// One status whichever way the processor failed: Envoy answers
			// a stream error with status_on_error (503) but its own 504 when
			// the message timeout ends the processing stream's retries.
			StatusCode: wrapperspb.UInt32(http.StatusServiceUnavailable),
		},
		{
			Filter:             &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ResponseFlagFilter{ResponseFlagFilter: &accesslogv3.ResponseFlagFilter{Flags: []string{"NC"}}}},
			Body:               inline("the backend chosen for this request is not configured in Envoy"),
			BodyFormatOverride: format("server_error", "backend_not_configured"),
		},
		{
			Filter:             status(accesslogv3.ComparisonFilter_EQ, 413),
			Body:               inline(fmt.Sprintf("the request body is larger than the limit of %d bytes", int64(p.Limits.MaxBodyBytes))),
			BodyFormatOverride: format("invalid_request_error", "request_too_large"),
		},
		{
			Filter:             status(accesslogv3.ComparisonFilter_GE, 400),
			BodyFormatOverride: format("server_error", "%RESPONSE_CODE_DETAILS%"),
		},
	}}, nil
}

func extProcCluster(p *policy.Policy) (*clusterv3.Cluster, error) {
	addrs, field := p.ExtProc.Replicas, "extproc.replicas"
	if len(addrs) == 0 {
		addrs, field = []string{p.ExtProc.Listen}, "extproc.listen"
	}
	var eps []*endpointv3.LbEndpoint
	typ := clusterv3.Cluster_STATIC
	for _, a := range addrs {
		host, port, err := splitHostPort(a)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		if clusterTypeFor(host) == clusterv3.Cluster_STRICT_DNS {
			typ = clusterv3.Cluster_STRICT_DNS
		}
		eps = append(eps, lbEndpoint(host, port))
	}
	opts, err := pack(&upstreamhttpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{
				ConnectionKeepalive: &corev3.KeepaliveSettings{Interval: durationpb.New(30 * time.Second), Timeout: durationpb.New(5 * time.Second)},
			}},
		}},
	})
	if err != nil {
		return nil, err
	}
	c := &clusterv3.Cluster{
		Name:                 ExtProcCluster,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: typ},
		ConnectTimeout:       durationpb.New(time.Second),
		// Every client request holds one processing stream: Envoy's
		// default thresholds (1024 requests, 3 concurrent retries) would
		// refuse requests past 1024 in flight, and all but 3 of the
		// stream retries that carry requests over a processor restart.
		CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			MaxConnections:     wrapperspb.UInt32(extProcMaxStreams),
			MaxPendingRequests: wrapperspb.UInt32(extProcMaxStreams),
			MaxRequests:        wrapperspb.UInt32(extProcMaxStreams),
			MaxRetries:         wrapperspb.UInt32(extProcMaxStreams),
		}}},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": opts},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: ExtProcCluster,
			Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: eps}},
		},
	}
	if len(eps) > 1 {
		// Several replicas: one that dies is found by the next gRPC health
		// check (1 s) or by its first failed connection, and its requests
		// go to the others. A single replica keeps no checks: with it
		// down there is nowhere else to go.
		c.HealthChecks = []*corev3.HealthCheck{{
			Timeout:  durationpb.New(500 * time.Millisecond),
			Interval: durationpb.New(time.Second),
			// Envoy checks a cluster that has had no traffic every 60 s
			// unless told: a replica that starts late would wait that long.
			NoTrafficInterval:  durationpb.New(time.Second),
			UnhealthyThreshold: wrapperspb.UInt32(1),
			HealthyThreshold:   wrapperspb.UInt32(1),
			HealthChecker: &corev3.HealthCheck_GrpcHealthCheck_{GrpcHealthCheck: &corev3.HealthCheck_GrpcHealthCheck{
				ServiceName: "envoy.service.ext_proc.v3.ExternalProcessor",
			}},
		}}
		c.OutlierDetection = &clusterv3.OutlierDetection{
			Consecutive_5Xx:                    wrapperspb.UInt32(1),
			ConsecutiveGatewayFailure:          wrapperspb.UInt32(1),
			ConsecutiveLocalOriginFailure:      wrapperspb.UInt32(1),
			EnforcingConsecutive_5Xx:           wrapperspb.UInt32(100),
			EnforcingConsecutiveGatewayFailure: wrapperspb.UInt32(100),
			Interval:                           durationpb.New(time.Second),
			BaseEjectionTime:                   durationpb.New(5 * time.Second),
			MaxEjectionPercent:                 wrapperspb.UInt32(50),
		}
	}
	return c, nil
}

// UpstreamExtProcConfig is the per-attempt ext_proc filter in each backend
// cluster: it names the cluster so detour can rewrite the request for the
// backend this attempt goes to (model id, credentials).
func UpstreamExtProcConfig(p *policy.Policy) *extprocfilterv3.ExternalProcessor {
	// Headers only: detour asks for the body (mode override) just for an
	// attempt whose backend serves another model id than the body names,
	// so a first attempt costs one message.
	c := extProcBase(p, "detour_upstream")
	c.AllowModeOverride = true
	c.RequestAttributes = []string{extproc.AttrClusterName}
	return c
}

// backendProtocolOptions: HTTP/1.1 to plain endpoints, HTTP/2 or 1.1 by
// ALPN over TLS, and the per-attempt filters.
func backendProtocolOptions(p *policy.Policy, o Options, b *policy.Backend, tls bool) (*anypb.Any, error) {
	up, err := pack(UpstreamExtProcConfig(p))
	if err != nil {
		return nil, err
	}
	var filters []*hcmv3.HttpFilter
	if clusterHasOwnFilters(p, o, b) {
		// The first-token filter does nothing unless the stream route
		// enables it (firsttoken.go).
		ft, err := firstTokenFilter(p)
		if err != nil {
			return nil, err
		}
		obs, err := observeFilter(p, o, b)
		if err != nil {
			return nil, err
		}
		if obs != nil {
			filters = append(filters, obs)
		}
		filters = append(filters, ft, &hcmv3.HttpFilter{Name: ExtProcFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: up}})
	}
	codec, err := pack(&upstreamcodecv3.UpstreamCodec{})
	if err != nil {
		return nil, err
	}
	opts := &upstreamhttpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &corev3.Http1ProtocolOptions{}},
		}},
	}
	if filters != nil {
		opts.HttpFilters = append(filters,
			&hcmv3.HttpFilter{Name: "envoy.filters.http.upstream_codec", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: codec}})
	}
	if tls {
		opts.UpstreamProtocolOptions = &upstreamhttpv3.HttpProtocolOptions_AutoConfig{AutoConfig: &upstreamhttpv3.HttpProtocolOptions_AutoHttpConfig{
			HttpProtocolOptions:  &corev3.Http1ProtocolOptions{},
			Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
		}}
	}
	return pack(opts)
}

// outlierDetection is set up for provider clusters of one or a few
// endpoints: every kind of failure ejects (Envoy leaves gateway errors and
// failure percentages unenforced by default), and all endpoints may be
// ejected (the default 10 % would protect a single endpoint forever). The
// panic threshold stays at Envoy's default: a probe showed that with it at
// 0 a request to an all-ejected cluster fails with "no healthy upstream"
// and is not retried to the next backend.
func outlierDetection(p *policy.Policy) *clusterv3.OutlierDetection {
	o := p.OutlierDetection
	n := wrapperspb.UInt32(uint32(o.ConsecutiveErrors))
	return &clusterv3.OutlierDetection{
		Consecutive_5Xx:                    n,
		ConsecutiveGatewayFailure:          n,
		EnforcingConsecutive_5Xx:           wrapperspb.UInt32(100),
		EnforcingConsecutiveGatewayFailure: wrapperspb.UInt32(100),
		Interval:                           durationpb.New(o.Interval.D()),
		BaseEjectionTime:                   durationpb.New(o.BaseEjectionTime.D()),
		MaxEjectionTime:                    durationpb.New(o.MaxEjectionTime.D()),
		MaxEjectionPercent:                 wrapperspb.UInt32(100),
		FailurePercentageMinimumHosts:      wrapperspb.UInt32(1),
		SuccessRateMinimumHosts:            wrapperspb.UInt32(1),
	}
}

// circuitBreakers replace the fixed max_retries with a retry budget, so a
// provider outage moves all its traffic while retries can never outnumber
// the requests they serve.
func circuitBreakers(p *policy.Policy) *clusterv3.CircuitBreakers {
	return &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
		Priority: corev3.RoutingPriority_DEFAULT,
		RetryBudget: &clusterv3.CircuitBreakers_Thresholds_RetryBudget{
			BudgetPercent:       &typev3.Percent{Value: p.Retry.BudgetPercent},
			MinRetryConcurrency: wrapperspb.UInt32(uint32(p.Retry.MinRetryConcurrency)),
		},
		TrackRemaining: true,
	}}}
}

// BackendCluster is one backend's cluster with its endpoints inline.
func BackendCluster(p *policy.Policy, b *policy.Backend) (*clusterv3.Cluster, error) {
	c, _, err := backendCluster(p, b, Options{})
	return c, err
}

// backendCluster builds b's cluster and, when its endpoints travel over EDS,
// their load assignment.
func backendCluster(p *policy.Policy, b *policy.Backend, o Options) (*clusterv3.Cluster, *endpointv3.ClusterLoadAssignment, error) {
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
	cla, err := loadAssignment(b, o.Region)
	if err != nil {
		return nil, nil, err
	}
	opts, err := backendProtocolOptions(p, o, b, b.Endpoints[0].TLS != nil)
	if err != nil {
		return nil, nil, err
	}
	c := &clusterv3.Cluster{
		Name:                 b.Name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(2 * time.Second),
		// Least request: an endpoint that answers slowly holds more
		// requests in flight and gets fewer new ones (generations vary from
		// milliseconds to minutes, so round robin would pile up on a slow
		// one); the controller's weights add each endpoint's error rate.
		LbPolicy: clusterv3.Cluster_LEAST_REQUEST,
		// The per-attempt filter buffers the body as the listener does.
		PerConnectionBufferLimitBytes: wrapperspb.UInt32(uint32(p.Limits.MaxBodyBytes) + bodyLimitHeadroom),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": opts},
		OutlierDetection:              outlierDetection(p),
		CircuitBreakers:               circuitBreakers(p),
		LoadAssignment:                cla,
	}
	bc := o.Control.backend(b.Name)
	bc.applyCluster(c)
	bc.applyEndpoints(cla)
	var served *endpointv3.ClusterLoadAssignment
	if o.Dynamic && !dns {
		// Over EDS, health and priority changes keep the hosts' outlier
		// state; a changed cluster would be rebuilt from scratch.
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}
		c.EdsClusterConfig = &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: b.Name}
		c.LoadAssignment, served = nil, cla
	}
	if dns {
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}
		c.DnsLookupFamily = clusterv3.Cluster_V4_PREFERRED
	}
	if tls := b.Endpoints[0].TLS; tls != nil {
		sni := tls.SNI
		if host, _, _ := net.SplitHostPort(b.Endpoints[0].Address); sni == "" && net.ParseIP(host) == nil {
			// SNI names a host; an IP endpoint sends none unless told.
			sni = host
		}
		// ALPN lets the cluster's auto protocol config pick HTTP/2.
		ctx := &tlsv3.UpstreamTlsContext{Sni: sni, CommonTlsContext: &tlsv3.CommonTlsContext{AlpnProtocols: []string{"h2", "http/1.1"}}}
		if tls.CAFile != "" {
			ctx.CommonTlsContext.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: tls.CAFile}},
			}}
		}
		ts, err := pack(ctx)
		if err != nil {
			return nil, nil, err
		}
		c.TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: ts}}
	}
	return c, served, nil
}

// endpointMetadata names the backend and its model on each endpoint, so
// responses can say which backend served them after a failover.
func endpointMetadata(b *policy.Backend) *corev3.Metadata {
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
		extproc.MetadataNamespace: {Fields: map[string]*structpb.Value{
			"backend": structpb.NewStringValue(b.Name),
			"model":   structpb.NewStringValue(b.Model),
		}},
	}}
}

// loadAssignment groups b's endpoints by region, the Envoy's own region at
// priority 0 and the others at 1; regions in name order for a stable output.
func loadAssignment(b *policy.Backend, ownRegion string) (*endpointv3.ClusterLoadAssignment, error) {
	byRegion := map[string][]*endpointv3.LbEndpoint{}
	var regions []string
	for _, e := range b.Endpoints {
		host, port, err := splitHostPort(e.Address)
		if err != nil {
			return nil, fmt.Errorf("backend %s: %w", b.Name, err)
		}
		ep := lbEndpoint(host, port)
		ep.Metadata = endpointMetadata(b)
		if _, seen := byRegion[e.Region]; !seen {
			regions = append(regions, e.Region)
		}
		byRegion[e.Region] = append(byRegion[e.Region], ep)
	}
	sort.Strings(regions)
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: b.Name}
	for _, region := range regions {
		var prio uint32
		if ownRegion != "" && region != ownRegion {
			prio = 1
		}
		cla.Endpoints = append(cla.Endpoints, &endpointv3.LocalityLbEndpoints{
			Locality:    &corev3.Locality{Region: region},
			Priority:    prio,
			LbEndpoints: byRegion[region],
			// Envoy ignores locality weights unless locality-weighted LB is
			// on; gRPC's xDS client drops localities without one.
			LoadBalancingWeight: wrapperspb.UInt32(1),
		})
	}
	// Priorities must start at 0: if no endpoint is in the Envoy's region,
	// every region is equally far.
	if ownRegion != "" && !slices.Contains(regions, ownRegion) {
		for _, l := range cla.Endpoints {
			l.Priority = 0
		}
	}
	return cla, nil
}

func clusterTypeFor(host string) clusterv3.Cluster_DiscoveryType {
	if net.ParseIP(host) == nil {
		return clusterv3.Cluster_STRICT_DNS
	}
	return clusterv3.Cluster_STATIC
}

func lbEndpoint(host string, port uint32) *endpointv3.LbEndpoint {
	return &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
		Address: socketAddress(host, port),
	}}}
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func splitHostPort(addr string) (string, uint32, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("address %q: %w", addr, err)
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 {
		return "", 0, fmt.Errorf("address %q: bad port", addr)
	}
	return host, uint32(n), nil
}
