package xds

import (
	"bytes"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	earlyhmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/early_header_mutation/header_mutation/v3"
	prioritygroupv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/router/cluster_specifiers/priority_group/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/detourhq/detour/examples"
	"github.com/detourhq/detour/extproc"
	"github.com/detourhq/detour/policy"
)

func quickstart(t testing.TB) *policy.Policy {
	t.Helper()
	p, err := policy.Parse("quickstart", examples.QuickstartPolicy)
	if err != nil {
		t.Fatalf("parse quickstart: %v", err)
	}
	return p
}

func parsePolicy(t testing.TB, src string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse("test", []byte(src))
	if err != nil {
		t.Fatalf("parse policy: %v", err)
	}
	return p
}

// tlsPolicy has TLS backends on hostnames, a mixed IP/hostname backend,
// and fails open.
const tlsPolicy = `version: 1
backends:
  - name: openai
    model: gpt-4o-mini
    endpoints:
      - address: api.openai.com:443
        tls: {}
    capabilities: {context_window: 128000, tools: true, vision: true}
    price: {input: 0.15, output: 0.6}
  - name: azure
    model: gpt-4o-mini
    endpoints:
      - address: detour-test.openai.azure.com:443
        region: eu
        tls: {sni: custom.example.com}
      - address: detour-test-us.openai.azure.com:443
        region: us
        tls: {sni: custom.example.com}
    capabilities: {context_window: 128000}
  - name: local
    model: llama
    endpoints:
      - address: 10.0.0.5:8000
      - address: "[::1]:8001"
    capabilities: {context_window: 8192}
routes:
  - name: auto
envoy:
  listen: 0.0.0.0:8080
  admin: 127.0.0.1:9902
  request_timeout: 90s
extproc:
  listen: detour-extproc.internal:9002
  message_timeout: 750ms
  failure_mode_allow: true
limits:
  max_body_bytes: 1MiB
`

func mustBuild(t testing.TB, p *policy.Policy) *Resources {
	t.Helper()
	r, err := Build(p)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return r
}

func unpack[T proto.Message](t testing.TB, a *anypb.Any, m T) T {
	t.Helper()
	if a == nil {
		t.Fatalf("no typed config for %T", m)
	}
	if err := a.UnmarshalTo(m); err != nil {
		t.Fatalf("unpack %s into %T: %v", a.GetTypeUrl(), m, err)
	}
	return m
}

func hcmOf(t testing.TB, l *listenerv3.Listener) *hcmv3.HttpConnectionManager {
	t.Helper()
	if len(l.FilterChains) != 1 || len(l.FilterChains[0].Filters) != 1 {
		t.Fatalf("listener has %d filter chains", len(l.FilterChains))
	}
	f := l.FilterChains[0].Filters[0]
	if f.Name != "envoy.filters.network.http_connection_manager" {
		t.Fatalf("network filter %q", f.Name)
	}
	return unpack(t, f.GetTypedConfig(), &hcmv3.HttpConnectionManager{})
}

func TestBuildDeterministic(t *testing.T) {
	for _, tt := range []struct {
		name string
		p    func(testing.TB) *policy.Policy
	}{
		{"quickstart", quickstart},
		{"tls", func(t testing.TB) *policy.Policy { return parsePolicy(t, tlsPolicy) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			first := mustBuild(t, tt.p(t))
			firstBytes := marshalAll(t, first)
			// Map iteration order is random per range statement, so one
			// rebuild could agree by luck: build several times.
			for i := 0; i < 20; i++ {
				again := mustBuild(t, tt.p(t))
				a, b := first.all(), again.all()
				if len(a) != len(b) {
					t.Fatalf("build %d: %d resources, then %d", i, len(a), len(b))
				}
				for j := range a {
					if !proto.Equal(a[j], b[j]) {
						t.Fatalf("build %d: resource %d (%T) differs", i, j, a[j])
					}
				}
				if got := marshalAll(t, again); !bytes.Equal(got, firstBytes) {
					t.Fatalf("build %d: deterministic marshal differs", i)
				}
			}
		})
	}
}

func marshalAll(t testing.TB, r *Resources) []byte {
	t.Helper()
	var out []byte
	for _, m := range r.all() {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b...)
	}
	return out
}

