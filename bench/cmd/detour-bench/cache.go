package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/xds"
)

// Part 9: the response cache through Envoy (issue 7). One Envoy + detour
// extproc + simulated provider per store (memory, and Redis on a local
// redis-server), side by side, measured with one keep-alive client per
// stack sending requests one at a time, kinds and stores interleaved:
//
//   - hit: the same temperature-0 request to a route with a cache TTL,
//     answered by the ext_proc service from the cache (x-detour-cache: hit);
//   - miss: a new temperature-0 prompt each time: routed, answered by the
//     provider, its answer collected and stored (response phases on);
//   - plain: a request that may not be cached (default temperature): routed,
//     the ext_proc stream closed at once, no response phase.

const (
	partCache        = "cache"
	cacheBeginMarker = "<!-- bench-cache:begin -->"
	cacheEndMarker   = "<!-- bench-cache:end -->"
)

var cacheStores = []string{policy.CacheMemory, policy.CacheRedis}
var cacheKinds = []string{"hit", "miss", "plain"}

type cacheResult struct {
	Requests int // per store and kind
	Redis    string
	// Lat[store][kind] are the per-request latencies.
	Lat map[string]map[string][]time.Duration
	// Served[store] counts the hits the service reported.
	Served map[string]float64
}

func redisBin() (string, error) {
	if b := os.Getenv("REDIS_BIN"); b != "" {
		return b, nil
	}
	if b, err := exec.LookPath("redis-server"); err == nil {
		return b, nil
	}
	if _, err := os.Stat("/usr/bin/redis-server"); err == nil {
		return "/usr/bin/redis-server", nil
	}
	return "", fmt.Errorf("no redis-server: set REDIS_BIN (scripts/get-redis.sh installs one)")
}

func runCache(ctx context.Context, c e2eConfig, perKind int) (*cacheResult, error) {
	res := &cacheResult{Requests: perKind, Lat: map[string]map[string][]time.Duration{}, Served: map[string]float64{}}
	rbin, err := redisBin()
	if err != nil {
		return nil, err
	}
	res.Redis = commandOutput(ctx, "", rbin, "--version")
	// Both stacks run side by side and the requests alternate between
	// them, so a change in the machine's load weighs on both alike.
	stacks := map[string]*cacheStack{}
	defer func() {
		for _, st := range stacks {
			st.close()
		}
	}()
	for _, store := range cacheStores {
		st, err := startCacheStack(ctx, c, store, rbin)
		if err != nil {
			return nil, fmt.Errorf("%s store: %w", store, err)
		}
		stacks[store] = st
		res.Lat[store] = map[string][]time.Duration{}
	}
	n := 0
	for i := -50; i < perKind; i++ {
		for _, kind := range cacheKinds {
			for _, store := range cacheStores {
				st := stacks[store]
				var b []byte
				switch kind {
				case "hit":
					b = st.hitBody
				case "miss":
					n++
					b = cacheBody(fmt.Sprintf("question number %d of the benchmark", n), true)
				case "plain":
					b = cacheBody("a question that may not be cached", false)
				}
				d, h, err := st.send(ctx, b)
				if err != nil {
					return nil, fmt.Errorf("%s %s request: %w", store, kind, err)
				}
				if got := h.Get("x-detour-cache"); (got == "hit") != (kind == "hit") {
					return nil, fmt.Errorf("%s %s request answered with x-detour-cache %q", store, kind, got)
				}
				if i >= 0 {
					res.Lat[store][kind] = append(res.Lat[store][kind], d)
				}
			}
		}
	}
	for _, store := range cacheStores {
		res.Served[store], _ = promSum(fetchMetrics(ctx, stacks[store].metrics), "detour_cache_served_total")
	}
	return res, nil
}

// cacheStack is one store's Envoy, ext_proc service and provider.
type cacheStack struct {
	children []*child
	envoy    *envoyProc
	client   *http.Client
	url      string
	metrics  string
	hitBody  []byte
}

func (st *cacheStack) close() {
	if st.envoy != nil {
		st.envoy.stop()
	}
	for i := len(st.children) - 1; i >= 0; i-- {
		st.children[i].stop(5 * time.Second)
	}
}

