package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestStatusFault(t *testing.T) {
	tests := []struct {
		name           string
		global         *Fault
		hdr            map[string]string
		wantStatus     int
		wantType       string
		wantCode       any
		wantRetryAfter string
	}{
		{"global 503 with Retry-After", &Fault{Status: 503, RetryAfterS: 7}, nil, 503, "server_error", nil, "7"},
		{"global 500", &Fault{Status: 500}, nil, 500, "server_error", nil, ""},
		{"global 429", &Fault{Status: 429, RetryAfterS: 2}, nil, 429, "requests", "rate_limit_exceeded", "2"},
		{"header 429", nil, map[string]string{"x-sim-status": "429", "x-sim-retry-after-s": "3"}, 429, "requests", "rate_limit_exceeded", "3"},
		{"header 502", nil, map[string]string{"x-sim-status": "502"}, 502, "server_error", nil, ""},
		{"header 401", nil, map[string]string{"x-sim-status": "401"}, 401, "authentication_error", "invalid_api_key", ""},
		{"header 400", nil, map[string]string{"x-sim-status": "400"}, 400, "invalid_request_error", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startSim(t, Config{Name: "beta"})
			if tt.global != nil {
				s.SetFault(*tt.global)
			}
			c := newClient(t)
			for _, stream := range []bool{false, true} {
				body := chatBody("")
				if stream {
					body = chatBody(`"stream":true`)
				}
				r := call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), body, tt.hdr)
				if r.status != tt.wantStatus {
					t.Fatalf("stream=%v: status %d, want %d: %s", stream, r.status, tt.wantStatus, r.body)
				}
				if got := r.header.Get("Retry-After"); got != tt.wantRetryAfter {
					t.Errorf("Retry-After = %q, want %q", got, tt.wantRetryAfter)
				}
				if r.header.Get("x-sim-name") != "beta" {
					t.Errorf("x-sim-name = %q", r.header.Get("x-sim-name"))
				}
				e := errorOf(t, r)
				if e["type"] != tt.wantType || e["code"] != tt.wantCode {
					t.Errorf("error type/code = %v/%v, want %v/%v", e["type"], e["code"], tt.wantType, tt.wantCode)
				}
			}
			st := s.Stats()
			if st.FaultsInjected != 2 || st.Requests != 2 {
				t.Errorf("stats: %+v", st)
			}
			recs := s.Requests(1)
			if len(recs) != 1 || recs[0].Fault != "status" || recs[0].Status != tt.wantStatus || recs[0].Model != "m1" || !recs[0].Stream {
				t.Errorf("record: %+v", recs)
			}
		})
	}
}

func TestFaultAppliesToEveryEndpoint(t *testing.T) {
	s := startSim(t, Config{})
	s.SetFault(Fault{Status: 503})
	c := newClient(t)
	for _, p := range []struct{ method, path, body string }{
		{"POST", "/v1/completions", `{"model":"m","prompt":"x"}`},
		{"POST", "/v1/embeddings", `{"model":"m","input":"x"}`},
		{"GET", "/v1/models", ""},
		{"POST", "/v1/chat/completions", `{not json`}, // faults come before body validation
	} {
		if r := call(t, c, p.method, apiURL(s, p.path), p.body, nil); r.status != 503 {
			t.Errorf("%s %s: status %d", p.method, p.path, r.status)
		}
	}
	// Routing, header validation and auth come first.
	if r := call(t, c, "GET", apiURL(s, "/nope"), "", nil); r.status != 404 {
		t.Errorf("unknown path under fault: %d", r.status)
	}
}

