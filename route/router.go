package route

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Reason says why the chosen backend won, in a word fit for a metric label.
type Reason uint8

const (
	ReasonCheapest Reason = iota // lowest estimated cost among those that qualify
	ReasonOrdered                // first qualifying backend in the route's order
	ReasonOnly                   // the only backend that qualifies
	ReasonHealth                 // the objective's choice is unhealthy: the next best by health
	ReasonTrial                  // a trial request for a recovering (HALF_OPEN) backend
)

func (r Reason) String() string {
	switch r {
	case ReasonCheapest:
		return "cheapest"
	case ReasonOrdered:
		return "ordered"
	case ReasonHealth:
		return "health"
	case ReasonTrial:
		return "trial"
	default:
		return "only_candidate"
	}
}

// Decision is the router's answer for one request. Reuse one per goroutine:
// Decide keeps its slices' backing arrays.
type Decision struct {
	// Target is the alias or model id the client asked for.
	Target string
	// Backend is the chosen backend's index in the table.
	Backend int
	// UpstreamModel is the model id to send to Backend.
	UpstreamModel string
	// Fallbacks are the other qualifying backends, best first.
	Fallbacks []int
	Reason    Reason
	// NeedTokens is the context the request needs: prompt plus answer room.
	NeedTokens int

	scores []float64
}

// Health is what the controller knows of the backends, for one decision.
// The zero value (or nil) is "every backend healthy".
type Health struct {
	// Rank by backend index, lower preferred (0 healthy, 1 degraded,
	// 2 recovering, 3 open); missing entries rank 0. Rank beats a backend's
	// priority tier and the objective: a healthy backup before a degraded
	// primary. No rank removes a backend: the worst are only last.
	Rank []uint8
	// Trial puts degraded and recovering backends (ranks 1 and 2) first:
	// the request is one of the few that keep testing them, so the
	// controller sees whether they are well again or worse (a failure is
	// retried on the next backend).
	Trial bool
	// Skip by backend index leaves a backend out of this decision
	// altogether (a resumed answer avoids the backend that stalled it and
	// those that cannot continue one). Missing entries skip nothing.
	Skip []bool
}

func (h *Health) skip(i int) bool { return h != nil && i < len(h.Skip) && h.Skip[i] }

// TrialRank is the rank of a recovering (HALF_OPEN) backend; degraded
// ones rank 1. Both take trial requests.
const TrialRank = 2

func (h *Health) rank(i int) int {
	if h == nil || i >= len(h.Rank) {
		return 0
	}
	r := int(h.Rank[i])
	if h.Trial && (r == 1 || r == TrialRank) {
		return -1
	}
	return r
}

// Router decides. It is immutable after New and safe for concurrent use.
type Router struct {
	backends      []Backend
	byName        map[string]int
	targets       map[string]*target
	known         []string
	outputReserve int
}

type target struct {
	name       string
	candidates []int
	objective  Objective
}

// New indexes a table. Aliases shadow nothing: a name that is both an alias
// and a model id is refused, as is an alias naming an unknown backend.
func New(t Table) (*Router, error) {
	r := &Router{
		backends:      append([]Backend(nil), t.Backends...),
		byName:        make(map[string]int, len(t.Backends)),
		targets:       make(map[string]*target),
		outputReserve: t.OutputReserve,
	}
	if len(r.backends) == 0 {
		return nil, errors.New("route table has no backends")
	}
	for i, b := range r.backends {
		if _, dup := r.byName[b.Name]; dup {
			return nil, fmt.Errorf("backend %q is defined twice", b.Name)
		}
		r.byName[b.Name] = i
		tg := r.targets[b.Model]
		if tg == nil {
			tg = &target{name: b.Model, objective: Cheapest}
			r.targets[b.Model] = tg
		}
		tg.candidates = append(tg.candidates, i)
	}
	for _, a := range t.Aliases {
		if _, clash := r.targets[a.Name]; clash {
			return nil, fmt.Errorf("alias %q clashes with a model id or another alias", a.Name)
		}
		tg := &target{name: a.Name, objective: a.Objective}
		if len(a.Backends) == 0 {
			for i := range r.backends {
				tg.candidates = append(tg.candidates, i)
			}
		}
		for _, name := range a.Backends {
			i, ok := r.byName[name]
			if !ok {
				return nil, fmt.Errorf("alias %q names unknown backend %q", a.Name, name)
			}
			tg.candidates = append(tg.candidates, i)
		}
		r.targets[a.Name] = tg
	}
	for name := range r.targets {
		r.known = append(r.known, name)
	}
	sort.Strings(r.known)
	return r, nil
}

