package policy

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestCacheDefaults(t *testing.T) {
	p := validPolicy()
	if p.Cache.Store != CacheMemory || !*p.Cache.StaleIfError || p.Cache.Retention.D() != 24*time.Hour ||
		p.Cache.MaxBytes != 64<<20 || p.Cache.Redis.Timeout.D() != 50*time.Millisecond || p.Queue.MaxWait != 0 || p.Queue.MaxDepth != 100 {
		t.Errorf("defaults: %+v %+v", p.Cache, p.Queue)
	}
	if !p.CacheOn() || p.LongestQueueWait() != 0 {
		t.Error("cache off or a queue by default")
	}
}

func TestValidateCache(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Policy)
		want   []string // "path: message" prefixes
	}{
		{"defaults", func(*Policy) {}, nil},
		{"redis", func(p *Policy) { p.Cache.Store = CacheRedis; p.Cache.Redis.PasswordEnv = "REDIS_PASSWORD" }, nil},
		{"unknown store", func(p *Policy) { p.Cache.Store = "disk" }, []string{`cache.store: unknown store "disk"`}},
		{"bad redis address", func(p *Policy) { p.Cache.Store = CacheRedis; p.Cache.Redis.Address = "redis" }, []string{"cache.redis.address:"}},
		{"two passwords", func(p *Policy) {
			p.Cache.Store = CacheRedis
			p.Cache.Redis.PasswordEnv, p.Cache.Redis.PasswordFile = "A", "/x"
		}, []string{"cache.redis: name at most one"}},
		{"redis timeout too long", func(p *Policy) { p.Cache.Store = CacheRedis; p.Cache.Redis.Timeout = Duration(5 * time.Second) }, []string{"cache.redis.timeout: 5s is out of range"}},
		{"entry over the bound", func(p *Policy) { p.Cache.MaxEntryBytes = p.Cache.MaxBytes + 1 }, []string{"cache.max_entry_bytes:"}},
		{"tenant header", func(p *Policy) { p.Cache.TenantHeader = "x-tenant-id" }, nil},
		{"detour's own header as tenant", func(p *Policy) { p.Cache.TenantHeader = "x-detour-route" }, []string{"cache.tenant_header:"}},
		{"queue wait within the deadlines", func(p *Policy) { p.Queue.MaxWait = Duration(30 * time.Second) }, nil},
		{"queue wait past the request timeout", func(p *Policy) { p.Queue.MaxWait = Duration(299 * time.Second) },
			[]string{"queue.max_wait: 4m59s plus extproc.message_timeout is not shorter than envoy.request_timeout"}},
		{"route queue past the request timeout", func(p *Policy) {
			p.Routes = []Route{{Name: "auto", Objective: ObjectiveCheapest, Queue: Queue{MaxWait: Duration(time.Hour), MaxDepth: 1}}}
		}, []string{"routes[0].queue.max_wait:"}},
		{"route TTL with the cache off", func(p *Policy) {
			p.Cache.Store = CacheOff
			p.Routes = []Route{{Name: "auto", Objective: ObjectiveCheapest, Cache: RouteCache{TTL: Duration(time.Minute)}, Queue: Queue{MaxDepth: 1}}}
		}, []string{"routes[0].cache.ttl: a cache TTL with cache.store off"}},
		{"route TTL over the retention", func(p *Policy) {
			p.Routes = []Route{{Name: "auto", Objective: ObjectiveCheapest, Cache: RouteCache{TTL: Duration(48 * time.Hour)}, Queue: Queue{MaxDepth: 1}}}
		}, []string{"routes[0].cache.ttl: 48h0m0s is longer than cache.retention"}},
		{"wasm routing with a global queue", func(p *Policy) {
			p.Routing.Mode = ModeWasm
			p.Queue.MaxWait = Duration(5 * time.Second)
			p.Routes = []Route{{Name: "auto", Objective: ObjectiveCheapest, Queue: Queue{MaxWait: Duration(5 * time.Second), MaxDepth: 1}}}
		}, nil},
		{"wasm route with its own queue", func(p *Policy) {
			p.Routes = []Route{{Name: "auto", Objective: ObjectiveCheapest, Mode: ModeWasm, Queue: Queue{MaxWait: Duration(time.Second), MaxDepth: 1}}}
		}, []string{"routes[0]: the cache and the queue work in ext_proc routing only"}},
		{"wasm route with a TTL", func(p *Policy) {
			p.Routes = []Route{{Name: "auto", Objective: ObjectiveCheapest, Mode: ModeWasm, Cache: RouteCache{TTL: Duration(time.Minute)}, Queue: Queue{MaxDepth: 1}}}
		}, []string{"routes[0]: the cache and the queue work in ext_proc routing only"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := validPolicy()
			tt.modify(p)
			var got []string
			for _, pr := range p.Validate() {
				got = append(got, pr.Path+": "+pr.Message)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("problems %q, want %q", got, tt.want)
			}
			for _, w := range tt.want {
				if !slices.ContainsFunc(got, func(g string) bool { return strings.HasPrefix(g, w) }) {
					t.Errorf("problems %q lack %q", got, w)
				}
			}
		})
	}
}

func TestRouteQueueInherits(t *testing.T) {
	p := &Policy{
		Backends: validPolicy().Backends,
		Queue:    Queue{MaxWait: Duration(5 * time.Second), MaxDepth: 7},
		Routes:   []Route{{Name: "auto"}, {Name: "own", Queue: Queue{MaxWait: Duration(time.Second), MaxDepth: 2}}},
	}
	p.ApplyDefaults()
	if q := p.QueueFor("auto"); q.MaxWait.D() != 5*time.Second || q.MaxDepth != 7 {
		t.Errorf("auto: %+v", q)
	}
	if q := p.QueueFor("own"); q.MaxWait.D() != time.Second || q.MaxDepth != 2 {
		t.Errorf("own: %+v", q)
	}
	if q := p.QueueFor("m-a"); q.MaxWait.D() != 5*time.Second {
		t.Errorf("model id: %+v", q)
	}
	if p.LongestQueueWait() != 5*time.Second {
		t.Errorf("longest %v", p.LongestQueueWait())
	}
}

func TestRedisPassword(t *testing.T) {
	t.Setenv("DETOUR_TEST_REDIS_PW", "s3cret")
	r := RedisSettings{PasswordEnv: "DETOUR_TEST_REDIS_PW"}
	if pw, err := r.RedisPassword(); pw != "s3cret" || err != nil {
		t.Errorf("env: %q %v", pw, err)
	}
	f := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(f, []byte(" filepw\n"), 0o600)
	r = RedisSettings{PasswordFile: f}
	if pw, err := r.RedisPassword(); pw != "filepw" || err != nil {
		t.Errorf("file: %q %v", pw, err)
	}
	r = RedisSettings{PasswordEnv: "DETOUR_TEST_UNSET_VAR"}
	if _, err := r.RedisPassword(); err == nil {
		t.Error("unset variable: no error")
	}
}
