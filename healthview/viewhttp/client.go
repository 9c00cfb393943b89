package viewhttp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/detourhq/detour/healthview"
)

// maxBody bounds a view read from the network.
const maxBody = 16 << 20

// Fetch reads the view once from url (the control plane's /v1/status),
// waiting for a version newer than after when after > 0.
func Fetch(ctx context.Context, c *http.Client, url string, after uint64) (*healthview.Snapshot, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("health view: %w", err)
	}
	if after > 0 {
		q := req.URL.Query()
		q.Set("wait", strconv.FormatUint(after, 10))
		req.URL.RawQuery = q.Encode()
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("health view: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("health view: %s answered %s", url, resp.Status)
	}
	var s healthview.Snapshot
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxBody)).Decode(&s); err != nil {
		return nil, fmt.Errorf("health view: decode %s: %w", url, err)
	}
	return &s, nil
}

// Watcher keeps the latest view from a control plane, by long polling.
// Until the first answer, and after losing the control plane, it keeps
// what it had: nil at first, which readers take as "every backend
// healthy, nothing shed". A view is never dropped for being old: the
// last word of the controller beats no word, and OPEN backends are only
// ranked last, never refused.
type Watcher struct {
	url    string
	client *http.Client
	view   atomic.Pointer[healthview.Snapshot]
	// OnUpdate, OnError are called from Run's goroutine (metrics, logs).
	OnUpdate func(*healthview.Snapshot)
	OnError  func(error)
}

// NewWatcher watches url (e.g. http://127.0.0.1:9191/v1/status).
func NewWatcher(url string) *Watcher {
	return &Watcher{url: url, client: &http.Client{Timeout: MaxWait + 10*time.Second}}
}

// View is the latest view, or nil before the first.
func (w *Watcher) View() *healthview.Snapshot { return w.view.Load() }

// Set replaces the view (tests, and callers with their own transport).
func (w *Watcher) Set(s *healthview.Snapshot) { w.view.Store(s) }

// Run polls until ctx ends, backing off up to 2 s while the control plane
// cannot be reached.
func (w *Watcher) Run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		var after uint64
		if v := w.view.Load(); v != nil {
			after = v.Version
		}
		s, err := Fetch(ctx, w.client, w.url, after)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, context.Canceled) {
				return
			}
			if w.OnError != nil {
				w.OnError(err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		if old := w.view.Load(); old == nil || s.Version != old.Version {
			// A restarted control plane starts again from the clock:
			// any other version is news, even a smaller one.
			w.view.Store(s)
			if w.OnUpdate != nil {
				w.OnUpdate(s)
			}
		}
	}
}
