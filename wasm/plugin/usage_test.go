package plugin

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func TestUsageScanner(t *testing.T) {
	sse := `data: {"id":"c1","choices":[{"delta":{"content":"Hel"}}]}` + "\n\n" +
		`data: {"id":"c1","choices":[{"delta":{"content":"lo"}}]}` + "\n\n" +
		`data: {"id":"c1","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":123,"total_tokens":132}}` + "\n\n" +
		"data: [DONE]\n\n"
	json := `{"id":"c2","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens": 5, "completion_tokens": 7}}`
	for _, tt := range []struct {
		name string
		body string
		want int
	}{
		{"sse", sse, 123},
		{"json", json, 7},
		{"no usage", `{"choices":[]}`, 0},
		{"cut number at end", `{"completion_tokens":12`, 0},
		{"not a number", `{"completion_tokens":"x"}`, 0},
		// Found by FuzzUsageScanner: a key beginning at the closing quote
		// of another was skipped when whole, found when the carried tail
		// began at that quote.
		{"a key at the closing quote of another", `"completion_tokens"completion_tokens":5,` + strings.Repeat(" ", 26) + "\n", 5},
	} {
		// Every split into chunks of every size gives the same answer.
		for size := 1; size <= len(tt.body); size++ {
			var u usageScanner
			for i := 0; i < len(tt.body); i += size {
				u.scan([]byte(tt.body[i:min(i+size, len(tt.body))]), false)
			}
			if u.completionTokens != tt.want {
				t.Fatalf("%s in chunks of %d: got %d, want %d", tt.name, size, u.completionTokens, tt.want)
			}
		}
	}
}

func TestUsageScannerGap(t *testing.T) {
	var u usageScanner
	u.scan([]byte(`..."completion_tok`), false)
	u.scan([]byte(`ens":5,`), true) // bytes were skipped: no join
	if u.completionTokens != 0 {
		t.Errorf("joined across a gap: %d", u.completionTokens)
	}
	u.scan([]byte(strings.Repeat("x", 5000)+`"completion_tokens":42}`), false)
	if u.completionTokens != 42 || cap(u.buf) > 16<<10 {
		t.Errorf("got %d, buffer cap %d", u.completionTokens, cap(u.buf))
	}
}

// usageStreams are answers as OpenAI-compatible providers send them; they
// seed FuzzUsageScanner.
var usageStreams = []string{
	// A stream with stream_options.include_usage: the usage chunk, then [DONE].
	`data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}` + "\n\n" +
		`data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"stop"}]}` + "\n\n" +
		`data: {"id":"c1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":123,"total_tokens":132,"completion_tokens_details":{"reasoning_tokens":0}}}` + "\n\n" +
		"data: [DONE]\n\n",
	// CRLF line ends, a keep-alive comment, empty data, usage on the last
	// content chunk (vLLM's continuous_usage_stats).
	": ping\r\n\r\ndata:\r\n\r\n" +
		`data:{"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}` + "\r\n\r\n" +
		`data:{"choices":[{"delta":{"content":"y"}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}` + "\r\n\r\ndata:[DONE]\r\n\r\n",
	// A whole JSON answer, pretty-printed.
	"{\n  \"choices\": [{\"message\": {\"content\": \"hi\"}}],\n  \"usage\": {\n    \"prompt_tokens\": 5,\n    \"completion_tokens\": 7\n  }\n}\n",
	// The key in content, and a number too long to be a count.
	`data: {"choices":[{"delta":{"content":"\"completion_tokens\": 99"}}]}` + "\n\n" + `{"usage":{"completion_tokens":1234567890}}`,
}

// usageRef is the scanner's specification: the last `"completion_tokens"`
// followed by at most maxSep spaces and colons, at most 9 digits and a
// delimiter.
var usageRef = regexp.MustCompile(`"completion_tokens"[ :]{0,8}([0-9]{1,9})[,} \n\r]`)

// usageOf is the count usageRef finds in b; ok is false if there is none.
func usageOf(b []byte) (n int, ok bool) {
	m := usageRef.FindAllSubmatch(b, -1)
	if len(m) == 0 {
		return 0, false
	}
	n, _ = strconv.Atoi(string(m[len(m)-1][1]))
	return n, true
}

// FuzzUsageScanner: the count the scanner finds is the specification's,
// however the body is split into chunks; and after a gap (bytes skipped)
// only what follows the gap counts, or the count before it if nothing does.
func FuzzUsageScanner(f *testing.F) {
	f.Add([]byte(`{"usage":{"completion_tokens":3}}`), 4)
	for _, s := range usageStreams {
		f.Add([]byte(s), 1)
		f.Add([]byte(s), 50)
	}
	f.Fuzz(func(t *testing.T, body []byte, size int) {
		if size <= 0 || size > len(body)+1 {
			size = len(body) + 1
		}
		want, _ := usageOf(body)
		var whole, chunked usageScanner
		whole.scan(body, false)
		if whole.completionTokens != want {
			t.Fatalf("found %d, want %d in %q", whole.completionTokens, want, body)
		}
		for i := 0; i < len(body); i += size {
			chunked.scan(body[i:min(i+size, len(body))], false)
		}
		if chunked.completionTokens != want {
			t.Fatalf("in chunks of %d: found %d, want %d in %q", size, chunked.completionTokens, want, body)
		}

		cut := size % (len(body) + 1)
		var gapped usageScanner
		gapped.scan(body[:cut], false)
		gapped.scan(body[cut:], true)
		want, ok := usageOf(body[cut:])
		if !ok {
			want, _ = usageOf(body[:cut])
		}
		if gapped.completionTokens != want {
			t.Fatalf("after a gap at %d: found %d in %q", cut, gapped.completionTokens, body)
		}
	})
}