func TestRate(t *testing.T) {
	run := func(seed int64) []bool {
		s := startSim(t, Config{Seed: seed})
		s.SetFault(Fault{Status: 503, Rate: 0.5})
		c := newClient(t)
		var hits []bool
		for range 200 {
			r := call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), chatBody(`"max_tokens":1`), nil)
			if r.status != 200 && r.status != 503 {
				t.Fatalf("status %d", r.status)
			}
			hits = append(hits, r.status == 503)
		}
		if got := s.Stats().FaultsInjected; got != int64(count(hits)) {
			t.Errorf("faults_injected %d, hits %d", got, count(hits))
		}
		return hits
	}
	a := run(42)
	if n := count(a); n < 60 || n > 140 {
		t.Errorf("rate 0.5 hit %d of 200", n)
	}
	if b := run(42); !equalBools(a, b) {
		t.Error("the same seed gave a different hit sequence")
	}

	// A per-request rate.
	s := startSim(t, Config{Seed: 7})
	c := newClient(t)
	hits := 0
	for range 200 {
		r := call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), chatBody(`"max_tokens":1`),
			map[string]string{"x-sim-status": "500", "x-sim-rate": "0.25"})
		if r.status == 500 {
			hits++
		}
	}
	if hits < 20 || hits > 80 {
		t.Errorf("header rate 0.25 hit %d of 200", hits)
	}
}

func count(bs []bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

func equalBools(a, b []bool) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestLatency(t *testing.T) {
	s := startSim(t, Config{})
	c := newClient(t)
	tests := []struct {
		name   string
		global Fault
		hdr    map[string]string
		body   string
		min    time.Duration
	}{
		{"global latency", Fault{LatencyMS: 150}, nil, chatBody(""), 150 * time.Millisecond},
		{"header latency", Fault{}, map[string]string{"x-sim-latency-ms": "150"}, chatBody(""), 150 * time.Millisecond},
		{"ttft non-streaming", Fault{TTFTMS: 150}, nil, chatBody(""), 150 * time.Millisecond},
		{"tps non-streaming", Fault{TokensPerSecond: 50}, nil, chatBody(`"max_tokens":6`), 100 * time.Millisecond}, // 5 intervals of 20ms
		{"latency on models", Fault{LatencyMS: 150}, nil, "", 150 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.SetFault(tt.global)
			method, path := http.MethodPost, "/v1/chat/completions"
			if tt.body == "" {
				method, path = http.MethodGet, "/v1/models"
			}
			start := time.Now()
			r := call(t, c, method, apiURL(s, path), tt.body, tt.hdr)
			if el := time.Since(start); el < tt.min {
				t.Errorf("answered after %v, want ≥ %v", el, tt.min)
			}
			if r.status != 200 {
				t.Errorf("status %d: %s", r.status, r.body)
			}
		})
	}
}

func TestStreamTiming(t *testing.T) {
	s := startSim(t, Config{})
	c := newClient(t)

	t.Run("ttft stalls the first content chunk, not the headers", func(t *testing.T) {
		_, events, headersAt, err := streamCall(t, c, apiURL(s, "/v1/chat/completions"), chatBody(`"stream":true,"max_tokens":3`),
			map[string]string{"x-sim-ttft-ms": "400"})
		if err != nil || len(events) != 6 {
			t.Fatalf("err %v, events %v", err, events)
		}
		role, first := events[0].at, events[1].at
		if headersAt > 300*time.Millisecond || role > 300*time.Millisecond {
			t.Errorf("headers at %v, role chunk at %v: want them before the ttft", headersAt, role)
		}
		if first-role < 300*time.Millisecond {
			t.Errorf("first token %v after the role chunk, want ≈400ms", first-role)
		}
	})

	t.Run("tokens_per_second paces chunks", func(t *testing.T) {
		_, events, _, err := streamCall(t, c, apiURL(s, "/v1/chat/completions"), chatBody(`"stream":true,"max_tokens":6`),
			map[string]string{"x-sim-tokens-per-second": "20"})
		if err != nil || len(events) != 9 {
			t.Fatalf("err %v, events %v", err, events)
		}
		first, last := events[1].at, events[6].at
		// 5 intervals of 50ms between the first and last token.
		if last-first < 200*time.Millisecond {
			t.Errorf("first token at %v, last at %v: want ≥200ms apart", first, last)
		}
		for i := 2; i <= 6; i++ {
			if events[i].at < events[i-1].at {
				t.Errorf("chunks out of order")
			}
		}
	})

	t.Run("completions stream ttft", func(t *testing.T) {
		_, events, headersAt, err := streamCall(t, c, apiURL(s, "/v1/completions"), `{"model":"m","prompt":"x","stream":true,"max_tokens":2}`,
			map[string]string{"x-sim-ttft-ms": "300"})
		if err != nil || len(events) != 4 {
			t.Fatalf("err %v, events %v", err, events)
		}
		if events[0].at-headersAt < 200*time.Millisecond {
			t.Errorf("headers at %v, first token at %v", headersAt, events[0].at)
		}
	})
}

