package extproc

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/respcache"
)

// atomicView is a HealthSource a test changes while requests wait.
type atomicView struct {
	v atomic.Pointer[healthview.Snapshot]
}

func (a *atomicView) View() *healthview.Snapshot { return a.v.Load() }

type cacheHarness struct {
	*harness
	cache *respcache.Cache
	mem   *respcache.Memory
	now   atomic.Int64
}

func newCacheHarness(t *testing.T, p *policy.Policy, health HealthSource) *cacheHarness {
	t.Helper()
	ch := &cacheHarness{mem: respcache.NewMemory(1 << 20)}
	ch.now.Store(time.Now().UnixNano())
	ch.cache = respcache.New(respcache.Config{Store: ch.mem, Retention: time.Hour, Now: func() time.Time { return time.Unix(0, ch.now.Load()) }})
	cfg := Config{Policy: p, Cache: ch.cache}
	if health != nil {
		cfg.Health = health
	}
	ch.harness = newHarnessConfig(t, cfg)
	t.Cleanup(ch.srv.Close)
	return ch
}

func (ch *cacheHarness) advance(d time.Duration) { ch.now.Add(int64(d)) }

func responseHeadersMsg(status, ctype string) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
		Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			{Key: ":status", RawValue: []byte(status)}, {Key: "content-type", RawValue: []byte(ctype)},
		}},
	}}}
}

func responseBodyMsg(b string, eos bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: []byte(b), EndOfStream: eos}}}
}

const answerJSON = `{"id":"c1","object":"chat.completion","created":1,"model":"fast-8k","choices":[{"index":0,"message":{"role":"assistant","content":"Paris"},"finish_reason":"stop"}]}`

// request plays a request's headers and body; it returns the stream (open
// unless the server closed it) and the body's answer.
func (ch *cacheHarness) request(t *testing.T, body []byte, headers map[string]string) (*stream, *extprocv3.ProcessingResponse, *extprocv3.ProcessingResponse) {
	t.Helper()
	s := ch.open(t)
	hr := s.exchange(headersMsg(call{path: "/v1/chat/completions", headers: headers}))
	br := s.exchange(bodyMsg(body, true))
	return s, hr, br
}

// store plays a whole request whose answer is stored.
func (ch *cacheHarness) store(t *testing.T, body []byte, headers map[string]string, status, ctype string, chunks ...string) {
	t.Helper()
	s, _, br := ch.request(t, body, headers)
	if br.GetRequestBody() == nil {
		t.Fatalf("not routed: %v", br)
	}
	r := s.exchange(responseHeadersMsg(status, ctype))
	for i, c := range chunks {
		s.exchange(responseBodyMsg(c, i == len(chunks)-1))
	}
	_ = r
	s.close()
}

func waitStored(t *testing.T, ch *cacheHarness, n int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for ch.mem.Len() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d entries stored, want %d", ch.mem.Len(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func temp0(content string, fields obj) []byte {
	f := obj{"temperature": 0}
	for k, v := range fields {
		f[k] = v
	}
	return chat("auto", content, f)
}

func TestCachePhases(t *testing.T) {
	ch := newCacheHarness(t, quickstart(t, ""), nil)
	auth := map[string]string{"authorization": "Bearer sk-a"}
	tests := []struct {
		name          string
		body          []byte
		headers       map[string]string
		wantResponse  bool // response headers asked for (mode override on the headers answer)
		wantKeepOpen  bool // the stream stays open after the body answer
		respStatus    string
		respType      string
		wantBodyPhase bool
	}{
		{"temperature 0: stored", temp0("q1", nil), auth, true, true, "200", "application/json", true},
		{"opt-in header", chat("auto", "q2", nil), map[string]string{"x-detour-cacheable": "true", "x-api-key": "k"}, true, true, "200", "application/json", true},
		{"no credential, no tenant: clients cannot be told apart, nothing stored", temp0("q2b", nil), nil, true, false, "", "", false},
		{"default temperature: closed after routing", chat("auto", "q3", nil), auth, true, false, "", "", false},
		{"no-store: no response phase", temp0("q4", nil), map[string]string{"cache-control": "no-store"}, false, false, "", "", false},
		{"error answer: no body phase", temp0("q5", nil), auth, true, true, "400", "application/json", false},
		{"stream asked, JSON answered: no body phase", temp0("q6", obj{"stream": true}), auth, true, true, "200", "application/json", false},
		{"stream: body phase", temp0("q7", obj{"stream": true}), auth, true, true, "200", "text/event-stream", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, hr, br := ch.request(t, tt.body, tt.headers)
			mo := hr.GetModeOverride()
			if got := mo.GetResponseHeaderMode() == extprocfilterv3.ProcessingMode_SEND; got != tt.wantResponse {
				t.Errorf("response headers asked for: %v, want %v", got, tt.wantResponse)
			}
			if tt.wantResponse && (mo.GetRequestBodyMode() != extprocfilterv3.ProcessingMode_BUFFERED || mo.GetResponseBodyMode() != extprocfilterv3.ProcessingMode_NONE) {
				t.Errorf("the override loses the buffered request body or asks for the response body early: %v", mo)
			}
			if br.GetRequestBody() == nil {
				t.Fatalf("not routed: %v", br)
			}
			if !tt.wantKeepOpen {
				if _, err := s.s.Recv(); !errors.Is(err, io.EOF) {
					t.Errorf("stream still open after routing a request with nothing to store: %v", err)
				}
				s.cancel()
				return
			}
			r := s.exchange(responseHeadersMsg(tt.respStatus, tt.respType))
			got := r.GetModeOverride().GetResponseBodyMode() == extprocfilterv3.ProcessingMode_STREAMED
			if got != tt.wantBodyPhase {
				t.Errorf("response body asked for: %v, want %v", got, tt.wantBodyPhase)
			}
			s.close()
		})
	}
}

