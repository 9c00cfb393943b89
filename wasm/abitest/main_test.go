package abitest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMain runs the tests in a binary built without -race when this one
// has it (make runs the unit tests under -race). The detector cannot see
// into the guest, which is wazero's compiled code, and the host here is
// a single goroutine; but instrumented, wazero takes ~45 s instead of
// ~5 s to compile the module.
func TestMain(m *testing.M) {
	if raceEnabled {
		os.Exit(withoutRace())
	}
	os.Exit(m.Run())
}

func withoutRace() int {
	dir, err := os.MkdirTemp("", "abitest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "abitest.test")
	build := exec.Command("go", "test", "-c", "-o", bin, ".")
	build.Env = append(os.Environ(), "GOFLAGS="+strings.ReplaceAll(os.Getenv("GOFLAGS"), "-race", ""))
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "abitest: build without -race:", err)
		return 1
	}
	// The same test flags, but for the log go test keeps for its cache,
	// which is this process's to write.
	var args []string
	for _, a := range os.Args[1:] {
		if !strings.HasPrefix(a, "-test.testlogfile") {
			args = append(args, a)
		}
	}
	fmt.Println("abitest: running without -race (see TestMain)")
	run := exec.Command(bin, args...)
	run.Stdout, run.Stderr = os.Stdout, os.Stderr
	if err := run.Run(); err != nil {
		if e, ok := err.(*exec.ExitError); ok {
			return e.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "abitest:", err)
		return 1
	}
	return 0
}