func TestDropAfterTokens(t *testing.T) {
	s := startSim(t, Config{})
	c := newClient(t)
	tests := []struct {
		name       string
		fault      map[string]string
		maxTokens  int
		wantTokens int
	}{
		{"mid stream", map[string]string{"x-sim-drop-after-tokens": "3"}, 8, 3},
		{"longer than response", map[string]string{"x-sim-drop-after-tokens": "50"}, 4, 4},
		{"paced", map[string]string{"x-sim-drop-after-tokens": "2", "x-sim-tokens-per-second": "100"}, 8, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, events, _, err := streamCall(t, c, apiURL(s, "/v1/chat/completions"),
				chatBody(`"stream":true,"max_tokens":`+strconv.Itoa(tt.maxTokens)), tt.fault)
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("body ended with %v, want unexpected EOF", err)
			}
			tokens := 0
			for _, ev := range events {
				if ev.data == "[DONE]" {
					t.Fatal("got [DONE] from a dropped stream")
				}
				m := mustJSON(t, ev.data)
				if dig(m, "choices", 0, "finish_reason") != nil {
					t.Errorf("got a finish chunk: %s", ev.data)
				}
				if _, ok := dig(m, "choices", 0, "delta", "content").(string); ok && dig(m, "choices", 0, "delta", "role") == nil {
					tokens++
				}
			}
			if tokens != tt.wantTokens {
				t.Errorf("got %d tokens, want %d", tokens, tt.wantTokens)
			}
			rec := s.Requests(1)[0]
			if rec.Status != 200 || !strings.Contains(rec.Fault, "drop_after_tokens") {
				t.Errorf("record %+v", rec)
			}
		})
	}

	t.Run("non-streaming", func(t *testing.T) {
		s.SetFault(Fault{DropAfterTokens: 2})
		defer s.ClearFault()
		r := call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), chatBody(""), nil)
		if r.status != 200 || !errors.Is(r.err, io.ErrUnexpectedEOF) {
			t.Errorf("status %d, err %v, want 200 and unexpected EOF", r.status, r.err)
		}
		if len(r.body) == 0 || strings.HasSuffix(string(r.body), "}\n") {
			t.Errorf("body %q: want a truncated prefix", r.body)
		}
	})
}

// Past its capacity a provider refuses with 429 and Retry-After, as a
// concurrency limit does; a finished request frees its place.
func TestCapacity(t *testing.T) {
	s := startSim(t, Config{Capacity: 2})
	s.SetFault(Fault{TTFTMS: 300})
	c := newClient(t)
	statuses := make(chan int, 3)
	for range 3 {
		go func() {
			r := call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), chatBody(""), nil)
			if r.status == http.StatusTooManyRequests && r.header.Get("Retry-After") != "1" {
				t.Errorf("429 without Retry-After: 1: %v", r.header)
			}
			statuses <- r.status
		}()
		time.Sleep(50 * time.Millisecond) // in order: the third finds two in flight
	}
	got := map[int]int{}
	for range 3 {
		got[<-statuses]++
	}
	if got[200] != 2 || got[429] != 1 {
		t.Errorf("statuses %v, want two 200 and one 429", got)
	}
	s.ClearFault()
	if r := call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), chatBody(""), nil); r.status != 200 {
		t.Errorf("after the others finished: status %d", r.status)
	}
	if _, err := New(Config{Capacity: -1}); err == nil {
		t.Error("negative capacity accepted")
	}
}

