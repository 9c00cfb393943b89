// Package loadgen is a small HTTP load generator for benchmarking the latency
// that Envoy + detour add in front of a (simulated) LLM provider.
//
// Two modes are provided:
//
//   - OpenLoop sends at a fixed rate regardless of how fast responses come
//     back. Request i is scheduled at t0 + i/Rate and its latency is
//     measured from that scheduled time, not from when it was actually
//     sent, so a stall (in the server, the client's connection pool or the
//     generator itself) shows up in the latency of every request queued
//     behind it instead of being hidden ("coordinated omission").
//   - ClosedLoop runs a fixed number of workers that each send the next
//     request as soon as the previous one completes. It measures what a
//     fixed-concurrency client experiences and maximum throughput; it is
//     inherently subject to coordinated omission and latency is measured
//     from the actual send time.
//
// Both modes send requests during Warmup without recording them, then
// record for Duration, then wait at most Drain for in-flight requests. They
// stop by themselves and when ctx is done.
//
// Streaming: if a response has Content-Type text/event-stream, TTFB is the
// time until the first SSE line "data: <payload>" with a non-blank payload
// other than "[DONE]" has been received (the first token event, rather than
// the headers, which proxies and providers often send immediately). If the
// stream has no such line, TTFB falls back to the time the response headers
// arrived. For other responses TTFB is the time to response headers. In both
// cases Latency is the time until the body has been read to EOF. Bodies are
// always read fully and discarded so that connections are reused.
package loadgen

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"
)

// Request describes the request sent repeatedly. Body is re-sent for every
// request. A "Host" entry in Header sets the Host header.
type Request struct {
	Method, URL string
	Header      http.Header
	Body        []byte
}

// Result holds the outcome of a run. Only requests that started (open loop:
// were scheduled) after the warmup are counted.
type Result struct {
	// Sent = OK + Failed. OK counts 2xx responses whose body was fully read;
	// everything else is Failed, including requests aborted at the end of
	// the drain period ("drain timeout") or by ctx ("canceled").
	Sent, OK, Failed int
	// ByStatus maps HTTP status to count for all sent requests (a 200 whose
	// body read failed is counted under 200 and in Errors); requests with no
	// response are counted under status 0. Its values sum to Sent.
	ByStatus map[int]int
	// Errors maps a short error kind to count: "connection refused",
	// "connection reset", "timeout", "eof", "dns", "tls", "canceled",
	// "drain timeout", ...; kinds prefixed with "body " ("body eof",
	// "body timeout", ...) happened after the response headers arrived,
	// while reading the body. HTTP error statuses are not errors here; see
	// ByStatus.
	Errors map[string]int
	// Latency is the full response time (headers + body) of OK requests.
	Latency Summary
	// TTFB is the time to the response headers of OK requests, or for
	// text/event-stream responses the time to the first data line with
	// content (see the package documentation).
	TTFB Summary
	// Duration is the wall time of the measured part of the run: from the
	// end of the warmup until the last recorded request finished.
	Duration time.Duration
	// Throughput is OK / Duration, in requests per second.
	Throughput float64
	// Dropped counts (open loop only) scheduled requests that were not sent
	// because MaxInFlight requests were already in flight. Dropped requests
	// are not part of Sent.
	Dropped int
}

// Defaults for zero-valued configuration fields.
const (
	DefaultMaxInFlight = 256
	DefaultDrain       = 5 * time.Second
)

// OpenLoop sends requests at a fixed Rate (requests per second) for Warmup +
// Duration, recording only requests scheduled after the warmup.
//
// The scheduler sleeps until the next scheduled time and then starts every
// request that is due, each in its own goroutine; it never busy-waits (on a
// small machine that would steal CPU from the system under test). If
// MaxInFlight requests are already in flight when a request is due, it is
// not sent and counted as Dropped.
type OpenLoop struct {
	Rate     float64       // requests per second; must be > 0
	Duration time.Duration // measured duration; must be > 0
	Warmup   time.Duration // unrecorded lead-in; >= 0
	// MaxInFlight bounds concurrent requests (and so goroutines and
	// connections); 0 means DefaultMaxInFlight.
	MaxInFlight int
	// Client is used for all requests; nil means NewClient(MaxInFlight).
	Client *http.Client
	// Drain is how long to wait, after the last request was scheduled, for
	// in-flight requests; those still running are then aborted and counted
	// as Failed with kind "drain timeout". 0 means DefaultDrain.
	Drain time.Duration
}

// ClosedLoop runs Workers concurrent workers, each sending requests back to
// back, for Warmup + Duration; requests started during the warmup are not
// recorded. A request running when Duration ends is allowed to complete
// (up to Drain) and is recorded.
type ClosedLoop struct {
	Workers  int           // concurrent workers; 0 means 1
	Duration time.Duration // measured duration; must be > 0
	Warmup   time.Duration // unrecorded lead-in; >= 0
	// Client is used for all requests; nil means NewClient(Workers).
	Client *http.Client
	// Drain is how long to wait after Warmup + Duration for in-flight
	// requests before aborting them ("drain timeout"). 0 means DefaultDrain.
	Drain time.Duration
}

