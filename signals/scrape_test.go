package signals

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestScraper(t *testing.T) {
	body := readTestdata(t, "seq/29.prom")
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var gotQuery string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/stats/prometheus" {
			http.NotFound(w, r)
			return
		}
		gotQuery = r.URL.RawQuery
		w.Header().Set("content-type", "text/plain; version=0.0.4")
		_, _ = w.Write(body)
	}))
	defer srv.Close()

	s := &Scraper{Admin: srv.URL + "/", Client: &http.Client{Timeout: time.Second}, Backend: quickstart, Now: func() time.Time { return at }}
	got, err := s.Scrape(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !got.At.Equal(at) || got.Uptime != 45*time.Second || len(got.Backends) != 4 {
		t.Errorf("scrape = at %v, uptime %v, %d backends", got.At, got.Uptime, len(got.Backends))
	}
	if c := got.Backends["fast"]; c.Retried.Class[5] != 72 {
		t.Errorf("fast retried 5xx = %d, want 72", c.Retried.Class[5])
	}
	if !strings.HasPrefix(gotQuery, "usedonly&filter=") {
		t.Errorf("query = %q, want usedonly and a filter", gotQuery)
	}
}

func TestScraperErrors(t *testing.T) {
	tests := []struct {
		name    string
		handler http.HandlerFunc
		timeout time.Duration // client timeout
		ctxTO   time.Duration // context timeout
		max     int64
		check   func(t *testing.T, err error)
	}{
		{
			name:    "client timeout",
			handler: func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() },
			timeout: 50 * time.Millisecond,
			check: func(t *testing.T, err error) {
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					t.Errorf("err = %v, want a net.Error timeout", err)
				}
			},
		},
		{
			name:    "context deadline",
			handler: func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() },
			timeout: 10 * time.Second,
			ctxTO:   50 * time.Millisecond,
			check: func(t *testing.T, err error) {
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("err = %v, want context.DeadlineExceeded", err)
				}
			},
		},
		{
			name: "timeout mid-body",
			handler: func(w http.ResponseWriter, r *http.Request) {
				_, _ = w.Write([]byte("# TYPE envoy_server_uptime gauge\n"))
				w.(http.Flusher).Flush()
				<-r.Context().Done()
			},
			timeout: 50 * time.Millisecond,
			check: func(t *testing.T, err error) {
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() || errors.Is(err, ErrMalformed) {
					t.Errorf("err = %v, want a timeout, not a parse error", err)
				}
			},
		},
		{
			name: "not 200",
			handler: func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, "envoy overloaded", http.StatusServiceUnavailable)
			},
			check: func(t *testing.T, err error) {
				var se *StatusError
				if !errors.As(err, &se) || se.Code != 503 || se.Body != "envoy overloaded" {
					t.Errorf("err = %v, want a *StatusError 503", err)
				}
			},
		},
		{
			name: "garbage",
			handler: func(w http.ResponseWriter, r *http.Request) {
				_, _ = w.Write([]byte("\x00\x01 not { prometheus"))
			},
			check: func(t *testing.T, err error) {
				if !errors.Is(err, ErrMalformed) {
					t.Errorf("err = %v, want ErrMalformed", err)
				}
			},
		},
		{
			name: "too large",
			handler: func(w http.ResponseWriter, r *http.Request) {
				_, _ = w.Write([]byte(strings.Repeat("# comment\n", 100)))
			},
			max: 500,
			check: func(t *testing.T, err error) {
				if !errors.Is(err, ErrTooLarge) {
					t.Errorf("err = %v, want ErrTooLarge", err)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler)
			defer srv.Close()
			timeout := tt.timeout
			if timeout == 0 {
				timeout = time.Second
			}
			ctx := context.Background()
			if tt.ctxTO > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.ctxTO)
				defer cancel()
			}
			s := &Scraper{Admin: srv.URL, Client: &http.Client{Timeout: timeout}, Backend: quickstart, MaxBytes: tt.max}
			got, err := s.Scrape(ctx)
			if err == nil {
				t.Fatalf("Scrape = %+v, want an error", got)
			}
			if !strings.Contains(err.Error(), srv.URL) {
				t.Errorf("err = %q does not name the admin address", err)
			}
			tt.check(t, err)
		})
	}
}

func TestScraperNeedsClientAndBackend(t *testing.T) {
	for _, s := range []*Scraper{{Admin: "http://x", Backend: quickstart}, {Admin: "http://x", Client: http.DefaultClient}} {
		if _, err := s.Scrape(context.Background()); err == nil {
			t.Errorf("Scrape with %+v: no error", s)
		}
	}
}

func TestScraperConnectionRefused(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := srv.URL
	srv.Close()
	s := &Scraper{Admin: addr, Client: &http.Client{Timeout: time.Second}, Backend: quickstart}
	_, err := s.Scrape(context.Background())
	var oe *net.OpError
	if !errors.As(err, &oe) {
		t.Fatalf("err = %v, want a *net.OpError", err)
	}
}
