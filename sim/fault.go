package sim

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Fault scripts how the simulator misbehaves. Every field is optional; the
// zero Fault means "behave". It is the JSON body of POST /_sim/faults.
//
// Which effects apply, in order, to a request the fault hits:
// latency_ms (delay before anything), then reset (no response at all), else
// status (an error response), else a normal response shaped by ttft_ms,
// tokens_per_second and drop_after_tokens. refuse is not per request: it
// closes the serving listener while the fault is in place.
type Fault struct {
	// Status answers this HTTP status (400–599) with an OpenAI-shaped error
	// body instead of a completion. 0 = off.
	Status int `json:"status"`
	// Rate is the share of requests the fault hits, in [0, 1]. 0 (or
	// absent) while another field is set means 1: every request.
	Rate float64 `json:"rate"`
	// Even spreads the hits evenly instead of drawing them at random:
	// exactly Rate of any run of requests (to within one) is hit, so a
	// test judging a few requests sees the rate it set.
	Even bool `json:"even,omitempty"`
	// RetryAfterS adds "Retry-After: N" to Status responses when > 0.
	RetryAfterS int `json:"retry_after_s"`
	// LatencyMS delays the response headers (every endpoint).
	LatencyMS int `json:"latency_ms"`
	// TTFTMS delays the first token (chat and completions). A stream sends
	// its headers and role chunk at once and stalls before the first
	// content chunk; a non-streaming response is delayed as a whole.
	TTFTMS int `json:"ttft_ms"`
	// TokensPerSecond paces tokens after the first (chat and completions):
	// 1/TokensPerSecond between stream chunks; a non-streaming response
	// waits as long as streaming all its tokens would take. 0 = unpaced.
	TokensPerSecond float64 `json:"tokens_per_second"`
	// DropAfterTokens cuts the response off after this many tokens (chat
	// and completions): a stream closes the connection without the finish
	// chunk or [DONE]; a non-streaming response sends its headers (with the
	// full Content-Length) and part of the body, then closes. A response
	// shorter than N tokens is cut after its last token. 0 = off.
	DropAfterTokens int `json:"drop_after_tokens"`
	// StallAfterTokens stops the response after this many tokens and holds
	// the connection open, sending nothing more, until the client goes
	// away: a stream stalls mid-way; a non-streaming response sends its
	// headers and part of the body. A provider that hangs, unlike
	// DropAfterTokens, gives the client no error to react to. 0 = off.
	StallAfterTokens int `json:"stall_after_tokens,omitempty"`
	// StallMS turns StallAfterTokens's hang into a pause: after this many
	// milliseconds the response goes on to its end (a provider that
	// pauses mid-answer). 0 = hang until the client goes away.
	StallMS int `json:"stall_ms,omitempty"`
	// Reset closes the TCP connection with an RST after reading the
	// request, without any response.
	Reset bool `json:"reset"`
	// Refuse closes the serving listener so that new connections are
	// refused (idle keep-alive connections are closed too) until the fault
	// is replaced or cleared; then the same address is listened on again.
	// The admin listener keeps running. Rate does not apply.
	Refuse bool `json:"refuse"`
}

// Limits on fault values.
const (
	maxDelayMS     = 3_600_000 // an hour
	maxRetryAfterS = 86_400    // a day
	maxTPS         = 1e6
)

// IsZero reports whether f has no effect (Rate and Even alone have none).
func (f Fault) IsZero() bool {
	f.Rate, f.Even = 0, false
	return f == Fault{}
}