func TestCacheStoresAndServesStale(t *testing.T) {
	src := &atomicView{}
	ch := newCacheHarness(t, quickstart(t, ""), src)
	auth := map[string]string{"authorization": "Bearer sk-a"}
	body := temp0("capital of france", nil)
	// The answer arrives in two chunks and is stored once complete.
	ch.store(t, body, auth, "200", "application/json; charset=utf-8", answerJSON[:40], answerJSON[40:])
	waitStored(t, ch, 1)
	ch.advance(90 * time.Second)

	// Every attempt failed: the stored answer replaces the 503.
	s, _, _ := ch.request(t, body, auth)
	r := s.exchange(responseHeadersMsg("503", "application/json"))
	imm := r.GetImmediateResponse()
	if imm == nil || imm.Status.Code != 200 || string(imm.Body) != answerJSON {
		t.Fatalf("failed upstream: %v", r)
	}
	h := setHeaders(t, imm.Headers)
	if h[HeaderCache] != "stale" || h["age"] != "90" || h["content-type"] != "application/json" {
		t.Errorf("stale headers %v", h)
	}
	s.close()

	// Another tenant, same question: nothing.
	s, _, _ = ch.request(t, body, map[string]string{"authorization": "Bearer sk-b"})
	if r := s.exchange(responseHeadersMsg("503", "application/json")); r.GetImmediateResponse() != nil {
		t.Error("another tenant got the answer")
	}
	s.close()

	// Every candidate OPEN: served before anything is tried, streamed when
	// asked for a stream.
	open := map[string]string{"fast": healthview.Open, "fast-b": healthview.Open, "long": healthview.Open, "vision": healthview.Open}
	src.v.Store(viewOf(1, open, nil))
	for _, stream := range []bool{false, true} {
		b := body
		if stream {
			b = temp0("capital of france", obj{"stream": true})
		}
		s, _, br := ch.request(t, b, auth)
		imm := br.GetImmediateResponse()
		if imm == nil {
			t.Fatalf("stream=%v: not served from the cache while all OPEN: %v", stream, br)
		}
		h := setHeaders(t, imm.Headers)
		if h[HeaderCache] != "stale" {
			t.Errorf("stream=%v: %v", stream, h)
		}
		if stream {
			if h["content-type"] != "text/event-stream" || !strings.Contains(string(imm.Body), `"content":"Paris"`) || !strings.HasSuffix(string(imm.Body), "data: [DONE]\n\n") {
				t.Errorf("replay: %v\n%s", h, imm.Body)
			}
		}
		s.cancel()
	}
	// One backend not OPEN: the request is routed.
	open["vision"] = healthview.HalfOpen
	src.v.Store(viewOf(2, open, nil))
	s, _, br := ch.request(t, body, auth)
	if br.GetRequestBody() == nil {
		t.Errorf("routed expected with a HALF_OPEN candidate: %v", br)
	}
	s.cancel()
	if got := counter(t, ch.metrics.CacheServed.WithLabelValues("auto", "stale", "open")); got != 2 {
		t.Errorf("served stale (open) %v", got)
	}
}