func TestBuildValid(t *testing.T) {
	for _, src := range []string{string(examples.QuickstartPolicy), tlsPolicy} {
		r := mustBuild(t, parsePolicy(t, src))
		for _, m := range r.all() {
			if err := m.(interface{ ValidateAll() error }).ValidateAll(); err != nil {
				t.Errorf("%T: %v", m, err)
			}
		}
		if len(r.Listeners) != 1 || len(r.Routes) != 1 {
			t.Errorf("%d listeners, %d route configs", len(r.Listeners), len(r.Routes))
		}
	}
}

func TestListener(t *testing.T) {
	p := quickstart(t)
	r := mustBuild(t, p)
	l := r.Listeners[0]
	if l.Name != ListenerName {
		t.Errorf("listener name %q", l.Name)
	}
	sa := l.GetAddress().GetSocketAddress()
	if sa.GetAddress() != "127.0.0.1" || sa.GetPortValue() != 10000 {
		t.Errorf("listener address %v", sa)
	}
	if got, want := l.GetPerConnectionBufferLimitBytes().GetValue(), uint32(p.Limits.MaxBodyBytes)+64<<10; got != want {
		t.Errorf("per-connection buffer limit %d, want %d", got, want)
	}
	hcm := hcmOf(t, l)

	// ext_proc first, then the resume filter, then the router, nothing else.
	var names []string
	for _, f := range hcm.HttpFilters {
		names = append(names, f.Name)
	}
	if strings.Join(names, ",") != ExtProcFilter+","+ResumeFilter+","+RouterFilter {
		t.Fatalf("http filters %v, want ext_proc, resume, router", names)
	}
	unpack(t, hcm.HttpFilters[2].GetTypedConfig(), &routerv3.Router{})
	rf := unpack(t, hcm.HttpFilters[1].GetTypedConfig(), &extprocfilterv3.ExternalProcessor{})
	if md := rf.GetGrpcService().GetInitialMetadata(); len(md) != 1 || md[0].Key != "x-detour-stage" || md[0].Value != "resume" || !rf.FailureModeAllow {
		t.Errorf("resume filter: metadata %v, failure_mode_allow %v; want the stage marked and fail-open", md, rf.FailureModeAllow)
	}
	ep := unpack(t, hcm.HttpFilters[0].GetTypedConfig(), &extprocfilterv3.ExternalProcessor{})
	checkExtProc(t, ep, p)

	// The inline route config is the one Build returned.
	if !proto.Equal(hcm.GetRouteConfig(), r.Routes[0]) {
		t.Error("the listener's route config is not Resources.Routes[0]")
	}
	if got := hcm.GetStreamIdleTimeout().AsDuration(); got != p.Envoy.RequestTimeout.D() {
		t.Errorf("stream idle timeout %v, want the request timeout %v", got, p.Envoy.RequestTimeout.D())
	}

	// Clients cannot pick the backend with detour's own headers.
	if len(hcm.EarlyHeaderMutationExtensions) != 1 {
		t.Fatalf("%d early header mutations", len(hcm.EarlyHeaderMutationExtensions))
	}
	ehm := unpack(t, hcm.EarlyHeaderMutationExtensions[0].GetTypedConfig(), &earlyhmv3.HeaderMutation{})
	removed := map[string]bool{}
	for _, m := range ehm.Mutations {
		removed[m.GetRemove()] = true
	}
	for _, h := range []string{extproc.HeaderBackend, extproc.HeaderModel, extproc.HeaderRoute, extproc.HeaderStream} {
		if !removed[h] {
			t.Errorf("early header mutation does not remove %s (removes %v)", h, removed)
		}
	}

	// Local replies: detour's own replies are left alone; the rest get
	// the OpenAI error shape.
	lrc := hcm.GetLocalReplyConfig()
	if len(lrc.GetMappers()) == 0 {
		t.Fatal("no local reply mappers")
	}
	// Either detour.reply metadata (the ext_proc service) or response code
	// details detour_* (the wasm plugin).
	or := lrc.Mappers[0].GetFilter().GetOrFilter().GetFilters()
	if len(or) != 2 || !strings.Contains(or[1].GetExtensionFilter().GetTypedConfig().String(), "startsWith('detour_')") {
		t.Errorf("first mapper does not pass the wasm plugin's replies through: %v", lrc.Mappers[0])
	}
	var mf *accesslogv3.MetadataFilter
	if len(or) > 0 {
		mf = or[0].GetMetadataFilter()
	}
	if mf.GetMatcher().GetFilter() != extproc.MetadataNamespace || mf.GetMatcher().GetPath()[0].GetKey() != "reply" ||
		!mf.GetMatcher().GetValue().GetBoolMatch() || lrc.Mappers[0].BodyFormatOverride != nil {
		t.Errorf("first mapper does not pass detour.reply through untouched: %v", lrc.Mappers[0])
	}
	for i, m := range lrc.Mappers[1:] {
		jf := m.GetBodyFormatOverride().GetJsonFormat()
		if jf == nil || jf.GetFields()["error"].GetStructValue().GetFields()["message"] == nil {
			t.Errorf("mapper %d has no OpenAI-shaped body: %v", i+1, m.GetBodyFormatOverride())
		}
		if m.GetBodyFormatOverride().GetContentType() != "application/json" {
			t.Errorf("mapper %d content type %q", i+1, m.GetBodyFormatOverride().GetContentType())
		}
	}
}

