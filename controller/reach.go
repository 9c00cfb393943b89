package controller

import (
	"context"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/detourhq/detour/health"
)

// reachWatch checks whether backends whose circuit is OPEN answer HTTP at
// all, at most one check per backend at a time, started by an evaluation
// and read by a later one. An OPEN backend that turns reachable after a
// long outage is tried at once rather than when a cool-down that doubled
// while the outage lasted runs out (health.Observation.Reach).
type reachWatch struct {
	reach  Reacher                // nil: no checks
	checks *prometheus.CounterVec // Metrics.ReachChecks
	mu     sync.Mutex
	// running: a check of the backend is in flight; done: verdicts not
	// yet taken.
	running map[string]bool
	done    map[string]health.Reach
}

func newReachWatch(checks *prometheus.CounterVec) *reachWatch {
	return &reachWatch{checks: checks, running: map[string]bool{}, done: map[string]health.Reach{}}
}

// take returns the verdict of the backend's last finished check, once.
func (w *reachWatch) take(backend string) health.Reach {
	w.mu.Lock()
	defer w.mu.Unlock()
	r := w.done[backend]
	delete(w.done, backend)
	return r
}

// start checks the backend's endpoints (its policy addresses) unless a
// check is already running: reachable when any answers within
// reachTimeout.
func (w *reachWatch) start(ctx context.Context, backend string, addrs []string) {
	if w.reach == nil || len(addrs) == 0 {
		return
	}
	w.mu.Lock()
	if w.running[backend] {
		w.mu.Unlock()
		return
	}
	w.running[backend] = true
	w.mu.Unlock()
	go func() {
		cctx, cancel := context.WithTimeout(ctx, reachTimeout)
		defer cancel()
		answered := make(chan bool, len(addrs))
		for _, a := range addrs {
			go func() { answered <- w.reach.Reach(cctx, backend, a) == nil }()
		}
		verdict, result := health.Unreachable, "unreachable"
		for range addrs {
			if <-answered {
				verdict, result = health.Reachable, "reachable"
				break
			}
		}
		w.checks.WithLabelValues(backend, result).Inc()
		w.mu.Lock()
		defer w.mu.Unlock()
		w.running[backend] = false
		if ctx.Err() == nil {
			w.done[backend] = verdict
		}
	}()
}

// forget drops a backend removed from the policy.
func (w *reachWatch) forget(backend string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.done, backend)
}
