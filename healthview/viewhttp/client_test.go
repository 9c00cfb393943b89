package viewhttp

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/detourhq/detour/healthview"
)

func TestFetch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		after   uint64
		status  int
		body    string
		wantQ   string // the raw query the server must see
		wantErr []string
		check   func(*healthview.Snapshot) error
	}{
		{
			name:   "decodes a view",
			status: 200,
			body:   `{"version": 7, "source": "envoy", "first_token_timeout": "1.5s", "backends": {"a": {"state": "OPEN", "signals": {"age": "2s", "window": "1m0s"}}}, "routes": {"auto": {"shed": "standard", "healthy_share": 0.25}}}`,
			check: func(s *healthview.Snapshot) error {
				b := s.Backends["a"]
				if s.Version != 7 || s.Source != "envoy" || time.Duration(s.FirstTokenTimeout) != 1500*time.Millisecond ||
					b.State != healthview.Open || time.Duration(b.Signals.Window) != time.Minute || time.Duration(b.Signals.Age) != 2*time.Second ||
					s.Routes["auto"] != (healthview.Route{Shed: healthview.Standard, HealthyShare: 0.25}) {
					return fmt.Errorf("decoded %+v", s)
				}
				return nil
			},
		},
		{name: "passes wait", after: 41, status: 200, body: `{"version": 42}`, wantQ: "wait=41",
			check: func(s *healthview.Snapshot) error {
				if s.Version != 42 {
					return fmt.Errorf("version %d", s.Version)
				}
				return nil
			}},
		{name: "non-200 names the status", status: 503, body: "down", wantErr: []string{"health view", "503 Service Unavailable"}},
		{name: "404 names the status", after: 3, status: 404, body: "nope", wantQ: "wait=3", wantErr: []string{"404 Not Found"}},
		{name: "garbage JSON", status: 200, body: "<html>not json", wantErr: []string{"health view: decode"}},
		{name: "a bad duration", status: 200, body: `{"first_token_timeout": "soon"}`, wantErr: []string{"decode"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var gotQ, gotPath string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				gotQ, gotPath = r.URL.RawQuery, r.URL.Path
				w.WriteHeader(tc.status)
				fmt.Fprint(w, tc.body)
			}))
			defer srv.Close()
			s, err := Fetch(context.Background(), srv.Client(), srv.URL+Path, tc.after)
			if gotQ != tc.wantQ || gotPath != Path {
				t.Errorf("server saw %s?%s, want %s?%s", gotPath, gotQ, Path, tc.wantQ)
			}
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("no error, got %+v", s)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.check(s); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestFetchUnreachableAndCancelled(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL + Path
	srv.Close()
	if _, err := Fetch(context.Background(), http.DefaultClient, url, 0); err == nil || !strings.Contains(err.Error(), "health view") {
		t.Errorf("unreachable: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Fetch(ctx, http.DefaultClient, url, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v, want context.Canceled", err)
	}
}

// watched is a Watcher running against a server whose publisher can be
// replaced (a restart) and whose next requests can be made to fail.
type watched struct {
	srv    *httptest.Server
	pub    atomic.Pointer[Publisher]
	fail   atomic.Int32 // requests still to answer 500
	w      *Watcher
	update chan uint64
	errs   atomic.Int32
	cancel context.CancelFunc
	done   chan struct{}
}

func startWatched(t *testing.T) *watched {
	t.Helper()
	x := &watched{update: make(chan uint64, 16), done: make(chan struct{})}
	x.pub.Store(NewPublisher())
	x.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if x.fail.Add(-1) >= 0 {
			http.Error(w, "boom", http.StatusInternalServerError)
			return
		}
		x.pub.Load().ServeHTTP(w, r)
	}))
	x.w = NewWatcher(x.srv.URL + Path)
	x.w.OnUpdate = func(s *healthview.Snapshot) { x.update <- s.Version }
	x.w.OnError = func(error) { x.errs.Add(1) }
	ctx, cancel := context.WithCancel(context.Background())
	x.cancel = cancel
	go func() { x.w.Run(ctx); close(x.done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-x.done:
		case <-time.After(5 * time.Second):
			t.Error("Run did not stop when ctx was cancelled")
		}
		x.srv.Close()
	})
	return x
}