func checkExtProc(t *testing.T, ep *extprocfilterv3.ExternalProcessor, p *policy.Policy) {
	t.Helper()
	if err := ep.ValidateAll(); err != nil {
		t.Errorf("ext_proc config: %v", err)
	}
	if got := ep.GetGrpcService().GetEnvoyGrpc().GetClusterName(); got != ExtProcCluster {
		t.Errorf("ext_proc cluster %q", got)
	}
	// A processor restart or a killed replica: the stream is retried,
	// only for failures before the processor answered.
	rp := ep.GetGrpcService().GetRetryPolicy()
	if rp.GetRetryOn() != "connect-failure,refused-stream,unavailable,reset" || rp.GetNumRetries().GetValue() == 0 || rp.GetRetryBackOff() == nil {
		t.Errorf("ext_proc stream retry policy %v", rp)
	}
	pm := ep.GetProcessingMode()
	want := &extprocfilterv3.ProcessingMode{
		RequestHeaderMode:   extprocfilterv3.ProcessingMode_SEND,
		RequestBodyMode:     extprocfilterv3.ProcessingMode_BUFFERED,
		RequestTrailerMode:  extprocfilterv3.ProcessingMode_SKIP,
		ResponseHeaderMode:  extprocfilterv3.ProcessingMode_SKIP,
		ResponseBodyMode:    extprocfilterv3.ProcessingMode_NONE,
		ResponseTrailerMode: extprocfilterv3.ProcessingMode_SKIP,
	}
	if !proto.Equal(pm, want) {
		t.Errorf("processing mode %v, want %v", pm, want)
	}
	if got := ep.GetMessageTimeout().AsDuration(); got != p.ExtProc.MessageTimeout.D() {
		t.Errorf("message_timeout %v, want %v", got, p.ExtProc.MessageTimeout.D())
	}
	if ep.FailureModeAllow != p.ExtProc.FailureModeAllow {
		t.Errorf("failure_mode_allow %v, want %v", ep.FailureModeAllow, p.ExtProc.FailureModeAllow)
	}
	if ep.GetStatusOnError().GetCode() != typev3.StatusCode_ServiceUnavailable {
		t.Errorf("status_on_error %v, want 503", ep.GetStatusOnError())
	}
	if ns := ep.GetMetadataOptions().GetReceivingNamespaces().GetUntyped(); len(ns) != 2 || ns[0] != extproc.MetadataNamespace || ns[1] != extproc.PriorityGroupsNamespace {
		t.Errorf("receiving namespaces %v, want [%s %s]", ns, extproc.MetadataNamespace, extproc.PriorityGroupsNamespace)
	}
	if ep.GetGrpcService().GetTimeout().AsDuration() <= 0 {
		t.Error("no gRPC timeout")
	}
}