// Backend returns the backend at index i.
func (r *Router) Backend(i int) *Backend { return &r.backends[i] }

// BackendIndex finds a backend by name.
func (r *Router) BackendIndex(name string) (int, bool) {
	i, ok := r.byName[name]
	return i, ok
}

// Backends returns every backend; do not modify the slice.
func (r *Router) Backends() []Backend { return r.backends }

// Known lists the model names clients may send, sorted.
func (r *Router) Known() []string { return r.known }

// Candidates reports the backends a model name may go to, or false.
func (r *Router) Candidates(model string) ([]int, bool) {
	tg, ok := r.targets[model]
	if !ok {
		return nil, false
	}
	return tg.candidates, true
}

// answerRoom is how many tokens of answer a request may need from b.
func (r *Router) answerRoom(req *Request, b *Backend) int {
	if req.Kind == KindEmbedding {
		return 0
	}
	if req.MaxOutputTokens > 0 {
		return req.MaxOutputTokens
	}
	room := r.outputReserve
	if b.Caps.MaxOutputTokens > 0 && b.Caps.MaxOutputTokens < room {
		room = b.Caps.MaxOutputTokens
	}
	return room
}

// check returns the first requirement b fails, or RequireNone.
func (r *Router) check(req *Request, b *Backend) Requirement {
	c := &b.Caps
	switch {
	case !c.APIs.Has(req.Kind):
		return RequireAPI
	case req.HasImages && !c.Vision:
		return RequireVision
	case req.HasTools && !c.Tools:
		return RequireTools
	case req.JSONMode && !c.JSONMode:
		return RequireJSONMode
	case req.Stream && !c.Streaming:
		return RequireStreaming
	case req.MaxOutputTokens > 0 && c.MaxOutputTokens > 0 && req.MaxOutputTokens > c.MaxOutputTokens:
		return RequireMaxOutput
	case r.answerRoom(req, b) > c.ContextWindow-req.PromptTokens:
		// Not PromptTokens+room > ContextWindow: a client's max_tokens
		// near MaxInt would overflow the sum and pass.
		return RequireContext
	}
	return RequireNone
}

// Decide filters the model's candidates by what req needs, scores those
// that qualify by the objective, and picks the best; the rest become the
// ordered fallbacks. It returns *UnknownModelError or *UnsatisfiableError.
// It does not allocate once d's slices have grown.
func (r *Router) Decide(req *Request, d *Decision) error {
	return r.DecideHealth(req, d, nil)
}

