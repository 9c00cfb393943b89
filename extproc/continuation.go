package extproc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/detourhq/detour/policy"
)

// Continuation requests: how a partial answer is handed to the backend
// that finishes it (resume.go). The resumer writes one neutral request
// (the client's, with the partial answer as a final assistant message);
// the upstream stage marks it, per attempt, the way that attempt's backend
// expects (policy.Backend.Continuation). Both run only when a stream
// stalls, so they favour plain encoding/json over speed.

// continuationBody is the client's chat request body with the partial
// answer appended as the last assistant message (joined to it when the
// request already ends with one: a resumed answer resumed again), model
// set to target (the route, so the router may pick any backend), and the
// answer limits lowered by the tokens already sent.
func continuationBody(body []byte, target, partial string, sent int) ([]byte, error) {
	return editRequest(body, "continuation", func(req map[string]json.RawMessage) error {
		msgs, ok := messages(req)
		if !ok {
			return errors.New("continuation: the request has no messages array")
		}
		last := msgs[len(msgs)-1]
		if role(last) == "assistant" {
			var prior string
			if err := json.Unmarshal(last["content"], &prior); err != nil {
				return errors.New("continuation: the last assistant message has no text content")
			}
			last["content"] = jsonString(prior + partial)
		} else {
			msgs = append(msgs, map[string]json.RawMessage{
				"role":    json.RawMessage(`"assistant"`),
				"content": jsonString(partial),
			})
		}
		if err := setMessages(req, msgs); err != nil {
			return fmt.Errorf("continuation: messages: %w", err)
		}
		req["model"] = jsonString(target)
		for _, k := range []string{"max_tokens", "max_completion_tokens"} {
			raw, ok := req[k]
			if !ok || bytes.Equal(raw, []byte("null")) {
				continue
			}
			n, err := strconv.Atoi(string(raw))
			if err != nil {
				return fmt.Errorf("continuation: %s: %w", k, err)
			}
			req[k] = json.RawMessage(strconv.Itoa(max(1, n-sent)))
		}
		return nil
	})
}

// withModel is a request body with its model set to target (the route),
// so that the router may pick any backend for it again.
func withModel(body []byte, target string) ([]byte, error) {
	return editRequest(body, "repeat", func(req map[string]json.RawMessage) error {
		req["model"] = jsonString(target)
		return nil
	})
}

// markContinuation marks a continuation body for a backend's style.
func markContinuation(body []byte, style string) ([]byte, error) {
	return editRequest(body, "continuation", func(req map[string]json.RawMessage) error {
		switch style {
		case policy.ContinuationPrefix:
			msgs, ok := messages(req)
			if !ok || role(msgs[len(msgs)-1]) != "assistant" {
				return errors.New("continuation: the request does not end with an assistant message")
			}
			msgs[len(msgs)-1]["prefix"] = json.RawMessage("true")
			return setMessages(req, msgs)
		case policy.ContinuationFinalMessage:
			req["continue_final_message"] = json.RawMessage("true")
			req["add_generation_prompt"] = json.RawMessage("false")
			return nil
		}
		return fmt.Errorf("continuation: backend takes no continuation (style %q)", style)
	})
}

// editRequest decodes a request body as a JSON object, lets edit change
// its fields and encodes it again; what names the operation in errors.
func editRequest(body []byte, what string, edit func(req map[string]json.RawMessage) error) ([]byte, error) {
	var req map[string]json.RawMessage
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, fmt.Errorf("%s: request body: %w", what, err)
	}
	if err := edit(req); err != nil {
		return nil, err
	}
	return json.Marshal(req)
}

// messages decodes req's messages; ok is false unless there is at least one.
func messages(req map[string]json.RawMessage) ([]map[string]json.RawMessage, bool) {
	var msgs []map[string]json.RawMessage
	if err := json.Unmarshal(req["messages"], &msgs); err != nil || len(msgs) == 0 {
		return nil, false
	}
	return msgs, true
}

func setMessages(req map[string]json.RawMessage, msgs []map[string]json.RawMessage) error {
	m, err := json.Marshal(msgs)
	if err != nil {
		return err
	}
	req["messages"] = m
	return nil
}

func role(m map[string]json.RawMessage) string {
	var r string
	_ = json.Unmarshal(m["role"], &r)
	return r
}

func jsonString(s string) json.RawMessage {
	b, _ := json.Marshal(s) // a string always encodes
	return b
}

// answerTracker follows an OpenAI chat event stream as it passes, keeping
// what a continuation needs: the text so far and the stream's identity.
type answerTracker struct {
	pending  []byte // an event not yet complete
	text     bytes.Buffer
	events   int // content events: about one token each
	id       string
	model    string
	created  json.RawMessage
	finished bool // a finish reason was sent
	done     bool // [DONE] was sent
	// unresumable: something a continuation cannot carry on (tool calls,
	// several choices, an unreadable event).
	unresumable bool
}

