package probe

import (
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/detourhq/detour/policy"
)

// sse answers a stream of the given data lines.
func sse(lines ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		for _, l := range lines {
			fmt.Fprintf(w, "data: %s\n\n", l)
		}
	}
}

func status(code int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_, _ = io.WriteString(w, body)
	}
}

// TestProviderShapes: answers shaped as other providers shape them, or
// broken in ways the simulator does not break them.
func TestProviderShapes(t *testing.T) {
	const (
		toolChunk = `{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"%s","arguments":"{\"query\":\"x\"}"}}]},"finish_reason":null}]}`
		stop      = `{"choices":[{"delta":{},"finish_reason":"stop"}]}`
	)
	tests := []struct {
		name    string
		kind    string
		handler http.HandlerFunc
		ok      bool
		reason  string
	}{
		{"reasoning only, cut by max_tokens", policy.ProbeShort,
			sse(`{"choices":[{"delta":{"reasoning_content":"Let me think"}}]}`, `{"choices":[{"delta":{},"finish_reason":"length"}]}`, "[DONE]"), true, ""},
		{"empty answer", policy.ProbeShort, sse(`{"choices":[{"delta":{"role":"assistant","content":""}}]}`, stop, "[DONE]"), false, "the answer is empty"},
		{"no finish", policy.ProbeShort, sse(`{"choices":[{"delta":{"content":"pong"}}]}`), false, "the answer ended before it finished (1 chunks with tokens)"},
		{"not JSON chunk", policy.ProbeShort, sse(`{"choices":[{"delta":{"content":"pong"}}]}`, `{oops`), false, "the answer broke off after 1 chunks with tokens: chunk 2 is not JSON"},
		{"error inside the stream", policy.ProbeShort,
			sse(`{"error":{"message":"overloaded","type":"server_error"}}`, stop), false, "error in the answer: server_error: overloaded"},
		{"wrong tool", policy.ProbeToolCall, sse(fmt.Sprintf(toolChunk, "search"), stop, "[DONE]"), false, `called "search", want "get_weather"`},
		{"right tool", policy.ProbeToolCall, sse(fmt.Sprintf(toolChunk, "get_weather"), stop, "[DONE]"), true, ""},
		{"fenced JSON", policy.ProbeJSON, sse(`{"choices":[{"delta":{"content":"`+"```json\\n{\\\"status\\\": \\\"ok\\\"}\\n```"+`"}}]}`, stop, "[DONE]"), true, ""},
		{"JSON array", policy.ProbeJSON, sse(`{"choices":[{"delta":{"content":"[1]"}}]}`, stop, "[DONE]"), false, "the answer is not a JSON object (3 bytes)"},
		{"whole answer despite stream", policy.ProbeShort,
			status(200, `{"choices":[{"message":{"content":"pong"},"finish_reason":"stop"}],"usage":{"completion_tokens":1}}`), true, ""},
		{"non-OpenAI error", policy.ProbeShort, status(500, `oops`), false, "status 500, want 200"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler)
			defer srv.Close()
			p := newPolicy(t, func(p *policy.Policy) {
				p.Probes.Prompts = []policy.ProbePrompt{{Kind: tt.kind}}
				p.Probes.CheckErrors = new(bool)
			}, backend("a", srv.Listener.Addr().String(), capable))
			rs := newProber(t, p).Probe(t.Context(), "a")
			if len(rs) != 1 {
				t.Fatalf("results %v", rs)
			}
			if r := rs[0]; r.OK != tt.ok || (tt.reason == "" && r.Reason != "") || !strings.Contains(r.Reason, tt.reason) {
				t.Errorf("got %v\nwant ok=%v reason %q", r, tt.ok, tt.reason)
			}
		})
	}
}

// TestErrorCheck: a malformed request must get a 4xx in OpenAI's shape.
func TestErrorCheck(t *testing.T) {
	tests := []struct {
		name    string
		handler http.HandlerFunc
		reason  string // "" = passes
	}{
		{"openai shape", status(400, `{"error":{"message":"bad messages","type":"invalid_request_error","param":"messages","code":null}}`), ""},
		{"422 openai shape", status(422, `{"error":{"message":"bad","type":"invalid_request_error"}}`), ""},
		{"accepted", sse(`{"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}`), "backend accepted a malformed request (status 200)"},
		{"server error", status(500, `{"error":{"message":"boom","type":"server_error"}}`), "status 500 for a malformed request, want a 4xx"},
		{"flat error", status(400, `{"object":"error","message":"bad","type":"BadRequestError","code":400}`), `status 400, but the error body has no "error" object`},
		{"no type", status(400, `{"error":{"message":"bad"}}`), `status 400, but the error has no "type" string`},
		{"no message", status(400, `{"error":{"type":"x"}}`), `status 400, but the error has no "message" string`},
		{"text body", status(400, `bad request`), "status 400, but the error body is not JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler)
			defer srv.Close()
			p := newPolicy(t, func(p *policy.Policy) { p.Probes.Prompts = []policy.ProbePrompt{} },
				backend("a", srv.Listener.Addr().String(), policy.Capabilities{}))
			rs := newProber(t, p).Probe(t.Context(), "a")
			if len(rs) != 1 || rs[0].Kind != KindError {
				t.Fatalf("results %v", rs)
			}
			if r := rs[0]; r.OK != (tt.reason == "") || !strings.Contains(r.Reason, tt.reason) {
				t.Errorf("got %v\nwant reason %q", r, tt.reason)
			}
		})
	}
}

