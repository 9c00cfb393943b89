package policy

import (
	"encoding/json"
	"fmt"

	"github.com/invopop/jsonschema"
)

// SchemaID is the JSON Schema's $id.
const SchemaID = "https://github.com/detourhq/detour/policy/detour-policy.schema.json"

// JSONSchema generates the policy file's JSON Schema from the Go types, so
// editors check the same structure detour does.
func JSONSchema() ([]byte, error) {
	r := &jsonschema.Reflector{
		FieldNameTag:               "yaml",
		RequiredFromJSONSchemaTags: false,
	}
	if err := r.AddGoComments("github.com/detourhq/detour", "./policy"); err != nil {
		// Comments are a nicety; the schema is valid without them.
		_ = err
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
