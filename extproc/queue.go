package extproc

import (
	"context"
	"strconv"
	"sync"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/route"
)

// The queue (issue 7, "request queueing"): while every backend that could
// serve a request is OPEN in the controller's view, the request's answer
// is held here for up to its route's max_wait, and requests are let go in
// priority order (critical, standard, sheddable; then first come) as soon
// as one of their backends is out of OPEN. The wait happens inside the
// ext_proc answer to the request body: Envoy holds the request meanwhile,
// and detour extends that message's timeout first (override_message_timeout,
// bounded by the filter's max_message_timeout, which xds sets to the
// longest wait plus extproc.message_timeout).

// Outcomes of a wait (label of detour_queue_outcomes_total).
const (
	queueReleased  = "released"  // a backend recovered: the request goes on
	queueTimeout   = "timeout"   // max_wait passed: 503
	queueFull      = "full"      // the route's queue was full: 503 at once
	queueCancelled = "cancelled" // Envoy or the client gave up
)

// queue holds the waiting requests of every route.
type queue struct {
	mu      sync.Mutex
	seq     uint64
	routes  map[string][]*waiter
	notify  chan struct{}
	metrics *Metrics
	// gap bounds how long the release of one request waits for the one
	// before it to have its answer; pace is the least time between two
	// releases, so they reach the providers in order (and a recovering
	// backend is not hit by the whole queue at once).
	gap, pace time.Duration
}

type waiter struct {
	prio  int // 0 critical, 1 standard, 2 sheddable
	seq   uint64
	ready func() bool // reports whether a backend of this request is out of OPEN
	go_   chan struct{}
	sent  chan struct{}
}

func newQueue(m *Metrics) *queue {
	q := &queue{routes: map[string][]*waiter{}, notify: make(chan struct{}, 1), metrics: m, gap: 20 * time.Millisecond, pace: 10 * time.Millisecond}
	return q
}

func prioRank(p string) int {
	switch p {
	case "critical":
		return 0
	case "sheddable":
		return 2
	}
	return 1
}

// Notify wakes the dispatcher: the health view changed.
func (q *queue) Notify() {
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

// run releases waiters whose backends recovered, in priority order, on
// every notification and every tick (a safety net should a notification
// be missed), until ctx ends.
func (q *queue) run(ctx context.Context) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-q.notify:
		case <-tick.C:
		}
		q.dispatch(ctx)
	}
}

// dispatch releases ready waiters one at a time, best priority first.
// Each is taken off its route's list only when its turn comes, so one
// whose wait ends meanwhile finds itself still queued and leaves with its
// timeout at once, and nothing is left taken but unreleased when ctx ends.
func (q *queue) dispatch(ctx context.Context) {
	for ctx.Err() == nil {
		w := q.takeNext()
		if w == nil {
			return
		}
		close(w.go_)
		select {
		case <-w.sent:
		case <-time.After(q.gap):
		case <-ctx.Done():
			return
		}
		time.Sleep(q.pace)
	}
}

// takeNext removes and returns the ready waiter with the best priority
// (then the oldest), or nil.
func (q *queue) takeNext() *waiter {
	q.mu.Lock()
	defer q.mu.Unlock()
	var best *waiter
	var bestRoute string
	var bestIdx int
	for route, ws := range q.routes {
		for i, w := range ws {
			if (best == nil || w.prio < best.prio || (w.prio == best.prio && w.seq < best.seq)) && w.ready() {
				best, bestRoute, bestIdx = w, route, i
			}
		}
	}
	if best == nil {
		return nil
	}
	ws := q.routes[bestRoute]
	q.routes[bestRoute] = append(ws[:bestIdx], ws[bestIdx+1:]...)
	q.setDepth(bestRoute, len(ws)-1)
	return best
}

func (q *queue) setDepth(route string, n int) {
	if q.metrics != nil {
		q.metrics.QueueDepth.WithLabelValues(route).Set(float64(n))
	}
}

