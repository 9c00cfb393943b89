package probe

import (
	"bytes"
	"testing"
	"time"
)

// FuzzAnswer feeds arbitrary provider answers to the stream and whole-body
// readers, the error-shape check and the JSON path rules: a provider's
// bytes must never crash the controller.
func FuzzAnswer(f *testing.F) {
	for _, seed := range []string{
		"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"usage\":{\"completion_tokens\":3}}\n\ndata: [DONE]\n\n",
		"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":1}\"}}]}}]}\n\n",
		"data: {\"error\":{\"message\":\"x\",\"type\":\"server_error\"}}\n\n",
		`{"choices":[{"message":{"content":"{\"items\":[{\"name\":\"a\"}]}"}}],"usage":{"completion_tokens":5}}`,
		`{"error":{"message":"bad","type":"invalid_request_error"}}`,
		"data: {\n\n", "\xff\xfe", "",
	} {
		f.Add([]byte(seed))
	}
	now := func() time.Time { return time.Unix(0, 0) }
	f.Fuzz(func(t *testing.T, b []byte) {
		var a answer
		_ = readStream(bytes.NewReader(b), now, &a)
		_ = a.rate()
		var w answer
		_ = readWhole(bytes.NewReader(b), now, &w)
		_, _ = errorShape(b)
		if v, err := jsonObject(string(b)); err == nil {
			_ = hasPath(v, "items.0.name")
		}
	})
}
