package signals

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// DefaultMaxBytes bounds a scrape's body: the filtered stats of a thousand
// backends are a few MB.
const DefaultMaxBytes = 32 << 20

// ErrTooLarge marks a stats body over the Scraper's MaxBytes.
var ErrTooLarge = errors.New("stats body too large")

// StatusError is a scrape answered with a status other than 200.
type StatusError struct {
	URL  string
	Code int
	// Body is the start of the answer, for the log.
	Body string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("scrape %s: status %d: %s", e.URL, e.Code, e.Body)
}

// Scraper reads one Envoy's admin /stats/prometheus. It holds no state
// between scrapes; one Scraper may be used from several goroutines.
type Scraper struct {
	// Admin is the base URL of Envoy's admin listener, such as
	// "http://127.0.0.1:9901".
	Admin string
	// Client sends the request. It should have a Timeout shorter than the
	// scrape interval; the context passed to Scrape bounds it too.
	Client *http.Client
	// Backend maps cluster names to backends; see Backends.
	Backend BackendFunc
	// MaxBytes bounds the body; 0 means DefaultMaxBytes.
	MaxBytes int64
	// Now stamps scrapes; nil means time.Now.
	Now func() time.Time
}

// URL is the address a scrape reads: used stats only, filtered to those
// Parse reads.
func (s *Scraper) URL() string {
	return strings.TrimRight(s.Admin, "/") + "/stats/prometheus?usedonly&filter=" + url.QueryEscape(StatsFilter)
}

// Scrape reads Envoy's stats once. Errors are wrapped: a timeout satisfies
// errors.Is(err, context.DeadlineExceeded) or, for the Client's own
// Timeout, a net.Error whose Timeout() is true; a status other than 200 is
// a *StatusError; a body that does not parse wraps ErrMalformed, and one
// over MaxBytes ErrTooLarge.
func (s *Scraper) Scrape(ctx context.Context) (*Scrape, error) {
	if s.Client == nil || s.Backend == nil {
		return nil, errors.New("signals: Scraper needs a Client and a Backend func")
	}
	u := s.URL()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", s.Admin, err)
	}
	resp, err := s.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", s.Admin, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		return nil, &StatusError{URL: s.Admin, Code: resp.StatusCode, Body: strings.TrimSpace(string(b))}
	}
	limit := s.MaxBytes
	if limit <= 0 {
		limit = DefaultMaxBytes
	}
	// Read it all first: a timeout mid-body is a transport error, not a
	// parse error, and the parser sees a complete body.
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("scrape %s: reading body: %w", s.Admin, err)
	}
	if int64(len(body)) > limit {
		return nil, fmt.Errorf("scrape %s: %w (over %d bytes)", s.Admin, ErrTooLarge, limit)
	}
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	at := now()
	backends, uptime, err := Parse(bytes.NewReader(body), s.Backend)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", s.Admin, err)
	}
	return &Scrape{At: at, Uptime: uptime, Backends: backends}, nil
}
