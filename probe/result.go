package probe

import (
	"fmt"
	"strings"
	"time"

	"github.com/detourhq/detour/policy"
)

// Kinds of the two checks that go with the prompts; prompts have the
// policy's kinds (policy.ProbeShort, …).
const (
	// KindAuth: the short prompt without credentials must be refused.
	KindAuth = "auth"
	// KindError: a malformed request must get a 4xx in OpenAI's error shape.
	KindError = "error"
)

// Result is the outcome of one probe request.
type Result struct {
	Backend string
	// Endpoint is the address the probe was sent to.
	Endpoint string
	// Probe is the prompt's name, or KindAuth / KindError for the checks.
	Probe string
	Kind  string
	// OK: the answer met its rule. A failed probe counts as a failed
	// request of its backend.
	OK bool
	// Reason says why the probe failed, and then (or alone, when OK) why
	// it was slow. Never the API key nor the prompt text.
	Reason string
	// Status is the HTTP status; 0 when no response came.
	Status int
	// TTFT is the time to the first token (content, reasoning or tool
	// call); 0 when not measured (no token, or a non-streaming backend).
	TTFT time.Duration
	// Total is the time from sending the request to the end of the answer.
	Total time.Duration
	// TokensPerSecond is the generation rate after the first token; 0 when
	// not measured (fewer than two tokens).
	TokensPerSecond float64
	// Slow: a threshold of the policy's health section was breached. It is
	// not a failure: the measurements go to the health judgement as they
	// are.
	Slow bool
	At   time.Time
}

func (r Result) String() string {
	verdict := "ok"
	if !r.OK {
		verdict = "failed"
	} else if r.Slow {
		verdict = "slow"
	}
	s := fmt.Sprintf("%s/%s %s status=%d ttft=%s total=%s tps=%.1f", r.Backend, r.Probe, verdict, r.Status, r.TTFT, r.Total, r.TokensPerSecond)
	if r.Reason != "" {
		s += ": " + r.Reason
	}
	return s
}

// judgeSpeed marks r slow when a measured figure breaches a threshold.
func (r *Result) judgeSpeed(h policy.HealthThresholds) {
	var why []string
	if t := h.TTFT.D(); t > 0 && r.TTFT > t {
		why = append(why, fmt.Sprintf("time to first token %s over %s", r.TTFT.Round(time.Millisecond), t))
	}
	if r.TokensPerSecond > 0 && r.TokensPerSecond < h.TokensPerSecond {
		why = append(why, fmt.Sprintf("%.1f tokens/s under %g", r.TokensPerSecond, h.TokensPerSecond))
	}
	if t := h.TotalTime.D(); t > 0 && r.Total > t {
		why = append(why, fmt.Sprintf("total time %s over %s", r.Total.Round(time.Millisecond), t))
	}
	if len(why) == 0 {
		return
	}
	r.Slow = true
	r.addReason("slow: " + strings.Join(why, ", "))
}

func (r *Result) fail(reason string) {
	r.OK = false
	r.addReason(reason)
}

func (r *Result) addReason(s string) {
	if r.Reason == "" {
		r.Reason = s
	} else {
		r.Reason += "; " + s
	}
}
