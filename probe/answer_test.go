package probe

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestReadStream(t *testing.T) {
	const done = "data: [DONE]\n\n"
	tool := func(index, name, args string) string {
		return `data: {"choices":[{"delta":{"tool_calls":[{"index":` + index + `,"function":{"name":"` + name + `","arguments":"` + args + `"}}]}}]}` + "\n\n"
	}
	tests := []struct {
		name     string
		in       string
		text     string
		tools    []string // name + args of each call
		chunks   int
		finished bool
	}{
		{"tokens and [DONE]", "data: {\"choices\":[{\"delta\":{\"content\":\"po\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"ng\"}}]}\n\n" + done,
			"pong", nil, 2, true},
		{"CRLF and no space after the colon", "data:{\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\r\n\r\ndata:[DONE]\r\n", "x", nil, 1, true},
		{"comments and empty lines", ": ping\n\nevent: message\n\n" + done, "", nil, 0, true},
		{"a call streamed in parts", tool("0", "f", "") + tool("0", "", `{\"a\":`) + tool("0", "", "1}") + done,
			"", []string{`f{"a":1}`}, 3, true},
		{"calls by index", tool("1", "g", "") + tool("0", "f", ""), "", []string{"f", "g"}, 2, false},
		// Found while writing FuzzAnswer: a negative index crashed the
		// controller (index out of range).
		{"negative tool index", tool("-1", "f", "{}") + done, "", nil, 0, true},
		{"tool index past the bound", tool("128", "f", "{}") + done, "", nil, 0, true},
		// Found by FuzzAnswer's corpus: a second parallel call grew the
		// slice, copying the first call's strings.Builder, and its next
		// arguments panicked ("copied by value").
		{"parallel calls, arguments after the second began", tool("0", "f", "") + tool("1", "g", "{}") + tool("0", "", "{}") + done,
			"", []string{"f{}", "g{}"}, 3, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var a answer
			if err := readStream(strings.NewReader(tt.in), ticker(), &a); err != nil {
				t.Fatal(err)
			}
			var tools []string
			for i := range a.tools {
				tools = append(tools, a.tools[i].name+a.tools[i].args.String())
			}
			if a.text.String() != tt.text || !slices.Equal(tools, tt.tools) || a.chunks != tt.chunks || a.finished != tt.finished {
				t.Errorf("got text %q, tools %q, %d chunks, finished %v; want %q, %q, %d, %v",
					a.text.String(), tools, a.chunks, a.finished, tt.text, tt.tools, tt.chunks, tt.finished)
			}
			if tt.chunks > 0 && !a.last.After(time.Unix(0, 0)) {
				t.Errorf("chunks not timed: %v", a.last)
			}
		})
	}
}
