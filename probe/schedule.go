package probe

import (
	"sync"
	"time"

	"github.com/detourhq/detour/health"
	"github.com/detourhq/detour/policy"
)

// Scheduler decides when each backend is due for a probe round. It is pure
// logic on the caller's clock and safe for concurrent use.
//
// A busy HEALTHY backend's own traffic shows its health, so it is probed
// every probes.interval; an idle one, or one that is DEGRADED, OPEN or
// HALF_OPEN, every probes.idle_interval, since probes are then the only or
// the deciding evidence. Two limits keep that cheap:
//
//   - a hard cap: no more than probes.budget_per_hour requests to a backend
//     in any sliding hour; a round that would pass it waits;
//   - a token bucket refilled at the same hourly rate and holding a sixth
//     of it (at least one round): a backend that turns suspect is probed
//     in a quick burst, then at the rate the budget allows, rather than
//     spending the hour's budget in its first minutes and going unprobed
//     for the rest.
type Scheduler struct {
	mu             sync.Mutex
	interval, idle time.Duration
	budget         int
	capacity       float64
	cost           map[string]int // requests per round, by backend
	accounts       map[string]*account
}

// account is one backend's probing history.
type account struct {
	last     time.Time   // start of the last round
	probed   bool        // a round was recorded
	sent     []time.Time // one per request, the last hour's, oldest first
	tokens   float64
	capacity float64 // of the bucket: at least one round
	refilled time.Time
}

// NewScheduler reads intervals, budget and round sizes from a defaulted
// policy.
func NewScheduler(pol *policy.Policy) *Scheduler {
	s := &Scheduler{accounts: map[string]*account{}}
	s.Reconfigure(pol)
	return s
}

// Reconfigure takes the settings of a reloaded policy and keeps what each
// backend was sent, so a reload never resets a budget. Backends no longer
// in the policy are forgotten.
func (s *Scheduler) Reconfigure(pol *policy.Policy) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.interval = pol.Probes.Interval.D()
	s.idle = pol.Probes.IdleInterval.D()
	s.budget = pol.Probes.BudgetPerHour
	s.capacity = float64(max(s.budget/6, 1))
	s.cost = map[string]int{}
	for i := range pol.Backends {
		b := &pol.Backends[i]
		s.cost[b.Name] = pol.ProbeRequests(b)
	}
	for name, a := range s.accounts {
		c, ok := s.cost[name]
		if !ok {
			delete(s.accounts, name)
			continue
		}
		a.capacity = max(s.capacity, float64(c))
		a.tokens = min(a.tokens, a.capacity)
	}
}

// Interval is how long a backend in state waits between rounds.
func (s *Scheduler) Interval(state health.State, busy bool) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.intervalLocked(state, busy)
}

func (s *Scheduler) intervalLocked(state health.State, busy bool) time.Duration {
	if state == health.Healthy && busy {
		return s.interval
	}
	return s.idle
}

// Due reports whether backend should be probed now: its interval has
// passed since its last round, and a whole round fits both its hourly
// budget and its bucket. busy: the backend has had traffic lately.
func (s *Scheduler) Due(backend string, state health.State, busy bool, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	cost := s.cost[backend]
	if cost == 0 || cost > s.budget {
		return false // nothing to send, or a round could never fit
	}
	a := s.account(backend, now)
	if a.probed && now.Sub(a.last) < s.intervalLocked(state, busy) {
		return false
	}
	s.refill(a, now)
	return a.tokens >= float64(cost) && s.inHour(a, now)+cost <= s.budget
}

// Spent records a round of n requests sent to backend at now (the number
// of Results Probe returned).
func (s *Scheduler) Spent(backend string, n int, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.account(backend, now)
	s.refill(a, now)
	a.last, a.probed = now, true
	a.tokens -= float64(n)
	s.inHour(a, now) // drop the old entries
	for range n {
		a.sent = append(a.sent, now)
	}
}

// Remaining is how many requests backend may still be sent in the hour
// ending at now.
func (s *Scheduler) Remaining(backend string, now time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return max(0, s.budget-s.inHour(s.account(backend, now), now))
}

// Forget drops a backend removed from the policy.
func (s *Scheduler) Forget(backend string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.accounts, backend)
}

func (s *Scheduler) account(backend string, now time.Time) *account {
	a := s.accounts[backend]
	if a == nil {
		c := max(s.capacity, float64(s.cost[backend]))
		a = &account{tokens: c, capacity: c, refilled: now}
		s.accounts[backend] = a
	}
	return a
}

// refill adds the tokens earned since the last refill, at budget per hour.
func (s *Scheduler) refill(a *account, now time.Time) {
	if el := now.Sub(a.refilled); el > 0 {
		a.tokens += float64(s.budget) * el.Hours()
		a.refilled = now
	}
	a.tokens = min(a.tokens, a.capacity)
}

// inHour counts the requests sent in the hour ending at now, dropping
// older ones.
func (s *Scheduler) inHour(a *account, now time.Time) int {
	cut := 0
	for cut < len(a.sent) && !a.sent[cut].After(now.Add(-time.Hour)) {
		cut++
	}
	a.sent = a.sent[cut:]
	return len(a.sent)
}
