package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"time"

	xdscorev3 "github.com/cncf/xds/go/xds/core/v3"
	xdsmatcherv3 "github.com/cncf/xds/go/xds/type/matcher/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matchingv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/matching/v3"
	skipv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/matcher/action/v3"
	bufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/buffer/v3"
	wasmfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	networkinputsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/matching/common_inputs/network/v3"
	clusterspecmatcherv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/router/cluster_specifiers/matcher/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	upstreamcodecv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/upstream_codec/v3"

	"github.com/detourhq/detour/healthview/viewhttp"
	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/wasm/plugin"
)

// The proxy-wasm plugin in Envoy (see package wasm/plugin and
// docs/decisions/0010-wasm-plugin.md). With a module, every Envoy measures
// each response (time to first token, tokens per second, response time,
// per backend, as stats detour_*); routes whose mode is wasm are also
// decided inside Envoy, without the ext_proc round trip:
//
//	wasm (router role) → buffer → ext_proc (skipped when wasm decided) → router
//
// The wasm filter cannot hold the request headers while it reads the body
// (proxy-wasm turns that pause into StopAllIteration), so the buffer filter
// after it holds them; it cannot change headers once they went on, nor set
// dynamic metadata, so its decision is filter state (wasm.detour_*), on
// which the routes match and the matcher cluster specifier picks each
// attempt's backend.

// Names of the wasm pieces.
const (
	WasmFilter        = "envoy.filters.http.wasm"
	WasmSourceCluster = "detour_wasm_source"
	wasmVMID          = "detour"
	wasmRootID        = "detour"
	wasmRoutedRoute   = "detour_wasm_routed"
	wasmStreamRoute   = "detour_wasm_stream"
	wasmStatePrefix   = "wasm."
	attemptCountHdr   = "x-envoy-attempt-count"
)

// WasmModule is the plugin binary Envoy loads.
type WasmModule struct {
	// Path is the module on this machine (static bootstraps load it from
	// there).
	Path string
	// SHA256 pins the module in the remote source Envoy fetches it from.
	SHA256 string
	// Bytes is the module, served to Envoy by the control plane.
	Bytes []byte
}

// LoadWasmModule reads the module at path.
func LoadWasmModule(path string) (*WasmModule, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("wasm module: %w", err)
	}
	if len(b) < 8 || string(b[:4]) != "\x00asm" {
		return nil, fmt.Errorf("wasm module %s is not a WebAssembly binary", path)
	}
	sum := sha256.Sum256(b)
	return &WasmModule{Path: path, SHA256: hex.EncodeToString(sum[:]), Bytes: b}, nil
}

// WasmURLPath is where the control plane's HTTP server serves the module:
// content-addressed, so a new module is a new URL and no cache serves the
// old one.
func (m *WasmModule) WasmURLPath() string { return "/wasm/" + m.SHA256 + ".wasm" }

// wasmOn reports what the plugin does for p with module m.
func wasmOn(p *policy.Policy, m *WasmModule) (measure, route bool) {
	if m == nil {
		return false, false
	}
	measure = p.Wasm.Measure == nil || *p.Wasm.Measure
	return measure, p.UsesWasmRouting()
}

// wasmCode is where Envoy gets the module: fetched from the control plane
// (pinned by sha256) when Envoy is fed over xDS, else read from disk.
func wasmCode(p *policy.Policy, m *WasmModule, o Options) (*corev3.AsyncDataSource, error) {
	if !o.Dynamic || o.localWasm {
		return &corev3.AsyncDataSource{Specifier: &corev3.AsyncDataSource_Local{Local: &corev3.DataSource{
			Specifier: &corev3.DataSource_Filename{Filename: m.Path},
		}}}, nil
	}
	host, port, err := wasmSourceAddr(p)
	if err != nil {
		return nil, err
	}
	return &corev3.AsyncDataSource{Specifier: &corev3.AsyncDataSource_Remote{Remote: &corev3.RemoteDataSource{
		HttpUri: &corev3.HttpUri{
			Uri:              "http://" + net.JoinHostPort(host, strconv.Itoa(int(port))) + m.WasmURLPath(),
			HttpUpstreamType: &corev3.HttpUri_Cluster{Cluster: WasmSourceCluster},
			Timeout:          durationpb.New(10 * time.Second),
		},
		Sha256: m.SHA256,
		RetryPolicy: &corev3.RetryPolicy{
			RetryBackOff: &corev3.BackoffStrategy{BaseInterval: durationpb.New(200 * time.Millisecond), MaxInterval: durationpb.New(2 * time.Second)},
			NumRetries:   wrapperspb.UInt32(10),
		},
	}}}, nil
}

