package loadgen

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testServer wraps an httptest server counting requests and tracking the
// maximum concurrency it observed.
type testServer struct {
	*httptest.Server
	count   atomic.Int64
	cur     atomic.Int64
	maxConc atomic.Int64
	mu      sync.Mutex
	arrived []time.Time
}

func newTestServer(t *testing.T, h func(n int64, w http.ResponseWriter, r *http.Request)) *testServer {
	t.Helper()
	ts := &testServer{}
	ts.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		n := ts.count.Add(1)
		c := ts.cur.Add(1)
		defer ts.cur.Add(-1)
		for {
			m := ts.maxConc.Load()
			if c <= m || ts.maxConc.CompareAndSwap(m, c) {
				break
			}
		}
		ts.mu.Lock()
		ts.arrived = append(ts.arrived, now)
		ts.mu.Unlock()
		io.Copy(io.Discard, r.Body)
		h(n, w, r)
	}))
	t.Cleanup(ts.Close)
	return ts
}

func okHandler(_ int64, w http.ResponseWriter, _ *http.Request) {
	io.WriteString(w, `{"ok":true}`)
}

// sleepCtx sleeps for d or until the client goes away.
func sleepCtx(r *http.Request, d time.Duration) {
	select {
	case <-time.After(d):
	case <-r.Context().Done():
	}
}

func get(url string) Request { return Request{Method: http.MethodGet, URL: url} }

func checkInvariants(t *testing.T, res Result) {
	t.Helper()
	if res.Sent != res.OK+res.Failed {
		t.Errorf("Sent %d != OK %d + Failed %d", res.Sent, res.OK, res.Failed)
	}
	sum := 0
	for _, n := range res.ByStatus {
		sum += n
	}
	if sum != res.Sent {
		t.Errorf("sum(ByStatus) = %d, want Sent = %d (%v)", sum, res.Sent, res.ByStatus)
	}
	if res.Latency.N != res.OK || res.TTFB.N != res.OK {
		t.Errorf("Latency.N = %d, TTFB.N = %d, want OK = %d", res.Latency.N, res.TTFB.N, res.OK)
	}
}

func TestOpenLoopRate(t *testing.T) {
	ts := newTestServer(t, okHandler)
	res, err := OpenLoop{Rate: 200, Duration: time.Second}.Run(context.Background(), get(ts.URL))
	if err != nil {
		t.Fatal(err)
	}
	t.Log(res)
	checkInvariants(t, res)
	// The schedule has exactly 200 slots in 1 s; allow ±5% anyway.
	if res.Sent+res.Dropped != 200 || res.Sent < 190 {
		t.Errorf("Sent = %d, Dropped = %d; want 200 scheduled, ≥190 sent", res.Sent, res.Dropped)
	}
	if int64(res.Sent) != ts.count.Load() {
		t.Errorf("server saw %d requests, Sent = %d", ts.count.Load(), res.Sent)
	}
	if res.OK != res.Sent {
		t.Errorf("OK = %d, want %d (%v)", res.OK, res.Sent, res)
	}
	// Sends must be spread over the second, not bursted: look at server-side
	// arrival times (loose bounds: the machine is noisy).
	ts.mu.Lock()
	arr := append([]time.Time(nil), ts.arrived...)
	ts.mu.Unlock()
	first, last := arr[0], arr[0]
	for _, a := range arr {
		if a.Before(first) {
			first = a
		}
		if a.After(last) {
			last = a
		}
	}
	if span := last.Sub(first); span < 800*time.Millisecond || span > 2*time.Second {
		t.Errorf("arrivals span %v, want ≈1s", span)
	}
	firstHalf := 0
	for _, a := range arr {
		if a.Sub(first) < 500*time.Millisecond {
			firstHalf++
		}
	}
	if firstHalf < 60 || firstHalf > 140 {
		t.Errorf("%d of %d arrivals in the first 500ms, want ≈100", firstHalf, len(arr))
	}
	if res.Throughput < 100 || res.Throughput > 210 {
		t.Errorf("Throughput = %.1f, want ≈200", res.Throughput)
	}
}

