// Package examples holds the example policies; the quickstart policy is
// embedded so `detour up` runs with no file at all.
package examples

import _ "embed"

// QuickstartPolicy is examples/quickstart/policy.yaml.
//
//go:embed quickstart/policy.yaml
var QuickstartPolicy []byte
