package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// `detour up` (what `make run` starts) serves the quickstart routes and
// stops cleanly on SIGTERM, started without a terminal.
func TestUpQuickstart(t *testing.T) {
	s := &stack{t: t, dir: t.TempDir()}
	backends := quickstartBackends()
	for i := range backends {
		backends[i].Addr = freeAddr(t)
	}
	s.EnvoyAddr, s.AdminAddr, s.ExtProcAddr, s.MetricsAddr = freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	s.XDSAddr, s.XDSMetricsAddr = freeAddr(t), freeAddr(t)
	// As `make run`: the plugin measures.
	text := s.PolicyText(stackOptions{Backends: backends, MaxBodyBytes: 8 << 20, Wasm: "measure"})
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(detourBin, "up", "--policy", path)
	cmd.Env = append(os.Environ(), "ENVOY_BIN="+envoyBin)
	cmd.Stdin = nil
	var stderr logBuffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("detour up stderr:\n%s", tail(&stderr, 40))
		}
	})
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		var out strings.Builder
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "Ctrl-C stops everything") {
				ready <- out.String()
			}
		}
	}()
	select {
	case banner := <-ready:
		if !strings.Contains(banner, s.EnvoyAddr) {
			t.Errorf("banner does not name Envoy's address:\n%s", banner)
		}
	case err := <-done:
		t.Fatalf("detour up exited early: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("detour up not ready after 60s")
	}
	r := post(t, "http://"+s.EnvoyAddr+"/v1/chat/completions", chat("auto", nil, user("hello")))
	if r.Status != 200 || r.Header.Get("x-detour-backend") != "fast" {
		t.Fatalf("status %d backend %q: %s", r.Status, r.Header.Get("x-detour-backend"), r.Body)
	}
	// The plugin measured it, in Envoy's own stats.
	if v := metricValue(s.EnvoyPrometheus(), `detour_responses_total{backend="fast",class="2xx"}`); v != 1 {
		t.Errorf("Envoy's stats count %v responses from fast, want 1", v)
	}
	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("detour up exited with %v after SIGTERM", err)
		}
		t.Logf("clean exit %s after SIGTERM", time.Since(start).Round(time.Millisecond))
	case <-time.After(20 * time.Second):
		t.Fatal("detour up still running 20s after SIGTERM")
	}
	// Every child is gone: nothing listens any more.
	for _, addr := range []string{s.EnvoyAddr, s.AdminAddr, s.ExtProcAddr, s.XDSAddr, backends[0].Addr} {
		if c, err := netDial(addr); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections after shutdown", addr)
		}
	}
}
