// Package redistest runs a throw-away redis-server for tests: on a free
// loopback port, no persistence, killed at the test's end. The binary is
// $REDIS_BIN, else redis-server on PATH or in /usr/bin (`make unit` and
// `make e2e` install it with scripts/get-redis.sh). Without one a test
// skips, except under CI=true, where it fails: CI must never pass a cache
// test it did not run.
package redistest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Bin finds redis-server, or fails (CI) or skips the test.
func Bin(t testing.TB) string {
	t.Helper()
	if b := os.Getenv("REDIS_BIN"); b != "" {
		return b
	}
	if b, err := exec.LookPath("redis-server"); err == nil {
		return b
	}
	if _, err := os.Stat("/usr/bin/redis-server"); err == nil {
		return "/usr/bin/redis-server"
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no redis-server: set REDIS_BIN (scripts/get-redis.sh installs one)")
	}
	t.Skip("no redis-server (set REDIS_BIN; scripts/get-redis.sh installs one)")
	return ""
}

// Server is one running redis-server.
type Server struct {
	t    testing.TB
	bin  string
	Addr string
	mu   sync.Mutex
	cmd  *exec.Cmd
	log  *bytes.Buffer
}

// Start runs a redis-server until the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{t: t, bin: Bin(t), Addr: freeAddr(t)}
	s.Restart()
	t.Cleanup(s.Kill)
	return s
}

// Restart starts the server again on the same port (empty: no persistence).
func (s *Server) Restart() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return
	}
	_, port, _ := net.SplitHostPort(s.Addr)
	s.log = &bytes.Buffer{}
	cmd := exec.Command(s.bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", s.t.TempDir(), "--protected-mode", "no", "--loglevel", "warning")
	cmd.Stdout, cmd.Stderr = s.log, s.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start redis-server: %v", err)
	}
	s.cmd = cmd
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.Addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redis-server did not listen on %s: %v\n%s", s.Addr, err, s.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill stops the server abruptly, as a crash would.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return "127.0.0.1:" + strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// String names the server in logs.
func (s *Server) String() string { return fmt.Sprintf("redis-server at %s", s.Addr) }
