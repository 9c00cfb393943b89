package main

// Saturation (part of the chaos suite): the providers get a concurrency
// limit (`detour sim --capacity`, 429 + Retry-After past it, as real
// providers' limits answer) and paced answers, so together they serve
// about satCapacityRPS; a load of a third critical, a third standard and
// a third sheddable requests (x-detour-priority) runs under capacity, then
// at satOverload× capacity, then under it again. What is measured: what
// each priority got (answers, detour's capacity_shed 429s, the
// providers' 429s), the latency of the admitted requests, and the memory
// of every process before, at the peak and after.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/detourhq/detour/bench/loadgen"
	"github.com/detourhq/detour/sim"
)

const (
	// Each provider endpoint: satCapacity answers in flight, each taking
	// chaosTokens / satTokensPerSecond = 0.5 s: 8 answers/s. The four east
	// endpoints (fast, fast-b, long, vision) serve "auto": ~32/s.
	satCapacity        = 4
	satTokensPerSecond = 80
	satCapacityRPS     = 32.0
	// The load: under capacity, satOverload× over it, under again.
	satUnder    = 0.75
	satOverload = 4.0
	satPhase1   = 20 * time.Second
	satPhase2   = 30 * time.Second
	satPhase3   = 20 * time.Second
)

var satPriorities = []string{"critical", "standard", "sheddable"}

// satPhase is one step of the load.
type satPhase struct {
	Name  string
	Share float64 // of satCapacityRPS
	For   time.Duration
}

var satPhases = []satPhase{
	{"under capacity", satUnder, satPhase1},
	{"overload", satOverload, satPhase2},
	{"after", satUnder, satPhase3},
}

// satMemory is the memory of each process at one moment.
type satMemory struct {
	When string
	// RSS of detour's processes (their process collector), and Envoy's
	// heap in use (admin /memory).
	ExtProc, XDS, Envoy float64
}

type saturationResult struct {
	Outcomes [][]ctlOutcome // per phase
	Memory   []satMemory
	Err      string
}

func runSaturation(ctx context.Context, c e2eConfig, module string) (*saturationResult, error) {
	dir := filepath.Join(c.workDir, "saturation")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	prov, net, err := startChaosProviders(ctx, c, dir, "--capacity", fmt.Sprint(satCapacity))
	if err != nil {
		return nil, err
	}
	defer prov.close()
	defer net.close()
	st, err := startChaosStack(ctx, c, prov, dir, "saturation", module, modeDetour, 1)
	if err != nil {
		return nil, err
	}
	defer st.close()
	client := loadgen.NewClient(ctlMaxInFlight)
	defer client.CloseIdleConnections()
	if err := st.ready(ctx, client, modeDetour); err != nil {
		return nil, err
	}
	if err := prov.setFault(ctx, names(chaosSims), &sim.Fault{TokensPerSecond: satTokensPerSecond}); err != nil {
		return nil, err
	}
	res := &saturationResult{}
	// The trace (work directory only) shows where overload requests wait:
	// Envoy's requests and connections per cluster, the processor's
	// streams, the bench process itself.
	trace, err := os.Create(filepath.Join(dir, "saturation-trace.log"))
	if err != nil {
		return nil, err
	}
	defer trace.Close()
	res.Memory = append(res.Memory, readMemory(ctx, st, "before"))
	var peakMu sync.Mutex
	peak := satMemory{When: "peak (overload)"}
	for i, ph := range satPhases {
		var loads []ctlLoad
		for _, p := range satPriorities {
			loads = append(loads, ctlLoad{Rate: ph.Share * satCapacityRPS / float64(len(satPriorities)), Priority: p})
		}
		stop := make(chan struct{})
		start := time.Now()
		var outcomes []ctlOutcome
		var load, sampler sync.WaitGroup
		load.Go(func() { outcomes = ctlLoop(ctx, client, st.url, loads, chaosBody(modeDetour), start, stop) })
		done := make(chan struct{})
		if i == 1 {
			sampler.Go(func() {
				tick := time.NewTicker(2 * time.Second)
				defer tick.Stop()
				for {
					select {
					case <-done:
						return
					case <-tick.C:
					}
					m := readMemory(ctx, st, "")
					traceOverload(ctx, trace, st, time.Since(start))
					peakMu.Lock()
					peak.ExtProc, peak.XDS, peak.Envoy = max(peak.ExtProc, m.ExtProc), max(peak.XDS, m.XDS), max(peak.Envoy, m.Envoy)
					peakMu.Unlock()
				}
			})
		}
		serr := sleepCtx(ctx, ph.For)
		close(stop)
		load.Wait()
		close(done)
		sampler.Wait()
		if serr != nil {
			return nil, serr
		}
		res.Outcomes = append(res.Outcomes, outcomes)
		if err := st.alive(); err != nil {
			return nil, fmt.Errorf("during %s: %w", ph.Name, err)
		}
		c.log.Info("saturation", "phase", ph.Name, "sent", len(outcomes))
		if page, err := fetchPage(ctx, "http://"+st.a.admin+"/clusters"); err == nil {
			os.WriteFile(filepath.Join(dir, fmt.Sprintf("clusters-%d.txt", i)), page, 0o644)
		}
		for name, a := range prov.admin {
			for _, what := range []string{"requests", "stats"} {
				if page, err := fetchPage(ctx, "http://"+a+"/_sim/"+what); err == nil {
					os.WriteFile(filepath.Join(dir, fmt.Sprintf("sim-%s-%s-%d.json", name, what, i)), page, 0o644)
				}
			}
		}
	}
	res.Memory = append(res.Memory, peak, readMemory(ctx, st, "after"))
	return res, nil
}

