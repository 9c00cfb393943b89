package sim

import (
	"encoding/json"
	"slices"
	"strconv"
)

// Structured output: with Config.Structured, a chat request asking for JSON
// (response_format json_object or json_schema) is answered with a JSON
// object, and one offering tools is answered with a call of one of them,
// as a model with JSON mode and tool calling does. Without it the answer is
// always the plain "tok0 tok1 …" text, whatever the request asks.

// responseFormat is the response_format request parameter.
type responseFormat struct {
	Type       string `json:"type"`
	JSONSchema *struct {
		Schema json.RawMessage `json:"schema"`
	} `json:"json_schema"`
}

// toolSpec is one entry of the tools request parameter.
type toolSpec struct {
	Type     string `json:"type"`
	Function struct {
		Name       string          `json:"name"`
		Parameters json.RawMessage `json:"parameters"`
	} `json:"function"`
}

// toolCall is the function call a structured answer makes.
type toolCall struct {
	id, name, args string
}

type toolCallDelta struct {
	Index    int              `json:"index"`
	ID       string           `json:"id,omitempty"`
	Type     string           `json:"type,omitempty"`
	Function toolCallFunction `json:"function"`
}

type toolCallFunction struct {
	Name      string `json:"name,omitempty"`
	Arguments string `json:"arguments"`
}

type toolCallMessage struct {
	ID       string           `json:"id"`
	Type     string           `json:"type"`
	Function toolCallFunction `json:"function"`
}

// structure decides a structured answer for req: a tool call or a JSON
// content, split into o.n pieces so that it streams like text. It leaves o
// untouched when the request asks for neither.
func (x *exchange) structure(req *genRequest, o *output) {
	if !x.s.cfg.Structured {
		return
	}
	text := completionText(o.n)
	if fn, params, ok := chosenTool(req); ok {
		args, _ := json.Marshal(fillSchema(params, text))
		o.tool = &toolCall{id: "call_sim" + strconv.FormatUint(x.s.ids.Add(1), 10), name: fn, args: string(args)}
		o.pieces = splitPieces(string(args), o.n)
		o.finish = "tool_calls"
		return
	}
	if req.ResponseFormat == nil {
		return
	}
	var v any
	switch req.ResponseFormat.Type {
	case "json_object":
		v = map[string]any{"text": text}
	case "json_schema":
		var schema json.RawMessage
		if req.ResponseFormat.JSONSchema != nil {
			schema = req.ResponseFormat.JSONSchema.Schema
		}
		v = fillSchema(schema, text)
	default:
		return
	}
	content, _ := json.Marshal(v)
	o.pieces = splitPieces(string(content), o.n)
}

// chosenTool is the function a request's tool_choice names, else its first
// function; none when there are no tools or tool_choice is "none".
func chosenTool(req *genRequest) (string, json.RawMessage, bool) {
	var choice struct {
		Function struct {
			Name string `json:"name"`
		} `json:"function"`
	}
	var mode string
	if json.Unmarshal(req.ToolChoice, &mode) == nil && mode == "none" {
		return "", nil, false
	}
	_ = json.Unmarshal(req.ToolChoice, &choice)
	i := slices.IndexFunc(req.Tools, func(t toolSpec) bool {
		return t.Function.Name != "" && (choice.Function.Name == "" || t.Function.Name == choice.Function.Name)
	})
	if i < 0 {
		return "", nil, false
	}
	return req.Tools[i].Function.Name, req.Tools[i].Function.Parameters, true
}

// fillSchema builds a value matching a JSON Schema's type: an object gets
// its required properties (all of them when none is required), strings get
// text. It reads only type, properties, required and items.
func fillSchema(raw json.RawMessage, text string) any {
	var s struct {
		Type       any                        `json:"type"`
		Properties map[string]json.RawMessage `json:"properties"`
		Required   []string                   `json:"required"`
		Items      json.RawMessage            `json:"items"`
	}
	if len(raw) == 0 || json.Unmarshal(raw, &s) != nil {
		return map[string]any{}
	}
	typ, _ := s.Type.(string)
	if types, ok := s.Type.([]any); ok && len(types) > 0 {
		typ, _ = types[0].(string)
	}
	switch typ {
	case "string":
		return text
	case "integer", "number":
		return 0
	case "boolean":
		return true
	case "null":
		return nil
	case "array":
		if len(s.Items) == 0 {
			return []any{}
		}
		return []any{fillSchema(s.Items, text)}
	}
	obj := map[string]any{}
	names := s.Required
	if len(names) == 0 {
		for name := range s.Properties {
			names = append(names, name)
		}
	}
	for _, name := range names {
		obj[name] = fillSchema(s.Properties[name], text)
	}
	return obj
}

// splitPieces cuts s into n pieces of about equal length (one piece when
// n < 1), so a structured answer streams as n chunks.
func splitPieces(s string, n int) []string {
	n = max(1, min(n, len(s)))
	out := make([]string, 0, n)
	for i := range n {
		out = append(out, s[i*len(s)/n:(i+1)*len(s)/n])
	}
	return out
}
