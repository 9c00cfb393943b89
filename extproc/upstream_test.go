package extproc

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/detourhq/detour/examples"

	"github.com/detourhq/detour/policy"
)

// upstreamHeaders is the headers message of the per-attempt filter in
// cluster's chain: it carries the cluster name as an attribute, and the
// model the router stage wrote into the body.
func upstreamHeaders(path, cluster, bodyModel string) *extprocv3.ProcessingRequest {
	m := headersMsg(post(path, nil))
	hm := m.GetRequestHeaders().Headers
	hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: HeaderModel, RawValue: []byte(bodyModel)})
	m.Attributes = map[string]*structpb.Struct{"envoy.filters.http.ext_proc": {Fields: map[string]*structpb.Value{
		AttrClusterName: structpb.NewStringValue(cluster),
	}}}
	return m
}

// attemptResult is what the upstream stage answered for one attempt.
type attemptResult struct {
	headers  *extprocv3.CommonResponse // the headers answer
	body     *extprocv3.CommonResponse // the body answer; nil when not asked for
	override *extprocfilterv3.ProcessingMode
}

// attempt plays one upstream attempt as Envoy does: the body is sent only
// when the headers answer asks for it with a mode override.
func attempt(t *testing.T, h *harness, cluster string, body []byte) attemptResult {
	t.Helper()
	var req struct {
		Model string `json:"model"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		t.Fatal(err)
	}
	s := h.open(t)
	defer s.close()
	r := s.exchange(upstreamHeaders("/v1/chat/completions", cluster, req.Model))
	if r.GetRequestHeaders() == nil {
		t.Fatalf("headers answer %v, want a headers response (never an immediate one upstream)", r)
	}
	res := attemptResult{headers: r.GetRequestHeaders().GetResponse(), override: r.GetModeOverride()}
	if res.override.GetRequestBodyMode() != extprocfilterv3.ProcessingMode_BUFFERED {
		return res
	}
	r = s.exchange(bodyMsg(body, true))
	if r.GetRequestBody() == nil {
		t.Fatalf("body answer %v, want a body response", r)
	}
	res.body = r.GetRequestBody().GetResponse()
	return res
}

func TestUpstreamRewritesForTheAttemptsBackend(t *testing.T) {
	h := newHarness(t, quickstart(t, ""), nil)
	body := []byte(`{"model":"fast-8k","messages":[{"role":"user","content":"hi"}],"stream":true}`)

	// An attempt on the backend the router stage chose needs headers only.
	a := attempt(t, h, "fast", body)
	if a.body != nil || a.override != nil {
		t.Errorf("first-choice attempt asked for the body (override %v)", a.override)
	}
	if got := a.headers.GetHeaderMutation().GetRemoveHeaders(); !slices.Contains(got, HeaderBackend) || !slices.Contains(got, HeaderRoute) || !slices.Contains(got, HeaderModel) {
		t.Errorf("removed %v: detour's own headers must not reach providers", got)
	}
	if n := counter(t, h.metrics.Attempts.WithLabelValues("fast", "unchanged")); n != 1 {
		t.Errorf("upstream_attempts_total{fast,unchanged} = %v, want 1", n)
	}

	// A fallback with another model id asks for the body and gets it back
	// with its own model and a content-length that matches.
	a = attempt(t, h, "long", body)
	if a.body == nil {
		t.Fatal("fallback with another model id did not ask for the body")
	}
	out := a.body.GetBodyMutation().GetBody()
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil || m["model"] != "long-200k" || m["stream"] != true {
		t.Fatalf("rewritten body %s (%v), want model long-200k and the rest unchanged", out, err)
	}
	if got := setHeaders(t, a.body.GetHeaderMutation())["content-length"]; got != itoa(len(out)) {
		t.Errorf("content-length %q for a %d-byte body", got, len(out))
	}
	if n := counter(t, h.metrics.Attempts.WithLabelValues("long", "rewritten")); n != 1 {
		t.Errorf("upstream_attempts_total{long,rewritten} = %v, want 1", n)
	}

	// A cluster the policy does not name: passed through, counted.
	a = attempt(t, h, "mystery", body)
	if a.body != nil {
		t.Error("unknown cluster: body asked for")
	}
	if n := counter(t, h.metrics.Errors.WithLabelValues("unknown_cluster")); n != 1 {
		t.Errorf("errors_total{unknown_cluster} = %v, want 1", n)
	}
}

// A retry whose backend serves the model already in the body sends the
// body unchanged, with its own length: Envoy keeps the content-length an
// earlier attempt's rewrite set (vision-128k, four bytes longer), and a
// provider told 89 bytes and sent 85 waits for the rest until the client
// gives up. Found by the chaos suite's saturation run.
func TestUpstreamRetryUnchangedBodyGetsItsLength(t *testing.T) {
	h := newHarness(t, quickstart(t, ""), nil)
	body := []byte(`{"model":"fast-8k","messages":[{"role":"user","content":"hi"}]}`)
	s := h.open(t)
	defer s.close()
	// A retry: detour's headers (the model written) were removed by the
	// first attempt.
	r := s.exchange(upstreamHeaders("/v1/chat/completions", "fast", ""))
	if r.GetModeOverride().GetRequestBodyMode() != extprocfilterv3.ProcessingMode_BUFFERED {
		t.Fatalf("retry without the written model did not ask for the body: %v", r)
	}
	r = s.exchange(bodyMsg(body, true))
	common := r.GetRequestBody().GetResponse()
	if common.GetBodyMutation() != nil {
		t.Errorf("body rewritten for a backend that serves its model: %s", common.GetBodyMutation().GetBody())
	}
	if got := setHeaders(t, common.GetHeaderMutation())["content-length"]; got != itoa(len(body)) {
		t.Errorf("content-length %q, want %d (the body sent)", got, len(body))
	}
}

func TestUpstreamCredentials(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "long.key")
	if err := os.WriteFile(keyFile, []byte("  sk-long-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DETOUR_TEST_FAST_KEY", "sk-fast-secret")
	src := strings.Replace(string(quickstartSource()), "    price: { input: 0.10, output: 0.40 }\n",
		"    price: { input: 0.10, output: 0.40 }\n    credentials: { api_key_env: DETOUR_TEST_FAST_KEY }\n", 1)
	src = strings.Replace(src, "    price: { input: 1.00, output: 4.00 }\n",
		"    price: { input: 1.00, output: 4.00 }\n    credentials: { api_key_file: "+keyFile+", header: api-key }\n", 1)
	p, err := policy.Parse("creds", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, p, nil)
	body := []byte(`{"model":"fast-8k","messages":[{"role":"user","content":"hi"}]}`)
	for _, tc := range []struct {
		cluster       string
		set           map[string]string
		mustRemove    []string
		mustNotRemove string
	}{
		{"fast", map[string]string{"authorization": "Bearer sk-fast-secret"}, []string{"api-key"}, "authorization"},
		{"long", map[string]string{"api-key": "sk-long-secret"}, []string{"authorization"}, "api-key"},
		// No credentials of its own: it must not receive anyone else's
		// (Envoy keeps an attempt's headers on the next attempt).
		{"fast-b", map[string]string{}, []string{"authorization", "api-key"}, ""},
	} {
		a := attempt(t, h, tc.cluster, body)
		c := a.headers
		got := setHeaders(t, c.GetHeaderMutation())
		for k, v := range tc.set {
			if got[k] != v {
				t.Errorf("%s: header %s = %q, want %q", tc.cluster, k, got[k], v)
			}
		}
		for _, k := range []string{"authorization", "api-key"} {
			if _, ok := tc.set[k]; !ok && got[k] != "" {
				t.Errorf("%s: sent %s, which is another backend's", tc.cluster, k)
			}
		}
		removed := c.GetHeaderMutation().GetRemoveHeaders()
		for _, k := range tc.mustRemove {
			if !slices.Contains(removed, k) {
				t.Errorf("%s: %s not removed (removed %v)", tc.cluster, k, removed)
			}
		}
		if tc.mustNotRemove != "" && slices.Contains(removed, tc.mustNotRemove) {
			t.Errorf("%s: its own %s is on the removal list", tc.cluster, tc.mustNotRemove)
		}
	}
}

func TestCredentialsMustExist(t *testing.T) {
	base := string(quickstartSource())
	with := func(creds string) *policy.Policy {
		src := strings.Replace(base, "    price: { input: 0.10, output: 0.40 }\n", "    price: { input: 0.10, output: 0.40 }\n    credentials: "+creds+"\n", 1)
		p, err := policy.Parse("creds", []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	empty := filepath.Join(t.TempDir(), "empty")
	os.WriteFile(empty, []byte("\n"), 0o600)
	for _, tc := range []struct{ creds, want string }{
		{"{ api_key_env: DETOUR_TEST_UNSET_KEY }", "DETOUR_TEST_UNSET_KEY"},
		{"{ api_key_file: /nonexistent/key }", "api_key_file"},
		{"{ api_key_file: " + empty + " }", "is empty"},
	} {
		_, err := New(Config{Policy: with(tc.creds), Metrics: NewMetrics(newRegistry())})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "backend fast") {
			t.Errorf("%s: error %v, want one naming backend fast and %q", tc.creds, err, tc.want)
		}
	}
}

func TestRouterStageOrdersBackends(t *testing.T) {
	for _, tc := range []struct {
		attempts string
		want     []string
	}{
		{"", []string{"fast", "fast-b", "long", "vision"}},
		{"retry: { attempts: 2 }\n", []string{"fast", "fast-b"}},
	} {
		h := newHarness(t, quickstart(t, tc.attempts), nil)
		r := h.do(t, post("/v1/chat/completions", chat("auto", "hello", nil)))
		pg := r.metadata.GetFields()[PriorityGroupsNamespace].GetStructValue().AsMap()
		var got []string
		for _, g := range pg["priority_groups"].([]any) {
			gm := g.(map[string]any)
			cl := gm["clusters"].([]any)[0].(map[string]any)
			if cl["cluster_name"] != gm["name"] {
				t.Errorf("group %v: cluster and group names differ", gm)
			}
			got = append(got, gm["name"].(string))
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("attempts %q: order %v, want %v", tc.attempts, got, tc.want)
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func newRegistry() *prometheus.Registry { return prometheus.NewRegistry() }

func quickstartSource() []byte { return examples.QuickstartPolicy }
