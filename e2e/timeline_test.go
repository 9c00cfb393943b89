package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/detourhq/detour/healthview/viewhttp"
	"github.com/detourhq/detour/sim"
)

// outcome is one client request of a timeline.
type outcome struct {
	at      time.Duration // since the timeline started
	status  int
	backend string        // the backend that answered (x-detour-backend)
	ttft    time.Duration // time to response headers: the first token, with detour's first-token hold
	total   time.Duration
	stream  bool
	// attempts is Envoy's x-envoy-attempt-count on the response.
	attempts int
	err      error
}

// attempts is every provider's request count at one moment.
type attempts struct {
	at     time.Duration
	counts map[string]int64
}

// stateAt is the controller's view of the backends at one moment.
type stateAt struct {
	at     time.Duration
	states map[string]string
}

// timeline drives requests at a fixed rate through Envoy and samples the
// providers' counters and the controller's view, so a test can say when
// a fault was detected and when the traffic moved.
type timeline struct {
	s     *stack
	start time.Time

	mu       sync.Mutex
	outcomes []outcome
	samples  []attempts
	views    []stateAt
}

type load struct {
	rate    float64 // requests per second
	body    []byte
	headers []string // key, value, ...
	stream  bool     // the body asks for a stream (for TTFT figures)
}

// runTimeline runs loads for d, sampling every 100 ms, while script
// injects and clears faults (it gets the timeline to read the clock).
func runTimeline(t *testing.T, s *stack, d time.Duration, loads []load, script func(tl *timeline)) *timeline {
	t.Helper()
	tl := &timeline{s: s, start: time.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	for _, l := range loads {
		wg.Add(1)
		go func(l load) {
			defer wg.Done()
			every := time.Duration(float64(time.Second) / l.rate)
			tick := time.NewTicker(every)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					tl.record(tl.do(client, l))
				}()
			}
		}(l)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			tl.sample()
		}
	}()
	if script != nil {
		script(tl)
	}
	<-ctx.Done()
	wg.Wait()
	return tl
}

func (tl *timeline) now() time.Duration { return time.Since(tl.start) }

// fault waits before, puts f on backend's provider for during, then
// clears it; it returns when the fault began and ended on tl's clock.
func (tl *timeline) fault(backend string, f sim.Fault, before, during time.Duration) (began, ended time.Duration) {
	time.Sleep(before)
	began = tl.now()
	tl.s.Sim(backend).SetFault(f)
	time.Sleep(during)
	ended = tl.now()
	tl.s.Sim(backend).ClearFault()
	return began, ended
}

func (tl *timeline) do(c *http.Client, l load) outcome {
	o := outcome{at: tl.now(), stream: l.stream}
	req, err := http.NewRequest(http.MethodPost, tl.s.URL("/v1/chat/completions"), bytes.NewReader(l.body))
	if err != nil {
		o.err = err
		return o
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(l.headers); i += 2 {
		req.Header.Set(l.headers[i], l.headers[i+1])
	}
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		o.err = err
		return o
	}
	o.ttft = time.Since(start)
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	o.total = time.Since(start)
	o.status, o.backend, o.err = resp.StatusCode, resp.Header.Get("x-detour-backend"), err
	o.attempts, _ = strconv.Atoi(resp.Header.Get("x-envoy-attempt-count"))
	return o
}

func (tl *timeline) record(o outcome) {
	tl.mu.Lock()
	tl.outcomes = append(tl.outcomes, o)
	tl.mu.Unlock()
}

func (tl *timeline) sample() {
	a := attempts{at: tl.now(), counts: map[string]int64{}}
	for name, srv := range tl.s.sims {
		a.counts[name] = srv.Stats().Requests
	}
	var v stateAt
	if view, err := viewhttp.Fetch(context.Background(), http.DefaultClient, "http://"+tl.s.XDSMetricsAddr+viewhttp.Path, 0); err == nil {
		v = stateAt{at: a.at, states: map[string]string{}}
		for b, st := range view.Backends {
			v.states[b] = st.State
			if st.Throttled {
				v.states[b] += "+THROTTLED"
			}
		}
	}
	tl.mu.Lock()
	tl.samples = append(tl.samples, a)
	if v.states != nil {
		tl.views = append(tl.views, v)
	}
	tl.mu.Unlock()
}

