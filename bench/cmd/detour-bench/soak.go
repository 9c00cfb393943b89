package main

// The soak (-only soak; `make soak` runs it for 20 minutes, `make test` for
// two): the chaos suite's providers and a detour stack under the same
// mixed load for a long time while faults come and go, sampling every
// detour process's goroutines, open file descriptors and resident memory
// from its own /metrics (client_golang's Go and process collectors).
// Checks: no process exits; RSS after the warm-up stays within 10 %;
// goroutines and file descriptors come back to where they were once the
// load stops (nothing leaked). The run fails when a check fails.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/detourhq/detour/bench/loadgen"
)

const (
	// soakCycle: each cycle has soakFaultFor of fault, then recovery.
	soakCycle    = 60 * time.Second
	soakFaultFor = 20 * time.Second
	// soakSample is how often the processes are sampled.
	soakSample = 5 * time.Second
	// soakRSSBound: RSS after the warm-up stays within this share of its
	// level when the warm-up ended.
	soakRSSBound = 0.10
	// soakLeakSlack: goroutines or fds above the idle level before the
	// load that are still tolerated after it (timers, pooled connections).
	soakLeakSlack = 10
	// soakIdleWait: how long, after the load, the processes may take to
	// close their idle connections and goroutines.
	soakIdleWait = 15 * time.Second
)

// soakFault is one fault of the soak's rotation, on fast.
type soakFault struct {
	Name          string
	inject, clear func(context.Context, *chaosEnv) error
}

func soakFaults() []soakFault {
	var out []soakFault
	for _, sc := range chaosCatalogue() {
		switch sc.Name {
		case "brownout", "refused", "slow-start", "resets", "throttled", "stall":
			out = append(out, soakFault{Name: sc.Name, inject: sc.inject, clear: sc.clear})
		}
	}
	return out
}

// soakSampleOf is one read of one process.
type soakSampleOf struct {
	At                         time.Duration
	Goroutines, FDs, RSS, Heap float64
	Phase                      string // "idle-before", "load", "idle-after"
}

type soakResult struct {
	Duration, Warmup time.Duration
	Faults           []string // in the order applied
	Sent, Failed     int
	Samples          map[string][]soakSampleOf // by process
	Checks           []soakCheck
}

type soakCheck struct {
	Process, What, Detail string
	OK                    bool
}

func (r *soakResult) failed() []string {
	var out []string
	for _, c := range r.Checks {
		if !c.OK {
			out = append(out, fmt.Sprintf("%s: %s: %s", c.Process, c.What, c.Detail))
		}
	}
	return out
}

