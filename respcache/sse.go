package respcache

import (
	"bytes"
	"encoding/json"
	"errors"
	"sort"
)

// Streams are stored assembled: an event stream is folded into the one
// JSON answer a non-streaming request would have got, and replayed from it
// as events. One stored form serves both kinds of request (the stream flag
// is not part of the key), it is smaller than the chunks, and the replay
// does not depend on the provider's chunking.

// ErrIncomplete: the stream ended without [DONE] or a finish reason, or
// holds something detour cannot read; it is not stored.
var ErrIncomplete = errors.New("respcache: stream incomplete or unreadable")

type sseChunk struct {
	ID                string          `json:"id"`
	Object            string          `json:"object"`
	Created           int64           `json:"created"`
	Model             string          `json:"model"`
	SystemFingerprint string          `json:"system_fingerprint,omitempty"`
	Choices           []sseChoice     `json:"choices"`
	Usage             json.RawMessage `json:"usage,omitempty"`
}

type sseChoice struct {
	Index        int             `json:"index"`
	Delta        *sseDelta       `json:"delta,omitempty"`
	Text         *string         `json:"text,omitempty"`
	FinishReason *string         `json:"finish_reason"`
	Logprobs     json.RawMessage `json:"logprobs,omitempty"`
}

type sseDelta struct {
	Role      string        `json:"role,omitempty"`
	Content   *string       `json:"content,omitempty"`
	Refusal   *string       `json:"refusal,omitempty"`
	ToolCalls []sseToolCall `json:"tool_calls,omitempty"`
}

