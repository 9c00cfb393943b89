package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCmd(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestHelpListsEveryCommand(t *testing.T) {
	code, out, _ := runCmd("--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, c := range commands() {
		if !strings.Contains(out, "  "+c.name+" ") {
			t.Errorf("--help does not list %q:\n%s", c.name, out)
		}
	}
	if code, _, _ := runCmd(); code != 2 {
		t.Errorf("no arguments: exit %d, want 2", code)
	}
	if code, _, errOut := runCmd("frobnicate"); code != 2 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d, stderr %q", code, errOut)
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join("..", "..", "examples", "quickstart", "policy.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("version: 1\nbackends:\n  - name: a\n    modle: x\n"), 0o644)
	tests := []struct {
		name     string
		args     []string
		code     int
		inStdout string
		inStderr string
	}{
		{"valid file", []string{good}, 0, "policy.yaml: ok", ""},
		{"problems exit 2 with file:line:column and a hint", []string{bad}, 2, "", bad + `:4:5: backends[0].modle: unknown key "modle" (hint: did you mean "model"?)`},
		{"one bad file among good ones still exits 2", []string{good, bad}, 2, "policy.yaml: ok", "modle"},
		{"missing file exits 1", []string{filepath.Join(dir, "nope.yaml")}, 1, "", "no such file"},
		{"no file is a usage error", nil, 2, "", "Usage: detour validate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCmd(append([]string{"validate"}, tc.args...)...)
			if code != tc.code {
				t.Errorf("exit %d, want %d (stderr %q)", code, tc.code, errOut)
			}
			if !strings.Contains(out, tc.inStdout) {
				t.Errorf("stdout %q lacks %q", out, tc.inStdout)
			}
			if !strings.Contains(errOut, tc.inStderr) {
				t.Errorf("stderr %q lacks %q", errOut, tc.inStderr)
			}
		})
	}
}

func TestBootstrapPrintsJSON(t *testing.T) {
	code, out, errOut := runCmd("bootstrap")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var b map[string]any
	if err := json.Unmarshal([]byte(out), &b); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	for _, k := range []string{"admin", "staticResources", "overloadManager"} {
		if _, ok := b[k]; !ok {
			t.Errorf("bootstrap lacks %q", k)
		}
	}
}

func TestSchemaMatchesCommittedFile(t *testing.T) {
	code, out, _ := runCmd("schema")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	committed, err := os.ReadFile(filepath.Join("..", "..", "policy", "detour-policy.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	if out != string(committed) {
		t.Error("detour schema differs from policy/detour-policy.schema.json; run: make schema")
	}
}

func TestVersion(t *testing.T) {
	if code, out, _ := runCmd("version"); code != 0 || !strings.HasPrefix(out, "detour ") {
		t.Errorf("exit %d, out %q", code, out)
	}
}
