package extproc

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/metadata"
)

// resumeHarness plays Envoy for the resume stage: the processor over
// bufconn, and an HTTP server standing for Envoy's listener, which
// receives the continuations and repeats.
type resumeHarness struct {
	*harness
	got  chan *http.Request // requests the listener received, body read into gotBody
	body chan []byte
}

func newResumeHarness(t *testing.T, listener http.HandlerFunc) *resumeHarness {
	t.Helper()
	rh := &resumeHarness{got: make(chan *http.Request, 4), body: make(chan []byte, 4)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rh.got <- r
		rh.body <- b
		listener(w, r)
	}))
	t.Cleanup(srv.Close)
	p := quickstart(t, "resume: {stall_timeout: 100ms, via: "+srv.URL+"}\n")
	rh.harness = newHarness(t, p, nil)
	return rh
}

// open starts a resume-stage stream and sends the request phases of a
// request routed to fast.
func (rh *resumeHarness) open(t *testing.T, stream bool, body string) extprocv3.ExternalProcessor_ProcessClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	ctx = metadata.AppendToOutgoingContext(ctx, StageMetadataKey, StageResume)
	c, err := rh.client.Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hs := []*corev3.HeaderValue{
		{Key: ":path", RawValue: []byte("/v1/chat/completions")},
		{Key: ":authority", RawValue: []byte("gw.example")},
		{Key: ":method", RawValue: []byte("POST")},
		{Key: "authorization", RawValue: []byte("Bearer client-key")},
		{Key: HeaderRoute, RawValue: []byte("auto")},
		{Key: HeaderBackend, RawValue: []byte("fast")},
		{Key: "x-request-id", RawValue: []byte("r1")},
	}
	if stream {
		hs = append(hs, &corev3.HeaderValue{Key: HeaderStream, RawValue: []byte("1")})
	}
	rh.sendMsg(t, c, &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: hs}}}})
	expect[*extprocv3.ProcessingResponse_RequestHeaders](t, c)
	rh.sendMsg(t, c, &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: []byte(body), EndOfStream: true}}})
	expect[*extprocv3.ProcessingResponse_RequestBody](t, c)
	return c
}

func (rh *resumeHarness) sendMsg(t *testing.T, c extprocv3.ExternalProcessor_ProcessClient, m *extprocv3.ProcessingRequest) {
	t.Helper()
	if err := c.Send(m); err != nil {
		t.Fatal(err)
	}
}

func (rh *resumeHarness) responseHeaders(t *testing.T, c extprocv3.ExternalProcessor_ProcessClient, contentType string) {
	t.Helper()
	rh.sendMsg(t, c, &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
		{Key: ":status", RawValue: []byte("200")},
		{Key: "content-type", RawValue: []byte(contentType)},
		{Key: HeaderBackend, RawValue: []byte("fast")},
	}}}}})
}

func (rh *resumeHarness) chunk(t *testing.T, c extprocv3.ExternalProcessor_ProcessClient, b string, eos bool) {
	t.Helper()
	rh.sendMsg(t, c, &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: []byte(b), EndOfStream: eos}}})
}

func expect[T any](t *testing.T, c extprocv3.ExternalProcessor_ProcessClient) T {
	t.Helper()
	r, err := c.Recv()
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	v, ok := r.Response.(T)
	if !ok {
		var zero T
		t.Fatalf("got %T, want %T", r.Response, zero)
	}
	return v
}

// body reads one streamed body answer.
func body(t *testing.T, c extprocv3.ExternalProcessor_ProcessClient) (string, bool) {
	t.Helper()
	b := expect[*extprocv3.ProcessingResponse_ResponseBody](t, c)
	s := b.ResponseBody.GetResponse().GetBodyMutation().GetStreamedResponse()
	if s == nil {
		t.Fatalf("body answer without a streamed response: %v", b)
	}
	return string(s.Body), s.EndOfStream
}

const streamBody = `{"model":"fast-8k","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":10}`

func openingChunk() string {
	return `data: {"id":"c1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}` + "\n\n"
}