// wait holds a request of route until ready reports a recovered backend,
// maxWait passes or ctx ends. done must be called once the request's
// answer is ready (it paces the next release).
func (q *queue) wait(ctx context.Context, route, prio string, maxWait time.Duration, depth int, ready func() bool) (outcome string, waited time.Duration, done func()) {
	start := time.Now()
	nop := func() {}
	q.mu.Lock()
	ws := q.routes[route]
	if len(ws) >= depth {
		q.mu.Unlock()
		q.outcome(route, queueFull, 0)
		return queueFull, 0, nop
	}
	q.seq++
	w := &waiter{prio: prioRank(prio), seq: q.seq, ready: ready, go_: make(chan struct{}), sent: make(chan struct{})}
	q.routes[route] = append(ws, w)
	q.setDepth(route, len(ws)+1)
	q.mu.Unlock()
	q.Notify() // the view may have changed since the caller looked

	timer := time.NewTimer(maxWait)
	defer timer.Stop()
	select {
	case <-w.go_:
		waited = time.Since(start)
		q.outcome(route, queueReleased, waited)
		return queueReleased, waited, func() { close(w.sent) }
	case <-timer.C:
		outcome = queueTimeout
	case <-ctx.Done():
		outcome = queueCancelled
	}
	if !q.remove(route, w) {
		// Released while timing out: go on, it is what the client wants.
		<-w.go_
		waited = time.Since(start)
		q.outcome(route, queueReleased, waited)
		return queueReleased, waited, func() { close(w.sent) }
	}
	waited = time.Since(start)
	q.outcome(route, outcome, waited)
	return outcome, waited, nop
}

func (q *queue) remove(route string, w *waiter) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	ws := q.routes[route]
	for i, x := range ws {
		if x == w {
			q.routes[route] = append(ws[:i], ws[i+1:]...)
			q.setDepth(route, len(ws)-1)
			return true
		}
	}
	return false
}

func (q *queue) outcome(route, o string, waited time.Duration) {
	if q.metrics == nil {
		return
	}
	q.metrics.QueueOutcomes.WithLabelValues(route, o).Inc()
	if o != queueFull {
		q.metrics.QueueWait.WithLabelValues(o).Observe(waited.Seconds())
	}
}

// waitInQueue holds a request whose candidates are all OPEN. A nil answer
// means a backend recovered and the request goes on; done must be called
// once its answer is ready.
func (s *Server) waitInQueue(ctx context.Context, st *state, w *work, q policy.Queue) (*extprocv3.ProcessingResponse, func()) {
	prio := w.priority
	if prio == "" {
		prio = st.priorities[w.dec.Target]
	}
	r := st.router
	dec := w.dec
	dec.Fallbacks = append([]int(nil), w.dec.Fallbacks...)
	ready := func() bool {
		if s.health.src == nil {
			return true
		}
		return !candidatesOpen(s.health.src.View(), r, &dec)
	}
	if w.early != nil {
		// Envoy waits for this answer no longer than message_timeout
		// unless told: the wait plus the usual time to answer.
		if err := w.early(extendTimeout(q.MaxWait.D() + st.messageTimeout)); err != nil {
			return s.reject(w, route.ErrInternal("could not extend the ext_proc message timeout")), func() {}
		}
	}
	outcome, waited, done := s.queue.wait(ctx, w.dec.Target, prio, q.MaxWait.D(), q.MaxDepth, ready)
	s.log.Info("queued while every backend is OPEN", "route", w.dec.Target, "priority", prio, "outcome", outcome, "waited", waited.Round(time.Millisecond))
	retryAfter := 1
	if s.health.src != nil {
		if v := s.health.src.View(); v != nil {
			if rt, ok := v.Routes[w.dec.Target]; ok && rt.RetryAfter > 0 {
				retryAfter = rt.RetryAfter
			}
		}
	}
	switch outcome {
	case queueReleased:
		return nil, done
	case queueFull:
		return s.unavailable(w, route.ErrQueueFull(w.dec.Target, q.MaxDepth), retryAfter), done
	default:
		return s.unavailable(w, route.ErrQueueTimeout(w.dec.Target, q.MaxWait.D().String()), retryAfter), done
	}
}

// unavailable refuses a request with 503 and a Retry-After.
func (s *Server) unavailable(w *work, e *route.APIError, retryAfter int) *extprocv3.ProcessingResponse {
	s.metrics.Errors.WithLabelValues(e.Kind).Inc()
	resp := immediate(e.Status, e.JSON(), e.Kind)
	ir := resp.GetImmediateResponse()
	ir.Headers.SetHeaders = append(ir.Headers.SetHeaders, setHeader("retry-after", strconv.Itoa(max(1, retryAfter))))
	return resp
}
