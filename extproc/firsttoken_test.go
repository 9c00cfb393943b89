package extproc

import (
	"errors"
	"io"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/structpb"
)

const (
	roleChunk    = `data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]}` + "\n\n"
	contentChunk = `data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]}` + "\n\n"
)

// scanFirstTokenTests are event streams as providers send them; they seed
// FuzzScanFirstToken too.
var scanFirstTokenTests = []struct {
	name string
	in   string
	want bool
}{
	{"nothing yet", "", false},
	{"role chunk", roleChunk, false},
	{"role chunk, then a token", roleChunk + contentChunk, true},
	{"a token split before its newline", contentChunk[:len(contentChunk)-2], false},
	{"keep-alive comments and event names", ": ping\n\n: OPENROUTER PROCESSING\n\nevent: message\nid: 7\nretry: 100\n\n", false},
	{"empty data line", "data:\n\ndata: \n\n", false},
	{"CRLF line ends", "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\r\n\r\ndata: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\r\n", true},
	{"CR line ends", "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\r", true},
	{"Azure's filter results before the role", `data: {"choices":[],"prompt_filter_results":[{"prompt_index":0}]}` + "\n\n" + roleChunk, false},
	{"role with null content", `data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null},"finish_reason":null}]}` + "\n", false},
	{"first tool call", `data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]},"finish_reason":null}]}` + "\n", true},
	{"reasoning before the answer", `data: {"choices":[{"delta":{"reasoning_content":"Let me"}}]}` + "\n", true},
	{"finish with no content", `data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}` + "\n", true},
	{"completions: empty text", `data: {"object":"text_completion","choices":[{"text":"","index":0,"finish_reason":null}]}` + "\n", false},
	{"completions: text", `data: {"object":"text_completion","choices":[{"text":" tok0","index":0,"finish_reason":null}]}` + "\n", true},
	{"done", "data: [DONE]\n", true},
	{"not JSON: never held for it", "data: hello\n", true},
	{"JSON of another shape", `data: {"type":"message_start"}` + "\n", true},
}

func TestScanFirstToken(t *testing.T) {
	for _, tt := range scanFirstTokenTests {
		t.Run(tt.name, func(t *testing.T) {
			// Whole, and a byte at a time as chunks may split it.
			if _, got := scanFirstToken([]byte(tt.in), 0); got != tt.want {
				t.Errorf("whole: got %v, want %v", got, tt.want)
			}
			var buf []byte
			next, got := 0, false
			for i := 0; i < len(tt.in) && !got; i++ {
				buf = append(buf, tt.in[i])
				next, got = scanFirstToken(buf, next)
			}
			if got != tt.want {
				t.Errorf("byte by byte: got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestHoldable(t *testing.T) {
	tests := []struct {
		name   string
		status string
		hdrs   []string // key, value pairs
		eos    bool
		want   bool
	}{
		{"event stream", "200", []string{"content-type", "text/event-stream"}, false, true},
		{"event stream with a charset", "200", []string{"content-type", "Text/Event-Stream; charset=utf-8"}, false, true},
		{"identity encoding", "200", []string{"content-type", "text/event-stream", "content-encoding", "identity"}, false, true},
		{"gzip: unreadable", "200", []string{"content-type", "text/event-stream", "content-encoding", "gzip"}, false, false},
		{"a whole JSON answer", "200", []string{"content-type", "application/json"}, false, false},
		{"an error to retry", "503", []string{"content-type", "text/event-stream"}, false, false},
		{"no body", "200", []string{"content-type", "text/event-stream"}, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := holdable(responseHeaders(tt.status, tt.eos, tt.hdrs...)); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func responseHeaders(status string, eos bool, kv ...string) *extprocv3.HttpHeaders {
	h := &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: ":status", RawValue: []byte(status)}}}, EndOfStream: eos}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Headers.Headers = append(h.Headers.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
	}
	return h
}

// firstTokenHeaders is the first-token filter's first message: the
// attempt's response headers with the cluster's name.
func firstTokenHeaders(cluster string, h *extprocv3.HttpHeaders) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: h},
		Attributes: map[string]*structpb.Struct{"envoy.filters.http.ext_proc": {Fields: map[string]*structpb.Value{
			AttrClusterName: structpb.NewStringValue(cluster),
		}}},
	}
}

func responseBody(b string, eos bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: []byte(b), EndOfStream: eos}}}
}

// answers collects what the server sends on a stream until it ends it.
func (s *stream) answers() (<-chan *extprocv3.ProcessingResponse, <-chan error) {
	out, end := make(chan *extprocv3.ProcessingResponse, 16), make(chan error, 1)
	go func() {
		for {
			r, err := s.s.Recv()
			if err != nil {
				end <- err
				close(out)
				return
			}
			out <- r
		}
	}()
	return out, end
}

func (s *stream) send(m *extprocv3.ProcessingRequest) {
	s.t.Helper()
	if err := s.s.Send(m); err != nil {
		s.t.Fatalf("send: %v", err)
	}
}

