package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// ErrUnknownEndpoint: Reach was asked for an endpoint the policy does not
// give the backend.
var ErrUnknownEndpoint = errors.New("probe: unknown endpoint")

// Reach tells whether an endpoint ("host:port", as the policy writes it)
// of backend answers HTTP at all: GET /v1/models, without credentials,
// bounded by ctx. Any answer counts, 401 and 404 included; only no answer
// (refused, reset, nothing before ctx ends) is an error. It costs no
// tokens, so it can run as often as an endpoint out of service needs to
// be checked before it takes traffic again.
func (p *Prober) Reach(ctx context.Context, backend, endpoint string) error {
	b := p.backend(backend)
	if b == nil {
		return fmt.Errorf("%w: backend %q", ErrUnknownEndpoint, backend)
	}
	for i, ep := range b.Endpoints {
		if ep.Address != endpoint {
			continue
		}
		scheme, host := "http", ""
		if ep.TLS != nil {
			scheme = "https"
			host = ep.TLS.SNI
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+ep.Address+"/v1/models", nil)
		if err != nil {
			return fmt.Errorf("reach %s: %w", endpoint, err)
		}
		if host != "" {
			req.Host = host
		}
		resp, err := p.clients[b.Name][i].Do(req)
		if err != nil {
			return fmt.Errorf("reach %s: %w", endpoint, err)
		}
		// Drain a little so the connection can be reused; the answer's
		// content says nothing more.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		return nil
	}
	return fmt.Errorf("%w: %s of %s", ErrUnknownEndpoint, endpoint, backend)
}