func cacheBody(prompt string, temp0 bool) []byte {
	t := ""
	if temp0 {
		t = `"temperature":0,`
	}
	return fmt.Appendf(nil, `{"model":"auto",%s"messages":[{"role":"user","content":%q}]}`, t, prompt)
}

func (st *cacheStack) send(ctx context.Context, body []byte) (time.Duration, http.Header, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, st.url, bytes.NewReader(body))
	req.Header.Set("content-type", "application/json")
	req.Header.Set("authorization", "Bearer sk-bench")
	req.Header.Set("x-sim-tokens", simTokens)
	start := time.Now()
	resp, err := st.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	d := time.Since(start)
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("status %d", resp.StatusCode)
	}
	return d, resp.Header, err
}

func startCacheStack(ctx context.Context, c e2eConfig, store, rbin string) (_ *cacheStack, err error) {
	st := &cacheStack{}
	defer func() {
		if err != nil {
			st.close()
		}
	}()
	a, err := freeAddrs(ctx, 7)
	if err != nil {
		return nil, err
	}
	sim, simAdmin, extproc, metrics, listen, admin, redisAddr := a[0], a[1], a[2], a[3], a[4], a[5], a[6]
	dir := filepath.Join(c.workDir, "cache-"+store)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if store == policy.CacheRedis {
		_, port, _ := splitPort(redisAddr)
		r, err := startChild(ctx, "redis", filepath.Join(dir, "redis.log"), c.childOutput, rbin,
			"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
		if err != nil {
			return nil, err
		}
		st.children = append(st.children, r)
	}
	pol := fmt.Sprintf(`version: 1
backends:
  - name: %s
    model: %s
    endpoints: [{address: %q}]
    capabilities: {context_window: 128000, max_output_tokens: 4096, tools: true, json_mode: true}
routes:
  - name: auto
    cache: {ttl: 1h}
envoy: {listen: %q, admin: %q}
extproc: {listen: %q, metrics: %q}
controller: {disabled: true}
probes: {disabled: true}
cache:
  store: %s
  redis: {address: %q}
`, backendName, backendModel, sim, listen, admin, extproc, metrics, store, redisAddr)
	policyPath := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyPath, []byte(pol), 0o644); err != nil {
		return nil, err
	}
	p, err := policy.LoadFile(policyPath)
	if err != nil {
		return nil, err
	}
	b, err := xds.StaticBootstrap(p)
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "envoy.json")
	if err := writeBootstrap(cfgPath, b); err != nil {
		return nil, err
	}
	simC, err := startChild(ctx, "sim-"+store, filepath.Join(dir, "sim.log"), c.childOutput, c.detourBin,
		"sim", "--name", backendName, "--listen", sim, "--admin", simAdmin, "--log-level", "warn")
	if err != nil {
		return nil, err
	}
	st.children = append(st.children, simC)
	ep, err := startChild(ctx, "extproc-"+store, filepath.Join(dir, "extproc.log"), c.childOutput, c.detourBin, "extproc", "--policy", policyPath)
	if err != nil {
		return nil, err
	}
	st.children = append(st.children, ep)
	if err := waitHTTP(ctx, simC, "http://"+sim+"/v1/models", 15*time.Second); err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, ep, "http://"+metrics+"/healthz", 15*time.Second); err != nil {
		return nil, err
	}
	if st.envoy, err = startEnvoy(ctx, "envoy-cache-"+store, c.envoyBin, cfgPath, admin, dir, c.childOutput); err != nil {
		return nil, err
	}
	st.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	st.url, st.metrics = "http://"+listen+chatPath, metrics
	st.hitBody = cacheBody("what is the capital of france? answer in one word", true)
	// Prime the entry, and wait for it to be stored.
	if _, _, err := st.send(ctx, st.hitBody); err != nil {
		return nil, fmt.Errorf("prime: %w", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, h, err := st.send(ctx, st.hitBody)
		if err != nil {
			return nil, err
		}
		if h.Get("x-detour-cache") == "hit" {
			return st, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the primed answer is never a hit; extproc log:\n%s", ep.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func fetchMetrics(ctx context.Context, addr string) []byte {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return b
}

func splitPort(addr string) (string, string, error) {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			return addr[:i], addr[i+1:], nil
		}
	}
	return "", "", fmt.Errorf("no port in %q", addr)
}