// DecideHealth is Decide with the backends ordered by health first (see
// Health); h may be nil.
func (r *Router) DecideHealth(req *Request, d *Decision, h *Health) error {
	tg, ok := r.targets[req.Model]
	if !ok {
		return &UnknownModelError{Model: req.Model, Known: r.known}
	}
	d.Target = tg.name
	d.Fallbacks = d.Fallbacks[:0]
	d.scores = d.scores[:0]
	for pos, i := range tg.candidates {
		b := &r.backends[i]
		if h.skip(i) || r.check(req, b) != RequireNone {
			continue
		}
		var score float64
		if tg.objective == Ordered {
			score = float64(pos)
		} else {
			score = float64(req.PromptTokens)*b.InputPrice + float64(r.answerRoom(req, b))*b.OutputPrice
		}
		// Insertion sort: candidate lists are short, and it keeps equal
		// scores in list order.
		d.Fallbacks = append(d.Fallbacks, i)
		d.scores = append(d.scores, score)
		for j := len(d.Fallbacks) - 1; j > 0 && r.less(d, h, j, j-1); j-- {
			d.Fallbacks[j], d.Fallbacks[j-1] = d.Fallbacks[j-1], d.Fallbacks[j]
			d.scores[j], d.scores[j-1] = d.scores[j-1], d.scores[j]
		}
	}
	if len(d.Fallbacks) == 0 {
		return r.unsatisfiable(req, tg)
	}
	// Did health overrule the objective? Some other candidate would
	// have won on tier and score alone.
	overruled := false
	for j := 1; j < len(d.Fallbacks) && h != nil; j++ {
		if r.less(d, nil, j, 0) {
			overruled = true
			break
		}
	}
	trial := h != nil && h.Trial && h.rank(d.Fallbacks[0]) < 0
	d.Backend = d.Fallbacks[0]
	d.Fallbacks = d.Fallbacks[:copy(d.Fallbacks, d.Fallbacks[1:])]
	d.scores = d.scores[:0]
	b := &r.backends[d.Backend]
	d.UpstreamModel = b.Model
	d.NeedTokens = req.PromptTokens + r.answerRoom(req, b)
	switch {
	case len(d.Fallbacks) == 0:
		d.Reason = ReasonOnly
	case trial:
		d.Reason = ReasonTrial
	case overruled:
		d.Reason = ReasonHealth
	case tg.objective == Ordered:
		d.Reason = ReasonOrdered
	default:
		d.Reason = ReasonCheapest
	}
	return nil
}

func (r *Router) less(d *Decision, h *Health, a, b int) bool {
	if ra, rb := h.rank(d.Fallbacks[a]), h.rank(d.Fallbacks[b]); ra != rb {
		return ra < rb
	}
	pa, pb := r.backends[d.Fallbacks[a]].Priority, r.backends[d.Fallbacks[b]].Priority
	if pa != pb {
		return pa < pb
	}
	return d.scores[a] < d.scores[b]
}

func (r *Router) unsatisfiable(req *Request, tg *target) error {
	e := &UnsatisfiableError{Target: tg.name}
	for _, i := range tg.candidates {
		b := &r.backends[i]
		q := r.check(req, b)
		e.Rejections = append(e.Rejections, Rejection{Backend: b.Name, Requirement: q, Detail: detail(q, b)})
	}
	e.req = *req
	return e
}

func detail(q Requirement, b *Backend) string {
	switch q {
	case RequireAPI:
		return "does not serve this endpoint"
	case RequireVision:
		return "does not accept images"
	case RequireTools:
		return "does not support tools"
	case RequireJSONMode:
		return "does not support response_format JSON mode"
	case RequireStreaming:
		return "does not stream"
	case RequireMaxOutput:
		return "writes at most " + thousands(b.Caps.MaxOutputTokens) + " output tokens"
	case RequireContext:
		return "context window is " + thousands(b.Caps.ContextWindow) + " tokens"
	}
	return ""
}

// Requirement is a need a backend can fail.
type Requirement uint8

const (
	RequireNone Requirement = iota
	RequireAPI
	RequireVision
	RequireTools
	RequireJSONMode
	RequireStreaming
	RequireMaxOutput
	RequireContext
)

func (q Requirement) String() string {
	return [...]string{"none", "endpoint", "vision", "tools", "json_mode", "streaming", "max_output_tokens", "context_window"}[q]
}

// UnknownModelError: the client asked for a model no backend or alias has.
type UnknownModelError struct {
	Model string
	Known []string
}

func (e *UnknownModelError) Error() string {
	if e.Model == "" {
		return "the request names no model; known models: " + strings.Join(e.Known, ", ")
	}
	return fmt.Sprintf("model %q is not served here; known models: %s", e.Model, strings.Join(e.Known, ", "))
}