// Run runs the open-loop load. It returns an error without sending anything
// if the configuration or req is invalid. If ctx is done before the run
// completes, in-flight requests are aborted and Run returns the partial
// result together with ctx.Err().
func (o OpenLoop) Run(ctx context.Context, req Request) (Result, error) {
	switch {
	case !(o.Rate > 0):
		return Result{}, errors.New("loadgen: OpenLoop.Rate must be > 0")
	case o.Duration <= 0:
		return Result{}, errors.New("loadgen: OpenLoop.Duration must be > 0")
	case o.Warmup < 0:
		return Result{}, errors.New("loadgen: OpenLoop.Warmup must be >= 0")
	case o.MaxInFlight < 0:
		return Result{}, errors.New("loadgen: OpenLoop.MaxInFlight must be >= 0")
	}
	maxInFlight := o.MaxInFlight
	if maxInFlight == 0 {
		maxInFlight = DefaultMaxInFlight
	}
	client := o.Client
	if client == nil {
		client = NewClient(maxInFlight)
		defer client.CloseIdleConnections()
	}
	s, err := newSender(client, req)
	if err != nil {
		return Result{}, err
	}
	col := newCollector(int(o.Rate * o.Duration.Seconds()))
	reqCtx, abort := context.WithCancelCause(ctx)
	defer abort(nil)

	total := o.Warmup + o.Duration
	offset := func(i int) time.Duration {
		return time.Duration(float64(i) * float64(time.Second) / o.Rate)
	}
	sem := make(chan struct{}, maxInFlight)
	var wg sync.WaitGroup
	dropped := 0
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()

	t0 := time.Now()
	measureStart := t0.Add(o.Warmup)
	i := 0
schedule:
	for {
		off := offset(i)
		if off >= total {
			break
		}
		if d := time.Until(t0.Add(off)); d > 0 {
			timer.Reset(d)
			select {
			case <-ctx.Done():
				break schedule
			case <-timer.C:
			}
		}
		// Start everything that is due, including any backlog if we
		// woke up late.
		now := time.Now()
		for ; ; i++ {
			off = offset(i)
			at := t0.Add(off)
			if off >= total || at.After(now) {
				break
			}
			if ctx.Err() != nil {
				break schedule
			}
			record := off >= o.Warmup
			select {
			case sem <- struct{}{}:
				wg.Go(func() {
					defer func() { <-sem }()
					out := s.do(reqCtx, at)
					if record {
						col.add(out)
					}
				})
			default:
				if record {
					dropped++
				}
			}
		}
	}
	waitDrain(ctx, &wg, time.Now(), o.Drain, abort)

	res := col.result(time.Since(measureStart))
	res.Dropped = dropped
	return res, ctx.Err()
}

// Run runs the closed-loop load. It returns an error without sending
// anything if the configuration or req is invalid. If ctx is done before the
// run completes, in-flight requests are aborted and Run returns the partial
// result together with ctx.Err().
func (c ClosedLoop) Run(ctx context.Context, req Request) (Result, error) {
	switch {
	case c.Workers < 0:
		return Result{}, errors.New("loadgen: ClosedLoop.Workers must be >= 0")
	case c.Duration <= 0:
		return Result{}, errors.New("loadgen: ClosedLoop.Duration must be > 0")
	case c.Warmup < 0:
		return Result{}, errors.New("loadgen: ClosedLoop.Warmup must be >= 0")
	}
	workers := max(c.Workers, 1)
	client := c.Client
	if client == nil {
		client = NewClient(workers)
		defer client.CloseIdleConnections()
	}
	s, err := newSender(client, req)
	if err != nil {
		return Result{}, err
	}
	col := newCollector(0)
	reqCtx, abort := context.WithCancelCause(ctx)
	defer abort(nil)

	start := time.Now()
	measureStart := start.Add(c.Warmup)
	end := measureStart.Add(c.Duration)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for reqCtx.Err() == nil {
				t := time.Now()
				if !t.Before(end) {
					return
				}
				out := s.do(reqCtx, t)
				if !t.Before(measureStart) {
					col.add(out)
				}
			}
		})
	}
	waitDrain(ctx, &wg, end, c.Drain, abort)

	return col.result(max(0, time.Since(measureStart))), ctx.Err()
}

// waitDrain waits for wg. If it is still not done drain (0: DefaultDrain)
// after from, the remaining requests are aborted with cause errDrain. If ctx
// is done, requests are aborted through their context (derived from ctx).
// In all cases it returns only once every request goroutine has finished.
func waitDrain(ctx context.Context, wg *sync.WaitGroup, from time.Time, drain time.Duration, abort context.CancelCauseFunc) {
	if drain <= 0 {
		drain = DefaultDrain
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	t := time.NewTimer(time.Until(from.Add(drain)))
	defer t.Stop()
	select {
	case <-done:
		return
	case <-ctx.Done():
	case <-t.C:
		abort(errDrain)
	}
	<-done
}

// collector accumulates outcomes from concurrent requests.
type collector struct {
	mu      sync.Mutex
	res     Result
	latency []time.Duration
	ttfb    []time.Duration
}

func newCollector(expect int) *collector {
	expect = min(max(expect, 0), 1<<20)
	return &collector{
		res:     Result{ByStatus: map[int]int{}, Errors: map[string]int{}},
		latency: make([]time.Duration, 0, expect),
		ttfb:    make([]time.Duration, 0, expect),
	}
}

func (c *collector) add(o outcome) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.res.Sent++
	c.res.ByStatus[o.status]++
	if o.kind != "" {
		c.res.Errors[o.kind]++
	}
	if o.ok {
		c.res.OK++
		c.latency = append(c.latency, o.latency)
		c.ttfb = append(c.ttfb, o.ttfb)
	} else {
		c.res.Failed++
	}
}

// result finalizes the collected outcomes; call after all requests ended.
func (c *collector) result(d time.Duration) Result {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.res
	r.Latency = summarizeInPlace(c.latency)
	r.TTFB = summarizeInPlace(c.ttfb)
	r.Duration = max(0, d)
	if r.Duration > 0 {
		r.Throughput = float64(r.OK) / r.Duration.Seconds()
	}
	return r
}
