package policy

import (
	"fmt"
	"os"
	"strings"
	"time"
)

// Cache is detour's response cache (ext_proc routing only): the last line
// of defence when every backend that could serve a request is down, and,
// where a route sets a TTL, a normal cache. Only answers that are safe to
// reuse are ever stored: requests with temperature 0, or whose client opts
// in with the header x-detour-cacheable: true; never a request sent with
// cache-control: no-store. Keys and answers are scoped per API key (and
// tenant header), so one client never sees another's answers.
type Cache struct {
	// Store keeps the answers: "memory" (each ext_proc replica its own,
	// bounded by max_bytes), "redis" (shared by every replica) or "off".
	// Default memory.
	Store string `yaml:"store,omitempty" jsonschema:"enum=memory,enum=redis,enum=off,default=memory"`
	// StaleIfError serves a stored answer, marked x-detour-cache: stale
	// with its age, when every backend of the request's route is OPEN in
	// the controller's view or every attempt failed. Default true.
	StaleIfError *bool `yaml:"stale_if_error,omitempty"`
	// Retention is how long an answer is kept for stale-if-error.
	// Default 24h.
	Retention Duration `yaml:"retention,omitempty"`
	// MaxBytes bounds the memory store (keys and answers). Default 64MiB.
	MaxBytes Size `yaml:"max_bytes,omitempty"`
	// MaxEntryBytes: larger answers are not stored. Default 1MiB.
	MaxEntryBytes Size `yaml:"max_entry_bytes,omitempty"`
	// TenantHeader names a request header that identifies the tenant (set
	// by an authenticating proxy in front of Envoy). Its value scopes the
	// cache together with the API key. Default: none, the API key alone
	// (authorization or x-api-key).
	TenantHeader string `yaml:"tenant_header,omitempty"`
	// Redis is the shared store when store is redis.
	Redis RedisSettings `yaml:"redis,omitempty"`
}

// RedisSettings locate the Redis server of the shared cache. The password
// comes from the environment or a file, never from this file.
type RedisSettings struct {
	// Address is host:port. Default 127.0.0.1:6379.
	Address string `yaml:"address,omitempty"`
	// Username for Redis ACLs. Default: none.
	Username string `yaml:"username,omitempty"`
	// PasswordEnv names an environment variable holding the password.
	PasswordEnv string `yaml:"password_env,omitempty"`
	// PasswordFile is a file holding the password (surrounding space is
	// trimmed).
	PasswordFile string `yaml:"password_file,omitempty"`
	// DB is the database number. Default 0.
	DB int `yaml:"db,omitempty" jsonschema:"minimum=0"`
	// Timeout bounds every Redis operation; past it the request goes on
	// without the cache. After a failure Redis is left alone for a second
	// (detour_cache_backend_up 0). Default 50ms.
	Timeout Duration `yaml:"timeout,omitempty"`
}

// Queue holds requests while every backend of their route is OPEN, for up
// to max_wait, and lets them go in priority order (critical, standard,
// sheddable; then first come) as soon as a backend is out of OPEN. Past
// the wait, or with the route's queue full, a request gets 503 with
// Retry-After. Off unless max_wait is set (then every priority waits,
// critical included, instead of being shed or sent to an OPEN backend).
// ext_proc routing only.
type Queue struct {
	// MaxWait is the longest a request waits. Default 0: no queue.
	MaxWait Duration `yaml:"max_wait,omitempty"`
	// MaxDepth is how many requests one route holds at once. Default 100.
	MaxDepth int `yaml:"max_depth,omitempty" jsonschema:"minimum=0"`
}

// RouteCache is a route's own cache and queue settings.
type RouteCache struct {
	// TTL turns on normal caching for this route: a stored answer younger
	// than this is served (x-detour-cache: hit) without asking a backend.
	// Default 0: stored answers only serve stale-if-error.
	TTL Duration `yaml:"ttl,omitempty"`
}

// Cache stores.
const (
	CacheMemory = "memory"
	CacheRedis  = "redis"
	CacheOff    = "off"

	DefaultCacheRetention      = 24 * time.Hour
	DefaultCacheMaxBytes  Size = 64 << 20
	DefaultCacheMaxEntry  Size = 1 << 20
	DefaultRedisAddress        = "127.0.0.1:6379"
	DefaultRedisTimeout        = 50 * time.Millisecond
	DefaultQueueDepth          = 100
)

func (p *Policy) applyCacheDefaults() {
	c := &p.Cache
	setStr(&c.Store, CacheMemory)
	if c.StaleIfError == nil {
		t := true
		c.StaleIfError = &t
	}
	setDur(&c.Retention, DefaultCacheRetention)
	if c.MaxBytes == 0 {
		c.MaxBytes = DefaultCacheMaxBytes
	}
	if c.MaxEntryBytes == 0 {
		c.MaxEntryBytes = DefaultCacheMaxEntry
	}
	c.TenantHeader = strings.ToLower(c.TenantHeader)
	setStr(&c.Redis.Address, DefaultRedisAddress)
	setDur(&c.Redis.Timeout, DefaultRedisTimeout)
	setInt(&p.Queue.MaxDepth, DefaultQueueDepth)
	for i := range p.Routes {
		q := &p.Routes[i].Queue
		if q.MaxWait == 0 {
			q.MaxWait = p.Queue.MaxWait
		}
		setInt(&q.MaxDepth, p.Queue.MaxDepth)
	}
}

// CacheOn reports whether answers are stored at all.
func (p *Policy) CacheOn() bool { return p.Cache.Store != CacheOff && p.Cache.Store != "" }

