package signals

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"
)

// EnvoySourceConfig configures an EnvoySource.
type EnvoySourceConfig struct {
	// Admins are the base URLs of the Envoys' admin listeners, such as
	// "http://127.0.0.1:9901": every Envoy that carries detour's traffic.
	Admins []string
	// Client sends the scrapes; its Timeout should be well under the
	// collect interval, so that one hung Envoy does not delay the others'
	// stats. The context given to Collect bounds it too.
	Client *http.Client
	// Backend maps cluster names to backends; see Backends.
	Backend BackendFunc
	// Window sizes each Envoy's window; its StaleAfter also bounds how long
	// an Envoy that cannot be scraped is trusted.
	Window WindowConfig
	// MaxBytes bounds a scrape's body; 0 means DefaultMaxBytes.
	MaxBytes int64
	// Now stamps the scrapes; nil means time.Now.
	Now func() time.Time
}

// EnvoySource reads every Envoy's admin endpoint and merges their windows.
// Each Envoy has its own Scraper and Window, because counters and restarts
// are per Envoy: one restarting must not look like a reset of the others.
// It is safe for concurrent use; Collects are serialized.
type EnvoySource struct {
	mu     sync.Mutex
	envoys []*envoyState
}

type envoyState struct {
	scraper *Scraper
	window  *Window
}

// NewEnvoySource checks the config and returns a source with no history.
func NewEnvoySource(cfg EnvoySourceConfig) (*EnvoySource, error) {
	var errs []error
	if len(cfg.Admins) == 0 {
		errs = append(errs, errors.New("signals: EnvoySource needs at least one admin address"))
	}
	if cfg.Client == nil {
		errs = append(errs, errors.New("signals: EnvoySource needs an http.Client"))
	}
	if cfg.Backend == nil {
		errs = append(errs, errors.New("signals: EnvoySource needs a BackendFunc"))
	}
	if err := cfg.Window.Validate(); err != nil {
		errs = append(errs, err)
	}
	seen := make(map[string]bool, len(cfg.Admins))
	for _, a := range cfg.Admins {
		if seen[a] {
			errs = append(errs, fmt.Errorf("signals: admin address %q given twice", a))
		}
		seen[a] = true
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	s := &EnvoySource{}
	for _, a := range cfg.Admins {
		w, err := NewWindow(cfg.Window)
		if err != nil {
			return nil, err
		}
		s.envoys = append(s.envoys, &envoyState{
			scraper: &Scraper{Admin: a, Client: cfg.Client, Backend: cfg.Backend, MaxBytes: cfg.MaxBytes, Now: cfg.Now},
			window:  w,
		})
	}
	return s, nil
}

// Collect scrapes every Envoy at once and merges each backend's Stats
// across them (see MergeStats). An Envoy whose scrape fails keeps its last
// window, which turns stale after StaleAfter; the error joins one error
// per failed Envoy, each naming its admin address, and the Stats returned
// are still every known backend's.
func (s *EnvoySource) Collect(ctx context.Context, now time.Time) (map[string]Stats, error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	scrapes := make([]*Scrape, len(s.envoys))
	errs := make([]error, len(s.envoys))
	var wg sync.WaitGroup
	for i, e := range s.envoys {
		wg.Go(func() {
			scrapes[i], errs[i] = e.scraper.Scrape(ctx)
		})
	}
	wg.Wait()

	var failed []error
	for i, e := range s.envoys {
		err := errs[i]
		if err == nil {
			err = e.window.Add(scrapes[i])
		}
		if err != nil {
			failed = append(failed, fmt.Errorf("envoy %s: %w", e.scraper.Admin, err))
		}
	}

	names := map[string]struct{}{}
	for _, e := range s.envoys {
		for _, b := range e.window.Backends() {
			names[b] = struct{}{}
		}
	}
	out := make(map[string]Stats, len(names))
	per := make([]Stats, len(s.envoys))
	for b := range names {
		for i, e := range s.envoys {
			per[i] = e.window.Stats(b, now)
		}
		out[b] = MergeStats(per...)
	}
	return out, errors.Join(failed...)
}

// MergeStats merges one backend's Stats from several Envoys.
//
// When some Envoys' Stats are fresh, only those count for the windowed
// figures and the gauges: a stale Envoy's window is what it saw before it
// went silent, and adding it to the live ones would keep old errors (or
// old calm) in the sum. When all are stale, all count, and the result is
// Stale. Counts (Requests, Errors, TooManyRequests, Failures, retries and
// sample counts) add up and ErrorRate is recomputed from the sums.
// Percentiles cannot be merged from percentiles, so P95, TTFT and
// TotalTime are the worst (highest) of the Envoys that have samples, and
// TokensPerSecond the lowest: the merge errs towards bad news.
// MeanLatency is exact: the sample-weighted mean. EjectionsActive adds,
// breaker flags and Restarted are or-ed, Span and FailuresSpan are the
// longest. The totals (requests, errors, 429s) add over every Envoy, stale or
// not, so that they keep only growing. At and Age are the freshest Envoy's.
func MergeStats(per ...Stats) Stats {
	var m Stats
	if len(per) == 0 {
		m.Stale = true
		return m
	}
	m.Backend = per[0].Backend
	allStale := !slices.ContainsFunc(per, func(s Stats) bool { return !s.Stale })
	m.Stale = allStale
	var meanWeight float64
	for _, s := range per {
		m.TotalRequests += s.TotalRequests
		m.TotalErrors += s.TotalErrors
		m.TotalTooManyRequests += s.TotalTooManyRequests
		if !s.At.IsZero() && (m.At.IsZero() || s.At.After(m.At)) {
			m.At, m.Age = s.At, s.Age
		}
		if s.Stale && !allStale {
			continue
		}
		m.Span = max(m.Span, s.Span)
		m.FailuresSpan = max(m.FailuresSpan, s.FailuresSpan)
		m.Requests += s.Requests
		m.Errors += s.Errors
		m.TooManyRequests += s.TooManyRequests
		m.Failures += s.Failures
		m.Retries += s.Retries
		m.RetrySuccesses += s.RetrySuccesses
		m.RetryOverflows += s.RetryOverflows
		m.EjectionsActive += s.EjectionsActive
		m.RqOpen = m.RqOpen || s.RqOpen
		m.RetryOpen = m.RetryOpen || s.RetryOpen
		m.PendingOpen = m.PendingOpen || s.PendingOpen
		m.Restarted = m.Restarted || s.Restarted
		if s.LatencySamples > 0 {
			m.P95 = max(m.P95, s.P95)
			m.LatencySamples += s.LatencySamples
			meanWeight += float64(s.MeanLatency) * float64(s.LatencySamples)
		}
		if s.TTFTSamples > 0 {
			m.TTFT = max(m.TTFT, s.TTFT)
			m.TTFTSamples += s.TTFTSamples
		}
		if s.TotalSamples > 0 {
			m.TotalTime = max(m.TotalTime, s.TotalTime)
			m.TotalSamples += s.TotalSamples
		}
		if s.RateSamples > 0 {
			if m.RateSamples == 0 || s.TokensPerSecond < m.TokensPerSecond {
				m.TokensPerSecond = s.TokensPerSecond
			}
			m.RateSamples += s.RateSamples
		}
	}
	if m.Requests > 0 {
		m.ErrorRate = float64(m.Errors) / float64(m.Requests)
	}
	if m.LatencySamples > 0 {
		m.MeanLatency = time.Duration(meanWeight / float64(m.LatencySamples))
	}
	return m
}