func TestOpenLoopWarmup(t *testing.T) {
	ts := newTestServer(t, okHandler)
	res, err := OpenLoop{Rate: 100, Duration: 300 * time.Millisecond, Warmup: 200 * time.Millisecond}.Run(context.Background(), get(ts.URL))
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, res)
	if res.Sent+res.Dropped != 30 {
		t.Errorf("Sent+Dropped = %d, want 30 recorded slots", res.Sent+res.Dropped)
	}
	if got := ts.count.Load(); got != int64(res.Sent)+20 {
		t.Errorf("server saw %d requests, want %d recorded + 20 warmup", got, res.Sent)
	}
}

// A server that stalls once for 300ms behind a single connection: every
// request scheduled during the stall queues behind it, and an open loop must
// charge that waiting time to those requests.
func TestOpenLoopCoordinatedOmission(t *testing.T) {
	const stall = 300 * time.Millisecond
	ts := newTestServer(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		if n == 20 {
			sleepCtx(r, stall)
		}
		okHandler(n, w, r)
	})
	client := NewClient(1)
	client.Transport.(*http.Transport).MaxConnsPerHost = 1
	defer client.CloseIdleConnections()

	res, err := OpenLoop{Rate: 100, Duration: time.Second, Client: client}.Run(context.Background(), get(ts.URL))
	if err != nil {
		t.Fatal(err)
	}
	t.Log(res)
	checkInvariants(t, res)
	if res.OK < 90 {
		t.Fatalf("OK = %d, want ≈100", res.OK)
	}
	// ~30 requests were scheduled during the stall and waited between 300ms
	// and 0ms. Only a latency measured from the scheduled time shows them;
	// measured from the actual send they would look fast except one.
	if res.Latency.Max < stall {
		t.Errorf("Max = %v, want ≥ %v", res.Latency.Max, stall)
	}
	if res.Latency.P99 < 250*time.Millisecond {
		t.Errorf("P99 = %v, want ≥ 250ms (queued requests' waiting time)", res.Latency.P99)
	}
	if res.Latency.P90 < 100*time.Millisecond {
		t.Errorf("P90 = %v, want ≥ 100ms (queued requests' waiting time)", res.Latency.P90)
	}
}

// Latency is measured from the reference (scheduled) time, not from when the
// request actually started.
func TestLatencyFromScheduledTime(t *testing.T) {
	ts := newTestServer(t, okHandler)
	client := NewClient(1)
	defer client.CloseIdleConnections()
	s, err := newSender(client, get(ts.URL))
	if err != nil {
		t.Fatal(err)
	}
	o := s.do(context.Background(), time.Now().Add(-100*time.Millisecond))
	if !o.ok || o.latency < 100*time.Millisecond || o.ttfb < 100*time.Millisecond {
		t.Errorf("outcome %+v, want ok with latency and ttfb ≥ 100ms", o)
	}
}

func TestOpenLoopDropped(t *testing.T) {
	const hold = 200 * time.Millisecond
	ts := newTestServer(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		sleepCtx(r, hold)
		okHandler(n, w, r)
	})
	res, err := OpenLoop{Rate: 100, Duration: time.Second, MaxInFlight: 5}.Run(context.Background(), get(ts.URL))
	if err != nil {
		t.Fatal(err)
	}
	t.Log(res)
	checkInvariants(t, res)
	if res.Sent+res.Dropped != 100 {
		t.Errorf("Sent %d + Dropped %d != 100 scheduled", res.Sent, res.Dropped)
	}
	// Each slot is held ≥200ms, so at most 5·(1s/200ms + 1) = 30 can start.
	if res.Sent < 5 || res.Sent > 30 || res.Dropped < 70 {
		t.Errorf("Sent = %d, Dropped = %d; want 5..30 sent, ≥70 dropped", res.Sent, res.Dropped)
	}
	if m := ts.maxConc.Load(); m > 5 {
		t.Errorf("server saw %d concurrent requests, want ≤ 5", m)
	}
	if !strings.Contains(res.String(), fmt.Sprintf("dropped=%d", res.Dropped)) {
		t.Errorf("String() = %q does not report drops", res)
	}
}

