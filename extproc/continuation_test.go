package extproc

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestContinuationBody(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		partial string
		sent    int
		want    string // JSON, compared as values
		wantErr string
	}{
		{
			name:    "partial answer appended, model set to the route, limits lowered",
			body:    `{"model":"fast-8k   ","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":12,"max_completion_tokens":null}`,
			partial: "tok0 tok1", sent: 2,
			want: `{"model":"auto","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"tok0 tok1"}],"stream":true,"max_tokens":10,"max_completion_tokens":null}`,
		},
		{
			name:    "a continuation continued: joined to its assistant message",
			body:    `{"model":"x","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"tok0"}],"max_completion_tokens":3}`,
			partial: " tok1 tok2 tok3", sent: 3,
			want: `{"model":"auto","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"tok0 tok1 tok2 tok3"}],"max_completion_tokens":1}`,
		},
		{name: "no messages", body: `{"model":"x","prompt":"hi"}`, wantErr: "no messages"},
		{name: "not JSON", body: `{"model":`, wantErr: "request body"},
		{name: "assistant content in parts", body: `{"messages":[{"role":"assistant","content":[{"type":"text","text":"a"}]}]}`, wantErr: "no text content"},
		{name: "max_tokens not a number", body: `{"messages":[{"role":"user","content":"hi"}],"max_tokens":"many"}`, wantErr: "max_tokens"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := continuationBody([]byte(tt.body), "auto", tt.partial, tt.sent)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one saying %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			sameJSON(t, got, tt.want)
		})
	}
}

func TestMarkContinuation(t *testing.T) {
	const body = `{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"tok0"}]}`
	tests := []struct {
		style, body, want, wantErr string
	}{
		{style: "prefix", body: body, want: `{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"tok0","prefix":true}]}`},
		{style: "continue_final_message", body: body, want: `{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"tok0"}],"continue_final_message":true,"add_generation_prompt":false}`},
		{style: "prefix", body: `{"messages":[{"role":"user","content":"hi"}]}`, wantErr: "does not end with an assistant"},
		{style: "", body: body, wantErr: "takes no continuation"},
		{style: "prefix", body: `[`, wantErr: "request body"},
	}
	for _, tt := range tests {
		t.Run(tt.style+tt.wantErr, func(t *testing.T) {
			got, err := markContinuation([]byte(tt.body), tt.style)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one saying %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			sameJSON(t, got, tt.want)
		})
	}
}

func sameJSON(t *testing.T, got []byte, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("result is not JSON: %v\n%s", err, got)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func chunk(content string) string {
	b, _ := json.Marshal(content)
	return `data: {"id":"c1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"content":` + string(b) + `},"finish_reason":null}]}` + "\n\n"
}

func TestAnswerTracker(t *testing.T) {
	const opening = `data: {"id":"c1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}` + "\n\n"
	const finish = `data: {"id":"c1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}` + "\n\n"
	whole := opening + chunk("tok0") + chunk(" tok1") + finish + "data: [DONE]\n\n"
	tests := []struct {
		name                               string
		chunks                             []string
		text                               string
		events                             int
		finished, done, unresumable, start bool
	}{
		{name: "one chunk per event", chunks: []string{opening, chunk("tok0"), chunk(" tok1")}, text: "tok0 tok1", events: 2, start: true},
		{name: "events split anywhere", chunks: splitEvery(opening+chunk("tok0")+chunk(" tok1"), 7), text: "tok0 tok1", events: 2, start: true},
		{name: "CRLF events", chunks: []string{strings.ReplaceAll(opening+chunk("tok0"), "\n", "\r\n")}, text: "tok0", events: 1, start: true},
		{name: "whole answer", chunks: []string{whole}, text: "tok0 tok1", events: 2, finished: true, done: true, start: true},
		{name: "only the opening", chunks: []string{opening}},
		{name: "comments and event names ignored", chunks: []string{": keep-alive\n\nevent: message\n" + chunk("a")}, text: "a", events: 1, start: true},
		{name: "tool calls", chunks: []string{`data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}` + "\n\n"}, unresumable: true},
		{name: "second choice", chunks: []string{`data: {"choices":[{"index":1,"delta":{"content":"x"}}]}` + "\n\n"}, unresumable: true},
		{name: "unreadable event", chunks: []string{"data: {nope\n\n"}, unresumable: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tr answerTracker
			for _, c := range tt.chunks {
				tr.feed([]byte(c))
			}
			if tr.text.String() != tt.text || tr.events != tt.events || tr.finished != tt.finished || tr.done != tt.done ||
				tr.unresumable != tt.unresumable || tr.started() != tt.start {
				t.Errorf("text %q events %d finished %v done %v unresumable %v started %v; want %q %d %v %v %v %v",
					tr.text.String(), tr.events, tr.finished, tr.done, tr.unresumable, tr.started(),
					tt.text, tt.events, tt.finished, tt.done, tt.unresumable, tt.start)
			}
		})
	}
}

func splitEvery(s string, n int) []string {
	var out []string
	for len(s) > n {
		out = append(out, s[:n])
		s = s[n:]
	}
	return append(out, s)
}

func TestContinuationEvent(t *testing.T) {
	var tr answerTracker
	tr.feed([]byte(chunk("tok0")))
	tests := []struct {
		name, data, want string
		keep             bool
	}{
		{name: "opening dropped", data: `{"id":"x","created":9,"model":"other","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}`},
		{name: "content rewritten to the stream's identity", data: `{"id":"x","created":9,"model":"other","choices":[{"index":0,"delta":{"content":" tok1"},"finish_reason":null}]}`,
			want: `data: {"choices":[{"index":0,"delta":{"content":" tok1"},"finish_reason":null}],"created":7,"id":"c1","model":"m"}` + "\n\n", keep: true},
		{name: "usage kept", data: `{"id":"x","choices":[],"usage":{"completion_tokens":3}}`,
			want: `data: {"choices":[],"created":7,"id":"c1","model":"m","usage":{"completion_tokens":3}}` + "\n\n", keep: true},
		{name: "done", data: " [DONE]", want: "data: [DONE]\n\n", keep: true},
		{name: "unreadable dropped", data: "{nope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, keep := tr.continuationEvent([]byte(tt.data))
			if keep != tt.keep || string(got) != tt.want {
				t.Errorf("got %q, %v; want %q, %v", got, keep, tt.want, tt.keep)
			}
		})
	}
}

// FuzzAnswerTracker: any byte stream, cut anywhere, is followed without a
// panic, and the text it keeps is what its content events said.
func FuzzAnswerTracker(f *testing.F) {
	f.Add([]byte(chunk("tok0")+chunk(" tok1")+"data: [DONE]\n\n"), uint8(3))
	f.Add([]byte("data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[]}}]}\r\n\r\n"), uint8(1))
	f.Add([]byte(": ping\n\ndata: [DONE]\n\n"), uint8(0))
	f.Fuzz(func(t *testing.T, stream []byte, cut uint8) {
		var whole, pieces answerTracker
		whole.feed(stream)
		n := int(cut)%16 + 1
		for i := 0; i < len(stream); i += n {
			pieces.feed(stream[i:min(len(stream), i+n)])
		}
		if whole.unresumable != pieces.unresumable || !whole.unresumable && (whole.text.String() != pieces.text.String() || whole.events != pieces.events) {
			t.Errorf("cut every %d bytes: %q/%d/%v, whole: %q/%d/%v", n, pieces.text.String(), pieces.events, pieces.unresumable,
				whole.text.String(), whole.events, whole.unresumable)
		}
	})
}
