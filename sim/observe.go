package sim

import (
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Stats are the serving listener's counters since start or the last reset.
type Stats struct {
	// Requests is the number of requests handled (refused connections
	// never reach the simulator and are not counted).
	Requests int64 `json:"requests"`
	// ByStatus counts requests by the HTTP status answered, as a decimal
	// string. "0" counts resets (no response); "499" counts requests whose
	// client went away before any response was written.
	ByStatus map[string]int64 `json:"by_status"`
	// ByPath counts requests by path; unknown paths count as "other".
	ByPath map[string]int64 `json:"by_path"`
	// FaultsInjected counts requests on which a fault had an effect.
	FaultsInjected int64 `json:"faults_injected"`
}

// RequestRecord describes one handled request. It never holds a prompt or
// an Authorization value.
type RequestRecord struct {
	Time   time.Time `json:"time"`
	Method string    `json:"method"`
	Path   string    `json:"path"`
	// Model, Stream and MaxTokens are read from the body when it parses;
	// MaxTokens is max_completion_tokens, else max_tokens, else 0.
	Model     string `json:"model"`
	Stream    bool   `json:"stream"`
	MaxTokens int    `json:"max_tokens"`
	// Status is the HTTP status answered; 0 for a reset, 499 when the
	// client went away before a response was written.
	Status int `json:"status"`
	// Auth is "none" or "sha256:" + the first 12 hex digits of the SHA-256
	// of the Authorization header value.
	Auth string `json:"auth"`
	// Headers holds selected request headers (lower-case names):
	// x-request-id, x-detour-*, x-envoy-attempt-count, content-length and
	// x-sim-*; names that look secret (auth, key, secret, cookie, password)
	// are skipped.
	Headers map[string]string `json:"headers"`
	// Fault lists the fault effects applied, comma-separated, in the order
	// applied (e.g. "latency,status"); "" when none.
	Fault string `json:"fault"`
	// ContinuedFrom is, for a request that continues a partial answer
	// (an assistant message marked "prefix": true, or
	// continue_final_message), the number of the first token it wrote;
	// -1 otherwise.
	ContinuedFrom int `json:"continued_from"`
	// DurationMS is the handler's run time in milliseconds.
	DurationMS float64 `json:"duration_ms"`
}

const ringSize = 256

// observer keeps Stats and the ring of recent RequestRecords.
type observer struct {
	mu       sync.Mutex
	requests int64
	byStatus map[string]int64
	byPath   map[string]int64
	faults   int64
	ring     [ringSize]RequestRecord
	next     int // ring index of the next record
	n        int // records held, ≤ ringSize
}

func (o *observer) add(rec RequestRecord, knownPath bool, injected bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.byStatus == nil {
		o.byStatus = map[string]int64{}
		o.byPath = map[string]int64{}
	}
	o.requests++
	o.byStatus[strconv.Itoa(rec.Status)]++
	if knownPath {
		o.byPath[rec.Path]++
	} else {
		o.byPath["other"]++
	}
	if injected {
		o.faults++
	}
	o.ring[o.next] = rec
	o.next = (o.next + 1) % ringSize
	o.n = min(o.n+1, ringSize)
}

func (o *observer) stats() Stats {
	o.mu.Lock()
	defer o.mu.Unlock()
	st := Stats{
		Requests:       o.requests,
		ByStatus:       maps.Clone(o.byStatus),
		ByPath:         maps.Clone(o.byPath),
		FaultsInjected: o.faults,
	}
	if st.ByStatus == nil {
		st.ByStatus = map[string]int64{}
		st.ByPath = map[string]int64{}
	}
	return st
}

// recent returns the last limit records, oldest first; limit ≤ 0 means all.
func (o *observer) recent(limit int) []RequestRecord {
	o.mu.Lock()
	defer o.mu.Unlock()
	if limit <= 0 || limit > o.n {
		limit = o.n
	}
	out := make([]RequestRecord, 0, limit)
	for i := limit; i > 0; i-- {
		rec := o.ring[(o.next-i+ringSize)%ringSize]
		rec.Headers = maps.Clone(rec.Headers)
		out = append(out, rec)
	}
	return out
}

func (o *observer) reset() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.requests, o.faults = 0, 0
	o.byStatus, o.byPath = nil, nil
	o.ring = [ringSize]RequestRecord{}
	o.next, o.n = 0, 0
}

// authFingerprint identifies an Authorization value without keeping it.
func authFingerprint(h http.Header) string {
	v, ok := h["Authorization"]
	if !ok || len(v) == 0 {
		return "none"
	}
	sum := sha256.Sum256([]byte(v[0]))
	return "sha256:" + hex.EncodeToString(sum[:])[:12]
}

const maxRecordedValue = 256

// recordedHeaders picks the request headers a RequestRecord keeps.
func recordedHeaders(h http.Header) map[string]string {
	out := map[string]string{}
	for k, vs := range h {
		name := strings.ToLower(k)
		switch {
		case name == "x-request-id", name == "x-envoy-attempt-count", name == "content-length",
			strings.HasPrefix(name, "x-detour-"), strings.HasPrefix(name, "x-sim-"):
		default:
			continue
		}
		if looksSecret(name) {
			continue
		}
		v := strings.Join(vs, ", ")
		if len(v) > maxRecordedValue {
			v = v[:maxRecordedValue]
		}
		out[name] = v
	}
	return out
}

func looksSecret(name string) bool {
	for _, s := range []string{"auth", "key", "secret", "cookie", "password"} {
		if strings.Contains(name, s) {
			return true
		}
	}
	return false
}

// splitComma yields the trimmed, non-empty items of a comma-separated list.
func splitComma(s string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for item := range strings.SplitSeq(s, ",") {
			if item = strings.TrimSpace(item); item != "" && !yield(item) {
				return
			}
		}
	}
}
