package signals

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// HostCounters are one endpoint's request outcomes as Envoy's admin
// /clusters reports them: every attempt it served (rq_total), those that
// ended in a 5xx or a reset (rq_error), retried ones included, those that
// were answered (rq_success), the attempts in flight now (rq_active), and
// whether Envoy's outlier detection has ejected it.
type HostCounters struct {
	Total, Errors, Success, Active uint64
	Ejected                        bool
}

// clustersJSON is the part of /clusters?format=json read here.
type clustersJSON struct {
	ClusterStatuses []struct {
		Name         string `json:"name"`
		HostStatuses []struct {
			Address struct {
				SocketAddress struct {
					Address   string `json:"address"`
					PortValue uint32 `json:"port_value"`
				} `json:"socket_address"`
			} `json:"address"`
			Stats []struct {
				Name  string `json:"name"`
				Value string `json:"value"` // uint64 as a JSON string; absent when 0
			} `json:"stats"`
			HealthStatus struct {
				FailedOutlierCheck bool `json:"failed_outlier_check"`
			} `json:"health_status"`
		} `json:"host_statuses"`
	} `json:"cluster_statuses"`
}

// finished counts the attempts that have ended, however.
func (c HostCounters) finished() uint64 {
	if c.Active > c.Total {
		return 0
	}
	return c.Total - c.Active
}

// ParseHosts reads Envoy's /clusters?format=json into counters per backend
// and endpoint ("ip:port"), skipping clusters backendOf does not accept.
// Errors wrap ErrMalformed.
func ParseHosts(r io.Reader, backendOf BackendFunc) (map[string]map[string]HostCounters, error) {
	var cj clustersJSON
	if err := json.NewDecoder(r).Decode(&cj); err != nil {
		return nil, fmt.Errorf("%w: clusters: %w", ErrMalformed, err)
	}
	out := map[string]map[string]HostCounters{}
	for _, c := range cj.ClusterStatuses {
		b, ok := backendOf(c.Name)
		if !ok {
			continue
		}
		for _, h := range c.HostStatuses {
			sa := h.Address.SocketAddress
			if sa.Address == "" {
				continue
			}
			hc := HostCounters{Ejected: h.HealthStatus.FailedOutlierCheck}
			for _, s := range h.Stats {
				var dst *uint64
				switch s.Name {
				case "rq_total":
					dst = &hc.Total
				case "rq_error":
					dst = &hc.Errors
				case "rq_success":
					dst = &hc.Success
				case "rq_active":
					dst = &hc.Active
				default:
					continue
				}
				if s.Value == "" {
					continue
				}
				v, err := strconv.ParseUint(s.Value, 10, 64)
				if err != nil {
					return nil, fmt.Errorf("%w: clusters: %s %s of %s: %q", ErrMalformed, c.Name, s.Name, sa.Address, s.Value)
				}
				*dst = v
			}
			if out[b] == nil {
				out[b] = map[string]HostCounters{}
			}
			out[b][net.JoinHostPort(sa.Address, strconv.Itoa(int(sa.PortValue)))] = hc
		}
	}
	return out, nil
}

// HostWindow is one endpoint's outcomes over a window, summed across
// Envoys, and what it is doing now.
type HostWindow struct {
	Requests, Errors uint64
	// TotalRequests and TotalErrors are the counters themselves (summed),
	// for callers that follow their increase between two collections.
	TotalRequests, TotalErrors uint64
	// Active attempts in flight now; Ejected by any Envoy's outlier
	// detection.
	Active  uint64
	Ejected bool
	// Unanswered is how long the endpoint has had attempts in flight
	// without answering any (no rq_success moved), at the Envoy where
	// that is shortest, and Started how many attempts it was sent
	// meanwhile: a black hole or a stalled server keeps taking requests
	// and finishes none. Zero when nothing is in flight.
	Unanswered time.Duration
	Started    uint64
}

// ErrorRate is Errors / Requests; 0 without requests.
func (w HostWindow) ErrorRate() float64 {
	if w.Requests == 0 {
		return 0
	}
	return float64(w.Errors) / float64(w.Requests)
}

// HostSource reads every Envoy's /clusters and keeps, per Envoy, the
// samples of a window, so Collect can give each endpoint's outcomes over
// it, summed across Envoys. A counter that went down (Envoy restarted, or
// the host was removed and added back) starts its window again.
type HostSource struct {
	admins  []string
	client  *http.Client
	backend BackendFunc
	length  time.Duration

	mu      sync.Mutex
	samples map[string][]hostSample // by admin address
}