// runSoak runs the soak for d.
func runSoak(ctx context.Context, c e2eConfig, module string, d time.Duration) (*soakResult, error) {
	dir := filepath.Join(c.workDir, "soak")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	prov, net, err := startChaosProviders(ctx, c, dir)
	if err != nil {
		return nil, err
	}
	defer prov.close()
	defer net.close()
	st, err := startChaosStack(ctx, c, prov, dir, "soak", module, modeDetour, 1)
	if err != nil {
		return nil, err
	}
	defer st.close()
	env := &chaosEnv{sims: prov, net: net, st: st}
	client := loadgen.NewClient(ctlMaxInFlight)
	defer client.CloseIdleConnections()
	if err := st.ready(ctx, client, modeDetour); err != nil {
		return nil, err
	}
	res := &soakResult{Duration: d, Warmup: min(max(d/4, 30*time.Second), 3*time.Minute), Samples: map[string][]soakSampleOf{}}
	procs := map[string]string{"detour extproc": "http://" + st.a.metrics + "/metrics", "detour xds": "http://" + st.a.xdsMetrics + "/metrics"}
	start := time.Now()
	sample := func(phase string) error {
		for name, url := range procs {
			s, err := readProcess(ctx, url)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			s.At, s.Phase = time.Since(start), phase
			res.Samples[name] = append(res.Samples[name], s)
		}
		return nil
	}
	// Idle before: the stack has served the readiness requests only.
	client.CloseIdleConnections()
	if err := sleepCtx(ctx, 2*time.Second); err != nil {
		return nil, err
	}
	if err := sample("idle-before"); err != nil {
		return nil, err
	}
	c.log.Info("soak", "duration", d, "warmup", res.Warmup, "cycle", soakCycle, "logs", dir)

	stop := make(chan struct{})
	var outcomes []ctlOutcome
	var load sync.WaitGroup
	loadStart := time.Now()
	load.Go(func() {
		outcomes = ctlLoop(ctx, client, st.url, chaosLoads, chaosBody(modeDetour), loadStart, stop)
	})
	faults := soakFaults()
	script := func() error {
		tick := time.NewTicker(soakSample)
		defer tick.Stop()
		for i := 0; time.Since(loadStart) < d; i++ {
			f := faults[i%len(faults)]
			cycleEnd := loadStart.Add(time.Duration(i+1) * soakCycle)
			faultEnd := loadStart.Add(time.Duration(i)*soakCycle + soakFaultFor)
			if err := f.inject(ctx, env); err != nil {
				return fmt.Errorf("soak fault %s: %w", f.Name, err)
			}
			res.Faults = append(res.Faults, f.Name)
			cleared := false
			for time.Now().Before(cycleEnd) && time.Since(loadStart) < d {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-tick.C:
				}
				if !cleared && time.Now().After(faultEnd) {
					if err := f.clear(ctx, env); err != nil {
						return fmt.Errorf("soak fault %s: clear: %w", f.Name, err)
					}
					cleared = true
				}
				if err := sample("load"); err != nil {
					return err
				}
				if err := st.alive(); err != nil {
					return err
				}
			}
			if !cleared {
				if err := f.clear(ctx, env); err != nil {
					return fmt.Errorf("soak fault %s: clear: %w", f.Name, err)
				}
			}
		}
		return nil
	}
	serr := script()
	close(stop)
	load.Wait()
	if serr != nil {
		return nil, serr
	}
	client.CloseIdleConnections()
	if err := sleepCtx(ctx, soakIdleWait); err != nil {
		return nil, err
	}
	if err := sample("idle-after"); err != nil {
		return nil, err
	}
	if err := st.alive(); err != nil {
		return nil, err
	}
	res.Sent = len(outcomes)
	for _, o := range outcomes {
		if !o.ok() {
			res.Failed++
		}
	}
	res.Checks = soakChecks(res)
	return res, nil
}

// soakChecks judges the samples (see the file comment).
func soakChecks(r *soakResult) []soakCheck {
	var out []soakCheck
	for _, name := range sortedKeys(r.Samples) {
		ss := r.Samples[name]
		var before, after *soakSampleOf
		var load []soakSampleOf
		for i := range ss {
			switch ss[i].Phase {
			case "idle-before":
				before = &ss[i]
			case "idle-after":
				after = &ss[i]
			default:
				load = append(load, ss[i])
			}
		}
		out = append(out, soakCheck{Process: name, What: "alive", OK: true, Detail: "running at the end"})
		if before == nil || after == nil {
			out = append(out, soakCheck{Process: name, What: "samples", Detail: "no idle sample before or after the load"})
			continue
		}
		for _, m := range []struct {
			what string
			b, a float64
		}{{"goroutines", before.Goroutines, after.Goroutines}, {"open fds", before.FDs, after.FDs}} {
			out = append(out, soakCheck{Process: name, What: m.what + " back to idle",
				OK:     m.a <= m.b+soakLeakSlack,
				Detail: fmt.Sprintf("%.0f idle before the load, %.0f idle after it (slack %d)", m.b, m.a, soakLeakSlack)})
		}
		// RSS: the mean of the samples in the minute (or sixth of the
		// run) after the warm-up, against the mean of the same span at
		// the end.
		span := min(time.Minute, r.Duration/6)
		var first, last []float64
		var end time.Duration
		if len(load) > 0 {
			end = load[len(load)-1].At
		}
		for _, s := range load {
			at := s.At - load[0].At
			if at >= r.Warmup && at < r.Warmup+span {
				first = append(first, s.RSS)
			}
			if s.At > end-span {
				last = append(last, s.RSS)
			}
		}
		if len(first) == 0 || len(last) == 0 {
			out = append(out, soakCheck{Process: name, What: "RSS flat after warm-up", Detail: "too few samples"})
			continue
		}
		f, l := mean(first), mean(last)
		out = append(out, soakCheck{Process: name, What: "RSS flat after warm-up",
			OK:     l <= f*(1+soakRSSBound),
			Detail: fmt.Sprintf("%.1f MiB after the warm-up, %.1f MiB at the end (%+.1f %%, bound +%.0f %%)", f/(1<<20), l/(1<<20), 100*(l/f-1), 100*soakRSSBound)})
	}
	return out
}

