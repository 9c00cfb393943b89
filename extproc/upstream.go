package extproc

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/route"
)

// The upstream stage: Envoy runs a second ext_proc filter inside each
// backend cluster, once per attempt (retries included). It tells detour
// which cluster the attempt goes to; detour rewrites the request for that
// backend: its model id, its credentials, and none of detour's own headers.

// AttrClusterName is the request attribute the upstream filter is
// configured to send; its presence marks an upstream-stage stream.
const AttrClusterName = "xds.cluster_name"

// PriorityGroupsNamespace is the dynamic metadata namespace from which
// Envoy's priority_group cluster specifier reads the per-request order of
// backends: attempt N goes to group N.
const PriorityGroupsNamespace = "detour.pg"

// credential is one backend's API key, ready to send.
type credential struct {
	header string
	value  string
	// strip is the state's stripUpstream without header.
	strip []string
}

// loadCredentials reads every backend's key from its file or environment
// variable. A missing key is an error: a backend that would answer 401 to
// every request is worse than a service that does not start.
func loadCredentials(p *policy.Policy) (map[string]credential, []string, error) {
	creds := map[string]credential{}
	headers := map[string]bool{}
	for _, b := range p.Backends {
		c := b.Credentials
		if c == nil {
			continue
		}
		var key string
		switch {
		case c.APIKeyEnv != "":
			key = os.Getenv(c.APIKeyEnv)
			if key == "" {
				return nil, nil, fmt.Errorf("backend %s: environment variable %s (credentials.api_key_env) is empty or unset", b.Name, c.APIKeyEnv)
			}
		case c.APIKeyFile != "":
			raw, err := os.ReadFile(c.APIKeyFile)
			if err != nil {
				return nil, nil, fmt.Errorf("backend %s: credentials.api_key_file: %w", b.Name, err)
			}
			key = strings.TrimSpace(string(raw))
			if key == "" {
				return nil, nil, fmt.Errorf("backend %s: credentials.api_key_file %s is empty", b.Name, c.APIKeyFile)
			}
		}
		header := c.Header
		if header == "" {
			header = policy.DefaultCredentialHeader
		}
		value := key
		if header == "authorization" {
			value = "Bearer " + key
		}
		creds[b.Name] = credential{header: header, value: value}
		headers[header] = true
	}
	names := make([]string, 0, len(headers))
	for h := range headers {
		names = append(names, h)
	}
	sort.Strings(names)
	return creds, names, nil
}

// stripLists gives each credential the headers to remove on its backend's
// attempts: all of strip but its own.
func stripLists(creds map[string]credential, strip []string) {
	for name, c := range creds {
		c.strip = without(strip, c.header)
		creds[name] = c
	}
}

// upstreamCluster returns the cluster an upstream-stage stream is for.
func upstreamCluster(msg *extprocv3.ProcessingRequest) (string, bool) {
	attrs := msg.GetAttributes()["envoy.filters.http.ext_proc"]
	if attrs == nil {
		return "", false
	}
	v, ok := attrs.GetFields()[AttrClusterName]
	if !ok {
		return "", false
	}
	return v.GetStringValue(), true
}

// upstreamHeaders answers the upstream stage's headers message. Most
// attempts go to the backend the router stage wrote the body for: they need
// only headers (credentials, and none of detour's), so the body is asked
// for — by overriding the filter's body mode — only when this attempt's
// backend serves another model id.
func (s *Server) upstreamHeaders(st *state, w *work, h *extprocv3.HttpHeaders) *extprocv3.ProcessingResponse {
	bodyModel, routed, id := "", "", ""
	for _, hv := range h.GetHeaders().GetHeaders() {
		switch hv.Key {
		case ":path":
			w.path = headerValue(hv)
		case HeaderModel:
			bodyModel = headerValue(hv)
		case HeaderBackend:
			routed = headerValue(hv)
		case "x-request-id":
			id = headerValue(hv)
		case HeaderResumeFrom:
			w.resumeFrom = headerValue(hv)
		}
	}
	w.kind = route.KindFromPath(w.path)
	mut, be := s.upstreamHeaderMutation(st, w)
	w.backend = be
	if be != nil {
		// An attempt for another backend than the request's last one: that
		// backend failed it (demote.go).
		s.health.local.observe(id, routed, be.Name)
	}
	if be != nil && w.resumeFrom != "" {
		// A continuation: its body is marked for this attempt's backend.
		w.continuation = st.resume.styles[be.Name]
	}
	resp := &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{
		Response: &extprocv3.CommonResponse{HeaderMutation: mut},
	}}}
	if be == nil || h.EndOfStream || bodyModel == be.Model && w.continuation == "" {
		if be != nil {
			s.metrics.Attempts.WithLabelValues(be.Name, "unchanged").Inc()
		}
		return resp
	}
	resp.ModeOverride = &extprocfilterv3.ProcessingMode{RequestBodyMode: extprocfilterv3.ProcessingMode_BUFFERED}
	return resp
}