type hostSample struct {
	at     time.Time
	counts map[string]map[string]HostCounters
}

// NewHostSource reads admins (base URLs such as http://127.0.0.1:9901)
// with client over windows of length.
func NewHostSource(admins []string, client *http.Client, backend BackendFunc, length time.Duration) (*HostSource, error) {
	if len(admins) == 0 || client == nil || backend == nil || length <= 0 {
		return nil, errors.New("signals: HostSource needs admins, a client, a BackendFunc and a window")
	}
	return &HostSource{admins: admins, client: client, backend: backend, length: length, samples: map[string][]hostSample{}}, nil
}

// Collect scrapes every Envoy and returns each backend's endpoints'
// outcomes over the window, with an error naming the Envoys that failed.
func (s *HostSource) Collect(ctx context.Context, now time.Time) (map[string]map[string]HostWindow, error) {
	type result struct {
		admin  string
		counts map[string]map[string]HostCounters
		err    error
	}
	results := make([]result, len(s.admins))
	var wg sync.WaitGroup
	for i, a := range s.admins {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := s.scrape(ctx, a)
			results[i] = result{a, c, err}
		}()
	}
	wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	out := map[string]map[string]HostWindow{}
	for _, r := range results {
		if r.err != nil {
			errs = append(errs, fmt.Errorf("envoy %s: %w", r.admin, r.err))
		} else {
			s.samples[r.admin] = append(s.samples[r.admin], hostSample{at: now, counts: r.counts})
		}
		ss := s.samples[r.admin]
		// Keep the newest sample at or before the window's start, and
		// everything after it.
		first := 0
		for first+1 < len(ss) && !ss[first+1].at.After(now.Add(-s.length)) {
			first++
		}
		ss = ss[first:]
		s.samples[r.admin] = ss
		if len(ss) < 2 || r.err != nil {
			continue
		}
		old, cur := ss[0].counts, ss[len(ss)-1].counts
		for b, hosts := range cur {
			for h, c := range hosts {
				base := old[b][h]
				if c.Total < base.Total || c.Errors < base.Errors {
					base = HostCounters{} // restarted: the new values are the increase
				}
				if out[b] == nil {
					out[b] = map[string]HostWindow{}
				}
				w := out[b][h]
				w.Requests += c.Total - base.Total
				w.Errors += c.Errors - base.Errors
				w.TotalRequests += c.Total
				w.TotalErrors += c.Errors
				w.Active += c.Active
				w.Ejected = w.Ejected || c.Ejected
				if c.Active > 0 {
					quiet, started := unanswered(ss, b, h, now)
					if w.Started == 0 || quiet < w.Unanswered {
						w.Unanswered = quiet
					}
					w.Started += started
				}
				out[b][h] = w
			}
		}
	}
	return out, errors.Join(errs...)
}

// unanswered is how long, by one Envoy's samples ss (oldest first), host h
// of backend b has had attempts in flight without answering any (its
// rq_success has not moved: a black hole, whose attempts may still end,
// by a timeout) or without finishing any (no attempt has left rq_active:
// a server that sent its headers, some tokens perhaps, and stalled), and
// how many attempts that silence covers
// (in flight when it began, plus those sent since). It runs from the
// oldest of the samples since the last answer that all had attempts in
// flight, so a backend that just got its first request after an idle
// spell is not silent before that request had time to be answered.
func unanswered(ss []hostSample, b, h string, now time.Time) (time.Duration, uint64) {
	cur := ss[len(ss)-1].counts[b][h]
	from := -1
	for i := len(ss) - 1; i >= 0; i-- {
		c, ok := ss[i].counts[b][h]
		if !ok || c.Total > cur.Total || (c.Success != cur.Success && c.finished() != cur.finished()) {
			break // answered and finished (or restarted) between i and i+1
		}
		if c.Active == 0 {
			break // nothing in flight then: the silence starts after
		}
		from = i
	}
	if from < 0 {
		return 0, 0
	}
	base := ss[from].counts[b][h]
	return now.Sub(ss[from].at), cur.Total - base.Total + base.Active
}

func (s *HostSource) scrape(ctx context.Context, admin string) (map[string]map[string]HostCounters, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, admin+"/clusters?format=json", nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, &StatusError{URL: req.URL.String(), Code: resp.StatusCode}
	}
	return ParseHosts(io.LimitReader(resp.Body, DefaultMaxBytes), s.backend)
}