func mean(v []float64) float64 {
	var s float64
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}

// readProcess reads a detour process's Go and process collector metrics.
func readProcess(ctx context.Context, url string) (soakSampleOf, error) {
	page, err := fetchPage(ctx, url)
	if err != nil {
		return soakSampleOf{}, err
	}
	var s soakSampleOf
	var ok [4]bool
	s.Goroutines, ok[0] = promSum(page, "go_goroutines")
	s.FDs, ok[1] = promSum(page, "process_open_fds")
	s.RSS, ok[2] = promSum(page, "process_resident_memory_bytes")
	s.Heap, ok[3] = promSum(page, "go_memstats_heap_inuse_bytes")
	if ok != [4]bool{true, true, true, true} {
		return s, fmt.Errorf("%s lacks the Go or process collector's metrics", url)
	}
	return s, nil
}

func fetchPage(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	page, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
	}
	return page, nil
}

// soakMarkdown is the soak's report.
func soakMarkdown(rep *report, r *soakResult, runErr string) []byte {
	var b bytes.Buffer
	b.WriteString("<!-- Generated by `make soak` (bench/cmd/detour-bench -only soak); every run replaces this file. -->\n\n")
	b.WriteString("# Soak report\n\n")
	writeRunHeader(&b, rep)
	if runErr != "" {
		fmt.Fprintf(&b, "**The soak failed:** %s\n\n", mdEscape(runErr))
	}
	if r == nil {
		return b.Bytes()
	}
	fmt.Fprintf(&b, "The chaos suite's providers and a detour stack on the shipped defaults (see [chaos.md](chaos.md)), under %s "+
		"for %s. Every %s a fault hits `fast` for %s, in turn: %s. Every %s each detour process's `go_goroutines`, "+
		"`process_open_fds`, `process_resident_memory_bytes` and `go_memstats_heap_inuse_bytes` are read from its /metrics; "+
		"once before the load and %s after it, with no client connected.\n\n",
		fmtLoads(chaosLoads), r.Duration, soakCycle, soakFaultFor, joinNames(r.Faults), soakSample, soakIdleWait)
	fmt.Fprintf(&b, "Requests: %d sent, %d failed (%.3f %% success) over the whole soak, faults included.\n\n",
		r.Sent, r.Failed, 100*(1-float64(r.Failed)/float64(max(r.Sent, 1))))
	b.WriteString("| process | check | result | |\n| --- | --- | --- | --- |\n")
	for _, c := range r.Checks {
		verdict := "**ok**"
		if !c.OK {
			verdict = "**FAILED**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", c.Process, c.What, verdict, c.Detail)
	}
	b.WriteString("\nSamples (every minute, and idle before and after):\n\n")
	b.WriteString("| process | at | phase | goroutines | open fds | RSS (MiB) | heap in use (MiB) |\n| --- | --: | --- | --: | --: | --: | --: |\n")
	for _, name := range sortedKeys(r.Samples) {
		var lastMin time.Duration = -1
		for _, s := range r.Samples[name] {
			if s.Phase == "load" && s.At/time.Minute == lastMin {
				continue
			}
			if s.Phase == "load" {
				lastMin = s.At / time.Minute
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %.0f | %.0f | %.1f | %.1f |\n", name, s.At.Round(time.Second), s.Phase, s.Goroutines, s.FDs, s.RSS/(1<<20), s.Heap/(1<<20))
		}
	}
	b.WriteString("\n")
	return b.Bytes()
}

func joinNames(v []string) string {
	seen := map[string]bool{}
	var out []string
	for _, s := range v {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return fmt.Sprint(out)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// writeSoakReport writes the report and fails when a check failed.
func writeSoakReport(path string, rep *report, r *soakResult, runErr string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(path, soakMarkdown(rep, r, runErr), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if r != nil {
		if bad := r.failed(); len(bad) > 0 {
			return fmt.Errorf("soak checks failed: %v", bad)
		}
	}
	return nil
}