// A stalled response sends its first tokens and then nothing, holding the
// connection until the client gives up.
func TestStallAfterTokens(t *testing.T) {
	s := startSim(t, Config{})
	s.SetFault(Fault{StallAfterTokens: 3})
	defer s.ClearFault()
	for _, stream := range []bool{true, false} {
		t.Run(fmt.Sprintf("stream=%t", stream), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			body := chatBody(fmt.Sprintf(`"stream":%t,"max_tokens":8`, stream))
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, apiURL(s, "/v1/chat/completions"), strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("status %d, body ended with %v: want 200 and the client's deadline", resp.StatusCode, err)
			}
			if stream && (strings.Count(string(got), `"content":"`) != 4 || strings.Contains(string(got), "[DONE]")) {
				t.Errorf("want the role chunk and 3 tokens, then nothing; got %q", got)
			}
			if !stream && (len(got) == 0 || strings.HasSuffix(string(got), "}\n")) {
				t.Errorf("body %q: want a truncated prefix", got)
			}
		})
	}
	t.Run("shorter than the stall point", func(t *testing.T) {
		r := call(t, newClient(t), http.MethodPost, apiURL(s, "/v1/chat/completions"), chatBody(`"max_tokens":2`), nil)
		if r.status != 200 || r.err != nil {
			t.Errorf("status %d, err %v", r.status, r.err)
		}
	})
}

// With stall_ms the stall is a pause: the answer arrives whole, late.
func TestStallPause(t *testing.T) {
	s := startSim(t, Config{})
	s.SetFault(Fault{StallAfterTokens: 3, StallMS: 200})
	defer s.ClearFault()
	c := newClient(t)
	for _, stream := range []bool{true, false} {
		t.Run(fmt.Sprintf("stream=%t", stream), func(t *testing.T) {
			start := time.Now()
			r := call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), chatBody(fmt.Sprintf(`"stream":%t,"max_tokens":8`, stream)), nil)
			if r.status != 200 || r.err != nil {
				t.Fatalf("status %d, err %v", r.status, r.err)
			}
			if took := time.Since(start); took < 200*time.Millisecond {
				t.Errorf("answer took %s; want at least the 200ms pause", took)
			}
			if b := string(r.body); stream && (strings.Count(b, `"content":"`) != 9 || !strings.Contains(b, "[DONE]")) {
				t.Errorf("want the role chunk, 8 tokens and [DONE]; got %q", r.body)
			}
			if !stream && !strings.Contains(string(r.body), "tok7") {
				t.Errorf("body %q: want the whole answer", r.body)
			}
		})
	}
}

func TestReset(t *testing.T) {
	s := startSim(t, Config{})
	c := newClient(t)
	for _, tc := range []struct {
		name   string
		global Fault
		hdr    map[string]string
	}{
		{"global", Fault{Reset: true}, nil},
		{"header", Fault{}, map[string]string{"x-sim-reset": "true"}},
		{"header 1", Fault{}, map[string]string{"x-sim-reset": "1"}},
		{"after latency", Fault{}, map[string]string{"x-sim-reset": "1", "x-sim-latency-ms": "50"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.SetFault(tc.global)
			defer s.ClearFault()
			r := call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), chatBody(""), tc.hdr)
			if r.err == nil {
				t.Fatalf("got a response (%d %s), want a reset", r.status, r.body)
			}
			t.Logf("client error: %v", r.err)
			if !errors.Is(r.err, syscall.ECONNRESET) && !errors.Is(r.err, io.EOF) && !strings.Contains(r.err.Error(), "reset") {
				t.Errorf("error %v: want a connection reset or EOF", r.err)
			}
			rec := s.Requests(1)[0]
			if rec.Status != 0 || !strings.HasSuffix(rec.Fault, "reset") {
				t.Errorf("record %+v", rec)
			}
		})
	}
	if st := s.Stats(); st.ByStatus["0"] != 4 {
		t.Errorf("by_status %v", st.ByStatus)
	}
	// x-sim-reset: false is an explicit "no fault" and the server still answers.
	if r := call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), chatBody(""), map[string]string{"x-sim-reset": "false"}); r.status != 200 {
		t.Errorf("after resets: %d %v", r.status, r.err)
	}
}