// wasmSourceAddr is the control plane's HTTP server (xds.metrics), as Envoy
// reaches it: a wildcard host means this machine.
func wasmSourceAddr(p *policy.Policy) (string, uint32, error) {
	host, port, err := splitHostPort(p.XDS.Metrics)
	if err != nil {
		return "", 0, fmt.Errorf("xds.metrics: %w", err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return host, port, nil
}

// wasmSourceCluster reaches the control plane's HTTP server, from which
// Envoy fetches the module.
func wasmSourceCluster(p *policy.Policy) (*clusterv3.Cluster, error) {
	host, port, err := wasmSourceAddr(p)
	if err != nil {
		return nil, err
	}
	return &clusterv3.Cluster{
		Name:                 WasmSourceCluster,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterTypeFor(host)},
		ConnectTimeout:       durationpb.New(time.Second),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: WasmSourceCluster,
			Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint(host, port)}}},
		},
	}, nil
}

// wasmFilter is one instance of the plugin. Instances share one VM per
// worker when their vm_id, code source and VM configuration agree: in
// wasm routing every instance reads the module from disk. The VM
// configuration names the module's sha256 (the plugin ignores it): a new
// module at the same path is new configuration, which Envoy loads.
func wasmFilter(p *policy.Policy, m *WasmModule, o Options, name string, cfg *plugin.Config) (*hcmv3.HttpFilter, error) {
	code, err := wasmCode(p, m, o)
	if err != nil {
		return nil, err
	}
	vmConf, err := pack(wrapperspb.String("detour.wasm sha256:" + m.SHA256))
	if err != nil {
		return nil, err
	}
	raw, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("wasm plugin configuration: %w", err)
	}
	conf, err := pack(wrapperspb.String(string(raw)))
	if err != nil {
		return nil, err
	}
	w, err := pack(&wasmfilterv3.Wasm{Config: &wasmv3.PluginConfig{
		Name:   name,
		RootId: wasmRootID,
		Vm: &wasmv3.PluginConfig_VmConfig{VmConfig: &wasmv3.VmConfig{
			VmId:          wasmVMID,
			Runtime:       "envoy.wasm.runtime.v8",
			Code:          code,
			Configuration: vmConf,
		}},
		Configuration: conf,
		// A crashed VM lets traffic through (to the ext_proc filter or the
		// fallback route) rather than failing every request; the plugin's
		// own failures follow extproc.failure_mode_allow.
		FailurePolicy: wasmv3.FailurePolicy_FAIL_OPEN,
	}})
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpFilter{Name: WasmFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: w}}, nil
}

// routerPluginConfig is the router role's configuration: the route table,
// which targets it leaves to the ext_proc filter, the routes' default
// priorities, and where it reads the controller's view.
func routerPluginConfig(p *policy.Policy, o Options) (*plugin.Config, error) {
	t := p.RouteTable()
	c := &plugin.Config{
		Role:             plugin.RoleRouter,
		Table:            &t,
		Attempts:         p.Retry.Attempts,
		MaxBodyBytes:     int(p.Limits.MaxBodyBytes),
		FailOpen:         p.ExtProc.FailureModeAllow,
		ExtProcByDefault: p.Routing.Mode != policy.ModeWasm,
	}
	// The view comes from this control plane's HTTP server (xds.metrics),
	// where the controller runs, through the cluster Envoy fetches the
	// module from. A static bootstrap has neither control plane nor
	// controller.
	if o.Dynamic && !p.Controller.Disabled {
		host, port, err := wasmSourceAddr(p)
		if err != nil {
			return nil, err
		}
		c.Health = &plugin.HealthConfig{
			Cluster:   WasmSourceCluster,
			Authority: net.JoinHostPort(host, strconv.Itoa(int(port))),
			Path:      viewhttp.Path,
			TickMS:    uint32(wasmHealthTick / time.Millisecond),
			// Above the long-poll bound: a view that does not change is
			// answered after MaxWait, not cut off as a failure.
			TimeoutMS: uint32((viewhttp.MaxWait + 5*time.Second) / time.Millisecond),
		}
	}
	for _, r := range p.Routes {
		if r.Priority != "" {
			if c.Priorities == nil {
				c.Priorities = map[string]string{}
			}
			c.Priorities[r.Name] = r.Priority
		}
		switch r.Mode {
		case policy.ModeWasm:
			c.WasmTargets = append(c.WasmTargets, r.Name)
		case policy.ModeExtProc:
			c.ExtProcTargets = append(c.ExtProcTargets, r.Name)
		}
	}
	return c, nil
}

