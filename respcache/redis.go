package respcache

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis keeps entries in a Redis server shared by every detour replica.
// Every operation is bounded by the caller's context (Cache gives each one
// its small timeout); the client never retries and never waits for a
// pooled connection longer than that.
type Redis struct {
	c *redis.Client
}

// RedisOptions locate the server.
type RedisOptions struct {
	Addr     string
	Username string
	Password string
	DB       int
	// Timeout bounds dialling, reads and writes (the per-op deadline is
	// the caller's context). Default 50 ms.
	Timeout time.Duration
	// PoolSize: connections kept per replica. Default go-redis's (10 per CPU).
	PoolSize int
}

// NewRedis makes a client; it connects lazily, so a server that is down at
// start is no error (the cache is simply unavailable until it is up).
func NewRedis(o RedisOptions) *Redis {
	if o.Timeout <= 0 {
		o.Timeout = 50 * time.Millisecond
	}
	return &Redis{c: redis.NewClient(&redis.Options{
		Addr: o.Addr, Username: o.Username, Password: o.Password, DB: o.DB,
		DialTimeout: o.Timeout, ReadTimeout: o.Timeout, WriteTimeout: o.Timeout,
		PoolTimeout: o.Timeout, MaxRetries: -1, PoolSize: o.PoolSize,
		ContextTimeoutEnabled: true,
		// No CLIENT SETINFO round trip on each new connection: older
		// servers answer it with an error that costs a reconnect.
		DisableIdentity: true,
	})}
}

func (r *Redis) Name() string { return "redis" }
func (r *Redis) Close() error { return r.c.Close() }

// Get implements Store.
func (r *Redis) Get(ctx context.Context, key string) (Entry, bool, error) {
	b, err := r.c.Get(ctx, key).Bytes()
	if errors.Is(err, redis.Nil) {
		return Entry{}, false, nil
	}
	if err != nil {
		return Entry{}, false, err
	}
	e, err := decode(b)
	if err != nil {
		return Entry{}, false, nil
	}
	return e, true, nil
}

// Set implements Store.
func (r *Redis) Set(ctx context.Context, key string, e Entry, ttl time.Duration) error {
	if ttl <= 0 {
		return nil
	}
	return r.c.Set(ctx, key, encode(e), ttl).Err()
}

// Ping checks the server (tests, start-up logs).
func (r *Redis) Ping(ctx context.Context) error { return r.c.Ping(ctx).Err() }