func TestExtProcFollowsPolicy(t *testing.T) {
	p := parsePolicy(t, tlsPolicy)
	ep := ExtProcFilterConfig(p)
	checkExtProc(t, ep, p)
	if !ep.FailureModeAllow || ep.GetMessageTimeout().AsDuration() != 750*time.Millisecond {
		t.Errorf("ext_proc %v does not follow the policy", ep)
	}
}

func TestRouteConfig(t *testing.T) {
	for _, tt := range []struct {
		name string
		p    *policy.Policy
	}{
		{"fail closed", quickstart(t)},
		{"fail open", parsePolicy(t, tlsPolicy)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.p
			rc, err := RouteConfig(p)
			if err != nil {
				t.Fatal(err)
			}
			if rc.Name != RouteConfigName || len(rc.VirtualHosts) != 1 {
				t.Fatalf("route config %q with %d virtual hosts", rc.Name, len(rc.VirtualHosts))
			}
			vh := rc.VirtualHosts[0]
			if len(vh.Domains) != 1 || vh.Domains[0] != "*" {
				t.Errorf("domains %v", vh.Domains)
			}
			limit := uint64(p.Limits.MaxBodyBytes) + 64<<10
			if got := vh.GetRequestBodyBufferLimit().GetValue(); got != limit {
				t.Errorf("virtual host request_body_buffer_limit %d, want %d", got, limit)
			}
			for _, r := range vh.Routes {
				if got := r.GetRequestBodyBufferLimit(); got != nil && got.GetValue() != limit {
					t.Errorf("route %s request_body_buffer_limit %d, want %d", r.Name, got.GetValue(), limit)
				}
			}

			want := map[string]string{
				extproc.HeaderBackend: "%UPSTREAM_METADATA(detour:backend)%",
				extproc.HeaderModel:   "%UPSTREAM_METADATA(detour:model)%",
				extproc.HeaderReason:  "%DYNAMIC_METADATA(detour:reason)%",
			}
			got := map[string]string{}
			for _, h := range vh.ResponseHeadersToAdd {
				got[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
				if h.AppendAction != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
					t.Errorf("response header %s appends", h.GetHeader().GetKey())
				}
			}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("response header %s = %q, want %q", k, got[k], v)
				}
			}

			if len(vh.Routes) != 3 || vh.Routes[0].Name != streamRouteName {
				t.Fatalf("%d routes, want stream (checked in firsttoken_test.go), routed + fallback", len(vh.Routes))
			}
			routed, fallback := vh.Routes[1], vh.Routes[2]
			hm := routed.GetMatch().GetHeaders()
			if routed.GetMatch().GetPrefix() != "/" || len(hm) != 1 || hm[0].Name != extproc.HeaderBackend || !hm[0].GetPresentMatch() {
				t.Errorf("routed match %v, want prefix / with %s present", routed.GetMatch(), extproc.HeaderBackend)
			}
			ra := routed.GetRoute()
			plugin := ra.GetInlineClusterSpecifierPlugin().GetExtension()
			if plugin.GetName() != "envoy.router.cluster_specifier_plugin.priority_group" {
				t.Fatalf("routed cluster specifier %v, want the priority_group plugin", ra.GetClusterSpecifier())
			}
			pg := unpack(t, plugin.GetTypedConfig(), &prioritygroupv3.PriorityGroupClusterSpecifier{})
			if pg.OverrideMetadataNamespace != extproc.PriorityGroupsNamespace || len(pg.PriorityGroups) != len(p.Backends) {
				t.Errorf("priority groups %v, want one per backend and the override namespace %s", pg, extproc.PriorityGroupsNamespace)
			}
			rp := ra.GetRetryPolicy()
			if rp.GetRetryOn() != RetryOn || !rp.RefreshClusterOnRetry || rp.GetNumRetries().GetValue() != uint32(p.Retry.Attempts-1) ||
				len(rp.RetriableStatusCodes) != 1 || rp.RetriableStatusCodes[0] != 429 {
				t.Errorf("retry policy %v", rp)
			}
			if rp.GetRateLimitedRetryBackOff() != nil {
				t.Error("rate-limited back-off is set: a Retry-After from one provider would delay the attempt on the next")
			}
			if got := rp.GetRetryBackOff().GetBaseInterval().AsDuration(); got != p.Retry.BaseDelay.D() {
				t.Errorf("retry base interval %v, want %v", got, p.Retry.BaseDelay.D())
			}
			if got := ra.GetTimeout().AsDuration(); got != p.Envoy.RequestTimeout.D() {
				t.Errorf("route timeout %v, want %v", got, p.Envoy.RequestTimeout.D())
			}

			if fallback.GetMatch().GetPrefix() != "/" || len(fallback.GetMatch().GetHeaders()) != 0 {
				t.Errorf("fallback match %v", fallback.GetMatch())
			}
			if p.ExtProc.FailureModeAllow {
				fa := fallback.GetRoute()
				if fa.GetCluster() != p.Backends[0].Name {
					t.Errorf("fail-open fallback goes to %v, want cluster %s", fa.GetClusterSpecifier(), p.Backends[0].Name)
				}
				if fa.GetTimeout().AsDuration() != p.Envoy.RequestTimeout.D() {
					t.Errorf("fallback timeout %v", fa.GetTimeout().AsDuration())
				}
			} else {
				dr := fallback.GetDirectResponse()
				if dr.GetStatus() != 503 {
					t.Fatalf("fail-closed fallback %v, want a direct 503", fallback.Action)
				}
				if body := dr.GetBody().GetInlineString(); !strings.Contains(body, `"error":{`) || !strings.Contains(body, `"code":"not_routed"`) {
					t.Errorf("fallback body %q", body)
				}
			}
		})
	}
}