// wasmHealthTick is how often the router plugin re-arms its poll of the
// controller's view when no call is outstanding (after a failure, or a
// long poll that ended without a change).
const wasmHealthTick = time.Second

// listenerHTTPFilters is the connection manager's filter chain for p.
func listenerHTTPFilters(p *policy.Policy, o Options, extProc, router *anypb.Any) ([]*hcmv3.HttpFilter, error) {
	ep := &hcmv3.HttpFilter{Name: ExtProcFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: extProc}}
	rt := &hcmv3.HttpFilter{Name: RouterFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}
	measure, routing := wasmOn(p, o.Wasm)
	switch {
	case routing:
		cfg, err := routerPluginConfig(p, o)
		if err != nil {
			return nil, err
		}
		// Read from disk, as the upstream role must be (routerUpstreamFilters):
		// a remotely fetched module gets a VM of its own, and the two roles
		// share each worker's VM only when their code comes the same way
		// (local demotion: the upstream role observes attempts, the router
		// role decides on them; docs/decisions/0016).
		w, err := diskWasmFilter(p, o, "detour_router", cfg)
		if err != nil {
			return nil, err
		}
		buf, err := pack(&bufferv3.Buffer{MaxRequestBytes: wrapperspb.UInt32(uint32(p.Limits.MaxBodyBytes) + bodyLimitHeadroom)})
		if err != nil {
			return nil, err
		}
		skipped, err := skipWhenWasmDecided(extProc)
		if err != nil {
			return nil, err
		}
		return []*hcmv3.HttpFilter{
			w,
			{Name: "envoy.filters.http.buffer", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: buf}},
			skipped,
			rt,
		}, nil
	case measure:
		w, err := wasmFilter(p, o.Wasm, o, "detour_measure", &plugin.Config{Role: plugin.RoleMeasure})
		if err != nil {
			return nil, err
		}
		return withResume(p, []*hcmv3.HttpFilter{w, ep}, rt)
	}
	return withResume(p, []*hcmv3.HttpFilter{ep}, rt)
}

// skipWhenWasmDecided wraps the router-stage ext_proc filter so it does not
// run for a request the wasm plugin has decided.
func skipWhenWasmDecided(extProc *anypb.Any) (*hcmv3.HttpFilter, error) {
	skip, err := pack(&skipv3.SkipFilter{})
	if err != nil {
		return nil, err
	}
	input, err := pack(&networkinputsv3.FilterStateInput{Key: wasmStatePrefix + plugin.StateBackend})
	if err != nil {
		return nil, err
	}
	m := &xdsmatcherv3.Matcher{MatcherType: &xdsmatcherv3.Matcher_MatcherList_{MatcherList: &xdsmatcherv3.Matcher_MatcherList{
		Matchers: []*xdsmatcherv3.Matcher_MatcherList_FieldMatcher{{
			Predicate: &xdsmatcherv3.Matcher_MatcherList_Predicate{MatchType: &xdsmatcherv3.Matcher_MatcherList_Predicate_SinglePredicate_{
				SinglePredicate: &xdsmatcherv3.Matcher_MatcherList_Predicate_SinglePredicate{
					Input:   &xdscorev3.TypedExtensionConfig{Name: "decided", TypedConfig: input},
					Matcher: &xdsmatcherv3.Matcher_MatcherList_Predicate_SinglePredicate_ValueMatch{ValueMatch: nonEmpty()},
				},
			}},
			OnMatch: &xdsmatcherv3.Matcher_OnMatch{OnMatch: &xdsmatcherv3.Matcher_OnMatch_Action{Action: &xdscorev3.TypedExtensionConfig{Name: "skip", TypedConfig: skip}}},
		}},
	}}}
	wrapped, err := pack(&matchingv3.ExtensionWithMatcher{
		XdsMatcher:      m,
		ExtensionConfig: &corev3.TypedExtensionConfig{Name: ExtProcFilter, TypedConfig: extProc},
	})
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpFilter{Name: "envoy.filters.http.match_delegate", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: wrapped}}, nil
}