func TestCacheTTL(t *testing.T) {
	p := quickstart(t, "")
	p.Routes[0].Cache.TTL = policy.Duration(time.Minute)
	ch := newCacheHarness(t, p, nil)
	body := temp0("ttl question", nil)
	auth := map[string]string{"authorization": "Bearer sk-a"}
	ch.store(t, body, auth, "200", "application/json", answerJSON)
	waitStored(t, ch, 1)
	tests := []struct {
		name    string
		after   time.Duration
		headers map[string]string
		hit     bool
	}{
		{"fresh", 10 * time.Second, auth, true},
		{"no-cache asks for a fresh answer", 0, map[string]string{"cache-control": "no-cache", "authorization": "Bearer sk-a"}, false},
		{"past the TTL", time.Minute, auth, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ch.advance(tt.after)
			s, _, br := ch.request(t, body, tt.headers)
			defer s.cancel()
			imm := br.GetImmediateResponse()
			if (imm != nil) != tt.hit {
				t.Fatalf("hit %v, want %v: %v", imm != nil, tt.hit, br)
			}
			if imm != nil && setHeaders(t, imm.Headers)[HeaderCache] != "hit" {
				t.Errorf("headers %v", setHeaders(t, imm.Headers))
			}
		})
	}
}

func TestCacheStoresStreams(t *testing.T) {
	ch := newCacheHarness(t, quickstart(t, ""), nil)
	body := temp0("stream me", obj{"stream": true})
	events := []string{
		`data: {"id":"s","object":"chat.completion.chunk","created":1,"model":"fast-8k","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}` + "\n\n",
		`data: {"id":"s","object":"chat.completion.chunk","created":1,"model":"fast-8k","choices":[{"index":0,"delta":{"content":"He"},"finish_reason":null}]}` + "\n\ndata: ",
		`{"id":"s","object":"chat.completion.chunk","created":1,"model":"fast-8k","choices":[{"index":0,"delta":{"content":"llo"},"finish_reason":"stop"}]}` + "\n\n",
		"data: [DONE]\n\n",
	}
	auth := map[string]string{"authorization": "Bearer sk-a"}
	ch.store(t, body, auth, "200", "text/event-stream", events...)
	waitStored(t, ch, 1)
	// A non-streaming request for the same question shares the entry.
	s, _, _ := ch.request(t, temp0("stream me", nil), auth)
	r := s.exchange(responseHeadersMsg("502", "text/plain"))
	imm := r.GetImmediateResponse()
	if imm == nil || !strings.Contains(string(imm.Body), `"content":"Hello"`) || !strings.Contains(string(imm.Body), `"object":"chat.completion"`) {
		t.Fatalf("assembled answer: %v", r)
	}
	s.close()
	// An incomplete stream (no [DONE]) is not stored.
	ch.store(t, temp0("cut short", obj{"stream": true}), auth, "200", "text/event-stream", events[0], events[1])
	time.Sleep(50 * time.Millisecond)
	if ch.mem.Len() != 1 {
		t.Errorf("an incomplete stream was stored")
	}
}

// A waiter whose wait ends while others are being released leaves with its
// timeout at once: it is not taken off the queue before its turn.
func TestQueueTimeoutDuringReleases(t *testing.T) {
	q := newQueue(nil)
	q.pace, q.gap = 0, time.Second
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var open atomic.Bool
	open.Store(true)
	ready := func() bool { return !open.Load() }
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, done := q.wait(ctx, "r", "critical", 5*time.Second, 10, ready)
			time.Sleep(300 * time.Millisecond) // a slow answer holds the next release
			done()
		}()
	}
	for {
		q.mu.Lock()
		n := len(q.routes["r"])
		q.mu.Unlock()
		if n == 2 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	go q.run(ctx)
	start := time.Now()
	res := make(chan string, 1)
	go func() {
		out, _, _ := q.wait(ctx, "r", "sheddable", 150*time.Millisecond, 10, ready)
		res <- out
	}()
	time.Sleep(20 * time.Millisecond)
	open.Store(false)
	q.Notify()
	if out := <-res; out != queueTimeout || time.Since(start) > time.Second {
		t.Errorf("the last waiter: %s after %v, want a timeout at its 150ms", out, time.Since(start))
	}
	wg.Wait()
}

