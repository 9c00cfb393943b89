package policy

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/detourhq/detour/examples"
	"github.com/goccy/go-yaml"
)

const schemaFile = "detour-policy.schema.json"

// TestSchemaUpToDate fails when the committed schema differs from the
// generated one. UPDATE_SCHEMA=1 go test ./policy -run TestSchemaUpToDate
// rewrites it.
func TestSchemaUpToDate(t *testing.T) {
	got, err := JSONSchema()
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("UPDATE_SCHEMA") == "1" {
		if err := os.WriteFile(schemaFile, got, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", schemaFile)
	}
	want, err := os.ReadFile(schemaFile)
	if err != nil {
		t.Fatalf("%v\nrun: go run ./cmd/detour schema > policy/detour-policy.schema.json", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("policy/%s is out of date with the Go types\nrun: go run ./cmd/detour schema > policy/detour-policy.schema.json\n(or UPDATE_SCHEMA=1 go test ./policy -run TestSchemaUpToDate)", schemaFile)
	}
}

// TestSchemaIndependentOfWorkingDir: comments come from embedded sources,
// so `detour schema` run anywhere writes the committed file.
func TestSchemaIndependentOfWorkingDir(t *testing.T) {
	here, err := JSONSchema()
	if err != nil {
		t.Fatal(err)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{root, t.TempDir()} {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			t.Chdir(dir)
			there, err := JSONSchema()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(here, there) {
				t.Errorf("the schema generated in %s differs from the one generated in policy/", dir)
			}
		})
	}
}

type schemaNode struct {
	Ref                  string                 `json:"$ref"`
	ID                   string                 `json:"$id"`
	Type                 string                 `json:"type"`
	Description          string                 `json:"description"`
	Properties           map[string]*schemaNode `json:"properties"`
	AdditionalProperties *bool                  `json:"additionalProperties"`
	Items                *schemaNode            `json:"items"`
	Required             []string               `json:"required"`
	Enum                 []any                  `json:"enum"`
	Pattern              string                 `json:"pattern"`
	OneOf                []*schemaNode          `json:"oneOf"`
	Defs                 map[string]*schemaNode `json:"$defs"`
}

func loadSchema(t *testing.T) *schemaNode {
	t.Helper()
	b, err := JSONSchema()
	if err != nil {
		t.Fatal(err)
	}
	var s schemaNode
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

func TestSchemaShape(t *testing.T) {
	s := loadSchema(t)
	if s.ID != SchemaID || s.Ref != "#/$defs/Policy" {
		t.Errorf("$id %q, $ref %q", s.ID, s.Ref)
	}
	names := make([]string, 0, len(s.Defs))
	for name := range s.Defs {
		names = append(names, name)
	}
	sort.Strings(names)
	objects := 0
	for _, name := range names {
		d := s.Defs[name]
		if d.Type != "object" {
			continue
		}
		objects++
		if d.AdditionalProperties == nil || *d.AdditionalProperties {
			t.Errorf("$defs.%s: additionalProperties is not false", name)
		}
		if d.Description == "" {
			t.Errorf("$defs.%s has no description", name)
		}
	}
	if objects < 12 {
		t.Errorf("only %d object definitions: %v", objects, names)
	}

	desc := []struct{ def, prop, want string }{
		{"Policy", "version", "Version of the file format; only 1 exists."},
		{"Backend", "name", "Name is unique; it names the Envoy cluster and appears in metrics and\nin the x-detour-backend response header. Letters, digits, '-' and '_'."},
		{"Capabilities", "streaming", "Streaming defaults to true: almost every provider streams."},
		{"Retry", "attempts", "Attempts is the total number of attempts, the first included. Default 4."},
		{"HealthThresholds", "ttft", "default 500ms"}, // a trailing line comment
		{"Limits", "max_body_bytes", "MaxBodyBytes is the largest request body accepted; larger gets 413.\nAccepts a number of bytes or a size such as \"8MiB\". Default 8MiB."},
	}
	for _, d := range desc {
		def := s.Defs[d.def]
		if def == nil || def.Properties[d.prop] == nil {
			t.Errorf("no %s.%s in the schema", d.def, d.prop)
			continue
		}
		if got := def.Properties[d.prop].Description; got != d.want {
			t.Errorf("%s.%s description = %q, want %q", d.def, d.prop, got, d.want)
		}
	}
	if got := s.Defs["Backend"].Description; got != "Backend is one provider deployment: a model served at some endpoints." {
		t.Errorf("Backend description = %q", got)
	}

	if r := s.Defs["Backend"].Required; !equalSet(r, []string{"name", "model", "endpoints", "capabilities"}) {
		t.Errorf("Backend required = %v", r)
	}
	if e := s.Defs["Route"].Properties["objective"].Enum; len(e) != 2 || e[0] != "cheapest" || e[1] != "ordered" {
		t.Errorf("objective enum = %v", e)
	}
	if p := s.Defs["Backend"].Properties["name"].Pattern; p != nameRE.String() {
		t.Errorf("name pattern %q differs from the one Validate uses, %q", p, nameRE.String())
	}
	ttft := s.Defs["Duration"]
	if s.Defs["HealthThresholds"].Properties["ttft"].Ref != "#/$defs/Duration" || ttft.Type != "string" || ttft.Pattern == "" {
		t.Errorf("a Duration is described as %+v", ttft)
	}
	mb := s.Defs["Size"]
	if s.Defs["Limits"].Properties["max_body_bytes"].Ref != "#/$defs/Size" || len(mb.OneOf) != 2 {
		t.Errorf("a Size is described as %+v", mb)
	}
}

// TestSchemaCoversQuickstart: every key the quickstart policy uses is a
// property the schema knows, so an editor does not flag the example.
func TestSchemaCoversQuickstart(t *testing.T) {
	s := loadSchema(t)
	var doc map[string]any
	if err := yaml.Unmarshal(examples.QuickstartPolicy, &doc); err != nil {
		t.Fatal(err)
	}
	var check func(path string, v any, n *schemaNode)
	check = func(path string, v any, n *schemaNode) {
		for n != nil && n.Ref != "" {
			n = s.Defs[n.Ref[len("#/$defs/"):]]
		}
		if n == nil {
			t.Errorf("%s: no schema", path)
			return
		}
		switch v := v.(type) {
		case map[string]any:
			for _, r := range n.Required {
				if _, ok := v[r]; !ok {
					t.Errorf("%s: the schema requires %q, which the quickstart omits", path, r)
				}
			}
			for k, sub := range v {
				p := n.Properties[k]
				if p == nil {
					t.Errorf("%s.%s: not in the schema", path, k)
					continue
				}
				check(path+"."+k, sub, p)
			}
		case []any:
			if n.Items == nil {
				t.Errorf("%s: a list where the schema has %q", path, n.Type)
				return
			}
			for _, item := range v {
				check(path+"[]", item, n.Items)
			}
		}
	}
	check("", doc, s)
}

func equalSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]bool{}
	for _, x := range a {
		m[x] = true
	}
	for _, x := range b {
		if !m[x] {
			return false
		}
	}
	return true
}
