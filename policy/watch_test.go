package policy

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestWatch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(path, []byte(oneBackend), 0o644); err != nil {
		t.Fatal(err)
	}
	applied := make(chan *Policy, 4)
	rejected := make(chan error, 4)
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() {
		stopped <- Watch(ctx, path, func(p *Policy) { applied <- p }, func(err error) { rejected <- err })
	}()
	time.Sleep(100 * time.Millisecond) // let the watch start

	// Saved the way editors do: a new file renamed over the old one.
	save := func(text string) {
		tmp := filepath.Join(dir, ".policy.yaml.swp")
		if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	wait := func(what string) (p *Policy, err error) {
		t.Helper()
		select {
		case p = <-applied:
		case err = <-rejected:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: nothing after 5s", what)
		}
		return p, err
	}

	save(strings.Replace(oneBackend, "model: m-a", "model: m-b", 1))
	if p, err := wait("valid edit"); err != nil || p.Backends[0].Model != "m-b" {
		t.Fatalf("valid edit: policy %v, error %v", p, err)
	}

	save(oneBackend + "bogus: 1\n")
	if _, err := wait("invalid edit"); err == nil || !strings.Contains(err.Error(), "policy.yaml:11:1: bogus: unknown key") {
		t.Fatalf("invalid edit: error %v, want the problem with its position", err)
	}

	// Written in place, too.
	if err := os.WriteFile(path, []byte(strings.Replace(oneBackend, "model: m-a", "model: m-c", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if p, err := wait("in-place write"); err != nil || p.Backends[0].Model != "m-c" {
		t.Fatalf("in-place write: policy %v, error %v", p, err)
	}

	// Touching the file without changing it applies nothing.
	now := time.Now()
	os.Chtimes(path, now, now)
	select {
	case p := <-applied:
		t.Errorf("unchanged content applied again: %v", p)
	case err := <-rejected:
		t.Errorf("unchanged content rejected: %v", err)
	case <-time.After(300 * time.Millisecond):
	}

	cancel()
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("Watch returned %v after cancel", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Watch did not stop after cancel")
	}
}

func TestWatchMissingDirectory(t *testing.T) {
	err := Watch(context.Background(), "/nonexistent/dir/policy.yaml", func(*Policy) {}, func(error) {})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/dir") {
		t.Errorf("error %v, want one naming the directory", err)
	}
}