func TestResumeStream(t *testing.T) {
	rh := newResumeHarness(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("content-type", "text/event-stream")
		io.WriteString(w, strings.ReplaceAll(openingChunk(), "c1", "other"))
		io.WriteString(w, strings.ReplaceAll(chunk(" tok2"), "c1", "other"))
		io.WriteString(w, "data: [DONE]\n\n")
	})
	c := rh.open(t, true, streamBody)
	rh.responseHeaders(t, c, "text/event-stream; charset=utf-8")
	expect[*extprocv3.ProcessingResponse_ResponseHeaders](t, c)
	for _, ch := range []string{openingChunk(), chunk("tok0"), chunk(" tok1")} {
		rh.chunk(t, c, ch, false)
		if got, eos := body(t, c); got != ch || eos {
			t.Fatalf("passed on %q (eos %v), want %q", got, eos, ch)
		}
	}
	// Silence: the continuation comes from the listener.
	got, _ := body(t, c)
	var ev map[string]any
	if err := json.Unmarshal([]byte(strings.TrimPrefix(strings.TrimSpace(got), "data: ")), &ev); err != nil || ev["id"] != "c1" || !strings.Contains(got, `" tok2"`) {
		t.Errorf("continuation event %q, want tok2 in stream c1", got)
	}
	if got, _ := body(t, c); got != "data: [DONE]\n\n" {
		t.Errorf("then %q, want [DONE]", got)
	}
	if got, eos := body(t, c); got != "" || !eos {
		t.Errorf("then %q eos %v, want the end", got, eos)
	}
	req, sent := <-rh.got, <-rh.body
	if req.Header.Get(HeaderResumeFrom) != "fast" || req.Header.Get(HeaderResumed) != "1" || req.Header.Get("authorization") != "Bearer client-key" ||
		req.Header.Get(HeaderBackend) != "" || req.Header.Get("x-request-id") != "" || req.Host != "gw.example" || req.URL.Path != "/v1/chat/completions" {
		t.Errorf("continuation request headers %v host %q path %q", req.Header, req.Host, req.URL.Path)
	}
	sameJSON(t, sent, `{"model":"auto","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"tok0 tok1"}],"stream":true,"max_tokens":8}`)
	if n := testutil.ToFloat64(rh.metrics.Resumes.WithLabelValues("fast", resumeResumed)); n != 1 {
		t.Errorf("resumed counted %v times", n)
	}
}

func TestResumeStreamOutcomes(t *testing.T) {
	finish := `data: {"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}` + "\n\n"
	tools := `data: {"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0}]}}]}` + "\n\n"
	tests := []struct {
		name     string
		chunks   []string
		listener int // the continuation's status
		want     string
		outcome  string
	}{
		{name: "complete answer without its end", chunks: []string{openingChunk(), chunk("tok0"), finish}, want: "data: [DONE]\n\n", outcome: resumeFinished},
		{name: "continuation refused", chunks: []string{openingChunk(), chunk("tok0")}, listener: 503, want: `"code":"stream_stalled"`, outcome: resumeFailed},
		{name: "tool call", chunks: []string{openingChunk(), chunk("tok0"), tools}, outcome: resumeNot},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rh := newResumeHarness(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(tt.listener) })
			c := rh.open(t, true, streamBody)
			rh.responseHeaders(t, c, "text/event-stream")
			expect[*extprocv3.ProcessingResponse_ResponseHeaders](t, c)
			for _, ch := range tt.chunks {
				rh.chunk(t, c, ch, false)
				body(t, c)
			}
			if tt.want == "" {
				// Nothing to do: the stream goes on as it is.
				time.Sleep(300 * time.Millisecond)
				rh.chunk(t, c, "data: [DONE]\n\n", true)
				if got, eos := body(t, c); got != "data: [DONE]\n\n" || !eos {
					t.Errorf("late end passed on as %q eos %v", got, eos)
				}
			} else if got, eos := body(t, c); !strings.Contains(got, tt.want) || !eos {
				t.Errorf("ended with %q eos %v, want %s", got, eos, tt.want)
			}
			waitCount(t, func() float64 { return testutil.ToFloat64(rh.metrics.Resumes.WithLabelValues("fast", tt.outcome)) }, 1)
		})
	}
}

const wholeBody = `{"model":"fast-8k","messages":[{"role":"user","content":"hi"}],"max_tokens":10}`

// A whole answer whose body goes silent for stall_timeout is asked again
// of another backend; that answer replaces the held one, whole, as an
// immediate response.
func TestRedoWholeAnswer(t *testing.T) {
	const answer = `{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"tok0"},"finish_reason":"stop"}]}`
	rh := newResumeHarness(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("content-type", "application/json")
		w.Header().Set(HeaderBackend, "fast-b")
		io.WriteString(w, answer)
	})
	c := rh.open(t, false, wholeBody)
	rh.responseHeaders(t, c, "application/json")
	rh.chunk(t, c, `{"id":"x","choi`, false) // half, then silence
	// Envoy is asked to keep waiting for the held headers, then gets the
	// other backend's answer.
	if r, err := c.Recv(); err != nil || r.GetOverrideMessageTimeout().AsDuration() != 300*time.Second {
		t.Fatalf("got %v (%v), want the message timeout extended to the request timeout", r, err)
	}
	ir := expect[*extprocv3.ProcessingResponse_ImmediateResponse](t, c).ImmediateResponse
	set := setHeaders(t, ir.GetHeaders())
	if ir.GetStatus().GetCode() != 200 || set[HeaderBackend] != "fast-b" || set["content-type"] != "application/json" || ir.Details != redoDetails {
		t.Errorf("immediate response %d %v %q", ir.GetStatus().GetCode(), set, ir.Details)
	}
	if string(ir.Body) != answer {
		t.Errorf("body %q, want the other backend's whole answer", ir.Body)
	}
	req, sent := <-rh.got, <-rh.body
	if req.Header.Get(HeaderRedoFrom) != "fast" || req.Header.Get(HeaderResumeFrom) != "" {
		t.Errorf("repeat marked %v", req.Header)
	}
	sameJSON(t, sent, `{"model":"auto","messages":[{"role":"user","content":"hi"}],"max_tokens":10}`)
	waitCount(t, func() float64 { return testutil.ToFloat64(rh.metrics.Resumes.WithLabelValues("fast", resumeResumed)) }, 1)
}