// Validate reports the first field whose value is out of range.
func (f Fault) Validate() error {
	switch {
	case f.Status != 0 && (f.Status < 400 || f.Status > 599):
		return fmt.Errorf("status %d: must be 0 or an HTTP status in 400-599", f.Status)
	case math.IsNaN(f.Rate) || f.Rate < 0 || f.Rate > 1:
		return fmt.Errorf("rate %v: must be in [0, 1]", f.Rate)
	case f.RetryAfterS < 0 || f.RetryAfterS > maxRetryAfterS:
		return fmt.Errorf("retry_after_s %d: must be in [0, %d]", f.RetryAfterS, maxRetryAfterS)
	case f.LatencyMS < 0 || f.LatencyMS > maxDelayMS:
		return fmt.Errorf("latency_ms %d: must be in [0, %d]", f.LatencyMS, maxDelayMS)
	case f.TTFTMS < 0 || f.TTFTMS > maxDelayMS:
		return fmt.Errorf("ttft_ms %d: must be in [0, %d]", f.TTFTMS, maxDelayMS)
	case math.IsNaN(f.TokensPerSecond) || f.TokensPerSecond < 0 || f.TokensPerSecond > maxTPS:
		return fmt.Errorf("tokens_per_second %v: must be in [0, %g]", f.TokensPerSecond, maxTPS)
	case f.DropAfterTokens < 0 || f.DropAfterTokens > maxTokens:
		return fmt.Errorf("drop_after_tokens %d: must be in [0, %d]", f.DropAfterTokens, maxTokens)
	case f.StallAfterTokens < 0 || f.StallAfterTokens > maxTokens:
		return fmt.Errorf("stall_after_tokens %d: must be in [0, %d]", f.StallAfterTokens, maxTokens)
	case f.StallMS < 0 || f.StallMS > maxDelayMS:
		return fmt.Errorf("stall_ms %d: must be in [0, %d]", f.StallMS, maxDelayMS)
	}
	return nil
}

// sanitize clamps out-of-range values (an invalid status turns the status
// off) and applies the rate default.
func (f Fault) sanitize() Fault {
	if f.Status != 0 && (f.Status < 400 || f.Status > 599) {
		f.Status = 0
	}
	clampInt := func(v *int, hi int) { *v = max(0, min(*v, hi)) }
	clampInt(&f.RetryAfterS, maxRetryAfterS)
	clampInt(&f.LatencyMS, maxDelayMS)
	clampInt(&f.TTFTMS, maxDelayMS)
	clampInt(&f.DropAfterTokens, maxTokens)
	clampInt(&f.StallAfterTokens, maxTokens)
	clampInt(&f.StallMS, maxDelayMS)
	if math.IsNaN(f.Rate) || f.Rate < 0 {
		f.Rate = 0
	}
	f.Rate = min(f.Rate, 1)
	if math.IsNaN(f.TokensPerSecond) || f.TokensPerSecond < 0 {
		f.TokensPerSecond = 0
	}
	f.TokensPerSecond = min(f.TokensPerSecond, maxTPS)
	if f.Rate == 0 && !f.IsZero() {
		f.Rate = 1
	}
	return f
}

func (f Fault) latency() time.Duration { return time.Duration(f.LatencyMS) * time.Millisecond }
func (f Fault) ttft() time.Duration    { return time.Duration(f.TTFTMS) * time.Millisecond }

// interval is the pause between two tokens (0 = unpaced).
func (f Fault) interval() time.Duration {
	if f.TokensPerSecond <= 0 {
		return 0
	}
	return time.Duration(float64(time.Second) / f.TokensPerSecond)
}

// Per-request control headers. Names are case-insensitive on the wire.
const (
	// HeaderName is the response header carrying Config.Name.
	HeaderName = "x-sim-name"
	// HeaderTarget scopes the other x-sim-* request headers to the
	// simulators whose Config.Name is in this comma-separated list ("*"
	// matches all). Absent = every simulator.
	HeaderTarget = "x-sim-target"
	// Fault headers; see Fault for the semantics of each.
	HeaderStatus          = "x-sim-status"
	HeaderRate            = "x-sim-rate"
	HeaderRetryAfterS     = "x-sim-retry-after-s"
	HeaderLatencyMS       = "x-sim-latency-ms"
	HeaderTTFTMS          = "x-sim-ttft-ms"
	HeaderTokensPerSecond = "x-sim-tokens-per-second"
	HeaderDropAfterTokens = "x-sim-drop-after-tokens"
	HeaderReset           = "x-sim-reset"
	// HeaderTokens sets the natural completion length of this request
	// (instead of Config.DefaultTokens); max_tokens still caps it.
	HeaderTokens = "x-sim-tokens"
)

