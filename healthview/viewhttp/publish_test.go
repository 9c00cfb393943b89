package viewhttp

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/detourhq/detour/healthview"
)

func decodeBody(t *testing.T, rec *httptest.ResponseRecorder) *healthview.Snapshot {
	t.Helper()
	var s healthview.Snapshot
	if err := json.Unmarshal(rec.Body.Bytes(), &s); err != nil {
		t.Fatalf("body is not a view: %v\n%s", err, rec.Body.String())
	}
	return &s
}

// serve runs one request against p in a goroutine; the recorder arrives
// on the channel when ServeHTTP returns.
func serve(p *Publisher, r *http.Request) <-chan *httptest.ResponseRecorder {
	done := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		rec := httptest.NewRecorder()
		p.ServeHTTP(rec, r)
		done <- rec
	}()
	return done
}

func get(target string) *http.Request { return httptest.NewRequest(http.MethodGet, target, nil) }

func TestPublisherVersions(t *testing.T) {
	before := uint64(time.Now().UnixMilli())
	p := NewPublisher()
	after := uint64(time.Now().UnixMilli())
	v0 := p.Current().Version
	if v0 < before || v0 > after {
		t.Fatalf("initial version %d, want the clock in ms (%d..%d)", v0, before, after)
	}
	if c := p.Current(); c.Backends == nil || c.Routes == nil {
		t.Errorf("initial view has nil maps: %+v", c)
	}
	for i := uint64(1); i <= 3; i++ {
		s := &healthview.Snapshot{Version: 999, Source: fmt.Sprint("envoy", i)}
		p.Publish(s)
		if s.Version != v0+i || p.Current() != s {
			t.Fatalf("Publish #%d: version %d (current %p, published %p), want %d", i, s.Version, p.Current(), s, v0+i)
		}
	}
	r := &healthview.Snapshot{Version: 1, Source: "refreshed"}
	p.Refresh(r)
	if r.Version != v0+3 || p.Current() != r {
		t.Errorf("Refresh: version %d, want %d kept", r.Version, v0+3)
	}
}

func TestPublisherServeImmediate(t *testing.T) {
	p := NewPublisher()
	p.Publish(&healthview.Snapshot{Source: "envoy", Routes: map[string]healthview.Route{"auto": {Shed: healthview.Sheddable, HealthyShare: 0.4}}})
	cur := p.Current().Version
	tests := []struct {
		name    string
		method  string
		target  string
		code    int
		version uint64 // of the answer, when 200
		inBody  string
	}{
		{"no wait: the current view", http.MethodGet, Path, 200, cur, `"shed": "sheddable"`},
		{"wait for an older version: at once", http.MethodGet, fmt.Sprintf("%s?wait=%d", Path, cur-1), 200, cur, ""},
		{"wait=0: at once", http.MethodGet, Path + "?wait=0", 200, cur, ""},
		{"wait for a version never reached (a previous incarnation's): at once", http.MethodGet, fmt.Sprintf("%s?wait=%d", Path, cur+1000), 200, cur, ""},
		{"wait not a number", http.MethodGet, Path + "?wait=soon", 400, 0, "wait:"},
		{"wait negative", http.MethodGet, Path + "?wait=-1", 400, 0, "wait:"},
		{"POST", http.MethodPost, Path, 405, 0, "GET only"},
		{"PUT with wait", http.MethodPut, Path + "?wait=1", 405, 0, "GET only"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			p.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.target, nil))
			if rec.Code != tc.code {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.code, rec.Body.String())
			}
			if !strings.Contains(rec.Body.String(), tc.inBody) {
				t.Errorf("body lacks %q:\n%s", tc.inBody, rec.Body.String())
			}
			switch tc.code {
			case 200:
				if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
					t.Errorf("Content-Type %q", ct)
				}
				if cc := rec.Header().Get("Cache-Control"); cc != "no-store" {
					t.Errorf("Cache-Control %q", cc)
				}
				if s := decodeBody(t, rec); s.Version != tc.version || s.Source != "envoy" {
					t.Errorf("answer version %d source %q, want %d envoy", s.Version, s.Source, tc.version)
				}
			case 405:
				if a := rec.Header().Get("Allow"); a != "GET" {
					t.Errorf("Allow %q, want GET", a)
				}
			}
		})
	}
}