// readMemory reads the memory of the stack's processes (0 for one that
// does not answer).
func readMemory(ctx context.Context, st *chaosStack, when string) satMemory {
	m := satMemory{When: when}
	if page, err := fetchPage(ctx, "http://"+st.a.metrics+"/metrics"); err == nil {
		m.ExtProc, _ = promSum(page, "process_resident_memory_bytes")
	}
	if page, err := fetchPage(ctx, "http://"+st.a.xdsMetrics+"/metrics"); err == nil {
		m.XDS, _ = promSum(page, "process_resident_memory_bytes")
	}
	m.Envoy = envoyHeap(ctx, st.a.admin)
	return m
}

// envoyHeap is Envoy's heap in use (admin /memory), 0 if unknown.
func envoyHeap(ctx context.Context, admin string) float64 {
	page, err := fetchPage(ctx, "http://"+admin+"/memory")
	if err != nil {
		return 0
	}
	var m struct {
		Allocated string `json:"allocated"`
	}
	if json.Unmarshal(page, &m) != nil {
		return 0
	}
	var v float64
	fmt.Sscan(m.Allocated, &v)
	return v
}

// satCounts is what one priority got in one phase.
type satCounts struct {
	Sent, OK, Shed, ProviderThrottled, Other int
	// Shaped: non-200 answers in the OpenAI error shape (a code), and 429s
	// carrying Retry-After.
	Shaped, RetryAfter, TooMany int
	Lat                         loadgen.Summary
	// Others counts the other failures by kind ("503 no_healthy_backend",
	// "dropped", ...).
	Others map[string]int
}

func satCount(outcomes []ctlOutcome, priority string) satCounts {
	var c satCounts
	var lat []time.Duration
	for _, o := range outcomes {
		if o.Priority != priority {
			continue
		}
		c.Sent++
		switch {
		case o.ok():
			c.OK++
			lat = append(lat, o.Total)
			continue
		case o.ErrCode == "capacity_shed":
			c.Shed++
		case o.ErrCode == "rate_limit_exceeded":
			c.ProviderThrottled++
		default:
			c.Other++
			if c.Others == nil {
				c.Others = map[string]int{}
			}
			kind := o.Err
			if kind == "" {
				kind = fmt.Sprintf("%d %s", o.Status, o.ErrCode)
			}
			c.Others[strings.TrimSpace(kind)]++
		}
		if o.ErrCode != "" {
			c.Shaped++
		}
		if o.Status == http.StatusTooManyRequests {
			c.TooMany++
			if o.RetryAfter != "" {
				c.RetryAfter++
			}
		}
	}
	c.Lat = loadgen.Summarize(lat)
	return c
}