func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// cacheMarkdown renders part 9 (without markers).
func cacheMarkdown(r *report, res *cacheResult, errText string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "<!-- Generated by bench/cmd/detour-bench (`make bench`, or `-only cache`): everything between the markers is replaced on each run that includes the cache part. -->\n\n")
	m := r.Machine
	fmt.Fprintf(&b, "## Latest run: response cache\n\n")
	fmt.Fprintf(&b, "- **Date:** %s UTC (whole run took %s)\n", r.Started.Format("2006-01-02 15:04"), r.Elapsed.Round(time.Second))
	fmt.Fprintf(&b, "- **Command:** `%s`\n", r.Command)
	fmt.Fprintf(&b, "- **Machine:** %d CPUs (nproc), %s, %s RAM, kernel %s\n", m.CPUs, m.CPUModel, m.MemTotal, m.Kernel)
	fmt.Fprintf(&b, "- **Software:** %s, Envoy %s, detour at commit %s", m.Go, m.Envoy, m.Commit)
	if res != nil {
		fmt.Fprintf(&b, ", %s", res.Redis)
	}
	fmt.Fprintf(&b, "\n- **Load average (1/5/15 min):** %s before, %s after\n\n", r.LoadBefore, r.LoadAfter)
	fmt.Fprintf(&b, "### 9. Response cache: a hit through Envoy, in memory and in Redis\n\n")
	if res == nil {
		fmt.Fprintf(&b, "**Not measured**: %s\n", errText)
		return b.Bytes()
	}
	fmt.Fprintf(&b, "One request at a time over a kept-alive connection, %d requests of each kind per store, kinds and stores interleaved "+
		"(memory hit, Redis hit, memory miss, Redis miss, ...) after 50 unrecorded rounds. Each store has its own Envoy, `detour extproc` and simulated provider, running side by side "+
		"(answers at once, %s tokens); Redis is a local redis-server on loopback. **hit**: the same temperature-0 request to a route with "+
		"`cache: {ttl: 1h}`, answered by the ext_proc service from the cache; **miss**: a new temperature-0 prompt each time, answered by "+
		"the provider and stored (response headers and body phases on); **plain**: a request that may not be cached (no temperature): "+
		"routed, the ext_proc stream closed at once.\n\n", res.Requests, simTokens)
	fmt.Fprintf(&b, "| store | kind | p50 ms | p90 ms | p99 ms |\n| --- | --- | ---: | ---: | ---: |\n")
	for _, store := range cacheStores {
		for _, kind := range cacheKinds {
			ds := res.Lat[store][kind]
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", store, kind, fmtMs(quantile(ds, 0.5)), fmtMs(quantile(ds, 0.9)), fmtMs(quantile(ds, 0.99)))
		}
	}
	p50 := func(store, kind string) time.Duration { return quantile(res.Lat[store][kind], 0.5) }
	ratio := func(a, b time.Duration) string { return fmt.Sprintf("%.2f", float64(a)/float64(b)) }
	fmt.Fprintf(&b, "\nRatios of medians: Redis hit / memory hit **%s** (%+.3f ms); memory hit / memory miss **%s**; Redis hit / Redis miss **%s**; "+
		"miss / plain (the cost of the response phases and the store): memory **%s**, Redis **%s**. Hits counted by the services: memory %.0f, Redis %.0f.\n",
		ratio(p50("redis", "hit"), p50("memory", "hit")), float64(p50("redis", "hit")-p50("memory", "hit"))/float64(time.Millisecond),
		ratio(p50("memory", "hit"), p50("memory", "miss")), ratio(p50("redis", "hit"), p50("redis", "miss")),
		ratio(p50("memory", "miss"), p50("memory", "plain")), ratio(p50("redis", "miss"), p50("redis", "plain")),
		res.Served["memory"], res.Served["redis"])
	return b.Bytes()
}