// release expects a held answer let go: its headers and n chunks, each
// answered unchanged, then the end of the stream.
func release(t *testing.T, c extprocv3.ExternalProcessor_ProcessClient, n int) {
	t.Helper()
	if h := expect[*extprocv3.ProcessingResponse_ResponseHeaders](t, c); h.ResponseHeaders.GetResponse() != nil {
		t.Errorf("headers changed: %v", h)
	}
	for range n {
		if b := expect[*extprocv3.ProcessingResponse_ResponseBody](t, c); b.ResponseBody.GetResponse() != nil {
			t.Errorf("chunk changed: %v", b)
		}
	}
	if r, err := c.Recv(); err != io.EOF {
		t.Errorf("stream not ended after the answer: %v %v", r, err)
	}
}

// The held answer completing while the repeat runs wins the race: it is
// let go unchanged and the repeat is cancelled.
func TestHeldAnswerBeatsRedo(t *testing.T) {
	cancelled := make(chan struct{})
	rh := newResumeHarness(t, func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
		close(cancelled)
	})
	c := rh.open(t, false, wholeBody)
	rh.responseHeaders(t, c, "application/json")
	rh.chunk(t, c, `{"a":`, false)
	<-rh.got // the repeat started
	rh.chunk(t, c, `1}`, true)
	if r, err := c.Recv(); err != nil || r.GetOverrideMessageTimeout() == nil {
		t.Fatalf("got %v (%v), want the message timeout extended", r, err)
	}
	release(t, c, 2)
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the repeat was not cancelled")
	}
}

// A whole answer that completes in time is let go unchanged once complete:
// its headers and every chunk, and nothing is asked again.
func TestHoldWholeAnswer(t *testing.T) {
	rh := newResumeHarness(t, func(w http.ResponseWriter, r *http.Request) { t.Error("nothing should be asked again") })
	c := rh.open(t, false, wholeBody)
	rh.responseHeaders(t, c, "application/json")
	rh.chunk(t, c, `{"a":`, false)
	rh.chunk(t, c, `1}`, true)
	release(t, c, 2)
}

// A whole answer larger than Envoy's buffer can keep is let go once it
// passes half of it (limits.max_body_bytes / 2, 4 MiB here), before it ends;
// what follows is answered as it comes.
func TestHeldAnswerTooLarge(t *testing.T) {
	rh := newResumeHarness(t, func(w http.ResponseWriter, r *http.Request) { t.Error("nothing should be asked again") })
	c := rh.open(t, false, wholeBody)
	rh.responseHeaders(t, c, "application/json")
	mib := strings.Repeat("x", 1<<20)
	for range 5 {
		rh.chunk(t, c, mib, false)
	}
	if h := expect[*extprocv3.ProcessingResponse_ResponseHeaders](t, c); h.ResponseHeaders.GetResponse() != nil {
		t.Errorf("headers changed: %v", h)
	}
	for range 5 {
		expect[*extprocv3.ProcessingResponse_ResponseBody](t, c)
	}
	rh.chunk(t, c, "}", true)
	expect[*extprocv3.ProcessingResponse_ResponseBody](t, c)
	if r, err := c.Recv(); err != io.EOF {
		t.Errorf("stream not ended after the answer: %v %v", r, err)
	}
}

// An answer detour does not hold (an error) is answered as it comes.
func TestWholeAnswerNotHeld(t *testing.T) {
	rh := newResumeHarness(t, func(w http.ResponseWriter, r *http.Request) { t.Error("nothing should be asked again") })
	c := rh.open(t, false, wholeBody)
	rh.sendMsg(t, c, &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
		{Key: ":status", RawValue: []byte("503")},
		{Key: "content-type", RawValue: []byte("application/json")},
	}}}}})
	expect[*extprocv3.ProcessingResponse_ResponseHeaders](t, c)
	rh.chunk(t, c, `{"error":{}}`, true)
	expect[*extprocv3.ProcessingResponse_ResponseBody](t, c)
	if r, err := c.Recv(); err != io.EOF {
		t.Errorf("stream not ended after the answer: %v %v", r, err)
	}
}

func waitCount(t *testing.T, f func() float64, want float64) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for f() != want {
		if time.Now().After(deadline) {
			t.Fatalf("count %v, want %v", f(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