type sseToolCall struct {
	Index    int    `json:"index"`
	ID       string `json:"id,omitempty"`
	Type     string `json:"type,omitempty"`
	Function struct {
		Name      string `json:"name,omitempty"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

// The assembled answers.
type chatAnswer struct {
	ID                string          `json:"id"`
	Object            string          `json:"object"`
	Created           int64           `json:"created"`
	Model             string          `json:"model"`
	SystemFingerprint string          `json:"system_fingerprint,omitempty"`
	Choices           []chatChoice    `json:"choices"`
	Usage             json.RawMessage `json:"usage,omitempty"`
}

type chatChoice struct {
	Index        int         `json:"index"`
	Message      chatMessage `json:"message"`
	FinishReason *string     `json:"finish_reason"`
}

type chatMessage struct {
	Role      string         `json:"role"`
	Content   *string        `json:"content"`
	Refusal   *string        `json:"refusal,omitempty"`
	ToolCalls []chatToolCall `json:"tool_calls,omitempty"`
}

type chatToolCall struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

type textAnswer struct {
	ID                string          `json:"id"`
	Object            string          `json:"object"`
	Created           int64           `json:"created"`
	Model             string          `json:"model"`
	SystemFingerprint string          `json:"system_fingerprint,omitempty"`
	Choices           []textChoice    `json:"choices"`
	Usage             json.RawMessage `json:"usage,omitempty"`
}

type textChoice struct {
	Index        int     `json:"index"`
	Text         string  `json:"text"`
	FinishReason *string `json:"finish_reason"`
}

// events splits an event stream into its data payloads.
func events(stream []byte) (data [][]byte, done bool) {
	for _, ev := range bytes.Split(bytes.ReplaceAll(stream, []byte("\r\n"), []byte("\n")), []byte("\n\n")) {
		var payload []byte
		for line := range bytes.SplitSeq(ev, []byte("\n")) {
			if p, ok := bytes.CutPrefix(line, []byte("data:")); ok {
				if len(payload) > 0 {
					payload = append(payload, '\n')
				}
				payload = append(payload, bytes.TrimSpace(p)...)
			}
		}
		if len(payload) == 0 {
			continue
		}
		if string(payload) == "[DONE]" {
			done = true
			continue
		}
		data = append(data, payload)
	}
	return data, done
}

// AssembleSSE folds an OpenAI event stream of kind ("chat" or
// "completion") into the equivalent non-streaming JSON answer.
func AssembleSSE(kind string, stream []byte) ([]byte, error) {
	data, done := events(stream)
	if !done || len(data) == 0 {
		return nil, ErrIncomplete
	}
	var head sseChunk
	type acc struct {
		role      string
		content   *string
		refusal   *string
		text      string
		finish    *string
		toolCalls map[int]*chatToolCall
	}
	choices := map[int]*acc{}
	var usage json.RawMessage
	for i, d := range data {
		var c sseChunk
		if err := json.Unmarshal(d, &c); err != nil {
			return nil, ErrIncomplete
		}
		if i == 0 {
			head = c
		}
		if len(c.Usage) > 0 && string(c.Usage) != "null" {
			usage = c.Usage
		}
		for _, ch := range c.Choices {
			a := choices[ch.Index]
			if a == nil {
				a = &acc{toolCalls: map[int]*chatToolCall{}}
				choices[ch.Index] = a
			}
			if ch.FinishReason != nil {
				a.finish = ch.FinishReason
			}
			if ch.Text != nil {
				a.text += *ch.Text
			}
			if dl := ch.Delta; dl != nil {
				if dl.Role != "" {
					a.role = dl.Role
				}
				if dl.Content != nil {
					s := ""
					if a.content != nil {
						s = *a.content
					}
					s += *dl.Content
					a.content = &s
				}
				if dl.Refusal != nil {
					s := ""
					if a.refusal != nil {
						s = *a.refusal
					}
					s += *dl.Refusal
					a.refusal = &s
				}
				for _, tc := range dl.ToolCalls {
					t := a.toolCalls[tc.Index]
					if t == nil {
						t = &chatToolCall{}
						a.toolCalls[tc.Index] = t
					}
					if tc.ID != "" {
						t.ID = tc.ID
					}
					if tc.Type != "" {
						t.Type = tc.Type
					}
					if tc.Function.Name != "" {
						t.Function.Name = tc.Function.Name
					}
					t.Function.Arguments += tc.Function.Arguments
				}
			}
		}
	}
	idx := make([]int, 0, len(choices))
	for i, a := range choices {
		if a.finish == nil {
			return nil, ErrIncomplete
		}
		idx = append(idx, i)
	}
	sort.Ints(idx)
	if len(idx) == 0 {
		return nil, ErrIncomplete
	}
	switch kind {
	case "chat":
		out := chatAnswer{ID: head.ID, Object: "chat.completion", Created: head.Created, Model: head.Model,
			SystemFingerprint: head.SystemFingerprint, Usage: usage}
		for _, i := range idx {
			a := choices[i]
			role := a.role
			if role == "" {
				role = "assistant"
			}
			m := chatMessage{Role: role, Content: a.content, Refusal: a.refusal}
			tcs := make([]int, 0, len(a.toolCalls))
			for j := range a.toolCalls {
				tcs = append(tcs, j)
			}
			sort.Ints(tcs)
			for _, j := range tcs {
				m.ToolCalls = append(m.ToolCalls, *a.toolCalls[j])
			}
			out.Choices = append(out.Choices, chatChoice{Index: i, Message: m, FinishReason: a.finish})
		}
		return json.Marshal(out)
	case "completion":
		out := textAnswer{ID: head.ID, Object: "text_completion", Created: head.Created, Model: head.Model,
			SystemFingerprint: head.SystemFingerprint, Usage: usage}
		for _, i := range idx {
			out.Choices = append(out.Choices, textChoice{Index: i, Text: choices[i].text, FinishReason: choices[i].finish})
		}
		return json.Marshal(out)
	}
	return nil, ErrIncomplete
}

// ReplaySSE turns a stored JSON answer of kind into an event stream: per
// choice a chunk with the role, one with the whole content (or tool calls),
// one with the finish reason, then, when the request asked for it
// (stream_options.include_usage) and the answer has one, the usage chunk
// (choices empty, as OpenAI sends it: a client that did not ask for it may
// read choices[0] of every chunk), then [DONE].
func ReplaySSE(kind string, answer []byte, includeUsage bool) ([]byte, error) {
	var buf bytes.Buffer
	emit := func(v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		buf.WriteString("data: ")
		buf.Write(b)
		buf.WriteString("\n\n")
		return nil
	}
	switch kind {
	case "chat":
		var a chatAnswer
		if err := json.Unmarshal(answer, &a); err != nil || len(a.Choices) == 0 {
			return nil, ErrIncomplete
		}
		base := sseChunk{ID: a.ID, Object: "chat.completion.chunk", Created: a.Created, Model: a.Model, SystemFingerprint: a.SystemFingerprint}
		for _, ch := range a.Choices {
			c := base
			role := &sseDelta{Role: ch.Message.Role}
			if ch.Message.Content != nil {
				empty := ""
				role.Content = &empty
			}
			c.Choices = []sseChoice{{Index: ch.Index, Delta: role}}
			if err := emit(c); err != nil {
				return nil, err
			}
			d := &sseDelta{Content: ch.Message.Content, Refusal: ch.Message.Refusal}
			for j, tc := range ch.Message.ToolCalls {
				t := sseToolCall{Index: j, ID: tc.ID, Type: tc.Type}
				t.Function.Name, t.Function.Arguments = tc.Function.Name, tc.Function.Arguments
				d.ToolCalls = append(d.ToolCalls, t)
			}
			c.Choices = []sseChoice{{Index: ch.Index, Delta: d}}
			if err := emit(c); err != nil {
				return nil, err
			}
			c.Choices = []sseChoice{{Index: ch.Index, Delta: &sseDelta{}, FinishReason: ch.FinishReason}}
			if err := emit(c); err != nil {
				return nil, err
			}
		}
		if includeUsage && len(a.Usage) > 0 && string(a.Usage) != "null" {
			c := base
			c.Choices, c.Usage = []sseChoice{}, a.Usage
			if err := emit(c); err != nil {
				return nil, err
			}
		}
	case "completion":
		var a textAnswer
		if err := json.Unmarshal(answer, &a); err != nil || len(a.Choices) == 0 {
			return nil, ErrIncomplete
		}
		base := sseChunk{ID: a.ID, Object: "text_completion", Created: a.Created, Model: a.Model, SystemFingerprint: a.SystemFingerprint}
		for _, ch := range a.Choices {
			text := ch.Text
			c := base
			c.Choices = []sseChoice{{Index: ch.Index, Text: &text}}
			if err := emit(c); err != nil {
				return nil, err
			}
			empty := ""
			c.Choices = []sseChoice{{Index: ch.Index, Text: &empty, FinishReason: ch.FinishReason}}
			if err := emit(c); err != nil {
				return nil, err
			}
		}
		if includeUsage && len(a.Usage) > 0 && string(a.Usage) != "null" {
			c := base
			c.Choices, c.Usage = []sseChoice{}, a.Usage
			if err := emit(c); err != nil {
				return nil, err
			}
		}
	default:
		return nil, ErrIncomplete
	}
	buf.WriteString("data: [DONE]\n\n")
	return buf.Bytes(), nil
}