// quiet fails if the server answers within d.
func quiet(t *testing.T, out <-chan *extprocv3.ProcessingResponse, d time.Duration, what string) {
	t.Helper()
	select {
	case r := <-out:
		t.Fatalf("%s: answered %v, want the headers held", what, r)
	case <-time.After(d):
	}
}

func next(t *testing.T, out <-chan *extprocv3.ProcessingResponse) *extprocv3.ProcessingResponse {
	t.Helper()
	select {
	case r, ok := <-out:
		if !ok {
			t.Fatal("stream ended, want an answer")
		}
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("no answer within 5s")
	}
	return nil
}

func TestFirstTokenHold(t *testing.T) {
	sse := []string{"content-type", "text/event-stream"}
	tests := []struct {
		name    string
		headers *extprocv3.HttpHeaders
		// held chunks before the one that releases (each must get no
		// answer), then the releasing chunk.
		held    []string
		release string
		eos     bool
		outcome string
	}{
		{"token after the role chunk and a keep-alive", responseHeaders("200", false, sse...), []string{roleChunk, ": keep-alive\n\n"}, contentChunk, false, holdToken},
		{"token in the first chunk", responseHeaders("200", false, sse...), nil, roleChunk + contentChunk, false, holdToken},
		{"body ends without a token", responseHeaders("200", false, sse...), []string{roleChunk}, "", true, holdEnded},
		{"64 KiB of preamble", responseHeaders("200", false, sse...), nil, ": " + string(make([]byte, maxHeldBytes)), false, holdLimit},
		{"an error: answered at once", responseHeaders("503", false, "content-type", "application/json"), nil, "", false, holdNotStream},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, quickstart(t, ""), nil)
			s := h.open(t)
			defer s.cancel()
			out, end := s.answers()
			s.send(firstTokenHeaders("fast", tt.headers))
			if tt.outcome == holdNotStream {
				if r := next(t, out); r.GetResponseHeaders() == nil {
					t.Fatalf("got %v, want the headers answered", r)
				}
			} else {
				quiet(t, out, 50*time.Millisecond, "headers alone")
				for i, c := range tt.held {
					s.send(responseBody(c, false))
					quiet(t, out, 50*time.Millisecond, "held chunk "+itoa(i))
				}
				s.send(responseBody(tt.release, tt.eos))
				// The headers, then every chunk in order, unchanged.
				if r := next(t, out); r.GetResponseHeaders() == nil || r.GetResponseHeaders().GetResponse() != nil {
					t.Fatalf("first answer %v, want the headers, unchanged", r)
				}
				for i := range len(tt.held) + 1 {
					if r := next(t, out); r.GetResponseBody() == nil || r.GetResponseBody().GetResponse() != nil {
						t.Fatalf("answer %d: %v, want the chunk unchanged", i, r)
					}
				}
			}
			// Then the server ends the stream, so Envoy sends no more chunks.
			if err := <-end; !errors.Is(err, io.EOF) {
				t.Fatalf("stream ended with %v, want a clean end (io.EOF)", err)
			}
			if n := testutil.ToFloat64(h.metrics.FirstTokenHolds.WithLabelValues("fast", tt.outcome)); n != 1 {
				t.Errorf("first_token_holds_total{fast,%s} = %v, want 1", tt.outcome, n)
			}
			if n := testutil.CollectAndCount(h.metrics.FirstTokenWait); (n == 1) != (tt.outcome != holdNotStream) {
				t.Errorf("%d hold-time series after outcome %s", n, tt.outcome)
			}
		})
	}
}

// Envoy ends an attempt held for its first token (the per-try deadline):
// counted as abandoned, by backend.
func TestFirstTokenAbandoned(t *testing.T) {
	h := newHarness(t, quickstart(t, ""), nil)
	s := h.open(t)
	out, _ := s.answers()
	s.send(firstTokenHeaders("fast-b", responseHeaders("200", false, "content-type", "text/event-stream")))
	s.send(responseBody(roleChunk, false))
	quiet(t, out, 50*time.Millisecond, "role chunk")
	s.cancel()
	c := h.metrics.FirstTokenHolds.WithLabelValues("fast-b", holdAbandoned)
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(c) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("abandoned hold not counted")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The router stage marks streaming requests for the route with the
// first-token deadline; the upstream stage keeps the mark from providers.
func TestStreamMark(t *testing.T) {
	h := newHarness(t, quickstart(t, ""), nil)
	for _, stream := range []bool{false, true} {
		body := chat("auto", "hello", obj{"stream": stream})
		r := h.do(t, post("/v1/chat/completions", body))
		got, set := setHeaders(t, r.routed.GetHeaderMutation())[HeaderStream]
		if set != stream || (stream && got != "1") {
			t.Errorf("stream %v: %s = %q (set %v)", stream, HeaderStream, got, set)
		}
	}
	a := attempt(t, h, "fast", []byte(`{"model":"fast-8k","messages":[{"role":"user","content":"hi"}],"stream":true}`))
	if got := a.headers.GetHeaderMutation().GetRemoveHeaders(); !slices.Contains(got, HeaderStream) {
		t.Errorf("upstream removes %v, want %s among them", got, HeaderStream)
	}
}
