package main

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/detourhq/detour/controller"
	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/probe"
)

// newProber builds the contextual health probes (nil: probes disabled).
func newProber(p *policy.Policy, log *slog.Logger) (*probeAdapter, error) {
	if p.Probes.Disabled {
		log.Info("health probes disabled: only traffic is judged")
		return nil, nil
	}
	// Each probe has its own timeout from the policy; the client only
	// bounds the connection.
	r, err := probe.NewRunner(p, &http.Client{})
	if err != nil {
		return nil, err
	}
	return &probeAdapter{r}, nil
}

// probeAdapter gives the controller the probe package's results.
type probeAdapter struct{ *probe.Runner }

func (a probeAdapter) Probe(ctx context.Context, backend string) []controller.ProbeResult {
	rs := a.Runner.Probe(ctx, backend)
	out := make([]controller.ProbeResult, len(rs))
	for i, r := range rs {
		out[i] = controller.ProbeResult{
			Backend: r.Backend, Name: r.Probe, OK: r.OK, Slow: r.Slow, Reason: r.Reason,
			TTFT: r.TTFT, Total: r.Total, TokensPerSecond: r.TokensPerSecond, At: r.At,
		}
	}
	return out
}