// wasmRoutes are the routes for requests the wasm plugin decided, matched
// on its filter state: streaming ones first (first-token deadline), then
// the rest, which race a late attempt at deadline (hedge.go; 0: none) as
// the processor's non-stream route does.
func wasmRoutes(p *policy.Policy, bodyLimit uint64, deadline time.Duration) ([]*routev3.Route, error) {
	spec, err := attemptMatcher(p)
	if err != nil {
		return nil, err
	}
	mk := func(name string, match *matcherv3.FilterStateMatcher, rp *routev3.RetryPolicy) *routev3.Route {
		return &routev3.Route{
			Name: name,
			Match: &routev3.RouteMatch{
				PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
				FilterState:   []*matcherv3.FilterStateMatcher{match},
			},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				Timeout:          durationpb.New(p.Envoy.RequestTimeout.D()),
				ClusterSpecifier: &routev3.RouteAction_InlineClusterSpecifierPlugin{InlineClusterSpecifierPlugin: spec},
				RetryPolicy:      rp,
			}},
			RequestBodyBufferLimit: wrapperspb.UInt64(bodyLimit),
		}
	}
	present := func(key string) *matcherv3.FilterStateMatcher {
		return &matcherv3.FilterStateMatcher{Key: wasmStatePrefix + key, Matcher: &matcherv3.FilterStateMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: ".+"}},
		}}}
	}
	stream := mk(wasmStreamRoute, present(plugin.StateStream), streamRetryPolicy(p))
	cfg, err := firstTokenPerRoute()
	if err != nil {
		return nil, err
	}
	stream.TypedPerFilterConfig = cfg
	routed := mk(wasmRoutedRoute, present(plugin.StateBackend), retryPolicy(p))
	hedgeOnDeadline(routed.GetRoute(), deadline)
	return []*routev3.Route{stream, routed}, nil
}

// attemptMatcher picks attempt N's cluster from the filter state
// wasm.detour_try_N. Envoy sets x-envoy-attempt-count to N-1 when it
// re-runs the specifier for retry N-1 (refresh_cluster_on_retry), and the
// header is absent on the first pick; clients' copies are stripped at the
// door.
func attemptMatcher(p *policy.Policy) (*routev3.ClusterSpecifierPlugin, error) {
	names := make([]string, len(p.Backends))
	for i, b := range p.Backends {
		names[i] = b.Name
	}
	sort.Strings(names)
	byBackend := func(n int) (*xdsmatcherv3.Matcher, error) {
		input, err := pack(&networkinputsv3.FilterStateInput{Key: wasmStatePrefix + plugin.StateTryPrefix + strconv.Itoa(n)})
		if err != nil {
			return nil, err
		}
		exact := map[string]*xdsmatcherv3.Matcher_OnMatch{}
		for _, name := range names {
			a, err := pack(&clusterspecmatcherv3.ClusterAction{Cluster: name})
			if err != nil {
				return nil, err
			}
			exact[name] = &xdsmatcherv3.Matcher_OnMatch{OnMatch: &xdsmatcherv3.Matcher_OnMatch_Action{Action: &xdscorev3.TypedExtensionConfig{Name: "cluster", TypedConfig: a}}}
		}
		return &xdsmatcherv3.Matcher{MatcherType: &xdsmatcherv3.Matcher_MatcherTree_{MatcherTree: &xdsmatcherv3.Matcher_MatcherTree{
			Input:    &xdscorev3.TypedExtensionConfig{Name: "try", TypedConfig: input},
			TreeType: &xdsmatcherv3.Matcher_MatcherTree_ExactMatchMap{ExactMatchMap: &xdsmatcherv3.Matcher_MatcherTree_MatchMap{Map: exact}},
		}}}, nil
	}
	first, err := byBackend(1)
	if err != nil {
		return nil, err
	}
	retries := map[string]*xdsmatcherv3.Matcher_OnMatch{}
	for n := 2; n <= p.Retry.Attempts; n++ {
		m, err := byBackend(n)
		if err != nil {
			return nil, err
		}
		retries[strconv.Itoa(n-1)] = &xdsmatcherv3.Matcher_OnMatch{OnMatch: &xdsmatcherv3.Matcher_OnMatch_Matcher{Matcher: m}}
	}
	count, err := pack(&matcherv3.HttpRequestHeaderMatchInput{HeaderName: attemptCountHdr})
	if err != nil {
		return nil, err
	}
	tree := &xdsmatcherv3.Matcher{
		MatcherType: &xdsmatcherv3.Matcher_MatcherTree_{MatcherTree: &xdsmatcherv3.Matcher_MatcherTree{
			Input:    &xdscorev3.TypedExtensionConfig{Name: "attempt", TypedConfig: count},
			TreeType: &xdsmatcherv3.Matcher_MatcherTree_ExactMatchMap{ExactMatchMap: &xdsmatcherv3.Matcher_MatcherTree_MatchMap{Map: retries}},
		}},
		OnNoMatch: &xdsmatcherv3.Matcher_OnMatch{OnMatch: &xdsmatcherv3.Matcher_OnMatch_Matcher{Matcher: first}},
	}
	spec, err := pack(&clusterspecmatcherv3.MatcherClusterSpecifier{ClusterMatcher: tree})
	if err != nil {
		return nil, err
	}
	return &routev3.ClusterSpecifierPlugin{Extension: &corev3.TypedExtensionConfig{
		Name: "envoy.router.cluster_specifier_plugin.matcher", TypedConfig: spec,
	}}, nil
}

