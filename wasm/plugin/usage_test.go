package plugin

import (
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

func FuzzUsageScanner(f *testing.F) {
	f.Add([]byte(`{"usage":{"completion_tokens":3}}`), 4)
	f.Fuzz(func(t *testing.T, body []byte, size int) {
		if size <= 0 || size > len(body)+1 {
			size = len(body) + 1
		}
		var whole, chunked usageScanner
		whole.scan(body, false)
		for i := 0; i < len(body); i += size {
			chunked.scan(body[i:min(i+size, len(body))], false)
		}
		if whole.completionTokens != chunked.completionTokens {
			t.Fatalf("whole %d, chunked by %d %d", whole.completionTokens, size, chunked.completionTokens)
		}
	})
}