// maxPendingEvent bounds an incomplete event kept between chunks;
// maxKeptPending is the largest buffer kept for the next chunk.
const (
	maxPendingEvent = 1 << 20
	maxKeptPending  = 64 << 10
)

type trackedChunk struct {
	ID      string          `json:"id"`
	Model   string          `json:"model"`
	Created json.RawMessage `json:"created"`
	Choices []struct {
		Index int `json:"index"`
		Delta struct {
			Content   *string         `json:"content"`
			ToolCalls json.RawMessage `json:"tool_calls"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
}

// feed reads one body chunk of the stream.
func (t *answerTracker) feed(chunk []byte) {
	if t.unresumable {
		return
	}
	t.pending = append(t.pending, chunk...)
	for {
		end, skip := eventEnd(t.pending)
		if end < 0 {
			break
		}
		t.event(t.pending[:end])
		t.pending = t.pending[end+skip:]
	}
	if len(t.pending) > maxPendingEvent {
		t.unresumable = true
	}
	if len(t.pending) == 0 {
		// Reuse the array from its start; one grown by a long event is
		// dropped.
		if cap(t.pending) > maxKeptPending {
			t.pending = nil
		} else {
			t.pending = t.pending[:0]
		}
	}
}

// eventEnd finds the blank line ending the first event: its offset and
// the separator's length; -1 when the event is not complete.
func eventEnd(b []byte) (int, int) {
	lf := bytes.Index(b, []byte("\n\n"))
	crlf := bytes.Index(b, []byte("\r\n\r\n"))
	switch {
	case lf < 0 && crlf < 0:
		return -1, 0
	case crlf >= 0 && (lf < 0 || crlf < lf):
		return crlf, 4
	}
	return lf, 2
}

func (t *answerTracker) event(ev []byte) {
	for line := range bytes.SplitSeq(ev, []byte("\n")) {
		data, ok := bytes.CutPrefix(bytes.TrimRight(line, "\r"), []byte("data:"))
		if !ok {
			continue // comments, event names, ids
		}
		data = bytes.TrimSpace(data)
		if bytes.Equal(data, []byte("[DONE]")) {
			t.done = true
			continue
		}
		var c trackedChunk
		if err := json.Unmarshal(data, &c); err != nil {
			t.unresumable = true
			return
		}
		if t.id == "" {
			t.id, t.model, t.created = c.ID, c.Model, c.Created
		}
		for _, ch := range c.Choices {
			if ch.Index != 0 || len(ch.Delta.ToolCalls) > 0 && !bytes.Equal(ch.Delta.ToolCalls, []byte("null")) {
				t.unresumable = true
				return
			}
			if ch.Delta.Content != nil && *ch.Delta.Content != "" {
				t.text.WriteString(*ch.Delta.Content)
				t.events++
			}
			if ch.FinishReason != nil && *ch.FinishReason != "" {
				t.finished = true
			}
		}
	}
}

// started: at least one token reached the client, so the stream can no
// longer be retried whole and only a continuation can save it.
func (t *answerTracker) started() bool { return t.events > 0 }

// continuationEvent rewrites one event of the continuation's stream for
// the client: the original stream's id, model and created time, and
// nothing for a chunk that only opens the message (the client has had
// that one). ok is false for an event to drop.
func (t *answerTracker) continuationEvent(data []byte) (out []byte, ok bool) {
	data = bytes.TrimSpace(data)
	if bytes.Equal(data, []byte("[DONE]")) {
		return []byte("data: [DONE]\n\n"), true
	}
	var c map[string]json.RawMessage
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, false
	}
	if opening(c["choices"]) {
		return nil, false
	}
	if t.id != "" {
		c["id"] = jsonString(t.id)
	}
	if t.model != "" {
		c["model"] = jsonString(t.model)
	}
	if len(t.created) > 0 {
		c["created"] = t.created
	}
	b, err := json.Marshal(c)
	if err != nil {
		return nil, false
	}
	return append(append([]byte("data: "), b...), "\n\n"...), true
}

// opening reports whether choices is one choice with only a role: the
// first chunk of a stream.
func opening(choices json.RawMessage) bool {
	var cs []struct {
		Delta        map[string]json.RawMessage `json:"delta"`
		FinishReason *string                    `json:"finish_reason"`
	}
	if json.Unmarshal(choices, &cs) != nil || len(cs) != 1 || cs[0].FinishReason != nil {
		return false
	}
	for k, v := range cs[0].Delta {
		switch {
		case k == "role":
		case k == "content" && (bytes.Equal(v, []byte(`""`)) || bytes.Equal(v, []byte("null"))):
		default:
			return false
		}
	}
	return true
}
