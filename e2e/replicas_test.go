package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/detourhq/detour/respcache/redistest"
)

// StartReplica runs ext_proc replica i (≥ 1; replica 0 is startStack's)
// on its own addresses, with the stack's policy.
func (s *stack) StartReplica(i int) {
	s.t.Helper()
	var log logBuffer
	cmd := exec.Command(detourBin, "extproc", "--policy", s.policyPath, "--log-level", "debug",
		"--listen", s.ReplicaAddrs[i], "--metrics", s.ReplicaMetrics[i])
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.mu.Lock()
	if s.replicas == nil {
		s.replicas = map[string]*exec.Cmd{}
	}
	s.replicas[s.ReplicaAddrs[i]] = cmd
	s.mu.Unlock()
	s.t.Cleanup(func() { s.KillReplica(i) })
	waitTCP(s.t, s.ReplicaAddrs[i], 10*time.Second, &log)
}

// KillReplica kills ext_proc replica i abruptly, as a crash would.
func (s *stack) KillReplica(i int) {
	if i == 0 {
		s.StopExtProc()
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if cmd := s.replicas[s.ReplicaAddrs[i]]; cmd != nil {
		cmd.Process.Kill()
		cmd.Wait()
		delete(s.replicas, s.ReplicaAddrs[i])
	}
}

// waitReplicasHealthy waits until Envoy's ext_proc cluster has every
// replica healthy (its gRPC health checks passed).
func (s *stack) waitReplicasHealthy(n int) {
	s.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		out := s.EnvoyStatsPath("/clusters")
		healthy := 0
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "detour_extproc::") && strings.HasSuffix(l, "::health_flags::healthy") {
				healthy++
			}
		}
		if healthy >= n {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("only %d of %d ext_proc replicas healthy in Envoy:\n%s\n%s", healthy, n, grepLines(out, "health_flags"), s.EnvoyStats("detour_extproc.health_check"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// redisCache is the cache section for a Redis at addr with the given
// timeout: 50 ms where the test is about a dead Redis, 1 s elsewhere, so
// a loaded machine's slow dial does not read as an outage.
func redisCache(addr, timeout string) string {
	return fmt.Sprintf(`cache:
  store: redis
  redis: {address: "%s", timeout: %s}`, addr, timeout)
}

// Two ext_proc replicas behind one Envoy share a Redis: an answer stored
// through one is served (stale, every provider failing) through the other
// after the first is killed; another tenant's key never sees the answer.
//
// The kill costs no request that Envoy could send elsewhere: a routing
// stream that had no answer yet is retried on the other replica, and whole
// answers waiting in the resume stage are held by Envoy, not the replica.
// What it may cost is a request whose routing stream the replica had
// answered in part (request headers answered, the body's answer not yet
// sent): gRPC cannot replay a stream whose response began, and Envoy
// counts it as a failed routing stream. Each failure must be one of those.
func TestCacheSharedAcrossReplicas(t *testing.T) {
	rs := redistest.Start(t)
	s := startStack(t, stackOptions{Replicas: 2, Extra: redisCache(rs.Addr, "1s")})
	s.StartReplica(1)
	s.waitReplicasHealthy(2)
	keyA := []string{"authorization", "Bearer sk-replica-a"}
	body := reusable("shared between replicas", nil)
	first := post(t, s.URL("/v1/chat/completions"), body, keyA...)
	if first.Status != 200 {
		t.Fatalf("first: %d %s", first.Status, first.Body)
	}
	// Which replica stored it?
	stored := -1
	deadline := time.Now().Add(5 * time.Second)
	for stored < 0 && time.Now().Before(deadline) {
		for i, m := range s.ReplicaMetrics {
			if metricValue(metricsAt(t, m), storeSeries) >= 1 {
				stored = i
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if stored < 0 {
		t.Fatal("no replica stored the answer")
	}
	other := 1 - stored
	t.Logf("replica %d stored the answer; killing it under load", stored)

	// Kill it while clients keep sending (providers healthy): count what
	// the kill costs.
	var sent, failed atomic.Int64
	var failures sync.Map
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Timeout: 10 * time.Second}
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := c.Post(s.URL("/v1/chat/completions"), "application/json", bytes.NewReader(chat("auto", nil, user("load"))))
				sent.Add(1)
				if err != nil {
					failed.Add(1)
					failures.Store(err.Error(), true)
					continue
				}
				var b bytes.Buffer
				b.ReadFrom(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
					failures.Store(fmt.Sprintf("%d %s", resp.StatusCode, b.String()), true)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	time.Sleep(time.Second)
	s.KillReplica(stored)
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	t.Logf("killing a replica under load: %d of %d requests failed", failed.Load(), sent.Load())
	failures.Range(func(k, _ any) bool { t.Logf("  failure: %.200s", k); return true })
	t.Logf("Envoy on the kill:\n%s", grepLines(s.EnvoyStats("detour_extproc"), "connect_fail")+"\n"+grepLines(s.EnvoyStats("detour_extproc"), "outlier_detection.ejections_enforced_total")+"\n"+grepLines(s.EnvoyStats("http.detour.ext_proc"), "stream")+"\n"+grepLines(s.EnvoyStats("detour_extproc.health_check"), "failure")+"\n"+grepLines(s.EnvoyStats("cluster.detour_extproc.upstream_rq_retry"), "retry"))
	midAnswer := s.EnvoyCounter("http.detour.ext_proc.detour.streams_failed")
	if n := failed.Load(); n > int64(max(midAnswer, 0)) {
		t.Errorf("%d of %d requests failed when a replica was killed; only %d routing streams died after their replica began answering", n, sent.Load(), midAnswer)
	}
	failures.Range(func(k, _ any) bool {
		if !strings.Contains(k.(string), "router_unavailable") {
			t.Errorf("failure %.200s is not a routing stream cut mid-answer", k)
		}
		return true
	})

	// Every provider fails: the other replica serves the answer the dead
	// one stored.
	s.allDown(503)
	r := post(t, s.URL("/v1/chat/completions"), body, keyA...)
	if r.Status != 200 || r.Header.Get(HeaderCacheName) != "stale" {
		t.Fatalf("through the other replica: %d cache=%q %s", r.Status, r.Header.Get(HeaderCacheName), r.Body)
	}
	if got, want := contentOf(t, r.Body), contentOf(t, first.Body); got != want {
		t.Errorf("served %q, stored %q", got, want)
	}
	if v := metricValue(metricsAt(t, s.ReplicaMetrics[other]), `detour_cache_served_total{result="stale",route="auto",why="failed"}`); v != 1 {
		t.Errorf("replica %d served %v stale answers", other, v)
	}
	// Tenant isolation: another key, the same question: no answer.
	for _, k := range [][]string{{"authorization", "Bearer sk-replica-b"}, {"x-api-key", "sk-replica-a"}, nil} {
		if r := post(t, s.URL("/v1/chat/completions"), body, k...); r.Status != 503 || r.Header.Get(HeaderCacheName) != "" {
			t.Errorf("key %v saw another tenant's answer: %d cache=%q", k, r.Status, r.Header.Get(HeaderCacheName))
		}
	}
}

// Redis dies mid-test: traffic goes on (no request waits on it longer than
// the 50 ms timeout, and after a failure it is not asked for a second),
// detour_cache_backend_up says 0; when Redis is back the cache works again.
func TestCacheRedisKilled(t *testing.T) {
	rs := redistest.Start(t)
	s := startStack(t, stackOptions{Extra: redisCache(rs.Addr, "50ms")})
	key := []string{"authorization", "Bearer sk-redis"}
	if r := post(t, s.URL("/v1/chat/completions"), reusable("before the crash", nil), key...); r.Status != 200 {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	waitMetric(t, s.MetricsAddr, storeSeries, 1, 5*time.Second)
	if v := metricValue(s.Metrics(), "detour_cache_backend_up"); v != 1 {
		t.Errorf("backend_up %v with Redis up", v)
	}
	rs.Kill()
	var slowest time.Duration
	for i := range 40 {
		start := time.Now()
		r := post(t, s.URL("/v1/chat/completions"), reusable(fmt.Sprint("during the outage ", i), nil), key...)
		if d := time.Since(start); d > slowest {
			slowest = d
		}
		if r.Status != 200 {
			t.Fatalf("request %d with Redis down: %d %s", i, r.Status, r.Body)
		}
	}
	m := s.Metrics()
	if v := metricValue(m, "detour_cache_backend_up"); v != 0 {
		t.Errorf("backend_up %v with Redis down", v)
	}
	if v := metricValue(m, `detour_cache_requests_total{result="error"}`); v < 1 {
		t.Errorf("no cache errors counted with Redis down:\n%s", grepLines(m, "detour_cache"))
	}
	t.Logf("40 requests with Redis down, all 200, slowest %v; %s", slowest.Round(time.Millisecond), grepLines(m, `result="error"`))
	if slowest > time.Second {
		t.Errorf("a request took %v with Redis down", slowest)
	}
	// Back: answers are stored again.
	rs.Restart()
	before := metricValue(s.Metrics(), storeSeries)
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; ; i++ {
		post(t, s.URL("/v1/chat/completions"), reusable(fmt.Sprint("after the restart ", i), nil), key...)
		if metricValue(s.Metrics(), storeSeries) > before && metricValue(s.Metrics(), "detour_cache_backend_up") == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cache did not come back with Redis:\n%s", grepLines(s.Metrics(), "detour_cache"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Tenant isolation, in the shared store: an answer stored for one API key
// and tenant header is served to that pair only; Redis holds no key that
// contains a credential.
func TestCacheTenantIsolation(t *testing.T) {
	rs := redistest.Start(t)
	s := startStack(t, stackOptions{Extra: redisCache(rs.Addr, "1s") + "\n  tenant_header: x-tenant-id"})
	owner := []string{"authorization", "Bearer sk-secret-owner", "x-tenant-id", "acme"}
	body := reusable("tenant scoped question", nil)
	if r := post(t, s.URL("/v1/chat/completions"), body, owner...); r.Status != 200 {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	waitMetric(t, s.MetricsAddr, storeSeries, 1, 5*time.Second)
	s.allDown(503)
	for _, c := range []struct {
		name    string
		headers []string
		served  bool
	}{
		{"owner", owner, true},
		{"same key, other tenant", []string{"authorization", "Bearer sk-secret-owner", "x-tenant-id", "globex"}, false},
		{"same key, no tenant", []string{"authorization", "Bearer sk-secret-owner"}, false},
		{"same tenant, other key", []string{"authorization", "Bearer sk-secret-other", "x-tenant-id", "acme"}, false},
		{"the key as x-api-key", []string{"x-api-key", "sk-secret-owner", "x-tenant-id", "acme"}, false},
		{"nothing", nil, false},
	} {
		r := post(t, s.URL("/v1/chat/completions"), body, c.headers...)
		if got := r.Status == 200 && r.Header.Get(HeaderCacheName) == "stale"; got != c.served {
			t.Errorf("%s: served %v, want %v (%d %s)", c.name, got, c.served, r.Status, r.Body)
		}
	}
	keys := redisKeys(t, rs.Addr)
	if len(keys) != 1 {
		t.Errorf("Redis keys %q, want one", keys)
	}
	for _, k := range keys {
		if strings.Contains(k, "secret") || strings.Contains(k, "acme") || !strings.HasPrefix(k, "detour:rc1:") {
			t.Errorf("Redis key %q shows a credential or has the wrong prefix", k)
		}
	}
	t.Logf("Redis holds %q", keys)
	if log := s.extLogText(); strings.Contains(log, "sk-secret") {
		t.Error("the ext_proc log contains an API key")
	}
}

// redisKeys lists every key in the Redis at addr (RESP by hand: no client
// library in the test for one command).
func redisKeys(t *testing.T, addr string) []string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("*2\r\n$4\r\nKEYS\r\n$1\r\n*\r\n")); err != nil {
		t.Fatal(err)
	}
	rd := bufio.NewReader(c)
	line, err := rd.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "*") {
		t.Fatalf("KEYS: %q %v", line, err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(line[1:]))
	var keys []string
	for range n {
		if _, err := rd.ReadString('\n'); err != nil { // $len
			t.Fatal(err)
		}
		k, err := rd.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, strings.TrimSpace(k))
	}
	return keys
}
