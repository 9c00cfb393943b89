package probe

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/detourhq/detour/policy"
)

func TestReach(t *testing.T) {
	var paths []string
	answering := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths = append(paths, r.Method+" "+r.URL.Path)
		http.Error(w, "no key", http.StatusUnauthorized) // any answer counts
	}))
	defer answering.Close()
	// A black hole: the connection is accepted, nothing ever comes back.
	hole, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hole.Close()
	go func() {
		for {
			c, err := hole.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	// Refused: a port nobody listens on.
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	refused := closed.Addr().String()
	closed.Close()

	up := strings.TrimPrefix(answering.URL, "http://")
	b := backend("b", up, policy.Capabilities{})
	b.Endpoints = append(b.Endpoints, policy.Endpoint{Address: hole.Addr().String()}, policy.Endpoint{Address: refused})
	p := newProber(t, newPolicy(t, nil, b))
	name := "b"
	reach := func(ep string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		return p.Reach(ctx, name, ep)
	}
	if err := reach(up); err != nil {
		t.Errorf("an endpoint answering 401: %v, want reachable", err)
	}
	if len(paths) != 1 || paths[0] != "GET /v1/models" {
		t.Errorf("requests %v, want one GET /v1/models", paths)
	}
	if err := reach(hole.Addr().String()); err == nil {
		t.Error("a black hole was reachable")
	}
	if err := reach(refused); err == nil {
		t.Error("a refused endpoint was reachable")
	}
	if err := reach("10.9.9.9:1"); !errors.Is(err, ErrUnknownEndpoint) {
		t.Errorf("an endpoint outside the policy: %v", err)
	}
}