// RouterUpstreamFilters are the per-attempt filters every backend cluster
// without filters of its own runs, set on the router: in wasm routing mode,
// the first-token hold (stream routes only) and the plugin's upstream role,
// which learns each attempt's backend from Envoy (xds.cluster_name) and
// rewrites the model in place for requests either router decided (both
// pad the model). No per-attempt ext_proc: its header-based skip would not
// survive retries (the first attempt strips the header). They sit in the listener rather than in each
// cluster because Envoy 1.40 fetches remote wasm code for listeners but not
// for clusters ("failed to load (in progress)"); from the router's
// upstream filters it failed the same way, so those read the module from
// disk. Backends with credentials
// keep cluster filters: only the ext_proc service holds keys.
func routerUpstreamFilters(p *policy.Policy, o Options) ([]*hcmv3.HttpFilter, error) {
	if _, routing := wasmOn(p, o.Wasm); !routing {
		return nil, nil
	}
	// Streams hold their headers until the first token (first-token
	// deadline; on only on the stream routes).
	ft, err := firstTokenFilter(p)
	if err != nil {
		return nil, err
	}
	models := map[string]string{}
	for _, b := range p.Backends {
		models[b.Name] = b.Model
	}
	// Read from disk: Envoy 1.40 does not wait for a remote fetch before
	// building upstream filters ("failed to load (in progress)").
	w, err := diskWasmFilter(p, o, "detour_upstream", &plugin.Config{Role: plugin.RoleUpstream, Models: models})
	if err != nil {
		return nil, err
	}
	codec, err := pack(&upstreamcodecv3.UpstreamCodec{})
	if err != nil {
		return nil, err
	}
	return []*hcmv3.HttpFilter{ft, w, {Name: "envoy.filters.http.upstream_codec", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: codec}}}, nil
}

// observeFilter is, in wasm routing, the plugin's upstream role for the
// own filters of a backend with credentials: it only counts the backend's
// attempts for local demotion (decision 0016), the processor's stage
// after it does the rest. Nil in ext_proc routing.
func observeFilter(p *policy.Policy, o Options, b *policy.Backend) (*hcmv3.HttpFilter, error) {
	if _, routing := wasmOn(p, o.Wasm); !routing {
		return nil, nil
	}
	return diskWasmFilter(p, o, "detour_observe", &plugin.Config{Role: plugin.RoleUpstream, Backend: b.Name, ObserveOnly: true})
}

// diskWasmFilter is wasmFilter reading the module from disk even when
// Envoy is fed over xDS: every instance of wasm routing (one VM per
// worker for all of them; upstream filters cannot wait for a fetch).
func diskWasmFilter(p *policy.Policy, o Options, name string, cfg *plugin.Config) (*hcmv3.HttpFilter, error) {
	o.localWasm = true
	return wasmFilter(p, o.Wasm, o, name, cfg)
}

// clusterHasOwnFilters: in wasm routing mode only backends with credentials
// keep per-cluster filters (which override the router's).
func clusterHasOwnFilters(p *policy.Policy, o Options, b *policy.Backend) bool {
	_, routing := wasmOn(p, o.Wasm)
	return !routing || b.Credentials != nil
}

// nonEmpty matches any value: the input is present.
func nonEmpty() *xdsmatcherv3.StringMatcher {
	return &xdsmatcherv3.StringMatcher{MatchPattern: &xdsmatcherv3.StringMatcher_SafeRegex{SafeRegex: &xdsmatcherv3.RegexMatcher{
		Regex:      ".+",
		EngineType: &xdsmatcherv3.RegexMatcher_GoogleRe2{GoogleRe2: &xdsmatcherv3.RegexMatcher_GoogleRE2{}},
	}}}
}

// WasmHandler serves the module to Envoy.
func WasmHandler(m *WasmModule) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("content-type", "application/wasm")
		w.Header().Set("content-length", strconv.Itoa(len(m.Bytes)))
		w.Write(m.Bytes)
	})
}
