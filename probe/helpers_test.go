package probe

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/sim"
)

// startSim starts a simulator on random loopback ports and closes it when
// the test ends.
func startSim(t *testing.T, cfg sim.Config) *sim.Server {
	t.Helper()
	cfg.Addr = "127.0.0.1:0"
	s, err := sim.New(cfg)
	if err != nil {
		t.Fatalf("sim.New: %v", err)
	}
	if err := s.Start(t.Context()); err != nil {
		t.Fatalf("sim.Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Errorf("sim.Close: %v", err)
		}
	})
	return s
}

// backend is a backend named name at addr, serving model "m".
func backend(name, addr string, caps policy.Capabilities) policy.Backend {
	if caps.ContextWindow == 0 {
		caps.ContextWindow = 32000
	}
	return policy.Backend{Name: name, Model: "m", Endpoints: []policy.Endpoint{{Address: addr}}, Capabilities: caps}
}

// newPolicy defaults and validates a policy of the backends, after
// modify.
func newPolicy(t *testing.T, modify func(*policy.Policy), backends ...policy.Backend) *policy.Policy {
	t.Helper()
	p := &policy.Policy{Backends: backends}
	if modify != nil {
		modify(p)
	}
	p.ApplyDefaults()
	if probs := p.Validate(); len(probs) > 0 {
		t.Fatalf("invalid test policy: %v", probs)
	}
	return p
}

// newProber makes a Prober with its own connection pool.
func newProber(t *testing.T, p *policy.Policy) *Prober {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	pr, err := New(p, &http.Client{Transport: tr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pr.Close)
	return pr
}

// byProbe indexes results by probe name.
func byProbe(rs []Result) map[string]Result {
	m := map[string]Result{}
	for _, r := range rs {
		m[r.Probe] = r
	}
	return m
}

func names(rs []Result) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Probe)
	}
	return out
}
