// Package e2e runs detour's real processes with a real Envoy 1.40 and
// simulated providers, on loopback. A missing Envoy fails the suite: it is
// never skipped.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/detourhq/detour/envoy"
	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/healthview/viewhttp"
	"github.com/detourhq/detour/sim"
	"github.com/detourhq/detour/wasm/wasmtest"
)

// envoyWorkers is the stack's Envoy worker threads: in wasm mode each
// runs its own VM, with its own counters.
const envoyWorkers = 2

// Binaries the suite runs, found once in TestMain.
var (
	detourBin  string
	envoyBin   string
	wasmModule string
)

func TestMain(m *testing.M) {
	code, err := setup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e setup:", err)
		os.Exit(1)
	}
	if code >= 0 {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

func setup() (int, error) {
	var err error
	envoyBin, err = envoy.Locate("")
	if err != nil {
		return 0, fmt.Errorf("%w (the e2e suite needs a real Envoy; `make e2e` installs one)", err)
	}
	detourBin = os.Getenv("DETOUR_BIN")
	if detourBin == "" {
		dir, err := os.MkdirTemp("", "detour-e2e-bin-")
		if err != nil {
			return 0, err
		}
		detourBin = filepath.Join(dir, "detour")
		out, err := exec.Command("go", "build", "-o", detourBin, "../cmd/detour").CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("build detour: %v\n%s", err, out)
		}
	}
	// detour.wasm: $DETOUR_WASM (make builds it), else beside DETOUR_BIN,
	// else built here.
	wasmModule = os.Getenv("DETOUR_WASM")
	if wasmModule == "" {
		if beside := filepath.Join(filepath.Dir(detourBin), "detour.wasm"); fileExists(beside) {
			wasmModule = beside
		} else {
			wasmModule = beside
			if err := wasmtest.Build(wasmModule); err != nil {
				return 0, err
			}
		}
	}
	return -1, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// backendSpec is one simulated backend of a test stack.
type backendSpec struct {
	Name, Model   string
	Context       int
	MaxOutput     int
	Tools, Vision bool
	In, Out       float64
	// APIKey, when set, is required by the simulated provider and given to
	// detour through the environment variable KeyEnv.
	APIKey, KeyEnv string
	// Region of the backend's endpoint (default "local"); FarRegion, when
	// set, adds a second endpoint there, served by the simulated provider
	// named Name+"-"+FarRegion.
	Region, FarRegion string
	Addr, FarAddr     string // filled by startStack
	// Continuation is the backend's continuation style (resume).
	Continuation string
}

// quickstartBackends mirrors examples/quickstart/policy.yaml on random ports.
func quickstartBackends() []backendSpec {
	return []backendSpec{
		{Name: "fast", Model: "fast-8k", Context: 8192, MaxOutput: 4096, Tools: true, In: 0.10, Out: 0.40},
		{Name: "fast-b", Model: "fast-8k", Context: 8192, MaxOutput: 4096, Tools: true, In: 0.12, Out: 0.48},
		{Name: "long", Model: "long-200k", Context: 200000, MaxOutput: 8192, In: 1.00, Out: 4.00},
		{Name: "vision", Model: "vision-128k", Context: 128000, MaxOutput: 16384, Tools: true, Vision: true, In: 2.50, Out: 10.00},
	}
}

type stackOptions struct {
	Backends         []backendSpec
	FailureModeAllow bool
	MaxBodyBytes     int
	// Static gives Envoy a static config; otherwise `detour xds` serves it.
	Static bool
	// Region is the Envoy's own region (node locality).
	Region string
	// Delta makes Envoy use incremental xDS.
	Delta bool
	// NoEnvoy starts detour's processes and the providers only (for a test
	// that brings its own Envoy config).
	NoEnvoy bool
	// Wasm loads detour's proxy-wasm plugin: "measure" (measurement only,
	// what `make run` does) or "route" (routing.mode wasm). Empty: no
	// plugin, which keeps Envoy's start fast for the tests that are not
	// about it.
	Wasm string
	// Controller is YAML appended to the policy (controller:, probes:
	// sections). Empty: the controller and probes are disabled, so tests
	// that are not about it see the policy's static behaviour.
	Controller string
	// Extra is more top-level YAML (cache:, queue: sections).
	Extra string
	// RouteExtra is YAML indented under the route auto (e.g.
	// "    cache: {ttl: 60s}").
	RouteExtra string
	// Replicas > 1 lists that many ext_proc addresses in
	// extproc.replicas; the first is ExtProcAddr, started by startStack,
	// the others are started with StartReplica.
	Replicas int
}

// stack is one running detour deployment: simulated providers (in this
// process), `detour extproc` and Envoy (child processes).
type stack struct {
	t          testing.TB
	dir        string
	policyPath string
	sims       map[string]*sim.Server
	opts       stackOptions

	EnvoyAddr, AdminAddr, ExtProcAddr, MetricsAddr string
	XDSAddr, XDSMetricsAddr                        string
	// ReplicaAddrs and ReplicaMetrics are every ext_proc replica's
	// addresses (Options.Replicas > 1), the first being ExtProcAddr.
	ReplicaAddrs, ReplicaMetrics []string
	replicas                     map[string]*exec.Cmd

	mu      sync.Mutex
	extproc *exec.Cmd
	extLog  *logBuffer
	xds     *exec.Cmd
	xdsLog  *logBuffer
	envoy   *envoy.Process
	envLog  *logBuffer
}

var policyTmpl = template.Must(template.New("p").Parse(`version: 1
backends:
{{- range .Backends}}
  - name: {{.Name}}
    model: {{.Model}}
    endpoints:
      - {address: "{{.Addr}}", region: "{{if .Region}}{{.Region}}{{else}}local{{end}}"}
{{- if .FarRegion}}
      - {address: "{{.FarAddr}}", region: "{{.FarRegion}}"}
{{- end}}
    capabilities:
      context_window: {{.Context}}
      max_output_tokens: {{.MaxOutput}}
      tools: {{.Tools}}
      vision: {{.Vision}}
      json_mode: true
    price: {input: {{.In}}, output: {{.Out}}}
{{- if .KeyEnv}}
    credentials: {api_key_env: {{.KeyEnv}}}
{{- end}}
{{- if .Continuation}}
    continuation: {{.Continuation}}
{{- end}}
{{- end}}
routes:
  - name: auto
{{- if .RouteExtra}}
{{.RouteExtra}}
{{- end}}
limits:
  max_body_bytes: {{.MaxBody}}
envoy:
  listen: "{{.Envoy}}"
  admin: "{{.Admin}}"
  access_log: "{{.AccessLog}}"
extproc:
  listen: "{{.ExtProc}}"
  metrics: "{{.Metrics}}"
  failure_mode_allow: {{.FMA}}
{{- if .Replicas}}
  replicas:
{{- range .Replicas}}
    - "{{.}}"
{{- end}}
{{- end}}
xds:
  listen: "{{.XDS}}"
  metrics: "{{.XDSMetrics}}"
wasm:
  module: "{{.WasmModule}}"
  measure: {{if .Wasm}}true{{else}}false{{end}}
{{- if eq .Wasm "route"}}
routing:
  mode: wasm
{{- end}}
{{- if .Controller}}
{{.Controller}}
{{- else}}
controller: {disabled: true}
probes: {disabled: true}
{{- end}}
{{- if .Extra}}
{{.Extra}}
{{- end}}
`))

// startStack starts everything and registers its shutdown with t.Cleanup.
func startStack(t testing.TB, o stackOptions) *stack {
	t.Helper()
	if o.Backends == nil {
		o.Backends = quickstartBackends()
	}
	if o.MaxBodyBytes == 0 {
		o.MaxBodyBytes = 8 << 20
	}
	s := &stack{t: t, dir: t.TempDir(), sims: map[string]*sim.Server{}, opts: o}
	ctx := context.Background()
	for i := range o.Backends {
		b := &o.Backends[i]
		srv, err := sim.New(sim.Config{Name: b.Name, Addr: "127.0.0.1:0", Models: []string{b.Model}, APIKey: b.APIKey, Structured: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			srv.Close(cctx)
		})
		b.Addr = srv.Addr()
		s.sims[b.Name] = srv
		if b.FarRegion != "" {
			far := s.startSim(t, b.Name+"-"+b.FarRegion, b.Model, b.APIKey)
			b.FarAddr = far.Addr()
		}
	}
	s.EnvoyAddr, s.AdminAddr, s.ExtProcAddr, s.MetricsAddr = freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	s.XDSAddr, s.XDSMetricsAddr = freeAddr(t), freeAddr(t)
	if o.Replicas > 1 {
		s.ReplicaAddrs, s.ReplicaMetrics = []string{s.ExtProcAddr}, []string{s.MetricsAddr}
		for range o.Replicas - 1 {
			s.ReplicaAddrs = append(s.ReplicaAddrs, freeAddr(t))
			s.ReplicaMetrics = append(s.ReplicaMetrics, freeAddr(t))
		}
	}
	s.policyPath = filepath.Join(s.dir, "policy.yaml")
	s.WritePolicy(s.PolicyText(o))
	s.StartExtProc()
	if !o.Static {
		s.StartXDS()
	}
	if !o.NoEnvoy {
		s.startEnvoy()
	}
	t.Cleanup(s.stop)
	return s
}

func (s *stack) startSim(t testing.TB, name, model, key string) *sim.Server {
	t.Helper()
	srv, err := sim.New(sim.Config{Name: name, Addr: "127.0.0.1:0", Models: []string{model}, APIKey: key, Structured: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Close(ctx)
	})
	s.sims[name] = srv
	return srv
}

// PolicyText renders the policy of a stack with o's settings.
func (s *stack) PolicyText(o stackOptions) string {
	var buf bytes.Buffer
	if err := policyTmpl.Execute(&buf, map[string]any{
		"Backends": o.Backends, "MaxBody": o.MaxBodyBytes, "FMA": o.FailureModeAllow,
		"Envoy": s.EnvoyAddr, "Admin": s.AdminAddr, "ExtProc": s.ExtProcAddr, "Metrics": s.MetricsAddr,
		"XDS": s.XDSAddr, "XDSMetrics": s.XDSMetricsAddr,
		"Wasm": o.Wasm, "WasmModule": wasmModule, "Controller": o.Controller,
		"Extra": o.Extra, "RouteExtra": o.RouteExtra, "Replicas": s.ReplicaAddrs, "AccessLog": s.AccessLogPath(),
	}); err != nil {
		s.t.Fatal(err)
	}
	return buf.String()
}

// WritePolicy replaces the policy file the way editors do: write a new file
// and rename it over the old one.
func (s *stack) WritePolicy(text string) {
	s.t.Helper()
	tmp := s.policyPath + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Rename(tmp, s.policyPath); err != nil {
		s.t.Fatal(err)
	}
}

// StartXDS runs `detour xds` and waits until it accepts connections.
func (s *stack) StartXDS() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.xdsLog = &logBuffer{}
	cmd := exec.Command(detourBin, "xds", "--policy", s.policyPath, "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = s.xdsLog, s.xdsLog
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.xds = cmd
	waitTCP(s.t, s.XDSAddr, 10*time.Second, s.xdsLog)
}

// StopXDS kills `detour xds` abruptly.
func (s *stack) StopXDS() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.xds == nil {
		return
	}
	s.xds.Process.Kill()
	s.xds.Wait()
	s.xds = nil
}