// TestAuthCheckStatuses: only 401 and 403 count as refusing.
func TestAuthCheckStatuses(t *testing.T) {
	t.Setenv("PROBE_TEST_KEY", "k-1234")
	for code, reason := range map[int]string{
		401: "",
		403: "",
		404: "status 404 (server_error: down) without credentials, want 401 or 403",
		500: "status 500 (server_error: down) without credentials, want 401 or 403",
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") == "Bearer k-1234" {
				sse(`{"choices":[{"delta":{"content":"pong"},"finish_reason":"stop"}]}`)(w, r)
				return
			}
			status(code, `{"error":{"message":"down","type":"server_error"}}`)(w, r)
		}))
		b := backend("a", srv.Listener.Addr().String(), policy.Capabilities{})
		b.Credentials = &policy.Credentials{APIKeyEnv: "PROBE_TEST_KEY"}
		p := newPolicy(t, func(p *policy.Policy) { p.Probes.CheckErrors = new(bool) }, b)
		rs := byProbe(newProber(t, p).Probe(t.Context(), "a"))
		if r := rs[KindAuth]; r.OK != (reason == "") || r.Reason != reason || r.Status != code {
			t.Errorf("%d: got %v, want reason %q", code, r, reason)
		}
		if r := rs["short"]; !r.OK {
			t.Errorf("%d: the keyed probe failed: %v", code, r)
		}
		srv.Close()
	}
}

// TestCustomHeader: a key in another header is sent bare.
func TestCustomHeader(t *testing.T) {
	t.Setenv("PROBE_TEST_KEY", "k-1234")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Api-Key") != "k-1234" || r.Header.Get("Authorization") != "" {
			status(401, `{"error":{"message":"no","type":"authentication_error"}}`)(w, r)
			return
		}
		sse(`{"choices":[{"delta":{"content":"pong"},"finish_reason":"stop"}]}`)(w, r)
	}))
	defer srv.Close()
	b := backend("a", srv.Listener.Addr().String(), policy.Capabilities{})
	b.Credentials = &policy.Credentials{APIKeyEnv: "PROBE_TEST_KEY", Header: "api-key"}
	p := newPolicy(t, func(p *policy.Policy) { p.Probes.CheckErrors = new(bool) }, b)
	for _, r := range newProber(t, p).Probe(t.Context(), "a") {
		if !r.OK {
			t.Errorf("%v", r)
		}
	}
}

// TestTLSEndpoint: https with the endpoint's SNI and CA bundle.
func TestTLSEndpoint(t *testing.T) {
	var sni, host string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sni, host = r.TLS.ServerName, r.Host
		sse(`{"choices":[{"delta":{"content":"pong"},"finish_reason":"stop"}]}`, "[DONE]")(w, r)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the untrusted handshake below
	srv.StartTLS()
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(ca, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	b := backend("a", srv.Listener.Addr().String(), policy.Capabilities{})
	b.Endpoints[0].TLS = &policy.TLS{SNI: "example.com", CAFile: ca}
	p := newPolicy(t, func(p *policy.Policy) { p.Probes.CheckErrors = new(bool) }, b)
	rs := newProber(t, p).Probe(t.Context(), "a")
	if len(rs) != 1 || !rs[0].OK {
		t.Fatalf("%v", rs)
	}
	if sni != "example.com" || host != "example.com" {
		t.Errorf("SNI %q, Host %q", sni, host)
	}

	// Without the CA the certificate is not trusted.
	b.Endpoints[0].TLS = &policy.TLS{SNI: "example.com"}
	p = newPolicy(t, func(p *policy.Policy) { p.Probes.CheckErrors = new(bool) }, b)
	if rs := newProber(t, p).Probe(t.Context(), "a"); len(rs) != 1 || rs[0].OK || !strings.Contains(rs[0].Reason, "certificate") {
		t.Errorf("untrusted: %v", rs)
	}

	// A CA file that cannot be read is an error of New.
	b.Endpoints[0].TLS = &policy.TLS{CAFile: filepath.Join(t.TempDir(), "none.pem")}
	if _, err := New(newPolicy(t, nil, b), nil); err == nil || !strings.Contains(err.Error(), "read ca_file") {
		t.Errorf("New with a missing CA file: %v", err)
	}
}