func TestClosedLoopCounts(t *testing.T) {
	ts := newTestServer(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		time.Sleep(time.Millisecond)
		okHandler(n, w, r)
	})
	res, err := ClosedLoop{Workers: 4, Duration: 300 * time.Millisecond}.Run(context.Background(), get(ts.URL))
	if err != nil {
		t.Fatal(err)
	}
	t.Log(res)
	checkInvariants(t, res)
	if res.Sent == 0 || int64(res.Sent) != ts.count.Load() {
		t.Errorf("Sent = %d, server saw %d", res.Sent, ts.count.Load())
	}
	if res.OK != res.Sent || res.ByStatus[200] != res.Sent || len(res.Errors) != 0 {
		t.Errorf("want all OK: %v", res)
	}
	if m := ts.maxConc.Load(); m > 4 {
		t.Errorf("server saw %d concurrent requests, want ≤ 4", m)
	}
	if res.Duration < 300*time.Millisecond || res.Throughput <= 0 {
		t.Errorf("Duration = %v, Throughput = %v", res.Duration, res.Throughput)
	}
	if res.Latency.Min < time.Millisecond {
		t.Errorf("Latency.Min = %v, want ≥ 1ms (server sleeps 1ms)", res.Latency.Min)
	}

	// With a warmup, warmup requests reach the server but are not recorded.
	ts.count.Store(0)
	res, err = ClosedLoop{Workers: 2, Duration: 200 * time.Millisecond, Warmup: 100 * time.Millisecond}.Run(context.Background(), get(ts.URL))
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, res)
	if res.Sent == 0 || ts.count.Load() <= int64(res.Sent) {
		t.Errorf("Sent = %d, server saw %d; want warmup requests unrecorded", res.Sent, ts.count.Load())
	}
}

func TestPOSTBodyAndHeaders(t *testing.T) {
	body := []byte(`{"model":"m","messages":[]}`)
	var bad atomic.Int64
	check := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if string(b) != string(body) || r.Header.Get("X-Test") != "1" || r.Host != "llm.example" || r.Method != http.MethodPost {
			bad.Add(1)
		}
	}))
	defer check.Close()
	req := Request{Method: http.MethodPost, URL: check.URL + "/v1/chat/completions",
		Header: http.Header{"X-Test": {"1"}, "Host": {"llm.example"}, "Content-Type": {"application/json"}},
		Body:   body}
	res, err := ClosedLoop{Workers: 2, Duration: 100 * time.Millisecond}.Run(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if res.OK == 0 || res.OK != res.Sent || bad.Load() != 0 {
		t.Errorf("res %v, %d bad requests", res, bad.Load())
	}
}

func TestStatusAndErrorClassification(t *testing.T) {
	refused := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		return "http://" + addr
	}()
	hijackClose := func(w http.ResponseWriter, prefix string) {
		conn, bw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			panic(err)
		}
		bw.WriteString(prefix)
		bw.Flush()
		conn.Close()
	}
	tests := []struct {
		name     string
		handler  func(n int64, w http.ResponseWriter, r *http.Request)
		url      string
		client   *http.Client
		drain    time.Duration
		wantStat map[int]bool // statuses that must appear
		wantErr  string       // error kind every failure must have ("" = none)
		wantOK   bool         // some requests must succeed
	}{
		{
			name: "500 and 200",
			handler: func(n int64, w http.ResponseWriter, r *http.Request) {
				if n%2 == 0 {
					http.Error(w, "boom", http.StatusInternalServerError)
					return
				}
				okHandler(n, w, r)
			},
			wantStat: map[int]bool{200: true, 500: true},
			wantOK:   true,
		},
		{
			name: "429",
			handler: func(n int64, w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusTooManyRequests)
			},
			wantStat: map[int]bool{429: true},
		},
		{
			name:     "connection refused",
			url:      refused,
			wantStat: map[int]bool{0: true},
			wantErr:  "connection refused",
		},
		{
			name: "timeout",
			handler: func(n int64, w http.ResponseWriter, r *http.Request) {
				sleepCtx(r, 2*time.Second)
			},
			client:   &http.Client{Timeout: 50 * time.Millisecond},
			wantStat: map[int]bool{0: true},
			wantErr:  "timeout",
		},
		{
			name: "eof before response",
			handler: func(n int64, w http.ResponseWriter, r *http.Request) {
				hijackClose(w, "")
			},
			wantStat: map[int]bool{0: true},
			wantErr:  "eof",
		},
		{
			name: "truncated body",
			handler: func(n int64, w http.ResponseWriter, r *http.Request) {
				hijackClose(w, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
			},
			wantStat: map[int]bool{200: true},
			wantErr:  "body eof",
		},
		{
			name: "drain timeout",
			handler: func(n int64, w http.ResponseWriter, r *http.Request) {
				sleepCtx(r, 10*time.Second)
			},
			drain:    100 * time.Millisecond,
			wantStat: map[int]bool{0: true},
			wantErr:  "drain timeout",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url := tt.url
			if tt.handler != nil {
				url = newTestServer(t, tt.handler).URL
			}
			start := time.Now()
			res, err := OpenLoop{Rate: 50, Duration: 200 * time.Millisecond, Client: tt.client, Drain: tt.drain}.Run(context.Background(), get(url))
			if err != nil {
				t.Fatal(err)
			}
			t.Log(res)
			checkInvariants(t, res)
			if el := time.Since(start); el > 5*time.Second {
				t.Errorf("run took %v", el)
			}
			if res.Sent != 10 {
				t.Errorf("Sent = %d, want 10", res.Sent)
			}
			for st := range tt.wantStat {
				if res.ByStatus[st] == 0 {
					t.Errorf("ByStatus = %v, want some %d", res.ByStatus, st)
				}
			}
			for st := range res.ByStatus {
				if !tt.wantStat[st] {
					t.Errorf("unexpected status %d in %v", st, res.ByStatus)
				}
			}
			if tt.wantOK != (res.OK > 0) {
				t.Errorf("OK = %d, want some: %v", res.OK, tt.wantOK)
			}
			if tt.wantErr == "" {
				if len(res.Errors) != 0 {
					t.Errorf("Errors = %v, want none", res.Errors)
				}
			} else if res.Errors[tt.wantErr] != res.Failed || len(res.Errors) != 1 {
				t.Errorf("Errors = %v, want %d × %q", res.Errors, res.Failed, tt.wantErr)
			}
		})
	}
}

