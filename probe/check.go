package probe

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/detourhq/detour/policy"
)

// rule is a prompt's compiled expectation.
type rule struct {
	kind  string
	re    *regexp.Regexp
	paths []string
	tool  string
}

func compileRule(q policy.ProbePrompt) (rule, error) {
	r := rule{kind: q.Kind, paths: q.Expect.JSON, tool: q.Expect.Tool}
	if q.Expect.Regex != "" {
		re, err := regexp.Compile(q.Expect.Regex)
		if err != nil {
			return r, fmt.Errorf("probe %s: expect.regex: %w", q.Name, err)
		}
		r.re = re
	}
	return r, nil
}

// check returns why a finished 200 answer breaks the rule, or "".
func (r rule) check(a *answer) string {
	subject := a.text.String()
	if r.kind == policy.ProbeToolCall {
		if len(a.tools) == 0 || a.tools[0].name == "" {
			return fmt.Sprintf("answered without calling the tool %s", r.tool)
		}
		if got := a.tools[0].name; got != r.tool {
			return fmt.Sprintf("called %q, want %q", clip(got, 64), r.tool)
		}
		subject = a.tools[0].args.String()
		if _, err := jsonObject(subject); err != nil {
			return "the tool call's arguments are not a JSON object"
		}
	} else if strings.TrimSpace(subject) == "" && !a.reasoning {
		return "the answer is empty"
	}
	if r.kind == policy.ProbeJSON || (r.kind == policy.ProbeToolCall && len(r.paths) > 0) {
		obj, err := jsonObject(subject)
		if err != nil {
			return fmt.Sprintf("the answer is not a JSON object (%d bytes)", len(subject))
		}
		for _, p := range r.paths {
			if !hasPath(obj, p) {
				return fmt.Sprintf("the JSON answer has no field %q", p)
			}
		}
	}
	if r.re != nil && !r.re.MatchString(subject) {
		return fmt.Sprintf("the answer (%d bytes) does not match %q", len(subject), r.re.String())
	}
	return ""
}

// jsonObject parses s as a JSON object. A Markdown code fence around it is
// tolerated: some models add one even in JSON mode.
func jsonObject(s string) (map[string]any, error) {
	s = strings.TrimSpace(s)
	if rest, ok := strings.CutPrefix(s, "```"); ok {
		rest = strings.TrimPrefix(rest, "json")
		s = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "```"))
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return nil, fmt.Errorf("parse JSON object: %w", err)
	}
	if m == nil {
		return nil, fmt.Errorf("parse JSON object: null")
	}
	return m, nil
}

// hasPath reports whether the dot-separated path names a value in v; a
// numeric segment indexes an array.
func hasPath(v any, path string) bool {
	for seg := range strings.SplitSeq(path, ".") {
		switch x := v.(type) {
		case map[string]any:
			next, ok := x[seg]
			if !ok {
				return false
			}
			v = next
		case []any:
			i, err := strconv.Atoi(seg)
			if err != nil || i < 0 || i >= len(x) {
				return false
			}
			v = x[i]
		default:
			return false
		}
	}
	return true
}
