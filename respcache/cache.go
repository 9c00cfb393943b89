package respcache

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Results of a cache operation (label result of detour_cache_requests_total).
const (
	ResultHit   = "hit"   // a fresh answer served
	ResultStale = "stale" // an answer served because every backend failed or is OPEN
	ResultMiss  = "miss"  // looked up, nothing usable
	ResultStore = "store" // an answer stored
	ResultError = "error" // the store failed or was skipped while down
)

// Metrics are the cache's Prometheus series.
type Metrics struct {
	Requests  *prometheus.CounterVec
	BackendUp prometheus.Gauge
	OpTime    *prometheus.HistogramVec
}

// NewMetrics registers the cache's series on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_cache_requests_total",
			Help: "Response cache operations by result: hit (fresh answer served), stale (served because every backend was down), miss, store, error (store unreachable or skipped while down).",
		}, []string{"result"}),
		BackendUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "detour_cache_backend_up",
			Help: "1 when the cache's store answered its last operation (always 1 in memory), 0 while it is failing (Redis down: requests go on without the cache).",
		}),
		OpTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "detour_cache_operation_duration_seconds",
			Help:    "Time of cache store operations (get, set).",
			Buckets: []float64{50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3},
		}, []string{"op"}),
	}
	reg.MustRegister(m.Requests, m.BackendUp, m.OpTime)
	for _, r := range []string{ResultHit, ResultStale, ResultMiss, ResultStore, ResultError} {
		m.Requests.WithLabelValues(r)
	}
	return m
}

// Config tunes a Cache.
type Config struct {
	Store Store
	// OpTimeout bounds every store operation. Default 50 ms.
	OpTimeout time.Duration
	// Retention is how long an answer is kept for stale-if-error (a
	// route's fresh TTL is shorter). Default 24 h.
	Retention time.Duration
	// MaxEntryBytes: larger answers are not stored. Default 1 MiB.
	MaxEntryBytes int
	// DownFor: after a failed operation, the store is skipped (result
	// error, no wait) this long before it is tried again. Default 1 s.
	DownFor time.Duration
	Metrics *Metrics
	Now     func() time.Time
}

// Cache puts timeouts, a back-off while the store is down and metrics
// around a Store. Nothing waits on the store longer than OpTimeout, and
// while it is down nothing waits at all.
type Cache struct {
	cfg       Config
	downUntil atomic.Int64 // unix nanoseconds
}

// ErrDown: the store failed recently and is being skipped.
var ErrDown = errors.New("respcache: store down")

// New wraps cfg.Store.
func New(cfg Config) *Cache {
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = 50 * time.Millisecond
	}
	if cfg.Retention <= 0 {
		cfg.Retention = 24 * time.Hour
	}
	if cfg.MaxEntryBytes <= 0 {
		cfg.MaxEntryBytes = 1 << 20
	}
	if cfg.DownFor <= 0 {
		cfg.DownFor = time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Cache{cfg: cfg}
	if cfg.Metrics != nil {
		cfg.Metrics.BackendUp.Set(1)
	}
	return c
}

// Store is the underlying store.
func (c *Cache) Store() Store { return c.cfg.Store }

// MaxEntryBytes is the largest answer stored.
func (c *Cache) MaxEntryBytes() int { return c.cfg.MaxEntryBytes }

// Close closes the store.
func (c *Cache) Close() error { return c.cfg.Store.Close() }

func (c *Cache) count(result string) {
	if c.cfg.Metrics != nil {
		c.cfg.Metrics.Requests.WithLabelValues(result).Inc()
	}
}

// Count records a result decided by the caller (hit, stale, miss).
func (c *Cache) Count(result string) { c.count(result) }

func (c *Cache) down() bool { return c.cfg.Now().UnixNano() < c.downUntil.Load() }

func (c *Cache) failed() {
	c.downUntil.Store(c.cfg.Now().Add(c.cfg.DownFor).UnixNano())
	if c.cfg.Metrics != nil {
		c.cfg.Metrics.BackendUp.Set(0)
	}
	c.count(ResultError)
}

func (c *Cache) ok() {
	if c.cfg.Metrics != nil {
		c.cfg.Metrics.BackendUp.Set(1)
	}
}

// Get reads key within the op timeout. It does not count hits or misses
// (the caller knows whether the entry was usable).
func (c *Cache) Get(ctx context.Context, key string) (Entry, bool, error) {
	if c.down() {
		c.count(ResultError)
		return Entry{}, false, ErrDown
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.OpTimeout)
	defer cancel()
	start := time.Now()
	e, ok, err := c.cfg.Store.Get(ctx, key)
	if c.cfg.Metrics != nil {
		c.cfg.Metrics.OpTime.WithLabelValues("get").Observe(time.Since(start).Seconds())
	}
	if err != nil {
		c.failed()
		return Entry{}, false, err
	}
	c.ok()
	return e, ok, nil
}

// Put stores body at key for the retention time.
func (c *Cache) Put(ctx context.Context, key string, body []byte) error {
	if len(body) > c.cfg.MaxEntryBytes {
		return nil
	}
	if c.down() {
		c.count(ResultError)
		return ErrDown
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.OpTimeout)
	defer cancel()
	start := time.Now()
	err := c.cfg.Store.Set(ctx, key, Entry{Body: body, StoredAt: c.cfg.Now()}, c.cfg.Retention)
	if c.cfg.Metrics != nil {
		c.cfg.Metrics.OpTime.WithLabelValues("set").Observe(time.Since(start).Seconds())
	}
	if err != nil {
		c.failed()
		return err
	}
	c.ok()
	c.count(ResultStore)
	return nil
}

// Now is the cache's clock.
func (c *Cache) Now() time.Time { return c.cfg.Now() }
