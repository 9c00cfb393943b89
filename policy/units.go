package policy

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/invopop/jsonschema"
)

// Duration is a time.Duration written as a Go duration string ("250ms",
// "30s", "1m30s") in YAML.
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// UnmarshalYAML accepts a duration string; a bare number is refused because
// its unit would be a guess.
func (d *Duration) UnmarshalYAML(unmarshal func(any) error) error {
	var raw any
	if err := unmarshal(&raw); err != nil {
		return err
	}
	s, ok := raw.(string)
	if !ok {
		return fmt.Errorf("want a duration with a unit such as \"500ms\" or \"30s\", got %v", raw)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a duration such as \"500ms\" or \"30s\", got %q", s)
	}
	if v < 0 {
		return fmt.Errorf("duration %q is negative", s)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the Go duration string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// JSONSchema describes Duration for editors.
func (Duration) JSONSchema() *jsonschema.Schema {
	return &jsonschema.Schema{
		Type:        "string",
		Pattern:     `^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`,
		Description: `A duration such as "500ms", "30s" or "1m30s".`,
	}
}

// Size is a byte count written as a number or with a unit ("512KiB", "8MiB",
// "1GB").
type Size int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000},
	{"B", 1},
}

// ParseSize reads "8MiB", "1000000" or "2 MB".
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			mult, t = u.mult, strings.TrimSpace(strings.TrimSuffix(t, u.suffix))
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<40)/mult {
		return 0, fmt.Errorf("want a size such as 1048576 or \"8MiB\", got %q", s)
	}
	return Size(n * mult), nil
}

// UnmarshalYAML accepts an integer or a size string.
func (z *Size) UnmarshalYAML(unmarshal func(any) error) error {
	var raw any
	if err := unmarshal(&raw); err != nil {
		return err
	}
	var s string
	switch v := raw.(type) {
	case string:
		s = v
	case uint64, int64, int, uint:
		s = fmt.Sprint(v)
	default:
		return fmt.Errorf("want a size such as 1048576 or \"8MiB\", got %v", raw)
	}
	v, err := ParseSize(s)
	if err != nil {
		return err
	}
	*z = v
	return nil
}

// MarshalYAML writes the byte count.
func (z Size) MarshalYAML() (any, error) { return int64(z), nil }

// JSONSchema describes Size for editors.
func (Size) JSONSchema() *jsonschema.Schema {
	return &jsonschema.Schema{
		OneOf: []*jsonschema.Schema{
			{Type: "integer", Minimum: "0"},
			{Type: "string", Pattern: `^[0-9]+ ?(B|KB|MB|GB|KiB|MiB|GiB)?$`},
		},
		Description: `A byte count, or a size such as "512KiB" or "8MiB".`,
	}
}
