package probe

import (
	"bytes"
	"encoding/json"
	"math"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"
	"unicode/utf8"
)

// sseSeeds are provider answers as they come on the wire: streams in the
// shapes OpenAI-compatible providers send, and whole bodies.
var sseSeeds = []string{
	// OpenAI: role chunk, tokens, finish, usage chunk, [DONE].
	`data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"finish_reason":null}]}` + "\n\n" +
		`data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"po"},"finish_reason":null}]}` + "\n\n" +
		`data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"ng"},"finish_reason":null}]}` + "\n\n" +
		`data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}` + "\n\n" +
		`data: {"id":"c1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}` + "\n\n" +
		"data: [DONE]\n\n",
	// CRLF line ends, no space after the colon (some vLLM and proxies).
	"data:{\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\r\n\r\ndata:[DONE]\r\n\r\n",
	// A tool call streamed by index: name first, then the arguments in parts.
	`data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}` + "\n\n" +
		`data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"finish_reason":null}]}` + "\n\n" +
		`data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"finish_reason":null}]}` + "\n\n" +
		`data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}` + "\n\ndata: [DONE]\n\n",
	// Keep-alive comments, event names, ids, retry, empty data lines.
	": OPENROUTER PROCESSING\n\n: ping\nevent: message\nid: 7\nretry: 100\ndata:\n\ndata: \n\n" +
		`data: {"choices":[{"delta":{"content":"x"},"finish_reason":"length"}]}` + "\n\n",
	// Azure: filter results before the role chunk.
	`data: {"choices":[],"prompt_filter_results":[{"prompt_index":0,"content_filter_results":{}}]}` + "\n\n" +
		`data: {"choices":[{"delta":{"content":"ok"},"finish_reason":"stop","content_filter_results":{}}]}` + "\n\n",
	// Reasoning models: DeepSeek's reasoning_content, OpenRouter's reasoning.
	`data: {"choices":[{"delta":{"reasoning_content":"Let me think"}}]}` + "\n\n" +
		`data: {"choices":[{"delta":{"reasoning":"…"}}]}` + "\n\n" +
		`data: {"choices":[{"delta":{"content":"42"},"finish_reason":1}]}` + "\n\n",
	// Completions API.
	`data: {"object":"text_completion","choices":[{"text":" tok","index":0,"finish_reason":null}]}` + "\n\n",
	// An error inside the stream, and a chunk that is not JSON.
	"data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\",\"code\":529}}\n\n",
	"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {oops\n\n",
	// Whole (non-streamed) bodies.
	`{"id":"c2","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"{\"items\":[{\"name\":\"a\"}]}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}`,
	`{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}`,
	"```json\n{\"status\": \"ok\"}\n```",
	"\xff\xfe", "",
}

// FuzzAnswer feeds arbitrary provider answers to the stream and whole-body
// readers, the error-shape check and the JSON path rules: a provider's
// bytes must never crash the controller, what is read must be consistent
// (a rate is a finite non-negative number, tokens are counted only for
// data lines) and a stream reads the same with CRLF line ends.
func FuzzAnswer(f *testing.F) {
	for _, seed := range sseSeeds {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > maxLine/2 {
			return // CRLF could push a line over the limit
		}
		var a answer
		err := readStream(bytes.NewReader(b), ticker(), &a)
		checkAnswer(t, &a)
		if data := bytes.Count(b, []byte("data:")); a.chunks > data {
			t.Fatalf("%d chunks with tokens from %d data lines", a.chunks, data)
		}
		// The network splits a stream anywhere, and some providers end
		// lines with CRLF: neither changes what is read.
		var o answer
		oerr := readStream(iotest.OneByteReader(bytes.NewReader(b)), ticker(), &o)
		if (err == nil) != (oerr == nil) || !sameAnswer(&a, &o) {
			t.Fatalf("a byte at a time reads differently:\nwhole %v %+v\nbytes %v %+v", err, summary(&a), oerr, summary(&o))
		}
		var c answer
		crlf := bytes.ReplaceAll(b, []byte("\n"), []byte("\r\n"))
		cerr := readStream(bytes.NewReader(crlf), ticker(), &c)
		if (err == nil) != (cerr == nil) || !sameAnswer(&a, &c) {
			t.Fatalf("CRLF reads differently:\nLF   %v %+v\nCRLF %v %+v", err, summary(&a), cerr, summary(&c))
		}

		var w answer
		if err := readWhole(bytes.NewReader(b), ticker(), &w); err == nil && !json.Valid(b) {
			t.Fatalf("readWhole accepted invalid JSON %q", b)
		}
		checkAnswer(t, &w)
		if w.chunks > 1 {
			t.Fatalf("a whole body counted as %d chunks", w.chunks)
		}

		if desc, err := errorShape(b); err == nil && (desc == "" || !utf8.ValidString(desc)) {
			t.Fatalf("errorShape(%q) = %q", b, desc)
		}
		if v, err := jsonObject(string(b)); err == nil {
			for k := range v {
				if !strings.Contains(k, ".") && !hasPath(v, k) {
					t.Fatalf("hasPath misses the top-level key %q", k)
				}
			}
			_ = hasPath(v, "items.0.name")
		}
	})
}

// ticker is a clock that moves a millisecond per reading, so chunks have
// distinct times and a rate can be computed.
func ticker() func() time.Time {
	t := time.Unix(0, 0)
	return func() time.Time {
		t = t.Add(time.Millisecond)
		return t
	}
}

// checkAnswer asserts what the prober's verdict relies on.
func checkAnswer(t *testing.T, a *answer) {
	t.Helper()
	if a.chunks < 0 || a.usage < 0 {
		t.Fatalf("negative counts: %+v", summary(a))
	}
	if a.chunks == 0 && (!a.first.IsZero() || !a.last.IsZero()) {
		t.Fatalf("times without chunks: %+v", summary(a))
	}
	if a.last.Before(a.first) {
		t.Fatalf("last token before the first: %+v", summary(a))
	}
	if r := a.rate(); r < 0 || math.IsNaN(r) || math.IsInf(r, 0) {
		t.Fatalf("rate %v: %+v", r, summary(a))
	}
	if len(a.tools) > 128 {
		t.Fatalf("%d tool calls kept", len(a.tools))
	}
}

// answerSummary is an answer's comparable content.
type answerSummary struct {
	Text, StreamErr          string
	Reasoning, Finished      bool
	Usage, Chunks            int
	First, Last              time.Time
	ToolNames, ToolArguments []string
}

func summary(a *answer) answerSummary {
	s := answerSummary{Text: a.text.String(), StreamErr: a.streamErr, Reasoning: a.reasoning, Finished: a.finished,
		Usage: a.usage, Chunks: a.chunks, First: a.first, Last: a.last}
	for i := range a.tools {
		s.ToolNames = append(s.ToolNames, a.tools[i].name)
		s.ToolArguments = append(s.ToolArguments, a.tools[i].args.String())
	}
	return s
}

func sameAnswer(a, b *answer) bool {
	x, y := summary(a), summary(b)
	return x.Text == y.Text && x.StreamErr == y.StreamErr && x.Reasoning == y.Reasoning && x.Finished == y.Finished &&
		x.Usage == y.Usage && x.Chunks == y.Chunks && x.First.Equal(y.First) && x.Last.Equal(y.Last) &&
		slices.Equal(x.ToolNames, y.ToolNames) && slices.Equal(x.ToolArguments, y.ToolArguments)
}