// StartExtProc runs `detour extproc` and waits until it accepts connections.
func (s *stack) StartExtProc() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.extLog = &logBuffer{}
	cmd := exec.Command(detourBin, "extproc", "--policy", s.policyPath, "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = s.extLog, s.extLog
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.extproc = cmd
	waitTCP(s.t, s.ExtProcAddr, 10*time.Second, s.extLog)
}

// StopExtProc kills `detour extproc` abruptly, as a crash would.
func (s *stack) StopExtProc() { s.endExtProc(syscall.SIGKILL) }

// TermExtProc stops `detour extproc` the way a rolling restart does
// (SIGTERM: it drains its streams for up to 5 s), and waits for it.
func (s *stack) TermExtProc() { s.endExtProc(syscall.SIGTERM) }

func (s *stack) endExtProc(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.extproc == nil {
		return
	}
	s.extproc.Process.Signal(sig)
	s.extproc.Wait()
	s.extproc = nil
}

func (s *stack) startEnvoy() {
	s.t.Helper()
	args := []string{"bootstrap", "--policy", s.policyPath}
	if s.opts.Static {
		args = append(args, "--static")
	} else {
		args = append(args, "--node-id", "e2e-"+s.t.Name(), "--region", s.opts.Region)
		if s.opts.Delta {
			args = append(args, "--delta")
		}
	}
	out, err := exec.Command(detourBin, args...).Output()
	if err != nil {
		s.t.Fatalf("detour bootstrap: %v", err)
	}
	cfg := filepath.Join(s.dir, "envoy.json")
	if err := os.WriteFile(cfg, out, 0o644); err != nil {
		s.t.Fatal(err)
	}
	s.envLog = &logBuffer{}
	p, err := envoy.Start(context.Background(), envoy.Options{
		Bin: envoyBin, ConfigPath: cfg, AdminAddr: s.AdminAddr, Concurrency: envoyWorkers,
		Stdout: s.envLog, Stderr: s.envLog,
	})
	if err != nil {
		s.t.Fatal(err)
	}
	s.envoy = p
	if err := p.WaitReady(context.Background(), 30*time.Second); err != nil {
		s.t.Fatalf("%v\nenvoy log:\n%s", err, s.envLog)
	}
}

