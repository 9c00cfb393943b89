package main

import (
	"log/slog"

	"github.com/detourhq/detour/controller"
	"github.com/detourhq/detour/policy"
)

// newProber builds the contextual health probes (nil: none).
func newProber(p *policy.Policy, log *slog.Logger) (controller.Prober, error) {
	return nil, nil
}