// notYet fails if the request has been answered within d.
func notYet(t *testing.T, done <-chan *httptest.ResponseRecorder, d time.Duration) {
	t.Helper()
	select {
	case rec := <-done:
		t.Fatalf("answered without a change: %d %s", rec.Code, rec.Body.String())
	case <-time.After(d):
	}
}

func answer(t *testing.T, done <-chan *httptest.ResponseRecorder) *httptest.ResponseRecorder {
	t.Helper()
	select {
	case rec := <-done:
		return rec
	case <-time.After(5 * time.Second):
		t.Fatal("no answer")
	}
	return nil
}

func TestPublisherLongPoll(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// act changes the publisher (or the request) while a reader waits
		// with the current version; want is the answer expected, or nil
		// when the waiter must give up without writing.
		act  func(p *Publisher, cancel context.CancelFunc)
		want func(p *Publisher, had uint64) uint64
	}{
		{
			name: "Publish wakes the waiter with the new view",
			act:  func(p *Publisher, _ context.CancelFunc) { p.Publish(&healthview.Snapshot{Source: "new"}) },
			want: func(_ *Publisher, had uint64) uint64 { return had + 1 },
		},
		{
			name: "Refresh does not wake; the next Publish does",
			act: func(p *Publisher, _ context.CancelFunc) {
				p.Refresh(&healthview.Snapshot{Source: "refreshed"})
				time.Sleep(30 * time.Millisecond)
				p.Publish(&healthview.Snapshot{Source: "new"})
			},
			want: func(_ *Publisher, had uint64) uint64 { return had + 1 },
		},
		{
			name: "cancelled request returns without an answer",
			act:  func(_ *Publisher, cancel context.CancelFunc) { cancel() },
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := NewPublisher()
			had := p.Current().Version
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := serve(p, get(fmt.Sprintf("%s?wait=%d", Path, had)).WithContext(ctx))
			notYet(t, done, 30*time.Millisecond)
			acted := make(chan struct{})
			go func() { tc.act(p, cancel); close(acted) }()
			rec := answer(t, done)
			<-acted
			if tc.want == nil {
				if rec.Body.Len() != 0 {
					t.Errorf("cancelled waiter wrote %q", rec.Body.String())
				}
				return
			}
			if rec.Code != 200 {
				t.Fatalf("status %d", rec.Code)
			}
			if s := decodeBody(t, rec); s.Version != tc.want(p, had) || s.Source != "new" {
				t.Errorf("answer version %d source %q, want %d new", s.Version, s.Source, tc.want(p, had))
			}
		})
	}
}

// A Refresh alone answers a waiter only when the long poll's bound
// passes, with the refreshed details and the same version.
func TestPublisherLongPollBound(t *testing.T) {
	t.Parallel()
	p := NewPublisher()
	p.maxWait = 60 * time.Millisecond
	had := p.Current().Version
	start := time.Now()
	done := serve(p, get(fmt.Sprintf("%s?wait=%d", Path, had)))
	p.Refresh(&healthview.Snapshot{Source: "refreshed"})
	rec := answer(t, done)
	if el := time.Since(start); el < p.maxWait {
		t.Errorf("answered after %s, before the bound %s", el, p.maxWait)
	}
	if s := decodeBody(t, rec); s.Version != had || s.Source != "refreshed" {
		t.Errorf("answer version %d source %q, want %d refreshed", s.Version, s.Source, had)
	}
}

// Over HTTP: several readers wait on one server; one Publish answers all.
func TestPublisherOverHTTP(t *testing.T) {
	t.Parallel()
	p := NewPublisher()
	srv := httptest.NewServer(p)
	defer srv.Close()
	had := p.Current().Version
	const readers = 4
	got := make(chan *healthview.Snapshot, readers)
	errs := make(chan error, readers)
	for range readers {
		go func() {
			s, err := Fetch(context.Background(), srv.Client(), srv.URL+Path, had)
			if err != nil {
				errs <- err
				return
			}
			got <- s
		}()
	}
	select {
	case s := <-got:
		t.Fatalf("answered before a change: version %d", s.Version)
	case err := <-errs:
		t.Fatal(err)
	case <-time.After(40 * time.Millisecond):
	}
	p.Publish(&healthview.Snapshot{Source: "new"})
	for range readers {
		select {
		case s := <-got:
			if s.Version != had+1 || s.Source != "new" {
				t.Errorf("version %d source %q, want %d new", s.Version, s.Source, had+1)
			}
		case err := <-errs:
			t.Error(err)
		case <-time.After(5 * time.Second):
			t.Fatal("reader not woken")
		}
	}
}