func (s *stack) stop() {
	if s.envoy != nil && !s.opts.Static {
		s.checkNoRejectedUpdates()
	}
	if s.t.Failed() {
		s.t.Logf("ext_proc log:\n%s", tail(s.extLog, 60))
		s.t.Logf("envoy log:\n%s", tail(s.envLog, 60))
		s.t.Logf("xds log:\n%s", tail(s.xdsLog, 40))
	}
	s.StopXDS()
	if s.envoy != nil {
		s.envoy.Stop(5 * time.Second)
	}
	s.mu.Lock()
	cmd := s.extproc
	s.extproc = nil
	s.mu.Unlock()
	if cmd != nil {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}
}

// URL is a client URL through Envoy.
func (s *stack) URL(path string) string { return "http://" + s.EnvoyAddr + path }

// Sim returns a backend's simulated provider.
// AccessLogPath is Envoy's access log (envoy.access_log).
func (s *stack) AccessLogPath() string { return filepath.Join(s.dir, "envoy-access.log") }

// AccessLogLine waits for an access log line that match accepts (Envoy
// flushes the file every second) and returns it with the whole file.
func (s *stack) AccessLogLine(match func(map[string]any) bool) (map[string]any, []byte) {
	s.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		data, _ := os.ReadFile(s.AccessLogPath())
		for _, line := range bytes.Split(data, []byte("\n")) {
			var m map[string]any
			if json.Unmarshal(line, &m) == nil && match(m) {
				return m, data
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("no such access log line in %s:\n%s", s.AccessLogPath(), data)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *stack) Sim(name string) *sim.Server { return s.sims[name] }

// ResetSims clears every provider's faults, counters and request log.
func (s *stack) ResetSims() {
	for _, srv := range s.sims {
		srv.ClearFault()
		srv.ResetStats()
	}
}

// EnvoyStat reads one counter or gauge from Envoy's admin /stats.
func (s *stack) EnvoyStats(filter string) string {
	return s.EnvoyStatsPath("/stats?filter=" + filter)
}

// EnvoyCounter reads one stat of Envoy by its full name; -1 if absent.
func (s *stack) EnvoyCounter(name string) int {
	for _, l := range strings.Split(s.EnvoyStats("^"+regexp.QuoteMeta(name)+"$"), "\n") {
		if v, ok := strings.CutPrefix(l, name+": "); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err == nil {
				return n
			}
		}
	}
	return -1
}

// EnvoyStatsPath reads an admin page of Envoy.
func (s *stack) EnvoyStatsPath(path string) string {
	resp, err := http.Get("http://" + s.AdminAddr + path)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// Metrics returns the ext_proc service's /metrics text.
func (s *stack) Metrics() string {
	resp, err := http.Get("http://" + s.MetricsAddr + "/metrics")
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// freeAddr picks a free loopback port below Linux's ephemeral range
// (32768-60999): a port from that range, once released, can be taken by any
// outgoing connection before the process meant to listen on it binds it.
// A port is never handed out twice in one run: a stack picks all its ports
// before any process binds them, and two picks of the same number once gave
// Envoy's listener the admin port (the client then got the admin's 404).
func freeAddr(t testing.TB) string {
	t.Helper()
	for range 1000 {
		port := 20000 + rand.IntN(12000)
		if !handedOut.claim(port) {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		addr := l.Addr().String()
		l.Close()
		return addr
	}
	t.Fatal("no free port in 20000-31999")
	return ""
}

// portSet records the ports freeAddr has handed out in this test process.
type portSet struct {
	mu   sync.Mutex
	used map[int]bool
}

// claim reports whether port was not handed out before, and marks it so.
func (s *portSet) claim(port int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.used[port] {
		return false
	}
	if s.used == nil {
		s.used = make(map[int]bool)
	}
	s.used[port] = true
	return true
}

var handedOut portSet

func waitTCP(t testing.TB, addr string, timeout time.Duration, log *logBuffer) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("nothing listening on %s after %s\n%s", addr, timeout, log)
}

// logBuffer is a process's output: written by the copying goroutines of
// its stdout and stderr, read by the test, under one lock.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String is the output so far ("" for nil).
func (l *logBuffer) String() string {
	if l == nil {
		return ""
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func tail(b *logBuffer, n int) string {
	if b == nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func netDial(addr string) (net.Conn, error) {
	return net.DialTimeout("tcp", addr, 200*time.Millisecond)
}

// XDSMetrics returns the control plane's /metrics text.
func (s *stack) XDSMetrics() string {
	resp, err := http.Get("http://" + s.XDSMetricsAddr + "/metrics")
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// edit returns a copy of the stack's settings (addresses included) to
// change and render with PolicyText.
func (s *stack) edit() stackOptions {
	o := s.opts
	o.Backends = append([]backendSpec(nil), s.opts.Backends...)
	return o
}

// checkNoRejectedUpdates fails the test if Envoy refused any resource the
// control plane sent it (every *.update_rejected counter must be 0).
func (s *stack) checkNoRejectedUpdates() {
	s.t.Helper()
	resp, err := http.Get("http://" + s.AdminAddr + "/stats?filter=update_rejected")
	if err != nil {
		s.t.Errorf("read Envoy stats: %v", err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	seen := 0
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		name, value, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		seen++
		if value != "0" {
			s.t.Errorf("Envoy rejected an update from detour: %s = %s", name, value)
		}
	}
	if seen == 0 {
		s.t.Errorf("Envoy reports no update_rejected counters: %q", b)
	}
}

// xdsLogText is everything `detour xds` logged so far.
func (s *stack) xdsLogText() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.xdsLog == nil {
		return ""
	}
	return s.xdsLog.String()
}

// firstTokenDeadline is the stream deadline the controller has pushed.
func (s *stack) firstTokenDeadline() time.Duration {
	v, err := viewhttp.Fetch(context.Background(), http.DefaultClient, "http://"+s.XDSMetricsAddr+viewhttp.Path, 0)
	if err != nil {
		s.t.Errorf("controller view: %v", err)
		return 0
	}
	return time.Duration(v.FirstTokenTimeout)
}

// controllerView is the controller's view now.
func (s *stack) controllerView() *healthview.Snapshot {
	s.t.Helper()
	v, err := viewhttp.Fetch(context.Background(), http.DefaultClient, "http://"+s.XDSMetricsAddr+viewhttp.Path, 0)
	if err != nil {
		s.t.Fatal(err)
	}
	return v
}

// extLogText is the ext_proc service's log so far.
func (s *stack) extLogText() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.extLog == nil {
		return ""
	}
	return s.extLog.String()
}