// upstreamHeaderMutation: this backend's credentials, and none of detour's
// headers or other backends' credentials. be is nil for a cluster the
// policy does not name.
func (s *Server) upstreamHeaderMutation(st *state, w *work) (*extprocv3.HeaderMutation, *route.Backend) {
	mut := &extprocv3.HeaderMutation{RemoveHeaders: st.stripUpstream}
	i, known := st.router.BackendIndex(w.cluster)
	if !known {
		s.metrics.Errors.WithLabelValues("unknown_cluster").Inc()
		s.log.Warn("upstream attempt for a cluster the policy does not name", "cluster", w.cluster)
		return mut, nil
	}
	be := st.router.Backend(i)
	if c, ok := st.creds[be.Name]; ok {
		// This backend's own header stays off the removal list, so the set
		// wins whatever order Envoy applies the two in.
		mut.RemoveHeaders = c.strip
		mut.SetHeaders = append(mut.SetHeaders, setHeader(c.header, c.value))
	}
	return mut, be
}

// upstreamBody answers the upstream stage's body message: the body for
// this attempt's backend and its headers. It never rejects: an error from
// an upstream filter would not be retried, and the router stage has
// already validated the request.
func (s *Server) upstreamBody(w *work, b *extprocv3.HttpBody) *extprocv3.ProcessingResponse {
	w.body = append(w.body, b.Body...)
	if !b.EndOfStream {
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}}
	}
	// The headers answer already set the credentials and removed detour's
	// headers; only the body and its length change here.
	mut := &extprocv3.HeaderMutation{}
	common := &extprocv3.CommonResponse{HeaderMutation: mut}
	be := w.backend
	if be == nil {
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{Response: common}}}
	}
	// The body sent is a fresh copy: w's buffers are reused after Send.
	var body []byte
	outcome := "unchanged"
	if w.continuation != "" {
		if marked, err := markContinuation(w.body, w.continuation); err == nil {
			body, outcome = marked, "continuation"
		} else {
			s.log.Warn("continuation left unmarked", "backend", be.Name, "error", err)
		}
	}
	src := w.body
	if body != nil {
		src = body
	}
	if err := route.ParseRequest(w.kind, src, &w.req); err == nil && w.req.Model != be.Model {
		body = route.RewriteModel(make([]byte, 0, len(src)+len(be.Model)), src, &w.req, be.Model)
		if outcome == "unchanged" {
			outcome = "rewritten"
		}
	}
	if body != nil {
		common.BodyMutation = &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: body}}
	} else {
		body = src
	}
	// Always the length of what this attempt sends: Envoy keeps an earlier
	// attempt's headers, so a retry whose body needs no rewrite (its
	// backend serves the model the router stage wrote) would otherwise go
	// out with the content-length of the last rewritten body, and the
	// provider would wait for bytes that never come.
	mut.SetHeaders = append(mut.SetHeaders, setHeader("content-length", strconv.Itoa(len(body))))
	s.metrics.Attempts.WithLabelValues(be.Name, outcome).Inc()
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{Response: common}}}
}

func without(list []string, drop string) []string {
	out := make([]string, 0, len(list))
	for _, h := range list {
		if h != drop {
			out = append(out, h)
		}
	}
	return out
}

// priorityGroups is the per-request order of backends for Envoy's
// priority_group cluster specifier: the chosen backend, then its fallbacks,
// at most attempts long.
func priorityGroups(r *route.Router, d *route.Decision, attempts int) *structpb.Value {
	groups := make([]any, 0, min(attempts, 1+len(d.Fallbacks)))
	add := func(i int) {
		name := r.Backend(i).Name
		groups = append(groups, map[string]any{
			"name":     name,
			"clusters": []any{map[string]any{"cluster_name": name, "weight": 1}},
		})
	}
	add(d.Backend)
	for _, i := range d.Fallbacks {
		if len(groups) >= attempts {
			break
		}
		add(i)
	}
	v, err := structpb.NewValue(map[string]any{"priority_groups": groups})
	if err != nil {
		// Only strings, numbers and nested maps/lists above: cannot fail.
		panic(err)
	}
	return v
}