// QueueFor is the queue of requests naming target (a route, or a model id:
// the global queue).
func (p *Policy) QueueFor(target string) Queue {
	for _, r := range p.Routes {
		if r.Name == target {
			return r.Queue
		}
	}
	return Queue{MaxWait: p.Queue.MaxWait, MaxDepth: p.Queue.MaxDepth}
}

// LongestQueueWait is the longest max_wait of any route (the ext_proc
// filter's max_message_timeout must cover it).
func (p *Policy) LongestQueueWait() time.Duration {
	d := p.Queue.MaxWait.D()
	for _, r := range p.Routes {
		d = max(d, r.Queue.MaxWait.D())
	}
	return d
}

// RedisPassword reads the Redis password from the environment or its file.
func (r *RedisSettings) RedisPassword() (string, error) {
	switch {
	case r.PasswordEnv != "":
		v, ok := os.LookupEnv(r.PasswordEnv)
		if !ok {
			return "", fmt.Errorf("cache.redis.password_env: %s is not set", r.PasswordEnv)
		}
		return v, nil
	case r.PasswordFile != "":
		b, err := os.ReadFile(r.PasswordFile)
		if err != nil {
			return "", fmt.Errorf("cache.redis.password_file: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return "", nil
}

func (p *Policy) validateCache(v *validator) {
	c := &p.Cache
	switch c.Store {
	case CacheMemory, CacheOff:
	case CacheRedis:
		if msg := checkAddress(c.Redis.Address); msg != "" {
			v.add("cache.redis.address", msg, "e.g. 127.0.0.1:6379")
		}
		if c.Redis.PasswordEnv != "" && c.Redis.PasswordFile != "" {
			v.add("cache.redis", "name at most one of password_env and password_file", "passwords never go in the policy itself")
		}
		if c.Redis.PasswordEnv != "" && !envNameRE.MatchString(c.Redis.PasswordEnv) {
			v.add("cache.redis.password_env", fmt.Sprintf("%q is not an environment variable name", c.Redis.PasswordEnv), "e.g. REDIS_PASSWORD")
		}
		if c.Redis.DB < 0 {
			v.add("cache.redis.db", "cannot be negative", "")
		}
		if t := c.Redis.Timeout.D(); t < time.Millisecond || t > time.Second {
			v.add("cache.redis.timeout", fmt.Sprintf("%s is out of range", t), "between 1ms and 1s: every cacheable request may wait this long for Redis")
		}
	default:
		v.add("cache.store", fmt.Sprintf("unknown store %q", c.Store), "one of memory, redis, off")
	}
	if c.MaxBytes < 1024 {
		v.add("cache.max_bytes", "must be at least 1KiB", "e.g. 64MiB")
	}
	if c.MaxEntryBytes < 1024 || c.MaxEntryBytes > c.MaxBytes {
		v.add("cache.max_entry_bytes", fmt.Sprintf("%d is out of range", c.MaxEntryBytes), "between 1KiB and max_bytes")
	}
	if c.Retention.D() < time.Second {
		v.add("cache.retention", "must be at least 1s", "e.g. 24h")
	}
	if c.TenantHeader != "" && (!headerNameRE.MatchString(c.TenantHeader) || strings.HasPrefix(c.TenantHeader, "x-detour-")) {
		v.add("cache.tenant_header", fmt.Sprintf("%q cannot name a tenant", c.TenantHeader), "a header name such as x-tenant-id")
	}
	checkQueue := func(at string, q Queue) {
		if q.MaxWait < 0 {
			v.add(at+".max_wait", "cannot be negative", "")
		}
		if q.MaxDepth < 0 {
			v.add(at+".max_depth", "cannot be negative", "")
		}
		// A queued request's processing is held: the wait must end before
		// Envoy's stream idle timeout (envoy.request_timeout) gives up on
		// the silent stream, with room for the request itself.
		if q.MaxWait > 0 && q.MaxWait.D()+p.ExtProc.MessageTimeout.D() >= p.Envoy.RequestTimeout.D() {
			v.add(at+".max_wait", fmt.Sprintf("%s plus extproc.message_timeout is not shorter than envoy.request_timeout (%s): Envoy would give up on a queued request first",
				q.MaxWait.D(), p.Envoy.RequestTimeout.D()), "shorten the wait or raise envoy.request_timeout")
		}
	}
	checkQueue("queue", p.Queue)
	for i, r := range p.Routes {
		at := fmt.Sprintf("routes[%d]", i)
		checkQueue(at+".queue", r.Queue)
		if r.Cache.TTL < 0 {
			v.add(at+".cache.ttl", "cannot be negative", "")
		}
		if r.Cache.TTL > 0 && !p.CacheOn() {
			v.add(at+".cache.ttl", "a cache TTL with cache.store off", "set cache.store to memory or redis")
		}
		if r.Cache.TTL.D() > c.Retention.D() {
			v.add(at+".cache.ttl", fmt.Sprintf("%s is longer than cache.retention (%s)", r.Cache.TTL.D(), c.Retention.D()), "")
		}
		// The global queue does not apply to wasm-routed requests; a
		// route's own does not exist there.
		if p.ModeOf(r.Name) == ModeWasm && (r.Cache.TTL > 0 || (r.Queue.MaxWait > 0 && r.Queue.MaxWait != p.Queue.MaxWait)) {
			v.add(at, "the cache and the queue work in ext_proc routing only; this route is in wasm mode", "drop cache.ttl and queue here, or route it with mode: extproc")
		}
	}
}