// failed counts requests that did not get a 200.
func (tl *timeline) failed() (failed, total int) {
	for _, o := range tl.outcomes {
		if o.err != nil || o.status != 200 {
			failed++
		}
	}
	return failed, len(tl.outcomes)
}

// firstState is when backend was first seen in state at or after from.
func (tl *timeline) firstState(backend, state string, from time.Duration) (time.Duration, bool) {
	for _, v := range tl.views {
		if v.at >= from && v.states[backend] == state {
			return v.at, true
		}
	}
	return 0, false
}

// shiftedAt is the start of the first 1 s window (sliding by 100 ms)
// after from, from which on the share of client requests that went to
// backend stays at or under maxShare in every window until until. A
// request went to backend when backend answered it, or when it took more
// than one attempt (the tests fault only that backend, so a retried
// request tried it first). Client requests are timed when they start;
// a provider's own counters are not, a slow one counts its requests late.
//
// counters is how many trial counters pick the backend's requests: one
// in ext_proc (shared), one per Envoy worker in the wasm plugin (a VM
// each). Each counter picks one in 1/maxShare of the requests it sees,
// so n requests hold at most floor(n*maxShare) + counters picks: a
// window may catch each counter's next pick early.
func (tl *timeline) shiftedAt(backend string, from, until time.Duration, maxShare float64, counters int) (time.Duration, bool) {
	const step, width = 100 * time.Millisecond, time.Second
	ok := func(at time.Duration) bool {
		var mine, all int
		for _, o := range tl.outcomes {
			if o.at >= at && o.at < at+width {
				all++
				if o.backend == backend || o.attempts > 1 {
					mine++
				}
			}
		}
		return mine <= int(maxShare*float64(all))+counters
	}
	for at := from; at+width <= until; at += step {
		good := true
		for later := at; later+width <= until; later += step {
			if !ok(later) {
				good = false
				break
			}
		}
		if good {
			return at, true
		}
	}
	return 0, false
}

// attemptsPerRequest is upstream attempts per client request started in
// [from, until), from Envoy's x-envoy-attempt-count.
func (tl *timeline) attemptsPerRequest(from, until time.Duration) float64 {
	n, reqs := 0, 0
	for _, o := range tl.outcomes {
		if o.at >= from && o.at < until && o.attempts > 0 {
			n += o.attempts
			reqs++
		}
	}
	if reqs == 0 {
		return 0
	}
	return float64(n) / float64(reqs)
}

// ttftQuantile is the q-quantile of the time to first token of streams
// started in [from, until).
func (tl *timeline) ttftQuantile(q float64, from, until time.Duration) time.Duration {
	var ds []time.Duration
	for _, o := range tl.outcomes {
		if o.stream && o.at >= from && o.at < until && o.err == nil {
			ds = append(ds, o.ttft)
		}
	}
	if len(ds) == 0 {
		return 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[min(len(ds)-1, int(q*float64(len(ds))))]
}

// transitions lists the distinct states backend went through, in order.
func (tl *timeline) transitions(backend string) []string {
	var out []string
	for _, v := range tl.views {
		st := v.states[backend]
		if st != "" && (len(out) == 0 || out[len(out)-1] != st) {
			out = append(out, st)
		}
	}
	return out
}

func (tl *timeline) summary() string {
	f, n := tl.failed()
	return fmt.Sprintf("%d requests, %d failed", n, f)
}

// firstNotState is when backend was first seen in another state than
// state at or after from.
func (tl *timeline) firstNotState(backend, state string, from time.Duration) (time.Duration, bool) {
	for _, v := range tl.views {
		if st := v.states[backend]; v.at >= from && st != "" && st != state {
			return v.at, true
		}
	}
	return 0, false
}

// stateAfter is backend's state at the first view at or after at.
func (tl *timeline) stateAfter(backend string, at time.Duration) string {
	for _, v := range tl.views {
		if v.at >= at {
			return v.states[backend]
		}
	}
	return ""
}