func TestRefuse(t *testing.T) {
	s := startSim(t, Config{})
	addr := s.Addr()
	c := newClient(t)
	// Warm a keep-alive connection that refusing must close.
	if r := call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), chatBody(""), nil); r.status != 200 {
		t.Fatalf("before: %d %v", r.status, r.err)
	}
	refused := func() {
		t.Helper()
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			t.Fatal("dial succeeded while refusing")
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("dial error %v, want connection refused", err)
		}
		if r := call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), chatBody(""), nil); r.err == nil {
			t.Errorf("pooled client got %d while refusing", r.status)
		}
	}
	works := func() {
		t.Helper()
		if s.Addr() != addr {
			t.Errorf("address changed: %s → %s", addr, s.Addr())
		}
		if r := call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), chatBody(""), nil); r.status != 200 {
			t.Fatalf("after clearing: %d %v", r.status, r.err)
		}
	}

	s.SetFault(Fault{Refuse: true})
	refused()
	s.SetFault(Fault{Refuse: true}) // idempotent
	refused()
	s.ClearFault()
	works()

	// Through the admin API, which keeps answering while refusing.
	if r := call(t, c, http.MethodPost, adminURL(s, "/_sim/faults"), `{"refuse":true}`, nil); r.status != 200 {
		t.Fatalf("admin POST: %d %s", r.status, r.body)
	}
	refused()
	r := call(t, c, http.MethodGet, adminURL(s, "/_sim/health"), "", nil)
	if r.status != 200 || r.json(t)["listening"] != false {
		t.Errorf("health while refusing: %d %s", r.status, r.body)
	}
	// Replacing refuse with another fault listens again, with that fault.
	if r := call(t, c, http.MethodPost, adminURL(s, "/_sim/faults"), `{"status":503}`, nil); r.status != 200 {
		t.Fatalf("admin POST: %d %s", r.status, r.body)
	}
	if r := call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), chatBody(""), nil); r.status != 503 {
		t.Errorf("after replacing refuse: %d %v", r.status, r.err)
	}
	if r := call(t, c, http.MethodDelete, adminURL(s, "/_sim/faults"), "", nil); r.status != 200 {
		t.Fatalf("admin DELETE: %d %s", r.status, r.body)
	}
	works()
}

func TestRefuseLetsInFlightFinish(t *testing.T) {
	s := startSim(t, Config{})
	c := newClient(t)
	done := make(chan reply, 1)
	go func() {
		done <- call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), chatBody(""), map[string]string{"x-sim-latency-ms": "300"})
	}()
	waitFor(t, func() bool { return s.inflight.count() == 1 })
	s.SetFault(Fault{Refuse: true})
	if r := <-done; r.status != 200 || r.err != nil {
		t.Errorf("in-flight request: %d %v", r.status, r.err)
	}
	s.ClearFault()
}

