package policy

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/goccy/go-yaml"

	"github.com/detourhq/detour/examples"
	"github.com/detourhq/detour/route"
)

// FuzzParse: Parse never panics and is deterministic (the same problems,
// in the same order, or the same policy); an error is always a
// *ValidationError with positioned problems; an accepted policy is
// complete: it passes Validate, its route table builds a router, and
// written back as YAML it loads to the same policy (defaults are a fixed
// point, and nothing accepted is lost in the round trip).
func FuzzParse(f *testing.F) {
	q := string(examples.QuickstartPolicy)
	seeds := []string{
		q,
		oneBackend,
		"",
		"version: 1\nbackends: [\n",
		strings.Replace(q, "context_window: 8192", "context_window: -1", 1),
		strings.Replace(q, "name: fast-b", "name: fast", 1),
		strings.Replace(q, "name: auto", "name: fast-8k", 1),
		strings.Replace(q, "name: auto\n", "name: auto\n    backends: [fast, nope]\n", 1),
		strings.Replace(q, "version: 1", "version: 1\nretry: {attempts: 1.5, max_delay: 1ms, jitter: .nan}\nlimits: {max_body_bytes: 8XB}", 1),
		strings.Replace(q, "    price: { input: 0.10, output: 0.40 }", "    price: &p { input: 0.10, output: 0.40 }", 1) +
			"health: *p\n",
		q + "---\n" + q,
		oneBackend + "routes: [{name: &n r}, {name: *n, backends: [a, a]}]\n",
		oneBackend + "retry: {<<: {attempts: 2}}\n",
		"a: &a [1, *a]\n",
		// Regressions found while writing the tests (see TestParseProblems
		// and TestParseAccepts).
		oneBackend + "retry: {attempts: 1.5}\n",
		oneBackend + "retry: {attempts: &n 3}\nhealth: {ttft: *n}\n",
		oneBackend + "health: {ttft: !!null ~}\nversion: !!int 1\n",
		oneBackend + "envoy: {listen: '127.0.0.1:+80'}\n",
		"{\"version\": 1, \"backends\": [{\"name\": \"a\", \"model\": \"m\", \"endpoints\": [{\"address\": \"h:1\"}], \"capabilities\": {\"context_window\": 10}}]}",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("fuzz.yaml", data)
		p2, err2 := Parse("fuzz.yaml", data)
		if fmt.Sprint(err) != fmt.Sprint(err2) || !reflect.DeepEqual(p, p2) {
			t.Fatalf("two parses differ:\n%v\n%v", err, err2)
		}
		if err != nil {
			if p != nil {
				t.Fatal("a policy and an error")
			}
			var ve *ValidationError
			if !errors.As(err, &ve) || len(ve.Problems) == 0 {
				t.Fatalf("error %T with no problems: %v", err, err)
			}
			for _, pr := range ve.Problems {
				if pr.Message == "" {
					t.Fatalf("a problem with no message: %+v", pr)
				}
				if pr.Line <= 0 || pr.Column <= 0 {
					t.Fatalf("a problem with no position: %+v", pr)
				}
			}
			_ = err.Error()
			return
		}
		if p == nil {
			t.Fatal("no policy and no error")
		}
		if probs := p.Validate(); len(probs) != 0 {
			t.Fatalf("accepted, but Validate finds %v", probs)
		}
		if _, err := route.New(p.RouteTable()); err != nil {
			t.Fatalf("accepted, but route.New: %v", err)
		}
		out, err := yaml.Marshal(p)
		if err != nil {
			t.Fatalf("accepted, but cannot be written back: %v", err)
		}
		again, err := Parse("again.yaml", out)
		if err != nil {
			t.Fatalf("written back, it is rejected: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(p, again) {
			t.Fatalf("written back, it loads differently:\n%+v\n%+v\n%s", p, again, out)
		}
	})
}
