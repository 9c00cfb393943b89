package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/detourhq/detour/envoy"
)

// moduleRoot is the directory of the go.mod of the current module: go build
// and go test run there.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the detour module: run from its checkout (e.g. `make bench`)")
	}
	return filepath.Dir(mod), nil
}

// findEnvoy locates Envoy the way detour does and reads its version.
func findEnvoy(ctx context.Context, root string) (bin, version string, err error) {
	bin, err = envoy.Locate(root)
	if err != nil {
		return "", "", fmt.Errorf("locate envoy (set ENVOY_BIN to an Envoy %s binary, or run `make envoy`): %w",
			envoy.WantVersion, err)
	}
	version, err = envoy.Version(ctx, bin)
	if err != nil {
		return "", "", fmt.Errorf("envoy at %s (ENVOY_BIN / `make envoy`): %w", bin, err)
	}
	return bin, version, nil
}

// buildDetour builds ./cmd/detour into dir.
func buildDetour(ctx context.Context, root, dir string, log *slog.Logger) (string, error) {
	bin := filepath.Join(dir, "detour")
	log.Info("building detour", "out", bin)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/detour")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/detour: %w\n%s", err, out)
	}
	return bin, nil
}

// machine describes where the figures were taken.
type machine struct {
	CPUs     int
	CPUModel string
	MemTotal string
	Kernel   string
	Go       string
	Envoy    string
	Commit   string
}

func probeMachine(ctx context.Context, root string) machine {
	return machine{
		CPUs:     runtime.NumCPU(),
		CPUModel: orUnknown(procField("/proc/cpuinfo", "model name")),
		MemTotal: orUnknown(memTotal()),
		Kernel:   orUnknown(commandOutput(ctx, "", "uname", "-r")),
		Go:       runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH,
		Envoy:    "not used",
		Commit:   orUnknown(gitDescribe(ctx, root)),
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// procField returns the value of the first "key : value" line of a /proc
// file such as /proc/cpuinfo.
func procField(path, key string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return parseProcField(data, key)
}

func parseProcField(data []byte, key string) string {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// memTotal is MemTotal of /proc/meminfo in GiB.
func memTotal() string {
	v := procField("/proc/meminfo", "MemTotal") // "8035712 kB"
	kb, err := strconv.ParseFloat(strings.TrimSuffix(v, " kB"), 64)
	if err != nil {
		return ""
	}
	return fmt.Sprintf("%.1f GiB", kb/(1<<20))
}

// loadAverage is the first three fields of /proc/loadavg.
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func commandOutput(ctx context.Context, dir, name string, args ...string) string {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// gitDescribe is the short commit of the checkout, with "+ uncommitted
// changes" when the work tree is dirty.
func gitDescribe(ctx context.Context, root string) string {
	commit := commandOutput(ctx, root, "git", "rev-parse", "--short", "HEAD")
	if commit == "" {
		return ""
	}
	if commandOutput(ctx, root, "git", "status", "--porcelain") != "" {
		commit += " + uncommitted changes"
	}
	return commit
}