func TestClusters(t *testing.T) {
	t.Run("quickstart", func(t *testing.T) {
		p := quickstart(t)
		r := mustBuild(t, p)
		if len(r.Clusters) != 1+len(p.Backends) {
			t.Fatalf("%d clusters for %d backends", len(r.Clusters), len(p.Backends))
		}
		checkExtProcCluster(t, r.Clusters[0], "127.0.0.1", 9002, clusterv3.Cluster_STATIC)
		for i, b := range p.Backends {
			c := r.Clusters[i+1]
			if c.Name != b.Name || c.GetLoadAssignment().GetClusterName() != b.Name {
				t.Errorf("cluster %d named %q / %q, want %q", i+1, c.Name, c.GetLoadAssignment().GetClusterName(), b.Name)
			}
			if c.GetType() != clusterv3.Cluster_STATIC {
				t.Errorf("%s: type %v, want STATIC for an IP", c.Name, c.GetType())
			}
			if c.TransportSocket != nil {
				t.Errorf("%s: TLS without tls in the policy", c.Name)
			}
			eps := endpoints(c)
			if len(eps) != 1 || eps[0] != b.Endpoints[0].Address {
				t.Errorf("%s: endpoints %v, want %s", c.Name, eps, b.Endpoints[0].Address)
			}
			checkFailoverSettings(t, p, &b, c)
		}
	})
	t.Run("tls and hostnames", func(t *testing.T) {
		p := parsePolicy(t, tlsPolicy)
		r := mustBuild(t, p)
		checkExtProcCluster(t, r.Clusters[0], "detour-extproc.internal", 9002, clusterv3.Cluster_STRICT_DNS)
		byName := map[string]*clusterv3.Cluster{}
		for _, c := range r.Clusters[1:] {
			byName[c.Name] = c
		}
		for _, tt := range []struct {
			name string
			typ  clusterv3.Cluster_DiscoveryType
			eps  []string
			sni  string // "" for no TLS
		}{
			{"openai", clusterv3.Cluster_STRICT_DNS, []string{"api.openai.com:443"}, "api.openai.com"},
			{"azure", clusterv3.Cluster_STRICT_DNS, []string{"detour-test.openai.azure.com:443", "detour-test-us.openai.azure.com:443"}, "custom.example.com"},
			{"local", clusterv3.Cluster_STATIC, []string{"10.0.0.5:8000", "[::1]:8001"}, ""},
		} {
			c := byName[tt.name]
			if c == nil {
				t.Fatalf("no cluster %s", tt.name)
			}
			if c.GetType() != tt.typ {
				t.Errorf("%s: type %v, want %v", tt.name, c.GetType(), tt.typ)
			}
			if got := endpoints(c); strings.Join(got, " ") != strings.Join(tt.eps, " ") {
				t.Errorf("%s: endpoints %v, want %v", tt.name, got, tt.eps)
			}
			if tt.sni == "" {
				if c.TransportSocket != nil {
					t.Errorf("%s: unexpected TLS", tt.name)
				}
				continue
			}
			ts := c.GetTransportSocket()
			if ts.GetName() != "envoy.transport_sockets.tls" {
				t.Fatalf("%s: transport socket %v", tt.name, ts)
			}
			tc := unpack(t, ts.GetTypedConfig(), &tlsv3.UpstreamTlsContext{})
			if tc.Sni != tt.sni {
				t.Errorf("%s: SNI %q, want %q", tt.name, tc.Sni, tt.sni)
			}
		}
	})
}

