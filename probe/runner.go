package probe

import (
	"context"
	"net/http"
	"time"

	"github.com/detourhq/detour/policy"
)

// Runner pairs a Prober with its Scheduler, for a caller that asks Due and
// then Probe: each round is charged to its backend's budget before it is
// sent, so the budget holds even if the round is cut short. The caller
// starts at most one round per backend at a time.
type Runner struct {
	*Prober
	*Scheduler
	now func() time.Time
}

// NewRunner builds the Prober and Scheduler of a defaulted, valid policy;
// client and opts are New's. The clock set WithClock also dates the
// rounds charged.
func NewRunner(pol *policy.Policy, client *http.Client, opts ...Option) (*Runner, error) {
	p, err := New(pol, client, opts...)
	if err != nil {
		return nil, err
	}
	return &Runner{Prober: p, Scheduler: NewScheduler(pol), now: p.now}, nil
}

// Probe charges a round to backend's budget, then sends it.
func (r *Runner) Probe(ctx context.Context, backend string) []Result {
	r.Spent(backend, r.Requests(backend), r.now())
	return r.Prober.Probe(ctx, backend)
}
