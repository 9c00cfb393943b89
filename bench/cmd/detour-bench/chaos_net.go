package main

// The chaos suite's network: a Toxiproxy proxy (github.com/Shopify/toxiproxy,
// run in this process) between Envoy and every simulated provider, so that
// network faults (refused connections, latency, bandwidth, resets, black
// holes) are real TCP behaviour that Envoy sees, not a simulator's answer.

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// faultNet is one Toxiproxy proxy per provider, by provider name.
type faultNet struct {
	server  *toxiproxy.ApiServer
	proxies map[string]*toxiproxy.Proxy
}

// newFaultNet starts a proxy listening on listen[name] for each provider
// upstream[name].
func newFaultNet(listen, upstream map[string]string) (*faultNet, error) {
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	n := &faultNet{server: srv, proxies: map[string]*toxiproxy.Proxy{}}
	for name, up := range upstream {
		p := toxiproxy.NewProxy(srv, name, listen[name], up)
		if err := srv.Collection.Add(p, true); err != nil {
			n.close()
			return nil, fmt.Errorf("toxiproxy %s (%s → %s): %w", name, listen[name], up, err)
		}
		n.proxies[name] = p
	}
	return n, nil
}

// toxic is one Toxiproxy toxic: type, direction ("upstream" is client to
// provider, "downstream" provider to client) and attributes.
type toxic struct {
	Type       string         `json:"type"`
	Stream     string         `json:"stream"`
	Attributes map[string]any `json:"attributes"`
}

// addToxic adds t to the proxies of names.
func (n *faultNet) addToxic(names []string, t toxic) error {
	for _, name := range names {
		p, err := n.proxy(name)
		if err != nil {
			return err
		}
		body, err := json.Marshal(map[string]any{
			"name": t.Type + "_" + t.Stream, "type": t.Type, "stream": t.Stream,
			"toxicity": 1.0, "attributes": t.Attributes,
		})
		if err != nil {
			return err
		}
		if _, err := p.Toxics.AddToxicJson(strings.NewReader(string(body))); err != nil {
			return fmt.Errorf("toxiproxy %s: add %s: %w", name, t.Type, err)
		}
	}
	return nil
}

// refuse stops (on) or restarts (off) the proxies of names: a stopped
// proxy's port refuses connections, and its open connections are closed.
func (n *faultNet) refuse(names []string, on bool) error {
	for _, name := range names {
		p, err := n.proxy(name)
		if err != nil {
			return err
		}
		if on {
			p.Stop()
			continue
		}
		if err := p.Start(); err != nil && err != toxiproxy.ErrProxyAlreadyStarted {
			return fmt.Errorf("toxiproxy %s: restart: %w", name, err)
		}
	}
	return nil
}

// reset removes every toxic and restarts every stopped proxy.
func (n *faultNet) reset(ctx context.Context) error {
	for name, p := range n.proxies {
		p.Toxics.ResetToxics(ctx)
		if err := n.refuse([]string{name}, false); err != nil {
			return err
		}
	}
	return nil
}

func (n *faultNet) proxy(name string) (*toxiproxy.Proxy, error) {
	p, ok := n.proxies[name]
	if !ok {
		return nil, fmt.Errorf("toxiproxy: no proxy for %q", name)
	}
	return p, nil
}

func (n *faultNet) close() {
	n.server.Collection.Clear()
}