func sseHandler(chunks []string, delay time.Duration) func(int64, http.ResponseWriter, *http.Request) {
	return func(_ int64, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		for _, c := range chunks {
			sleepCtx(r, delay)
			io.WriteString(w, c)
			w.(http.Flusher).Flush()
		}
	}
}

func TestSSETTFB(t *testing.T) {
	const delay = 100 * time.Millisecond
	// Headers immediately; then a comment, an empty data line, three content
	// events (each after delay) and the terminator.
	chunks := []string{
		": keep-alive\n\ndata:\n\n",
		"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
		"event: message\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n",
		"data: {\"choices\":[{\"delta\":{\"content\":\"!\"}}]}\n\ndata: [DONE]\n\n",
	}
	ts := newTestServer(t, sseHandler(chunks, delay))
	res, err := OpenLoop{Rate: 20, Duration: 300 * time.Millisecond}.Run(context.Background(), get(ts.URL))
	if err != nil {
		t.Fatal(err)
	}
	t.Log(res)
	checkInvariants(t, res)
	if res.OK != 6 {
		t.Fatalf("OK = %d, want 6", res.OK)
	}
	// First content arrives ≥ 2·delay after the request; the body ends ≥
	// 2·delay after that, for every request, so the same holds between order
	// statistics. Only lower bounds: no wall-clock upper bounds.
	if res.TTFB.Min < 2*delay {
		t.Errorf("TTFB.Min = %v, want ≥ %v (first content event, not headers)", res.TTFB.Min, 2*delay)
	}
	if res.Latency.Min < 4*delay {
		t.Errorf("Latency.Min = %v, want ≥ %v", res.Latency.Min, 4*delay)
	}
	if res.TTFB.P50+2*delay > res.Latency.P50 || res.TTFB.Max+2*delay > res.Latency.Max {
		t.Errorf("TTFB %v not well below Latency %v", res.TTFB, res.Latency)
	}
}

func TestNonStreamingTTFBIsHeaders(t *testing.T) {
	const delay = 100 * time.Millisecond
	ts := newTestServer(t, func(_ int64, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		sleepCtx(r, delay)
		io.WriteString(w, `{"data: not sse":1}`)
	})
	res, err := ClosedLoop{Workers: 1, Duration: 250 * time.Millisecond}.Run(context.Background(), get(ts.URL))
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, res)
	// TTFB at the headers: every request's first byte came long before
	// the slowest-starting body could (the server waits delay after the
	// headers). Comparing TTFB.Max+delay with Latency.Max instead compared
	// two different requests and failed on a few ms of scheduling jitter.
	if res.OK == 0 || res.TTFB.Max >= res.Latency.Min-delay/2 || res.Latency.Min < delay {
		t.Errorf("TTFB %v, Latency %v: want TTFB at headers, long before the end (%v later)", res.TTFB, res.Latency, delay)
	}
}

