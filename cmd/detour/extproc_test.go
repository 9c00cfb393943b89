package main

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/detourhq/detour/examples"
	"github.com/detourhq/detour/policy"
)

func TestOpenCache(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	tests := []struct {
		name, yaml string
		store      string // "" for no cache
		err        bool
	}{
		{"default: memory", "", "memory", false},
		{"off", "cache: {store: off}\n", "", false},
		{"redis down at start is no error", "cache: {store: redis, redis: {address: \"127.0.0.1:1\", timeout: 20ms}}\n", "redis", false},
		{"redis password from an unset variable", "cache: {store: redis, redis: {password_env: DETOUR_TEST_NO_SUCH_VAR}}\n", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := policy.Parse("quickstart", append(append([]byte(nil), examples.QuickstartPolicy...), tt.yaml...))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := openCache(ctx, p, prometheus.NewRegistry(), log)
			if (err != nil) != tt.err {
				t.Fatalf("err %v, want error %v", err, tt.err)
			}
			switch {
			case tt.store == "" && c != nil:
				t.Errorf("a cache with store %s", c.Store().Name())
			case tt.store != "" && (c == nil || c.Store().Name() != tt.store):
				t.Errorf("want a %s cache, got %v", tt.store, c)
			}
			if c != nil {
				c.Close()
			}
		})
	}
}
