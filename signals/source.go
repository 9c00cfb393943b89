package signals

import (
	"context"
	"time"
)

// Source is where the controller reads its signals from: each Envoy's
// admin endpoint, or a Prometheus server that scrapes them.
type Source interface {
	// Collect reads the signals once and returns every known backend's
	// Stats as of now. A partial failure (one Envoy of three unreachable)
	// returns what was read and an error saying what was not; stats that
	// can no longer be refreshed turn Stale after their bound.
	Collect(ctx context.Context, now time.Time) (map[string]Stats, error)
}
