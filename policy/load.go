package policy

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
	"github.com/goccy/go-yaml/token"
)

// Problem is one thing wrong with a policy file, at a position a person can
// jump to.
type Problem struct {
	Line, Column int    // 1-based; 0 when the problem has no single place
	Path         string // e.g. backends[2].capabilities.context_window
	Message      string
	Hint         string // how to fix it; may be empty
}

func (p Problem) String() string {
	var b strings.Builder
	if p.Line > 0 {
		fmt.Fprintf(&b, "%d:%d: ", p.Line, p.Column)
	}
	if p.Path != "" {
		b.WriteString(p.Path)
		b.WriteString(": ")
	}
	b.WriteString(p.Message)
	if p.Hint != "" {
		b.WriteString(" (hint: ")
		b.WriteString(p.Hint)
		b.WriteString(")")
	}
	return b.String()
}

// ValidationError lists every problem found in one file.
type ValidationError struct {
	File     string
	Problems []Problem
}

func (e *ValidationError) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		if e.File != "" {
			b.WriteString(e.File)
			b.WriteByte(':')
			if p.Line <= 0 {
				b.WriteByte(' ')
			}
		}
		b.WriteString(p.String())
	}
	return b.String()
}

// LoadFile reads, decodes, defaults and validates a policy file.
func LoadFile(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes, defaults and validates a policy. name labels errors (a file
// path, or something like "<embedded>"). On any problem it returns a
// *ValidationError listing all of them and no policy.
func Parse(name string, data []byte) (*Policy, error) {
	file, err := parser.ParseBytes(data, 0)
	if err != nil {
		return nil, &ValidationError{File: name, Problems: []Problem{problemFromYAML(err, "")}}
	}
	var root ast.Node
	docs := 0
	for _, d := range file.Docs {
		if d.Body == nil {
			continue
		}
		docs++
		if root == nil {
			root = d.Body
		}
	}
	if root == nil {
		return nil, &ValidationError{File: name, Problems: []Problem{{Line: 1, Column: 1,
			Message: "the policy is empty", Hint: "start from examples/quickstart/policy.yaml"}}}
	}
	if docs > 1 {
		return nil, &ValidationError{File: name, Problems: []Problem{{Line: 1, Column: 1,
			Message: "the file holds several YAML documents; a policy is one document"}}}
	}

	w := walker{positions: map[string]token.Position{}, anchors: anchors(root), checked: map[checkedKey]bool{}}
	w.walk(root, reflect.TypeOf(Policy{}), "")
	if len(w.problems) > 0 {
		return nil, &ValidationError{File: name, Problems: w.problems}
	}
	var p Policy
	if err := yaml.NodeToValue(root, &p, yaml.DisallowUnknownField()); err != nil {
		// The walker checks what the decoder checks, so this is a bug in the
		// walker, but it still deserves a position.
		return nil, &ValidationError{File: name, Problems: []Problem{problemFromYAML(err, "")}}
	}
	p.ApplyDefaults()
	if probs := p.Validate(); len(probs) > 0 {
		for i := range probs {
			probs[i].Line, probs[i].Column = w.position(probs[i].Path)
		}
		sort.SliceStable(probs, func(i, j int) bool {
			if probs[i].Line != probs[j].Line {
				return probs[i].Line < probs[j].Line
			}
			return probs[i].Column < probs[j].Column
		})
		return nil, &ValidationError{File: name, Problems: probs}
	}
	return &p, nil
}

func problemFromYAML(err error, path string) Problem {
	var ye yaml.Error
	if errors.As(err, &ye) && ye.GetToken() != nil {
		pos := ye.GetToken().Position
		return Problem{Line: pos.Line, Column: pos.Column, Path: path, Message: ye.GetMessage()}
	}
	return Problem{Path: path, Message: err.Error()}
}

// walker checks a YAML tree against the Go types before decoding, so every
// unknown key and mistyped value is reported with its position, not just
// the first one, and records where each path sits for later semantic errors.
type walker struct {
	problems  []Problem
	positions map[string]token.Position
	// anchors holds every anchor by name, in document order; an alias
	// refers to the last one of its name defined before it.
	anchors map[string][]*ast.AnchorNode
	// checked records the anchored values already checked against a type,
	// so an alias used many times (or nested aliases) is checked once.
	checked map[checkedKey]bool
}

type checkedKey struct {
	node ast.Node
	typ  reflect.Type
}

func anchors(root ast.Node) map[string][]*ast.AnchorNode {
	m := map[string][]*ast.AnchorNode{}
	for _, n := range ast.Filter(ast.AnchorType, root) {
		a, ok := n.(*ast.AnchorNode)
		if !ok || a.Name == nil || a.Value == nil || a.Name.GetToken() == nil {
			continue
		}
		name := a.Name.GetToken().Value
		m[name] = append(m[name], a)
	}
	return m
}

// resolve returns the value the alias a refers to, or nil.
func (w *walker) resolve(a *ast.AliasNode) ast.Node {
	if a.Value == nil || a.Value.GetToken() == nil || a.Start == nil {
		return nil
	}
	at := a.Start.Position
	var v ast.Node
	for _, an := range w.anchors[a.Value.GetToken().Value] {
		p := an.Start.Position
		if p.Line > at.Line || p.Line == at.Line && p.Column > at.Column {
			break
		}
		v = an.Value
	}
	return v
}

var interfaceUnmarshaler = reflect.TypeOf((*yaml.InterfaceUnmarshaler)(nil)).Elem()

func (w *walker) add(n ast.Node, path, msg, hint string) {
	p := Problem{Path: path, Message: msg, Hint: hint}
	if pos := position(n); pos != nil {
		p.Line, p.Column = pos.Line, pos.Column
	}
	w.problems = append(w.problems, p)
}

// position is where n starts. A block mapping's own token is the first
// key's ':', so its first key stands for it.
func position(n ast.Node) *token.Position {
	switch m := n.(type) {
	case *ast.MappingNode:
		if !m.IsFlowStyle && len(m.Values) > 0 && m.Values[0].Key != nil {
			return position(m.Values[0].Key)
		}
	case *ast.MappingValueNode:
		if m.Key != nil {
			return position(m.Key)
		}
	}
	if tk := n.GetToken(); tk != nil {
		return tk.Position
	}
	return nil
}

func (w *walker) walk(n ast.Node, t reflect.Type, path string) {
	for {
		switch v := n.(type) {
		case *ast.TagNode:
			// The decoder mishandles some tags (!!int on an int, !!map
			// on a struct, !!null on a duration) and none is needed: the
			// field decides the type.
			tag := "!"
			if tk := v.GetToken(); tk != nil {
				tag = tk.Value
			}
			w.add(v, path, fmt.Sprintf("YAML tag %s is not supported", tag), "remove the tag: the field decides the type")
			return
		case *ast.AnchorNode:
			n = v.Value
			continue
		case *ast.AliasNode:
			// The anchored value was checked where it stands, but maybe
			// against another type: check it against this one too, once.
			if tk := v.GetToken(); tk != nil {
				defer func() { w.positions[path] = *tk.Position }()
			}
			target := w.resolve(v)
			if target == nil {
				return // the parser reports an alias without an anchor
			}
			k := checkedKey{target, t}
			if w.checked[k] {
				return
			}
			w.checked[k] = true
			n = target
			continue
		}
		break
	}
	if n.Type() == ast.NullType {
		return // an empty value leaves the default; its key marks the place
	}
	if pos := position(n); pos != nil {
		w.positions[path] = *pos
	}
	if reflect.PointerTo(t).Implements(interfaceUnmarshaler) {
		w.leaf(n, t, path)
		return
	}
	switch t.Kind() {
	case reflect.Pointer:
		w.walk(n, t.Elem(), path)
	case reflect.Struct:
		mn, ok := n.(ast.MapNode)
		if !ok {
			w.add(n, path, "want a mapping of keys to values, got "+describe(n), "")
			return
		}
		fields := yamlFields(t)
		it := mn.MapRange()
		for it.Next() {
			if it.Key().IsMergeKey() {
				// The decoder refuses a merged key that is also written
				// out, so merges are refused here, where they have a path.
				w.add(it.Key(), path, "YAML merge keys (<<) are not supported",
					"write the keys out, or use an alias (*name) for the whole value")
				continue
			}
			key := keyName(it.Key())
			kp := join(path, key)
			f, ok := fields[key]
			if !ok {
				w.add(it.Key(), kp, fmt.Sprintf("unknown key %q", key), suggest(key, fields))
				continue
			}
			if tk := it.Key().GetToken(); tk != nil {
				w.positions[kp] = *tk.Position
			}
			w.walk(it.Value(), f.Type, kp)
		}
	case reflect.Slice:
		sn, ok := n.(*ast.SequenceNode)
		if !ok {
			w.add(n, path, "want a list, got "+describe(n), "write one item per line starting with \"- \"")
			return
		}
		for i, item := range sn.Values {
			w.walk(item, t.Elem(), path+"["+strconv.Itoa(i)+"]")
		}
	default:
		w.leaf(n, t, path)
	}
}

func (w *walker) leaf(n ast.Node, t reflect.Type, path string) {
	switch n.(type) {
	case ast.MapNode, *ast.SequenceNode:
		w.add(n, path, "want a single value, got "+describe(n), "")
		return
	}
	if !scalarFits(n, t) {
		// The decoder would truncate 1.5 to 1 and read "3" as 3; the JSON
		// Schema (and so an editor) refuses both.
		w.add(n, path, typeMessage(n, t), "")
		return
	}
	if err := yaml.NodeToValue(n, reflect.New(t).Interface()); err != nil {
		p := problemFromYAML(err, path)
		if p.Line == 0 {
			if tk := n.GetToken(); tk != nil {
				p.Line, p.Column = tk.Position.Line, tk.Position.Column
			}
		}
		if !reflect.PointerTo(t).Implements(interfaceUnmarshaler) {
			p.Message = typeMessage(n, t)
		}
		w.problems = append(w.problems, p)
	}
}

// keyName is a mapping key as the decoder reads it: "version" for
// version, "version", 'version', ? version and &a version alike.
func keyName(n ast.Node) string {
	var v any
	if err := yaml.NodeToValue(n, &v); err == nil {
		if s, ok := v.(string); ok {
			return s
		}
	}
	return n.String()
}

// position finds where path, or its nearest recorded ancestor, stands.
func (w *walker) position(path string) (int, int) {
	for {
		if pos, ok := w.positions[path]; ok {
			return pos.Line, pos.Column
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			if pos, ok := w.positions[""]; ok {
				return pos.Line, pos.Column
			}
			return 0, 0
		}
		path = path[:i]
	}
}

// scalarFits reports whether the YAML scalar n has the type a field of
// kind t needs: numbers unquoted, whole numbers whole, finite floats.
func scalarFits(n ast.Node, t reflect.Type) bool {
	if reflect.PointerTo(t).Implements(interfaceUnmarshaler) {
		return true // the type checks its own input
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		_, ok := n.(*ast.IntegerNode)
		return ok
	case reflect.Float32, reflect.Float64:
		switch n.(type) {
		case *ast.IntegerNode, *ast.FloatNode:
			return true
		}
		return false
	case reflect.Bool:
		_, ok := n.(*ast.BoolNode)
		return ok
	}
	return true
}

func typeMessage(n ast.Node, t reflect.Type) string {
	want := "a " + t.Kind().String()
	switch t.Kind() {
	case reflect.Int, reflect.Int64, reflect.Int32:
		want = "a whole number"
	case reflect.Float64:
		want = "a number"
	case reflect.Bool:
		want = "true or false"
	case reflect.String:
		want = "a string"
	}
	return "want " + want + ", got " + describe(n)
}

func describe(n ast.Node) string {
	switch n.(type) {
	case ast.MapNode:
		return "a mapping"
	case *ast.SequenceNode:
		return "a list"
	}
	return fmt.Sprintf("%q", n.String())
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// yamlFields maps the YAML names of t's fields to the fields.
func yamlFields(t reflect.Type) map[string]reflect.StructField {
	m := make(map[string]reflect.StructField, t.NumField())
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		m[name] = f
	}
	return m
}

// suggest names the known key closest to an unknown one.
func suggest(key string, fields map[string]reflect.StructField) string {
	best, bestD := "", 1<<30
	for name := range fields {
		d := editDistance(key, name)
		if d < bestD || (d == bestD && name < best) {
			best, bestD = name, d
		}
	}
	if best != "" && bestD <= max(2, len(key)/3) {
		return fmt.Sprintf("did you mean %q?", best)
	}
	names := make([]string, 0, len(fields))
	for name := range fields {
		names = append(names, name)
	}
	sort.Strings(names)
	return "known keys here: " + strings.Join(names, ", ")
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
