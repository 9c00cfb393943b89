package respcache_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/detourhq/detour/respcache"
	"github.com/detourhq/detour/respcache/redistest"
)

// stores runs f against every Store implementation: memory, and Redis on a
// real redis-server.
func stores(t *testing.T, f func(t *testing.T, s respcache.Store)) {
	t.Run("memory", func(t *testing.T) { f(t, respcache.NewMemory(1<<20)) })
	t.Run("redis", func(t *testing.T) {
		srv := redistest.Start(t)
		r := respcache.NewRedis(respcache.RedisOptions{Addr: srv.Addr, Timeout: time.Second})
		t.Cleanup(func() { r.Close() })
		f(t, r)
	})
}

func TestStoreGetSet(t *testing.T) {
	stores(t, func(t *testing.T, s respcache.Store) {
		ctx := context.Background()
		if _, ok, err := s.Get(ctx, "k1"); ok || err != nil {
			t.Fatalf("empty store: ok=%v err=%v", ok, err)
		}
		at := time.UnixMilli(time.Now().UnixMilli())
		body := []byte(`{"id":"x","choices":[]}`)
		if err := s.Set(ctx, "k1", respcache.Entry{Body: body, StoredAt: at}, time.Minute); err != nil {
			t.Fatal(err)
		}
		e, ok, err := s.Get(ctx, "k1")
		if !ok || err != nil || string(e.Body) != string(body) || !e.StoredAt.Equal(at) {
			t.Fatalf("got %q at %v ok=%v err=%v", e.Body, e.StoredAt, ok, err)
		}
		// Overwrite.
		if err := s.Set(ctx, "k1", respcache.Entry{Body: []byte("2"), StoredAt: at}, time.Minute); err != nil {
			t.Fatal(err)
		}
		if e, _, _ := s.Get(ctx, "k1"); string(e.Body) != "2" {
			t.Fatalf("overwrite: %q", e.Body)
		}
		// Expiry.
		if err := s.Set(ctx, "short", respcache.Entry{Body: []byte("s"), StoredAt: at}, 50*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		time.Sleep(120 * time.Millisecond)
		if _, ok, _ := s.Get(ctx, "short"); ok {
			t.Fatal("entry outlived its TTL")
		}
	})
}

func TestMemoryByteBound(t *testing.T) {
	m := respcache.NewMemory(4096)
	ctx := context.Background()
	body := []byte(strings.Repeat("x", 900))
	for i := range 10 {
		if err := m.Set(ctx, fmt.Sprint("k", i), respcache.Entry{Body: body, StoredAt: time.Now()}, time.Hour); err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			m.Get(ctx, "k0") // k0 becomes the most recently used
		}
	}
	if m.Bytes() > 4096 {
		t.Fatalf("holds %d bytes, bound 4096", m.Bytes())
	}
	if m.Len() != 4 {
		t.Errorf("holds %d entries, want 4", m.Len())
	}
	for _, k := range []string{"k9", "k8", "k7"} {
		if _, ok, _ := m.Get(ctx, k); !ok {
			t.Errorf("%s (recent) was evicted", k)
		}
	}
	if _, ok, _ := m.Get(ctx, "k1"); ok {
		t.Error("k1 (least recently used) was kept")
	}
	// Larger than the bound: not kept, nothing evicted.
	m.Set(ctx, "huge", respcache.Entry{Body: make([]byte, 5000)}, time.Hour)
	if _, ok, _ := m.Get(ctx, "huge"); ok || m.Len() != 4 {
		t.Errorf("an entry over the bound was kept (len %d)", m.Len())
	}
}

func TestCacheMetricsAndDown(t *testing.T) {
	srv := redistest.Start(t)
	reg := prometheus.NewRegistry()
	m := respcache.NewMetrics(reg)
	now := time.Now()
	clock := func() time.Time { return now }
	c := respcache.New(respcache.Config{
		Store:     respcache.NewRedis(respcache.RedisOptions{Addr: srv.Addr}),
		OpTimeout: 50 * time.Millisecond, Metrics: m, Now: clock, DownFor: time.Second,
	})
	defer c.Close()
	ctx := context.Background()
	if err := c.Put(ctx, "k", []byte(`{"a":1}`)); err != nil {
		t.Fatal(err)
	}
	e, ok, err := c.Get(ctx, "k")
	if !ok || err != nil || string(e.Body) != `{"a":1}` || !e.StoredAt.Equal(time.UnixMilli(now.UnixMilli())) {
		t.Fatalf("get: %q ok=%v err=%v", e.Body, ok, err)
	}
	if v := testutil.ToFloat64(m.Requests.WithLabelValues("store")); v != 1 {
		t.Errorf("store count %v", v)
	}
	if v := testutil.ToFloat64(m.BackendUp); v != 1 {
		t.Errorf("backend_up %v with Redis up", v)
	}

	// Redis dies: the next op fails within the op timeout, then the store
	// is skipped without waiting until DownFor has passed.
	srv.Kill()
	start := time.Now()
	if _, _, err := c.Get(ctx, "k"); err == nil {
		t.Fatal("get from a dead Redis succeeded")
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("a dead Redis held a get for %v", d)
	}
	if v := testutil.ToFloat64(m.BackendUp); v != 0 {
		t.Errorf("backend_up %v with Redis down", v)
	}
	start = time.Now()
	for range 100 {
		if _, _, err := c.Get(ctx, "k"); !errors.Is(err, respcache.ErrDown) {
			t.Fatalf("while down: %v, want ErrDown", err)
		}
	}
	if d := time.Since(start); d > 50*time.Millisecond {
		t.Errorf("100 skipped gets took %v", d)
	}
	if v := testutil.ToFloat64(m.Requests.WithLabelValues("error")); v != 101 {
		t.Errorf("error count %v, want 101", v)
	}

	// Back after DownFor: the cache recovers by itself.
	srv.Restart()
	now = now.Add(2 * time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for {
		now = now.Add(2 * time.Second)
		if err := c.Put(ctx, "k2", []byte("v")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the cache did not recover after Redis came back")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if v := testutil.ToFloat64(m.BackendUp); v != 1 {
		t.Errorf("backend_up %v after recovery", v)
	}
}

func TestRedisNeverReachable(t *testing.T) {
	// A port nobody listens on: every op fails fast, nothing blocks.
	c := respcache.New(respcache.Config{Store: respcache.NewRedis(respcache.RedisOptions{Addr: "127.0.0.1:1"}), OpTimeout: 50 * time.Millisecond})
	start := time.Now()
	if err := c.Put(context.Background(), "k", []byte("v")); err == nil {
		t.Fatal("put to nowhere succeeded")
	}
	if _, _, err := c.Get(context.Background(), "k"); !errors.Is(err, respcache.ErrDown) {
		t.Fatalf("second op: %v", err)
	}
	if d := time.Since(start); d > 200*time.Millisecond {
		t.Errorf("took %v", d)
	}
}

func TestCacheSkipsLargeEntries(t *testing.T) {
	c := respcache.New(respcache.Config{Store: respcache.NewMemory(1 << 20), MaxEntryBytes: 10})
	c.Put(context.Background(), "k", []byte("01234567890"))
	if _, ok, _ := c.Get(context.Background(), "k"); ok {
		t.Error("an answer over MaxEntryBytes was stored")
	}
}