func TestHeaderOverrides(t *testing.T) {
	s := startSim(t, Config{Name: "a"})
	s.SetFault(Fault{Status: 503})
	c := newClient(t)
	tests := []struct {
		name       string
		hdr        map[string]string
		wantStatus int
	}{
		{"global applies", nil, 503},
		{"x-sim-status 0 turns it off", map[string]string{"x-sim-status": "0"}, 200},
		{"any fault header replaces the global fault", map[string]string{"x-sim-latency-ms": "1"}, 200},
		{"header status wins", map[string]string{"x-sim-status": "429"}, 429},
		{"x-sim-tokens is not a fault header", map[string]string{"x-sim-tokens": "2"}, 503},
		{"x-sim-rate 0 means 1", map[string]string{"x-sim-status": "500", "x-sim-rate": "0"}, 500},
		{"targeted", map[string]string{"x-sim-status": "429", "x-sim-target": "b, a"}, 429},
		{"wildcard target", map[string]string{"x-sim-status": "429", "x-sim-target": "*"}, 429},
		{"other target: headers ignored, global applies", map[string]string{"x-sim-status": "0", "x-sim-target": "b"}, 503},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), chatBody(""), tt.hdr)
			if r.status != tt.wantStatus {
				t.Errorf("status %d, want %d: %s", r.status, tt.wantStatus, r.body)
			}
		})
	}
	s.ClearFault()
	r := call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), chatBody(""), map[string]string{"x-sim-tokens": "3", "x-sim-target": "b"})
	if got := dig(r.json(t), "usage", "completion_tokens"); got != 16.0 {
		t.Errorf("untargeted x-sim-tokens applied: %v", got)
	}
}

func TestInvalidHeaders(t *testing.T) {
	s := startSim(t, Config{})
	c := newClient(t)
	tests := []struct{ header, value string }{
		{"x-sim-status", "abc"},
		{"x-sim-status", "200"},
		{"x-sim-status", "600"},
		{"x-sim-rate", "1.5"},
		{"x-sim-rate", "-0.1"},
		{"x-sim-rate", "NaN"},
		{"x-sim-retry-after-s", "-1"},
		{"x-sim-retry-after-s", "1.5"},
		{"x-sim-latency-ms", "soon"},
		{"x-sim-latency-ms", "-5"},
		{"x-sim-ttft-ms", "99999999999"},
		{"x-sim-tokens-per-second", "fast"},
		{"x-sim-tokens-per-second", "Inf"},
		{"x-sim-drop-after-tokens", "-1"},
		{"x-sim-reset", "maybe"},
		{"x-sim-tokens", "-3"},
		{"x-sim-tokens", "ten"},
		{"x-sim-latency-ms", " "},
	}
	for _, tt := range tests {
		t.Run(tt.header+"="+tt.value, func(t *testing.T) {
			r := call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), chatBody(""), map[string]string{tt.header: tt.value})
			if r.status != 400 {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			e := errorOf(t, r)
			if msg, _ := e["message"].(string); !strings.Contains(msg, tt.header) || e["type"] != "invalid_request_error" {
				t.Errorf("error does not name %s: %s", tt.header, r.body)
			}
		})
	}
}

func TestClientGoneStopsDelays(t *testing.T) {
	s := startSim(t, Config{})
	s.SetFault(Fault{LatencyMS: 10_000})
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, apiURL(s, "/v1/chat/completions"), strings.NewReader(chatBody("")))
	start := time.Now()
	if _, err := newClient(t).Do(req); err == nil {
		t.Fatal("want a timeout")
	}
	waitFor(t, func() bool { return s.Stats().Requests == 1 })
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("handler ran %v after the client left", el)
	}
	if rec := s.Requests(1)[0]; rec.Status != 499 {
		t.Errorf("record status %d, want 499", rec.Status)
	}
}

// waitFor polls cond for up to 3s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 3s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestEvenRate(t *testing.T) {
	s := startSim(t, Config{})
	s.SetFault(Fault{Status: 500, Rate: 0.3, Even: true})
	c := newClient(t)
	var hits []bool
	for range 100 {
		r := call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), chatBody(`"max_tokens":1`), nil)
		hits = append(hits, r.status == 500)
	}
	// Every run of 20 requests holds 6 hits (to within one).
	for i := 0; i+20 <= len(hits); i++ {
		if n := count(hits[i : i+20]); n < 5 || n > 7 {
			t.Fatalf("requests %d–%d: %d hits, want 6 ± 1", i, i+20, n)
		}
	}
	if n := count(hits); n != 30 {
		t.Errorf("%d of 100 hit, want 30", n)
	}
}