// endpoints lists a cluster's endpoints as host:port.
func endpoints(c *clusterv3.Cluster) []string {
	var out []string
	for _, l := range c.GetLoadAssignment().GetEndpoints() {
		for _, e := range l.LbEndpoints {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			host := sa.GetAddress()
			if strings.Contains(host, ":") {
				host = "[" + host + "]"
			}
			out = append(out, host+":"+itoa(sa.GetPortValue()))
		}
	}
	return out
}

func itoa(n uint32) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

func checkExtProcCluster(t *testing.T, c *clusterv3.Cluster, host string, port uint32, typ clusterv3.Cluster_DiscoveryType) {
	t.Helper()
	if c.Name != ExtProcCluster {
		t.Fatalf("first cluster %q, want %s", c.Name, ExtProcCluster)
	}
	if c.GetType() != typ {
		t.Errorf("ext_proc cluster type %v, want %v", c.GetType(), typ)
	}
	if eps := endpoints(c); len(eps) != 1 || eps[0] != host+":"+itoa(port) {
		t.Errorf("ext_proc endpoints %v", eps)
	}
	opts := c.TypedExtensionProtocolOptions["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
	hpo := unpack(t, opts, &upstreamhttpv3.HttpProtocolOptions{})
	if hpo.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
		t.Errorf("ext_proc cluster does not speak HTTP/2: %v", hpo)
	}
	// Envoy's defaults (1024 requests, 3 retries) would cap client
	// requests in flight and the stream retries.
	th := c.GetCircuitBreakers().GetThresholds()
	if len(th) != 1 || th[0].GetMaxRequests().GetValue() < 50000 || th[0].GetMaxRetries().GetValue() < 50000 {
		t.Errorf("ext_proc cluster thresholds %v", th)
	}
}

func TestBuildErrors(t *testing.T) {
	p := quickstart(t)
	p.Envoy.Listen = "nope"
	if _, err := Build(p); err == nil || !strings.Contains(err.Error(), "envoy.listen") {
		t.Errorf("bad listen address: %v", err)
	}
	p = quickstart(t)
	p.ExtProc.Listen = "127.0.0.1:0"
	if _, err := Build(p); err == nil || !strings.Contains(err.Error(), "extproc.listen") {
		t.Errorf("port 0: %v", err)
	}
	p = quickstart(t)
	p.Backends[1].Endpoints[0].Address = "127.0.0.1:99999"
	if _, err := Build(p); err == nil || !strings.Contains(err.Error(), "fast-b") {
		t.Errorf("bad backend port: %v", err)
	}
}

