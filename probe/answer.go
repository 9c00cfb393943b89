package probe

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// answer is what came back for one probe, with its timing.
type answer struct {
	text      strings.Builder // content
	reasoning bool            // reasoning text came (reasoning_content or reasoning)
	tools     []*calledTool   // pointers: growing the slice must not copy a Builder in use
	finished  bool            // a finish_reason or [DONE] was seen
	usage     int             // completion_tokens, when reported
	chunks    int             // chunks that carried a token
	first     time.Time
	last      time.Time
	streamErr string // an error object sent inside the stream
}

type calledTool struct {
	name string
	args strings.Builder
}

// chunk is the part of a streamed chunk or a whole completion the probe
// reads.
type chunk struct {
	Choices []struct {
		Delta   *delta `json:"delta"`
		Message *delta `json:"message"`
		// FinishReason is a string in OpenAI's API; some providers send
		// other types, which still mean the answer finished.
		FinishReason any `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		CompletionTokens int `json:"completion_tokens"`
	} `json:"usage"`
	Error *apiError `json:"error"`
}

type delta struct {
	Content          *string `json:"content"`
	ReasoningContent *string `json:"reasoning_content"`
	Reasoning        *string `json:"reasoning"`
	ToolCalls        []struct {
		Index    int `json:"index"`
		Function struct {
			Name      string `json:"name"`
			Arguments string `json:"arguments"`
		} `json:"function"`
	} `json:"tool_calls"`
}

// apiError is OpenAI's error object.
type apiError struct {
	Message any `json:"message"`
	Type    any `json:"type"`
	Code    any `json:"code"`
}

// maxLine bounds one SSE line: a chunk is small, but a tool call's
// arguments or a provider's error may come in one.
const maxLine = 1 << 20

// readStream reads an SSE answer, timing each token-bearing chunk.
func readStream(r io.Reader, now func() time.Time, a *answer) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	for sc.Scan() {
		line := sc.Bytes()
		data, ok := bytes.CutPrefix(line, []byte("data:"))
		if !ok {
			continue // comments, event names, blank separators
		}
		data = bytes.TrimSpace(data)
		if string(data) == "[DONE]" {
			a.finished = true
			return nil
		}
		var c chunk
		if err := json.Unmarshal(data, &c); err != nil {
			return fmt.Errorf("chunk %d is not JSON: %w", a.chunks+1, err)
		}
		a.add(&c, now())
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read stream: %w", err)
	}
	return nil
}

// readWhole reads a non-streamed completion.
func readWhole(r io.Reader, now func() time.Time, a *answer) error {
	body, err := io.ReadAll(io.LimitReader(r, maxLine))
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	var c chunk
	if err := json.Unmarshal(body, &c); err != nil {
		return fmt.Errorf("answer is not JSON: %w", err)
	}
	a.add(&c, now())
	return nil
}

// add takes in one chunk (or a whole completion) that arrived at t.
func (a *answer) add(c *chunk, t time.Time) {
	if c.Error != nil {
		a.streamErr = describeError(c.Error)
	}
	if c.Usage != nil && c.Usage.CompletionTokens > 0 {
		a.usage = c.Usage.CompletionTokens
	}
	token := false
	for _, ch := range c.Choices {
		if ch.FinishReason != nil {
			a.finished = true
		}
		d := ch.Delta
		if d == nil {
			d = ch.Message
		}
		if d == nil {
			continue
		}
		if d.Content != nil && *d.Content != "" {
			a.text.WriteString(*d.Content)
			token = true
		}
		for _, r := range []*string{d.ReasoningContent, d.Reasoning} {
			if r != nil && *r != "" {
				a.reasoning, token = true, true
			}
		}
		for _, tc := range d.ToolCalls {
			// Streamed calls are keyed by index; the name comes first.
			for len(a.tools) <= tc.Index && tc.Index < 128 {
				a.tools = append(a.tools, &calledTool{})
			}
			// The index is the provider's: a negative one names no call
			// (it used to index the slice and crash the controller).
			if tc.Index >= 0 && tc.Index < len(a.tools) {
				ct := a.tools[tc.Index]
				ct.name += tc.Function.Name
				ct.args.WriteString(tc.Function.Arguments)
				token = token || tc.Function.Name != "" || tc.Function.Arguments != ""
			}
		}
	}
	if !token {
		return
	}
	if a.chunks == 0 {
		a.first = t
	}
	a.chunks++
	a.last = t
}

// rate is the generation rate after the first token: the usage's
// completion tokens (else the chunks counted) less the first, over the
// time from the first token to the last. 0 when not measurable.
func (a *answer) rate() float64 {
	n := a.chunks
	if a.usage > 0 {
		n = a.usage
	}
	span := a.last.Sub(a.first)
	if n < 2 || span <= 0 {
		return 0
	}
	return float64(n-1) / span.Seconds()
}

// describeError renders an OpenAI error object for a reason: type, code
// and the message, cut short.
func describeError(e *apiError) string {
	var parts []string
	for _, v := range []any{e.Type, e.Code} {
		if v != nil && fmt.Sprint(v) != "" {
			parts = append(parts, fmt.Sprint(v))
		}
	}
	if m, ok := e.Message.(string); ok && m != "" {
		parts = append(parts, clip(m, 160))
	}
	return strings.Join(parts, ": ")
}

// errorShape checks a body is OpenAI's error envelope and describes it.
func errorShape(body []byte) (string, error) {
	var env struct {
		Error *json.RawMessage `json:"error"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return "", errors.New("the error body is not JSON")
	}
	if env.Error == nil {
		return "", errors.New(`the error body has no "error" object`)
	}
	var e apiError
	if err := json.Unmarshal(*env.Error, &e); err != nil {
		return "", errors.New(`"error" is not an object`)
	}
	if m, ok := e.Message.(string); !ok || m == "" {
		return "", errors.New(`the error has no "message" string`)
	}
	if _, ok := e.Type.(string); !ok {
		return "", errors.New(`the error has no "type" string`)
	}
	return describeError(&e), nil
}

// clip shortens s to n bytes at most, on a rune boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

func utf8RuneStart(b byte) bool { return b&0xC0 != 0x80 }