// next waits for OnUpdate and checks the version and the view.
func (x *watched) next(t *testing.T, want uint64) {
	t.Helper()
	select {
	case v := <-x.update:
		if v != want {
			t.Fatalf("OnUpdate version %d, want %d", v, want)
		}
		if got := x.w.View(); got == nil || got.Version != want {
			t.Fatalf("View() = %+v, want version %d", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no update to version %d (view %+v)", want, x.w.View())
	}
}

func (x *watched) quiet(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case v := <-x.update:
		t.Fatalf("unexpected update to %d", v)
	case <-time.After(d):
	}
}

func TestWatcher(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		run  func(t *testing.T, x *watched)
	}{
		{"first view, then each published version", func(t *testing.T, x *watched) {
			p := x.pub.Load()
			x.next(t, p.Current().Version)
			for i := range 3 {
				p.Publish(&healthview.Snapshot{Source: fmt.Sprint(i)})
				x.next(t, p.Current().Version)
				if got := x.w.View().Source; got != fmt.Sprint(i) {
					t.Errorf("view source %q", got)
				}
			}
			p.Refresh(&healthview.Snapshot{Source: "refreshed"})
			x.quiet(t, 30*time.Millisecond)
			if x.errs.Load() != 0 {
				t.Errorf("%d errors", x.errs.Load())
			}
		}},
		{"errors keep the last view; recovery takes the next", func(t *testing.T, x *watched) {
			p := x.pub.Load()
			p.Publish(&healthview.Snapshot{Source: "before"})
			x.next(t, p.Current().Version)
			last := x.w.View()
			// Fail until two errors are seen, however many requests that
			// takes: closing connections races the watcher's next request,
			// and net/http silently retries a GET whose connection closed,
			// so one 500 can be consumed without reaching the watcher.
			x.fail.Store(1 << 20)
			x.srv.CloseClientConnections() // end the pending long poll
			deadline := time.Now().Add(5 * time.Second)
			for x.errs.Load() < 2 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			x.fail.Store(0)
			if n := x.errs.Load(); n < 2 {
				t.Fatalf("OnError called %d times, want ≥ 2", n)
			}
			if x.w.View() != last {
				t.Errorf("view changed during errors: %+v", x.w.View())
			}
			p.Publish(&healthview.Snapshot{Source: "after"})
			x.next(t, p.Current().Version)
			if got := x.w.View().Source; got != "after" {
				t.Errorf("view source %q", got)
			}
		}},
		{"a restarted publisher's view is taken", func(t *testing.T, x *watched) {
			old := x.pub.Load()
			for range 3 {
				old.Publish(&healthview.Snapshot{Source: "old"})
			}
			x.next(t, old.Current().Version)
			// The restart happens later on the clock than the old
			// versions: its first view is newer.
			for uint64(time.Now().UnixMilli()) <= old.Current().Version {
				time.Sleep(time.Millisecond)
			}
			restarted := NewPublisher()
			restarted.Publish(&healthview.Snapshot{Source: "restarted"})
			if restarted.Current().Version <= old.Current().Version {
				t.Fatalf("restarted version %d not newer than %d", restarted.Current().Version, old.Current().Version)
			}
			x.pub.Store(restarted)
			x.srv.CloseClientConnections()
			x.next(t, restarted.Current().Version)
			if got := x.w.View().Source; got != "restarted" {
				t.Errorf("view source %q", got)
			}
		}},
		{"a restarted publisher with an older clock is taken too", func(t *testing.T, x *watched) {
			old := x.pub.Load()
			old.Publish(&healthview.Snapshot{Source: "old"})
			x.next(t, old.Current().Version)
			restarted := NewPublisher()
			restarted.Publish(&healthview.Snapshot{Source: "restarted"})
			// Pretend its clock is behind: rewind its versions.
			restarted.mu.Lock()
			restarted.current.Version = old.Current().Version - 100
			restarted.mu.Unlock()
			x.pub.Store(restarted)
			x.srv.CloseClientConnections()
			x.next(t, old.Current().Version-100)
			if got := x.w.View().Source; got != "restarted" {
				t.Errorf("view source %q", got)
			}
		}},
		{"nil until the first answer; stops on cancel", func(t *testing.T, x *watched) {
			if v := x.w.View(); v != nil {
				// The first answer may already be in: it is then the current one.
				if v.Version != x.pub.Load().Current().Version {
					t.Errorf("view %+v", v)
				}
			}
			x.cancel()
			select {
			case <-x.done:
			case <-time.After(2 * time.Second):
				t.Fatal("Run did not return after cancel")
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t, startWatched(t))
		})
	}
}

// Before anything is fetched View is nil; Set replaces it.
func TestWatcherSet(t *testing.T) {
	w := NewWatcher("http://127.0.0.1:1" + Path)
	if w.View() != nil {
		t.Fatal("view before Run is not nil")
	}
	s := &healthview.Snapshot{Version: 3}
	w.Set(s)
	if w.View() != s {
		t.Error("Set not seen by View")
	}
}

// An unreachable control plane: OnError is called, Run keeps trying
// (backing off) and returns once ctx ends.
func TestWatcherUnreachable(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL + Path
	srv.Close()
	w := NewWatcher(url)
	var mu sync.Mutex
	var errs []error
	w.OnError = func(err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() }
	w.OnUpdate = func(*healthview.Snapshot) { t.Error("update from nowhere") }
	ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
	defer cancel()
	start := time.Now()
	w.Run(ctx)
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("Run returned %s after ctx ended", el)
	}
	mu.Lock()
	defer mu.Unlock()
	// 0 ms, 100 ms, 300 ms: two attempts fit in 250 ms, a third would not.
	if len(errs) < 1 || len(errs) > 3 {
		t.Errorf("%d errors in 250 ms, want 1..3 (backing off)", len(errs))
	}
	if w.View() != nil {
		t.Errorf("view %+v from an unreachable control plane", w.View())
	}
}
