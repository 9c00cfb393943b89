package sim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestConfig(t *testing.T) {
	tests := []struct {
		name      string
		cfg       Config
		wantAdmin string
		wantErr   string
	}{
		{"zero value", Config{}, "127.0.0.1:0", ""},
		{"quickstart ports", Config{Addr: "127.0.0.1:8101"}, "127.0.0.1:9101", ""},
		{"all interfaces", Config{Addr: ":8101"}, ":9101", ""},
		{"random port", Config{Addr: "localhost:0"}, "localhost:0", ""},
		{"explicit admin", Config{Addr: "127.0.0.1:8101", AdminAddr: "127.0.0.1:7000"}, "127.0.0.1:7000", ""},
		{"admin port out of range", Config{Addr: "127.0.0.1:65000"}, "", "out of range"},
		{"no port", Config{Addr: "127.0.0.1"}, "", "Addr"},
		{"named port", Config{Addr: "127.0.0.1:http"}, "", "port"},
		{"bad admin", Config{AdminAddr: "nope"}, "", "AdminAddr"},
		{"negative tokens", Config{DefaultTokens: -1}, "", "DefaultTokens"},
		{"negative dims", Config{EmbeddingDims: -1}, "", "EmbeddingDims"},
		{"empty model id", Config{Models: []string{"a", ""}}, "", "empty model id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := s.AdminAddr(); got != tt.wantAdmin {
				t.Errorf("AdminAddr() = %q, want %q", got, tt.wantAdmin)
			}
			if s.Name() != "sim" || s.cfg.DefaultTokens != 16 || s.cfg.EmbeddingDims != 8 {
				t.Errorf("defaults: %+v", s.cfg)
			}
		})
	}
}

func TestDerivedAdminPortIsBound(t *testing.T) {
	// Find a free port p with p+1000 free too, then bind both through the
	// derivation rule.
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if port+1000 > 65535 {
			continue
		}
		s, err := New(Config{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Start(t.Context()); err != nil {
			continue // raced with another process; try another port
		}
		defer s.Close(context.Background())
		if want := net.JoinHostPort("127.0.0.1", strconv.Itoa(port+1000)); s.AdminAddr() != want {
			t.Errorf("AdminAddr() = %s, want %s", s.AdminAddr(), want)
		}
		if r := call(t, newClient(t), "GET", adminURL(s, "/_sim/health"), "", nil); r.status != 200 {
			t.Errorf("admin health: %d %v", r.status, r.err)
		}
		return
	}
	t.Skip("no free port pair found")
}

func TestLifecycle(t *testing.T) {
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(t.Context()); err == nil {
		t.Error("second Start succeeded")
	}
	if strings.HasSuffix(s.Addr(), ":0") || strings.HasSuffix(s.AdminAddr(), ":0") {
		t.Errorf("addresses not resolved: %s %s", s.Addr(), s.AdminAddr())
	}
	c := newClient(t)

	// Close waits for an in-flight request to finish.
	done := make(chan reply, 1)
	go func() {
		done <- call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), chatBody(`"stream":true`),
			map[string]string{"x-sim-tokens-per-second": "50"})
	}()
	waitFor(t, func() bool { return s.inflight.count() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Errorf("Close: %v", err)
	}
	if r := <-done; r.status != 200 || r.err != nil || !strings.Contains(string(r.body), "[DONE]") {
		t.Errorf("in-flight stream: %d %v", r.status, r.err)
	}
	if s.inflight.count() != 0 {
		t.Error("handlers still running after Close")
	}
	if err := s.Close(ctx); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := s.Start(t.Context()); err == nil {
		t.Error("Start after Close succeeded")
	}
	if _, err := net.DialTimeout("tcp", s.Addr(), time.Second); err == nil {
		t.Error("serving listener still open after Close")
	}
	if _, err := net.DialTimeout("tcp", s.AdminAddr(), time.Second); err == nil {
		t.Error("admin listener still open after Close")
	}
	// Faults after Close do not reopen anything.
	s.SetFault(Fault{Refuse: true})
	s.ClearFault()
	if _, err := net.DialTimeout("tcp", s.Addr(), time.Second); err == nil {
		t.Error("ClearFault after Close reopened the listener")
	}
}

func TestCloseForced(t *testing.T) {
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	c := newClient(t)
	done := make(chan reply, 1)
	go func() {
		done <- call(t, c, http.MethodPost, apiURL(s, "/v1/chat/completions"), chatBody(""), map[string]string{"x-sim-latency-ms": "60000"})
	}()
	waitFor(t, func() bool { return s.inflight.count() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = s.Close(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close = %v, want deadline exceeded", err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("forced Close took %v", el)
	}
	if s.inflight.count() != 0 {
		t.Error("handlers still running after forced Close")
	}
	if r := <-done; r.err == nil {
		t.Errorf("client got %d from a force-closed server", r.status)
	}
}

func TestCloseBeforeStart(t *testing.T) {
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err == nil {
		t.Error("Start after Close succeeded")
	}
}

func TestStartWithRefuse(t *testing.T) {
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	s.SetFault(Fault{Refuse: true})
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	if _, err := net.DialTimeout("tcp", s.Addr(), time.Second); err == nil {
		t.Error("dial succeeded while starting refused")
	}
	s.ClearFault()
	if r := call(t, newClient(t), "GET", apiURL(s, "/v1/models"), "", nil); r.status != 200 {
		t.Errorf("after clear: %d %v", r.status, r.err)
	}
}

func TestConcurrentRequests(t *testing.T) {
	s := startSim(t, Config{Seed: 1})
	s.SetFault(Fault{Status: 503, Rate: 0.3})
	c := newClient(t)
	const n = 40
	errs := make(chan string, n)
	for i := range n {
		go func() {
			var r reply
			if i%2 == 0 {
				r = call(t, c, "POST", apiURL(s, "/v1/chat/completions"), chatBody(`"stream":true,"max_tokens":5`), map[string]string{"x-sim-tokens-per-second": "500"})
			} else {
				r = call(t, c, "POST", apiURL(s, "/v1/embeddings"), `{"model":"e","input":"x"}`, nil)
			}
			if r.err != nil || (r.status != 200 && r.status != 503 && r.status != 500) {
				errs <- fmt.Sprintf("status %d, err %v", r.status, r.err)
				return
			}
			errs <- ""
		}()
		if i == n/2 {
			go s.SetFault(Fault{Status: 500, Rate: 0.3})
			go s.Stats()
			go s.Requests(5)
		}
	}
	for range n {
		if e := <-errs; e != "" {
			t.Error(e)
		}
	}
	if st := s.Stats(); st.Requests != n {
		t.Errorf("requests = %d", st.Requests)
	}
}