func TestDrainSSE(t *testing.T) {
	long := strings.Repeat("x", 100<<10)
	tests := []struct {
		name   string
		stream string
		got    bool
	}{
		{"simple", "data: hi\n\n", true},
		{"crlf", "event: x\r\ndata: hi\r\n\r\n", true},
		{"no space", "data:hi\n\n", true},
		{"no final newline", "data: hi", true},
		{"only done", ": c\ndata: [DONE]\n\n", false},
		{"blank data", "data:   \ndata:\n\n", false},
		{"none", "", false},
		{"long line containing data", "event: " + long + "data: hi" + long + "\n\n", false},
		{"long data line", "data: " + long + "\n\n", true},
		{"after long line", "id: " + long + "\ndata: hi\n\n", true},
		{"field named data-ish", "datax: 1\n\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := strings.NewReader(tt.stream)
			_, got, err := drainSSE(bufio.NewReaderSize(r, 16), time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.got {
				t.Errorf("got content = %v, want %v", got, tt.got)
			}
			if r.Len() != 0 {
				t.Errorf("%d bytes left unread", r.Len())
			}
		})
	}
}

func TestCancelStopsQuickly(t *testing.T) {
	hang := func(n int64, w http.ResponseWriter, r *http.Request) { sleepCtx(r, 30*time.Second) }
	runs := map[string]func(ctx context.Context, url string) (Result, error){
		"open": func(ctx context.Context, url string) (Result, error) {
			return OpenLoop{Rate: 100, Duration: 30 * time.Second}.Run(ctx, get(url))
		},
		"closed": func(ctx context.Context, url string) (Result, error) {
			return ClosedLoop{Workers: 4, Duration: 30 * time.Second}.Run(ctx, get(url))
		},
		"closed fast server": func(ctx context.Context, url string) (Result, error) {
			return ClosedLoop{Workers: 2, Duration: 30 * time.Second}.Run(ctx, get(url+"/fast"))
		},
	}
	for name, run := range runs {
		t.Run(name, func(t *testing.T) {
			ts := newTestServer(t, func(n int64, w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/fast" {
					okHandler(n, w, r)
					return
				}
				hang(n, w, r)
			})
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(200*time.Millisecond, cancel)
			start := time.Now()
			res, err := run(ctx, ts.URL)
			el := time.Since(start)
			t.Log(el, res)
			if !errors.Is(err, context.Canceled) {
				t.Errorf("err = %v, want context.Canceled", err)
			}
			if el > 3*time.Second {
				t.Errorf("Run took %v after cancel at 200ms", el)
			}
			checkInvariants(t, res)
			if res.Sent == 0 {
				t.Errorf("want a partial result, got %v", res)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	ctx := context.Background()
	ok := get("http://127.0.0.1:1/")
	for _, o := range []OpenLoop{{}, {Rate: 1}, {Duration: time.Second}, {Rate: 1, Duration: time.Second, Warmup: -1}, {Rate: 1, Duration: time.Second, MaxInFlight: -1}} {
		if _, err := o.Run(ctx, ok); err == nil {
			t.Errorf("%+v: want error", o)
		}
	}
	for _, c := range []ClosedLoop{{}, {Workers: -1, Duration: time.Second}, {Duration: time.Second, Warmup: -1}} {
		if _, err := c.Run(ctx, ok); err == nil {
			t.Errorf("%+v: want error", c)
		}
	}
	if _, err := (OpenLoop{Rate: 1, Duration: time.Second}).Run(ctx, Request{Method: "GET", URL: "://bad"}); err == nil {
		t.Error("bad URL: want error")
	}
	if _, err := (ClosedLoop{Duration: time.Second}).Run(ctx, Request{Method: "BAD METHOD", URL: "http://x/"}); err == nil {
		t.Error("bad method: want error")
	}
}