// overrides are the x-sim-* request headers of one request.
type overrides struct {
	fault     Fault // built from the fault headers alone
	hasFault  bool  // a fault header is present (and targets this server)
	tokens    int
	hasTokens bool
}

// parseOverrides reads the x-sim-* headers. Every present header is
// validated, even when x-sim-target excludes this server; the error names
// the offending header.
func parseOverrides(h http.Header, name string) (overrides, error) {
	var ov overrides
	intHeader := func(key string, lo, hi int, dst *int) error {
		v, ok, err := headerValue(h, key)
		if err != nil || !ok {
			return err
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < lo || n > hi {
			return fmt.Errorf("invalid %s header %q: must be an integer in [%d, %d]", key, v, lo, hi)
		}
		*dst = n
		ov.hasFault = true
		return nil
	}
	floatHeader := func(key string, hi float64, dst *float64) error {
		v, ok, err := headerValue(h, key)
		if err != nil || !ok {
			return err
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || math.IsNaN(f) || f < 0 || f > hi {
			return fmt.Errorf("invalid %s header %q: must be a number in [0, %g]", key, v, hi)
		}
		*dst = f
		ov.hasFault = true
		return nil
	}
	f := &ov.fault
	var errs []error
	if v, ok, err := headerValue(h, HeaderStatus); err != nil {
		errs = append(errs, err)
	} else if ok {
		n, err := strconv.Atoi(v)
		if err != nil || (n != 0 && (n < 400 || n > 599)) {
			errs = append(errs, fmt.Errorf("invalid %s header %q: must be 0 or an HTTP status in 400-599", HeaderStatus, v))
		}
		f.Status = n
		ov.hasFault = true
	}
	errs = append(errs,
		floatHeader(HeaderRate, 1, &f.Rate),
		intHeader(HeaderRetryAfterS, 0, maxRetryAfterS, &f.RetryAfterS),
		intHeader(HeaderLatencyMS, 0, maxDelayMS, &f.LatencyMS),
		intHeader(HeaderTTFTMS, 0, maxDelayMS, &f.TTFTMS),
		floatHeader(HeaderTokensPerSecond, maxTPS, &f.TokensPerSecond),
		intHeader(HeaderDropAfterTokens, 0, maxTokens, &f.DropAfterTokens),
	)
	if v, ok, err := headerValue(h, HeaderReset); err != nil {
		errs = append(errs, err)
	} else if ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("invalid %s header %q: must be true, false, 1 or 0", HeaderReset, v))
		}
		f.Reset = b
		ov.hasFault = true
	}
	if v, ok, err := headerValue(h, HeaderTokens); err != nil {
		errs = append(errs, err)
	} else if ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > maxTokens {
			errs = append(errs, fmt.Errorf("invalid %s header %q: must be an integer in [0, %d]", HeaderTokens, v, maxTokens))
		}
		ov.tokens, ov.hasTokens = n, true
	}
	targeted := true
	if v, ok, err := headerValue(h, HeaderTarget); err != nil {
		errs = append(errs, err)
	} else if ok {
		targeted = false
		for t := range splitComma(v) {
			if t == name || t == "*" {
				targeted = true
			}
		}
	}
	// Report the first problem only: one header per message reads best.
	for _, err := range errs {
		if err != nil {
			return overrides{}, err
		}
	}
	if !targeted {
		return overrides{}, nil
	}
	if ov.hasFault {
		ov.fault = ov.fault.sanitize()
	}
	return ov, nil
}

// headerValue returns the trimmed value of a header and whether it is
// present. A header given twice or empty is an error.
func headerValue(h http.Header, key string) (string, bool, error) {
	vs := h.Values(key)
	switch len(vs) {
	case 0:
		return "", false, nil
	case 1:
	default:
		return "", false, fmt.Errorf("invalid %s header: given %d times", key, len(vs))
	}
	v := strings.TrimSpace(vs[0])
	if v == "" {
		return "", false, fmt.Errorf("invalid %s header: empty value", key)
	}
	return v, true, nil
}
