package sim

import (
	"encoding/json"
	"strings"
	"testing"
)

const (
	jsonObjectFormat = `"response_format":{"type":"json_object"}`
	jsonSchemaFormat = `"response_format":{"type":"json_schema","json_schema":{"name":"r","schema":{"type":"object","properties":{"status":{"type":"string"},"n":{"type":"integer"},"tags":{"type":"array","items":{"type":"string"}}},"required":["status","tags"]}}}`
	twoTools         = `"tools":[{"type":"function","function":{"name":"first","parameters":{"type":"object","properties":{"q":{"type":"string"}},"required":["q"]}}},` +
		`{"type":"function","function":{"name":"second","parameters":{"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}}}}}]`
)

// TestStructuredWhole: JSON mode and tool calls in whole answers.
func TestStructuredWhole(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		extra   string
		content string // compact JSON of the content; "" when null
		tool    string // name of the called function
		args    string
		finish  string
	}{
		{"json_object", Config{Structured: true, DefaultTokens: 3}, jsonObjectFormat, `{"text":"tok0 tok1 tok2"}`, "", "", "stop"},
		{"json_schema", Config{Structured: true, DefaultTokens: 2}, jsonSchemaFormat, `{"status":"tok0 tok1","tags":["tok0 tok1"]}`, "", "", "stop"},
		{"first tool", Config{Structured: true, DefaultTokens: 2}, twoTools, "", "first", `{"q":"tok0 tok1"}`, "tool_calls"},
		{"named tool", Config{Structured: true, DefaultTokens: 1}, twoTools + `,"tool_choice":{"type":"function","function":{"name":"second"}}`, "", "second", `{"city":"tok0","days":0}`, "tool_calls"},
		{"tool_choice none", Config{Structured: true, DefaultTokens: 2}, twoTools + `,"tool_choice":"none"`, `"tok0 tok1"`, "", "", "stop"},
		{"off by default", Config{DefaultTokens: 2}, twoTools + "," + jsonObjectFormat, `"tok0 tok1"`, "", "", "stop"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startSim(t, tt.cfg)
			r := call(t, newClient(t), "POST", apiURL(s, "/v1/chat/completions"), chatBody(tt.extra), nil)
			if r.status != 200 {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			m := r.json(t)
			msg := dig(m, "choices", 0, "message")
			if got := dig(m, "choices", 0, "finish_reason"); got != tt.finish {
				t.Errorf("finish_reason %v", got)
			}
			content := dig(msg, "content")
			if tt.content == "" {
				if content != nil {
					t.Errorf("content %v, want null", content)
				}
			} else {
				c, _ := content.(string)
				if !json.Valid([]byte(c)) && !strings.HasPrefix(tt.content, `"`) {
					t.Fatalf("content %q is not JSON", c)
				}
				want := tt.content
				if strings.HasPrefix(want, `"`) {
					_ = json.Unmarshal([]byte(want), &want)
					if c != want {
						t.Errorf("content %q, want %q", c, want)
					}
				} else if compactJSON(t, c) != want {
					t.Errorf("content %s, want %s", c, want)
				}
			}
			if tt.tool == "" {
				if dig(msg, "tool_calls") != nil {
					t.Errorf("unexpected tool_calls: %s", r.body)
				}
				return
			}
			if got := dig(msg, "tool_calls", 0, "function", "name"); got != tt.tool {
				t.Errorf("tool %v, want %s", got, tt.tool)
			}
			if got, _ := dig(msg, "tool_calls", 0, "function", "arguments").(string); compactJSON(t, got) != tt.args {
				t.Errorf("arguments %s, want %s", got, tt.args)
			}
		})
	}
}

// TestStructuredStream: a streamed tool call names itself in its first
// chunk and streams its arguments; JSON content streams in pieces.
func TestStructuredStream(t *testing.T) {
	s := startSim(t, Config{Structured: true, DefaultTokens: 4})
	c := newClient(t)
	_, events, _, err := streamCall(t, c, apiURL(s, "/v1/chat/completions"), chatBody(twoTools+`,"stream":true,"stream_options":{"include_usage":true}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	var name, args, finish string
	var usage any
	for _, e := range events {
		if e.data == "[DONE]" {
			continue
		}
		m := mustJSON(t, e.data)
		if d := dig(m, "choices", 0, "delta", "content"); d != nil {
			t.Errorf("content in a tool call stream: %s", e.data)
		}
		if n, ok := dig(m, "choices", 0, "delta", "tool_calls", 0, "function", "name").(string); ok {
			name += n
		}
		if a, ok := dig(m, "choices", 0, "delta", "tool_calls", 0, "function", "arguments").(string); ok {
			args += a
		}
		if f, ok := dig(m, "choices", 0, "finish_reason").(string); ok {
			finish = f
		}
		if u := dig(m, "usage", "completion_tokens"); u != nil {
			usage = u
		}
	}
	if name != "first" || compactJSON(t, args) != `{"q":"tok0 tok1 tok2 tok3"}` || finish != "tool_calls" || usage != float64(4) {
		t.Errorf("name %q args %q finish %q usage %v", name, args, finish, usage)
	}

	_, events, _, err = streamCall(t, c, apiURL(s, "/v1/chat/completions"), chatBody(jsonObjectFormat+`,"stream":true`), nil)
	if err != nil {
		t.Fatal(err)
	}
	var content string
	pieces := 0
	for _, e := range events {
		if e.data == "[DONE]" {
			continue
		}
		if d, ok := dig(mustJSON(t, e.data), "choices", 0, "delta", "content").(string); ok && d != "" {
			content += d
			pieces++
		}
	}
	if content != `{"text":"tok0 tok1 tok2 tok3"}` || pieces != 4 {
		t.Errorf("content %q in %d pieces", content, pieces)
	}
}