func TestQueueUnit(t *testing.T) {
	q := newQueue(nil)
	q.pace = 0
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go q.run(ctx)
	var open atomic.Bool
	open.Store(true)
	ready := func() bool { return !open.Load() }
	var mu sync.Mutex
	var order []string
	var wg sync.WaitGroup
	for i, p := range []string{"sheddable", "standard", "critical", "standard", "critical"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, _, done := q.wait(ctx, "r", p, 5*time.Second, 10, ready)
			mu.Lock()
			order = append(order, out+":"+p)
			mu.Unlock()
			done()
		}()
		// Enqueued in this order.
		for {
			q.mu.Lock()
			n := len(q.routes["r"])
			q.mu.Unlock()
			if n == i+1 {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	// Full: the sixth waits no more than the depth allows.
	if out, _, _ := q.wait(ctx, "r", "critical", time.Second, 5, ready); out != queueFull {
		t.Errorf("sixth request in a queue of 5: %s", out)
	}
	// A timeout on another route.
	start := time.Now()
	if out, _, _ := q.wait(ctx, "other", "critical", 50*time.Millisecond, 5, ready); out != queueTimeout || time.Since(start) < 50*time.Millisecond {
		t.Errorf("timeout: %s after %v", out, time.Since(start))
	}
	open.Store(false)
	q.Notify()
	wg.Wait()
	want := "released:critical,released:critical,released:standard,released:standard,released:sheddable"
	if got := strings.Join(order, ","); got != want {
		t.Errorf("order %s\nwant  %s", got, want)
	}
	// Cancelled.
	open.Store(true)
	cctx, ccancel := context.WithCancel(ctx)
	go func() { time.Sleep(20 * time.Millisecond); ccancel() }()
	if out, _, _ := q.wait(cctx, "r", "standard", 5*time.Second, 5, ready); out != queueCancelled {
		t.Errorf("cancelled: %s", out)
	}
}

// Through the server: requests whose candidates are all OPEN wait, the
// first answer is a message timeout extension, and they are released
// when the view changes; past the wait they get 503 + Retry-After.
func TestQueueThroughServer(t *testing.T) {
	src := &atomicView{}
	p := quickstart(t, "")
	p.Routes[0].Queue = policy.Queue{MaxWait: policy.Duration(3 * time.Second), MaxDepth: 10}
	p.Queue = policy.Queue{MaxWait: policy.Duration(100 * time.Millisecond), MaxDepth: 10}
	ch := newCacheHarness(t, p, src)
	open := map[string]string{"fast": healthview.Open, "fast-b": healthview.Open, "long": healthview.Open, "vision": healthview.Open}
	src.v.Store(viewOf(1, open, map[string]healthview.Route{"fast-8k": {Shed: healthview.Standard, RetryAfter: 7}}))

	// A model id (global queue, 100 ms): 503 + Retry-After from the view.
	s := ch.open(t)
	s.exchange(headersMsg(call{path: "/v1/chat/completions"}))
	ext := s.exchange(bodyMsg(chat("fast-8k", "hi", nil), true))
	if ext.GetOverrideMessageTimeout().AsDuration() != 100*time.Millisecond+p.ExtProc.MessageTimeout.D() {
		t.Fatalf("first answer is not a timeout extension: %v", ext)
	}
	r, err := s.s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	imm := r.GetImmediateResponse()
	if imm == nil || imm.Status.Code != 503 || !strings.Contains(string(imm.Body), "all_backends_down") || setHeaders(t, imm.Headers)["retry-after"] != "7" {
		t.Fatalf("after the wait: %v", r)
	}
	s.cancel()

	// auto (3 s): released when vision leaves OPEN, routed to it.
	s = ch.open(t)
	s.exchange(headersMsg(call{path: "/v1/chat/completions", headers: map[string]string{"x-detour-priority": "critical"}}))
	if err := s.s.Send(bodyMsg(chat("auto", "hi", nil), true)); err != nil {
		t.Fatal(err)
	}
	if r, _ := s.s.Recv(); r.GetOverrideMessageTimeout() == nil {
		t.Fatalf("no timeout extension: %v", r)
	}
	time.Sleep(100 * time.Millisecond)
	if d := counterGauge(t, ch.metrics, "auto"); d != 1 {
		t.Errorf("queue depth %v", d)
	}
	open["vision"] = healthview.HalfOpen
	src.v.Store(viewOf(2, open, nil))
	ch.srv.HealthChanged()
	r, err = s.s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if r.GetRequestBody() == nil || setHeaders(t, r.GetRequestBody().Response.HeaderMutation)[HeaderBackend] != "vision" {
		t.Fatalf("released request: %v", r)
	}
	s.cancel()
	if got := counter(t, ch.metrics.QueueOutcomes.WithLabelValues("auto", queueReleased)); got != 1 {
		t.Errorf("released %v", got)
	}
}

func counterGauge(t *testing.T, m *Metrics, route string) float64 {
	t.Helper()
	return counter(t, m.QueueDepth.WithLabelValues(route))
}
