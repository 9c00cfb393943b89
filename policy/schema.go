package policy

import (
	"embed"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/doc"
	"go/parser"
	"go/token"
	"reflect"
	"strings"

	"github.com/invopop/jsonschema"
)

// SchemaID is the JSON Schema's $id.
const SchemaID = "https://github.com/detourhq/detour/policy/detour-policy.schema.json"

// typeSources are the files whose comments document the policy types. They
// are embedded, so the schema carries the same descriptions whatever the
// working directory (go test runs in policy/, `detour schema` anywhere) and
// however the binary was built.
//
//go:embed types.go units.go controller.go probes.go cache.go
var typeSources embed.FS

// JSONSchema generates the policy file's JSON Schema from the Go types, so
// editors check the same structure detour does.
func JSONSchema() ([]byte, error) {
	comments, err := typeComments()
	if err != nil {
		return nil, fmt.Errorf("read type comments: %w", err)
	}
	pkg := reflect.TypeOf(Policy{}).PkgPath()
	r := &jsonschema.Reflector{
		FieldNameTag:               "yaml",
		RequiredFromJSONSchemaTags: false,
		LookupComment: func(t reflect.Type, field string) string {
			if t.PkgPath() != pkg {
				return ""
			}
			if field != "" {
				return comments[t.Name()+"."+field]
			}
			return comments[t.Name()]
		},
	}
	s := r.Reflect(&Policy{})
	s.ID = SchemaID
	s.Title = "detour policy"
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("marshal schema: %w", err)
	}
	return append(b, '\n'), nil
}

// typeComments maps "Type" to the synopsis of its doc comment and
// "Type.Field" to the field's whole comment, as jsonschema's AddGoComments
// does from source on disk.
func typeComments() (map[string]string, error) {
	fset := token.NewFileSet()
	entries, err := typeSources.ReadDir(".")
	if err != nil {
		return nil, err
	}
	var files []*ast.File
	for _, e := range entries {
		src, err := typeSources.ReadFile(e.Name())
		if err != nil {
			return nil, err
		}
		f, err := parser.ParseFile(fset, e.Name(), src, parser.ParseComments)
		if err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	dp, err := doc.NewFromFiles(fset, files, "github.com/detourhq/detour/policy", doc.AllDecls|doc.PreserveAST)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, f := range files {
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.TYPE {
				continue
			}
			for _, spec := range gd.Specs {
				ts := spec.(*ast.TypeSpec)
				if !ts.Name.IsExported() {
					continue
				}
				txt := ts.Doc.Text()
				if txt == "" && len(gd.Specs) == 1 {
					txt = gd.Doc.Text()
				}
				m[ts.Name.Name] = strings.TrimSpace(dp.Synopsis(txt))
				st, ok := ts.Type.(*ast.StructType)
				if !ok {
					continue
				}
				for _, fl := range st.Fields.List {
					txt := fl.Doc.Text()
					if txt == "" {
						txt = fl.Comment.Text()
					}
					if txt == "" {
						continue
					}
					for _, n := range fl.Names {
						if n.IsExported() {
							m[ts.Name.Name+"."+n.Name] = strings.TrimSpace(txt)
						}
					}
				}
			}
		}
	}
	return m, nil
}
