package viewhttp

import (
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/detourhq/detour/healthview"
)

// Path is where the control plane serves the view.
const Path = "/v1/status"

// MaxWait bounds a long poll: a reader asking for the version after its
// own gets an answer when the view changes or after this long.
const MaxWait = 25 * time.Second

// Publisher holds the current healthview.Snapshot and serves it. Readers may long-poll
// with ?wait=<version they have>: the answer comes as soon as the view has
// a newer version (or after MaxWait with the current one).
type Publisher struct {
	mu      sync.Mutex
	current *healthview.Snapshot
	changed chan struct{} // closed and replaced on every Publish
	maxWait time.Duration // bound of a long poll; 0 means MaxWait (tests shorten it)
}

// NewPublisher starts with an empty view. Versions start from the clock
// (milliseconds), so a restarted control plane's views are newer than
// the ones its readers had, and they take them at once.
func NewPublisher() *Publisher {
	return &Publisher{
		current: &healthview.Snapshot{Version: uint64(time.Now().UnixMilli()), Backends: map[string]healthview.Backend{}, Routes: map[string]healthview.Route{}},
		changed: make(chan struct{}),
	}
}

// Publish replaces the view; s.Version is set to the next version. s must
// not be modified afterwards.
func (p *Publisher) Publish(s *healthview.Snapshot) {
	p.mu.Lock()
	s.Version = p.current.Version + 1
	p.current = s
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

// Refresh replaces the view's details (signals, ages) without a new
// version: readers waiting for a change that matters are not woken.
func (p *Publisher) Refresh(s *healthview.Snapshot) {
	p.mu.Lock()
	s.Version = p.current.Version
	p.current = s
	p.mu.Unlock()
}

// Current is the view now.
func (p *Publisher) Current() *healthview.Snapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.current
}

// wait returns the current view unless the reader already has it; then
// the channel closed on the next Publish. A version this publisher never
// reached (a reader of a previous incarnation whose clock ran ahead, or
// which published faster than once a millisecond) is not the current one
// either: the reader gets the view at once rather than after MaxWait.
func (p *Publisher) wait(after uint64) (*healthview.Snapshot, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.current.Version != after {
		return p.current, nil
	}
	return nil, p.changed
}

// ServeHTTP answers GET /v1/status[?wait=N] with the view as JSON.
func (p *Publisher) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		http.Error(w, "GET only", http.StatusMethodNotAllowed)
		return
	}
	snap := p.Current()
	if q := r.URL.Query().Get("wait"); q != "" {
		after, err := strconv.ParseUint(q, 10, 64)
		if err != nil {
			http.Error(w, "wait: want the version you have, a whole number", http.StatusBadRequest)
			return
		}
		bound := p.maxWait
		if bound <= 0 {
			bound = MaxWait
		}
		timer := time.NewTimer(bound)
		defer timer.Stop()
		for {
			s, changed := p.wait(after)
			if s != nil {
				snap = s
				break
			}
			select {
			case <-changed:
				continue
			case <-timer.C:
			case <-r.Context().Done():
				return
			}
			snap = p.Current()
			break
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(snap)
}