func TestBackendClusterCAFile(t *testing.T) {
	c, err := BackendCluster(quickstart(t), &policy.Backend{Name: "b", Model: "m", Endpoints: []policy.Endpoint{
		{Address: "llm.example.com:443", TLS: &policy.TLS{CAFile: "/etc/detour/ca.pem"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	tc := unpack(t, c.GetTransportSocket().GetTypedConfig(), &tlsv3.UpstreamTlsContext{})
	if tc.Sni != "llm.example.com" {
		t.Errorf("SNI %q, want the endpoint's host", tc.Sni)
	}
	if got := tc.GetCommonTlsContext().GetValidationContext().GetTrustedCa().GetFilename(); got != "/etc/detour/ca.pem" {
		t.Errorf("trusted CA %q", got)
	}
	if err := c.ValidateAll(); err != nil {
		t.Error(err)
	}
}

// checkFailoverSettings: the per-attempt filter chain, outlier detection fit
// for one-endpoint provider clusters, a retry budget, and the endpoint
// metadata the response headers read.
func checkFailoverSettings(t *testing.T, p *policy.Policy, b *policy.Backend, c *clusterv3.Cluster) {
	t.Helper()
	opts := unpack(t, c.TypedExtensionProtocolOptions["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"], &upstreamhttpv3.HttpProtocolOptions{})
	var names []string
	for _, f := range opts.HttpFilters {
		names = append(names, f.Name)
	}
	if strings.Join(names, ",") != FirstTokenFilter+","+ExtProcFilter+",envoy.filters.http.upstream_codec" {
		t.Fatalf("%s: upstream filters %v, want first-token, ext_proc then upstream_codec", c.Name, names)
	}
	up := unpack(t, opts.HttpFilters[1].GetTypedConfig(), &extprocfilterv3.ExternalProcessor{})
	if attrs := up.RequestAttributes; len(attrs) != 1 || attrs[0] != extproc.AttrClusterName {
		t.Errorf("%s: upstream ext_proc attributes %v, want [%s]", c.Name, attrs, extproc.AttrClusterName)
	}
	// Headers only unless detour asks for the body by a mode override.
	if m := up.GetProcessingMode(); m.GetRequestBodyMode() != extprocfilterv3.ProcessingMode_NONE || m.GetResponseHeaderMode() != extprocfilterv3.ProcessingMode_SKIP || !up.AllowModeOverride {
		t.Errorf("%s: upstream processing mode %v, allow override %v", c.Name, m, up.AllowModeOverride)
	}
	od := c.GetOutlierDetection()
	if od.GetConsecutive_5Xx().GetValue() != uint32(p.OutlierDetection.ConsecutiveErrors) ||
		od.GetEnforcingConsecutiveGatewayFailure().GetValue() != 100 || od.GetMaxEjectionPercent().GetValue() != 100 ||
		od.GetInterval().AsDuration() != p.OutlierDetection.Interval.D() {
		t.Errorf("%s: outlier detection %v", c.Name, od)
	}
	if c.GetCommonLbConfig().GetHealthyPanicThreshold() != nil {
		t.Errorf("%s: panic threshold changed; at 0 an all-ejected backend is not retried elsewhere", c.Name)
	}
	th := c.GetCircuitBreakers().GetThresholds()
	if len(th) != 1 || th[0].GetRetryBudget().GetBudgetPercent().GetValue() != p.Retry.BudgetPercent ||
		th[0].GetRetryBudget().GetMinRetryConcurrency().GetValue() != uint32(p.Retry.MinRetryConcurrency) {
		t.Errorf("%s: circuit breakers %v", c.Name, th)
	}
	for _, lle := range c.GetLoadAssignment().GetEndpoints() {
		for _, ep := range lle.GetLbEndpoints() {
			md := ep.GetMetadata().GetFilterMetadata()[extproc.MetadataNamespace].GetFields()
			if md["backend"].GetStringValue() != b.Name || md["model"].GetStringValue() != b.Model {
				t.Errorf("%s: endpoint metadata %v", c.Name, md)
			}
		}
	}
}

// In dynamic mode the listener takes its routes over RDS and IP-addressed
// backends their endpoints over EDS; each Envoy's own region comes first.
func TestBuildForDynamicAndRegions(t *testing.T) {
	p := parsePolicy(t, tlsPolicy)
	r, err := BuildFor(p, Options{Dynamic: true, Region: "us"})
	if err != nil {
		t.Fatal(err)
	}
	hcm := &hcmv3.HttpConnectionManager{}
	if err := r.Listeners[0].FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
		t.Fatal(err)
	}
	if rds := hcm.GetRds(); rds == nil || rds.RouteConfigName != RouteConfigName || rds.GetConfigSource().GetAds() == nil {
		t.Errorf("route specifier %v, want RDS %s over ADS", hcm.GetRouteSpecifier(), RouteConfigName)
	}
	byName := map[string]*clusterv3.Cluster{}
	for _, c := range r.Clusters {
		byName[c.Name] = c
	}
	// IP endpoints: EDS over ADS, the assignment served separately.
	local := byName["local"]
	if local.GetType() != clusterv3.Cluster_EDS || local.GetEdsClusterConfig().GetEdsConfig().GetAds() == nil || local.LoadAssignment != nil {
		t.Errorf("local: %v, want an EDS cluster over ADS", local)
	}
	if len(r.Endpoints) != 1 || r.Endpoints[0].ClusterName != "local" {
		t.Fatalf("EDS resources %v, want local's only", r.Endpoints)
	}
	// Host names: resolved by Envoy, so inline; priorities still by region.
	azure := byName["azure"]
	if azure.GetType() != clusterv3.Cluster_STRICT_DNS || azure.LoadAssignment == nil {
		t.Fatalf("azure: %v, want STRICT_DNS with its endpoints inline", azure)
	}
	prio := map[string]uint32{}
	for _, l := range azure.LoadAssignment.Endpoints {
		prio[l.GetLocality().GetRegion()] = l.Priority
	}
	if prio["us"] != 0 || prio["eu"] != 1 {
		t.Errorf("azure priorities %v, want us 0 (the Envoy's region), eu 1", prio)
	}
	// An Envoy in a region no endpoint is in: every region equally far.
	r, err = BuildFor(p, Options{Dynamic: true, Region: "ap"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range r.Clusters {
		for _, l := range c.GetLoadAssignment().GetEndpoints() {
			if l.Priority != 0 {
				t.Errorf("%s: region %s at priority %d, want 0", c.Name, l.GetLocality().GetRegion(), l.Priority)
			}
		}
	}
}

func TestExtProcReplicasAndCache(t *testing.T) {
	p := quickstart(t)
	if c := ExtProcFilterConfig(p); !c.AllowModeOverride || c.MaxMessageTimeout != nil {
		t.Errorf("default policy (memory cache, no queue): allow_mode_override %v, max_message_timeout %v", c.AllowModeOverride, c.MaxMessageTimeout)
	}
	p.Cache.Store = policy.CacheOff
	p.Queue.MaxWait = policy.Duration(10 * time.Second)
	for i := range p.Routes {
		p.Routes[i].Queue.MaxWait = policy.Duration(20 * time.Second)
	}
	if c := ExtProcFilterConfig(p); c.AllowModeOverride || c.MaxMessageTimeout.AsDuration() != 20*time.Second+p.ExtProc.MessageTimeout.D() {
		t.Errorf("cache off, queue 20 s: allow_mode_override %v, max_message_timeout %v", c.AllowModeOverride, c.MaxMessageTimeout.AsDuration())
	}
	// One replica: the stream retries its own processor (a restart), with
	// no host predicate (there is no other host).
	if rp := ExtProcFilterConfig(p).GrpcService.RetryPolicy; rp == nil || len(rp.RetryHostPredicate) != 0 {
		t.Errorf("one replica: stream retry policy %v", rp)
	}
	single, err := extProcCluster(p)
	if err != nil {
		t.Fatal(err)
	}
	if single.HealthChecks != nil || single.OutlierDetection != nil {
		t.Error("one replica: health checks or outlier detection")
	}
	p.ExtProc.Replicas = []string{"127.0.0.1:9002", "127.0.0.1:9003"}
	c, err := extProcCluster(p)
	if err != nil {
		t.Fatal(err)
	}
	if eps := endpoints(c); len(eps) != 2 || eps[1] != "127.0.0.1:9003" {
		t.Errorf("replicas: endpoints %v", eps)
	}
	if len(c.HealthChecks) != 1 || c.HealthChecks[0].GetGrpcHealthCheck() == nil || c.HealthChecks[0].NoTrafficInterval.AsDuration() != time.Second {
		t.Errorf("replicas: health checks %v", c.HealthChecks)
	}
	if rp := ExtProcFilterConfig(p).GrpcService.RetryPolicy; rp == nil || rp.RetryOn != "connect-failure,refused-stream,reset" {
		t.Errorf("replicas: ext_proc stream retry policy %v", rp)
	}
	p.ExtProc.Replicas = []string{"127.0.0.1:9002", "127.0.0.1:0"}
	if _, err := Build(p); err == nil || !strings.Contains(err.Error(), "extproc.replicas") {
		t.Errorf("bad replica: %v", err)
	}
}