func saturationMarkdown(b *bytes.Buffer, r *saturationResult, runErr string) {
	b.WriteString("<a id=\"saturation\"></a>\n## Saturation: past the providers' capacity\n\n")
	if r == nil {
		fmt.Fprintf(b, "**Did not run:** %s\n\n", mdEscape(runErr))
		return
	}
	fmt.Fprintf(b, "The same providers, each endpoint now limited to %d answers in flight (`detour sim --capacity %d`: 429 "+
		"`rate_limit_exceeded` with `Retry-After: 1` past it, as providers' limits answer) and paced to %d tokens/s (%d-token answers: "+
		"%.1f s each), so the four east endpoints serve about %.0f answers/s. detour on the shipped defaults. Open-loop load of "+
		"non-streaming chats, a third each `x-detour-priority: critical`, `standard` and `sheddable`: ",
		satCapacity, satCapacity, satTokensPerSecond, chaosTokens, float64(chaosTokens)/satTokensPerSecond, satCapacityRPS)
	var parts []string
	for _, ph := range satPhases {
		parts = append(parts, fmt.Sprintf("%s %.0f/s for %s", ph.Name, ph.Share*satCapacityRPS, ph.For))
	}
	b.WriteString(strings.Join(parts, ", then ") + ".\n\n")
	b.WriteString("| phase | priority | sent | answered | shed by detour (429 `capacity_shed`) | provider 429 (after retries) | other failures | latency of answered p50 / p99 (ms) |\n")
	b.WriteString("| --- | --- | --: | --: | --: | --: | --: | --: |\n")
	allShaped, all429RA := true, true
	var total, other int
	for i, ph := range satPhases {
		if i >= len(r.Outcomes) {
			break
		}
		for _, p := range satPriorities {
			c := satCount(r.Outcomes[i], p)
			fmt.Fprintf(b, "| %s | %s | %d | %d | %d | %d | %s | %s |\n", ph.Name, p, c.Sent, c.OK, c.Shed, c.ProviderThrottled, fmtOthers(c), fmtP50P99Sum(c.Lat))
			if c.Shaped != c.Sent-c.OK-countDropped(r.Outcomes[i], p) {
				allShaped = false
			}
			if c.RetryAfter != c.TooMany {
				all429RA = false
			}
			total += c.Sent
			other += c.Other
		}
	}
	b.WriteString("\n| memory | detour extproc RSS (MiB) | detour xds RSS (MiB) | Envoy heap allocated (MiB) |\n| --- | --: | --: | --: |\n")
	for _, m := range r.Memory {
		fmt.Fprintf(b, "| %s | %.1f | %.1f | %.1f |\n", m.When, m.ExtProc/(1<<20), m.XDS/(1<<20), m.Envoy/(1<<20))
	}
	fmt.Fprintf(b, "\nEvery process ran to the end. Failed answers in the OpenAI error shape (with a code): **%s**; every 429 with "+
		"Retry-After: **%s**. Requests the load generator dropped (over %d in flight) count as other failures.\n\n",
		yesNo(allShaped), yesNo(all429RA), ctlMaxInFlight)
}

func fmtOthers(c satCounts) string {
	if c.Other == 0 {
		return "0"
	}
	var parts []string
	for _, k := range sortedKeys(c.Others) {
		parts = append(parts, fmt.Sprintf("%d × %s", c.Others[k], k))
	}
	return fmt.Sprintf("%d (%s)", c.Other, strings.Join(parts, ", "))
}

func countDropped(outcomes []ctlOutcome, priority string) int {
	n := 0
	for _, o := range outcomes {
		if o.Priority == priority && (o.Err != "" || o.Status == 0) {
			n++
		}
	}
	return n
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "no"
}

// traceOverload appends one sample of where requests wait to w.
func traceOverload(ctx context.Context, w io.Writer, st *chaosStack, at time.Duration) {
	fmt.Fprintf(w, "--- %.1fs bench goroutines=%d\n", at.Seconds(), runtime.NumGoroutine())
	re := `^cluster\.[^.]+\.(upstream_rq_active|upstream_rq_pending_active|upstream_cx_active|upstream_rq_retry|upstream_rq_retry_overflow|upstream_rq_429|upstream_rq_timeout)$|^http\.detour\.(downstream_rq_active|ext_proc\..*)$`
	if page, err := fetchPage(ctx, "http://"+st.a.admin+"/stats?usedonly&filter="+url.QueryEscape(re)); err == nil {
		w.Write(page)
	}
	if page, err := fetchPage(ctx, "http://"+st.a.metrics+"/metrics"); err == nil {
		for _, l := range strings.Split(string(page), "\n") {
			if strings.HasPrefix(l, "go_goroutines") || strings.HasPrefix(l, "process_cpu_seconds_total") || strings.HasPrefix(l, "detour_resume") {
				fmt.Fprintln(w, "extproc", l)
			}
		}
	}
}