// Rejection is why one candidate could not serve the request.
type Rejection struct {
	Backend     string
	Requirement Requirement
	Detail      string
}

// UnsatisfiableError: the model is known but none of its backends can serve
// this request.
type UnsatisfiableError struct {
	Target     string
	Rejections []Rejection
	req        Request
}

// Requirement is the need that rejected the most candidates: the one a
// client should change first. Ties go to the later check (context).
func (e *UnsatisfiableError) Requirement() Requirement {
	var counts [8]int
	best := RequireNone
	for _, r := range e.Rejections {
		counts[r.Requirement]++
		if counts[r.Requirement] >= counts[best] {
			best = r.Requirement
		}
	}
	return best
}

func (e *UnsatisfiableError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "no backend for model %q can serve this request (it needs %s): ", e.Target, e.needs())
	for i, r := range e.Rejections {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(r.Backend)
		b.WriteString(" ")
		b.WriteString(r.Detail)
	}
	return b.String()
}

func (e *UnsatisfiableError) needs() string {
	q := &e.req
	var parts []string
	if q.Kind == KindEmbedding {
		parts = append(parts, fmt.Sprintf("%s input tokens", thousands(q.PromptTokens)))
	} else {
		p := fmt.Sprintf("%s prompt tokens", thousands(q.PromptTokens))
		if !q.PromptTokensExact {
			p = "about " + p
		}
		parts = append(parts, p)
		if q.MaxOutputTokens > 0 {
			parts = append(parts, fmt.Sprintf("%s output tokens", thousands(q.MaxOutputTokens)))
		}
	}
	if q.HasImages {
		parts = append(parts, "vision")
	}
	if q.HasTools {
		parts = append(parts, "tools")
	}
	if q.JSONMode {
		parts = append(parts, "JSON mode")
	}
	if q.Stream {
		parts = append(parts, "streaming")
	}
	return strings.Join(parts, ", ")
}

// thousands formats n with comma separators: 200000 → "200,000".
func thousands(n int) string {
	s := strconv.Itoa(n)
	sign := ""
	if n < 0 { // not thousands(-n): -MinInt is MinInt
		sign, s = "-", s[1:]
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return sign + s
}

// The true token count of a prompt lies between these shares of the
// estimate. Measured against cl100k/o200k: prose in European languages
// 0.77–0.93× the estimate, Russian/Arabic/Thai down to 0.33×, code and JSON
// about 1.45×, numbers, hex and base64 up to 2.2×, rare CJK up to 2.6×.
const (
	estimateLowNum, estimateLowDen   = 1, 3
	estimateHighNum, estimateHighDen = 11, 4
)

// Uncertain reports whether an exact token count could change the
// decision: some candidate's context limit falls inside the band where the
// true count may lie. Short prompts far below every limit skip the
// tokenizer entirely.
func (r *Router) Uncertain(req *Request) bool {
	if req.PromptTokensExact {
		return false
	}
	tg, ok := r.targets[req.Model]
	if !ok {
		return false
	}
	lo := req.PromptTokens * estimateLowNum / estimateLowDen
	hi := req.PromptTokens * estimateHighNum / estimateHighDen
	for _, i := range tg.candidates {
		b := &r.backends[i]
		limit := b.Caps.ContextWindow - r.answerRoom(req, b)
		if lo <= limit && limit < hi {
			return true
		}
	}
	return false
}

// CountLimit is the prompt size past which an exact count cannot change
// the decision: above it no candidate fits. Counting may stop there.
func (r *Router) CountLimit(req *Request) int {
	tg, ok := r.targets[req.Model]
	if !ok {
		return 0
	}
	limit := 0
	for _, i := range tg.candidates {
		b := &r.backends[i]
		limit = max(limit, b.Caps.ContextWindow-r.answerRoom(req, b)+1)
	}
	return limit
}
