// Package wasmtest builds detour's proxy-wasm module for tests.
package wasmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// EnvModule names a prebuilt module tests use instead of building one
// (make sets it so the suite builds the module once).
const EnvModule = "DETOUR_WASM"

var (
	once  sync.Once
	built string
	err   error
)

// Module returns the path of a detour.wasm built from this checkout: the
// one $DETOUR_WASM names, or one built once per test binary.
func Module(t testing.TB) string {
	t.Helper()
	if p := os.Getenv(EnvModule); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s=%s: %v", EnvModule, p, err)
		}
		return p
	}
	once.Do(func() {
		dir, derr := os.MkdirTemp("", "detour-wasm-")
		if derr != nil {
			err = derr
			return
		}
		built = filepath.Join(dir, "detour.wasm")
		err = Build(built)
	})
	if err != nil {
		t.Fatal(err)
	}
	return built
}

// Build compiles ./wasm of this module for wasip1 into out.
func Build(out string) error {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	cmd := exec.Command("go", "build", "-buildmode=c-shared", "-trimpath", "-ldflags=-s -w", "-o", out, "./wasm")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build detour.wasm: %v\n%s", err, b)
	}
	return nil
}
