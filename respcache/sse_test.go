package respcache

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

const chatStream = `data: {"id":"c1","object":"chat.completion.chunk","created":7,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}

data: {"id":"c1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}

data: {"id":"c1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}

data: {"id":"c1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}

data: {"id":"c1","object":"chat.completion.chunk","created":7,"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}

data: [DONE]

`

const toolStream = "data: {\"id\":\"c2\",\"object\":\"chat.completion.chunk\",\"created\":8,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"},\"finish_reason\":null}]}\r\n\r\n" +
	"data: {\"id\":\"c2\",\"object\":\"chat.completion.chunk\",\"created\":8,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get\",\"arguments\":\"{\\\"a\\\"\"}}]},\"finish_reason\":null}]}\r\n\r\n" +
	"data: {\"id\":\"c2\",\"object\":\"chat.completion.chunk\",\"created\":8,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\":1}\"}}]},\"finish_reason\":null}]}\r\n\r\n" +
	"data: {\"id\":\"c2\",\"object\":\"chat.completion.chunk\",\"created\":8,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\r\n\r\n" +
	"data: [DONE]\r\n\r\n"

const textStream = `data: {"id":"t1","object":"text_completion","created":9,"model":"m","choices":[{"index":0,"text":"a b","finish_reason":null}]}

data: {"id":"t1","object":"text_completion","created":9,"model":"m","choices":[{"index":0,"text":" c","finish_reason":"length"}]}

data: [DONE]

`

func TestAssembleSSE(t *testing.T) {
	tests := []struct {
		name, kind, stream string
		want               string // JSON, compared as values
		err                bool
	}{
		{name: "chat", kind: "chat", stream: chatStream,
			want: `{"id":"c1","object":"chat.completion","created":7,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}`},
		{name: "tool call, CRLF", kind: "chat", stream: toolStream,
			want: `{"id":"c2","object":"chat.completion","created":8,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get","arguments":"{\"a\":1}"}}]},"finish_reason":"tool_calls"}]}`},
		{name: "completions", kind: "completion", stream: textStream,
			want: `{"id":"t1","object":"text_completion","created":9,"model":"m","choices":[{"index":0,"text":"a b c","finish_reason":"length"}]}`},
		{name: "no DONE", kind: "chat", stream: strings.TrimSuffix(chatStream, "data: [DONE]\n\n"), err: true},
		{name: "no finish reason", kind: "chat", stream: "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\ndata: [DONE]\n\n", err: true},
		{name: "garbage", kind: "chat", stream: "data: {nope\n\ndata: [DONE]\n\n", err: true},
		{name: "embeddings never stream", kind: "embedding", stream: chatStream, err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := AssembleSSE(tt.kind, []byte(tt.stream))
			if tt.err {
				if err == nil {
					t.Fatalf("want an error, got %s", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !jsonEqual(t, got, []byte(tt.want)) {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

// TestReplayRoundTrip: a stored answer replayed as events assembles back to
// the same answer, for every shape.
func TestReplayRoundTrip(t *testing.T) {
	for _, tt := range []struct{ kind, stream string }{{"chat", chatStream}, {"chat", toolStream}, {"completion", textStream}} {
		answer, err := AssembleSSE(tt.kind, []byte(tt.stream))
		if err != nil {
			t.Fatal(err)
		}
		replay, err := ReplaySSE(tt.kind, answer, true)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(string(replay), "data: [DONE]\n\n") || !strings.HasPrefix(string(replay), "data: {") {
			t.Errorf("replay is not an event stream:\n%s", replay)
		}
		again, err := AssembleSSE(tt.kind, replay)
		if err != nil {
			t.Fatalf("replay does not assemble: %v\n%s", err, replay)
		}
		if !jsonEqual(t, answer, again) {
			t.Errorf("round trip changed the answer:\n%s\n%s", answer, again)
		}
	}
	if _, err := ReplaySSE("chat", []byte(`{"choices":[]}`), true); err == nil {
		t.Error("replay of an answer without choices")
	}
}

// The usage chunk (choices empty) is replayed only to a request that asked
// for it: a client that did not may read choices[0] of every chunk.
func TestReplayUsageOnlyWhenAsked(t *testing.T) {
	answer := []byte(`{"id":"p","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`)
	for _, include := range []bool{false, true} {
		replay, err := ReplaySSE("chat", answer, include)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(string(replay), `"choices":[]`); got != include {
			t.Errorf("include_usage %v: usage chunk present %v\n%s", include, got, replay)
		}
	}
	r, err := Parse([]byte(`{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}`))
	if err != nil || !r.IncludeUsage || !r.Stream {
		t.Errorf("Parse: %+v, %v", r, err)
	}
}

// A non-streaming answer from a provider (not from AssembleSSE) replays too.
func TestReplayProviderAnswer(t *testing.T) {
	answer := `{"id":"p","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi","annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`
	replay, err := ReplaySSE("chat", []byte(answer), true)
	if err != nil {
		t.Fatal(err)
	}
	back, err := AssembleSSE("chat", replay)
	if err != nil {
		t.Fatal(err)
	}
	var a struct {
		Choices []struct {
			Message struct{ Content string }
		}
	}
	json.Unmarshal(back, &a)
	if len(a.Choices) != 1 || a.Choices[0].Message.Content != "hi" {
		t.Errorf("replayed %s", back)
	}
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatalf("%v: %s", err, a)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return reflect.DeepEqual(x, y)
}
