package sim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// apiError is an error answered in OpenAI's envelope:
// {"error":{"message","type","param","code"}}.
type apiError struct {
	status  int
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

func (e *apiError) Error() string { return e.Message }

func ptr(s string) *string { return &s }

func invalidRequest(msg string) *apiError {
	return &apiError{status: http.StatusBadRequest, Message: msg, Type: "invalid_request_error"}
}

func invalidParam(param, code, msg string) *apiError {
	e := invalidRequest(msg)
	e.Param = ptr(param)
	if code != "" {
		e.Code = ptr(code)
	}
	return e
}

func modelNotFound(model string) *apiError {
	return &apiError{
		status:  http.StatusNotFound,
		Message: fmt.Sprintf("The model `%s` does not exist or you do not have access to it.", model),
		Type:    "invalid_request_error",
		Param:   ptr("model"),
		Code:    ptr("model_not_found"),
	}
}

// faultError is the error a Status fault answers, shaped as OpenAI shapes
// errors of that status.
func faultError(status int) *apiError {
	e := &apiError{status: status}
	switch {
	case status == http.StatusTooManyRequests:
		e.Type, e.Code = "requests", ptr("rate_limit_exceeded")
		e.Message = "Rate limit reached for requests (simulated). Please try again later."
	case status == http.StatusUnauthorized:
		e.Type, e.Code = "authentication_error", ptr("invalid_api_key")
		e.Message = "Incorrect API key provided (simulated)."
	case status == http.StatusForbidden:
		e.Type = "permission_error"
		e.Message = "You are not allowed to make this request (simulated)."
	case status == http.StatusServiceUnavailable:
		e.Type = "server_error"
		e.Message = "The engine is currently overloaded, please try again later (simulated)."
	case status >= 500:
		e.Type = "server_error"
		e.Message = fmt.Sprintf("The server had an error while processing your request (simulated HTTP %d).", status)
	default:
		e.Type = "invalid_request_error"
		e.Message = fmt.Sprintf("Simulated error: HTTP %d %s.", status, http.StatusText(status))
	}
	return e
}

// writeError answers e in OpenAI's error envelope.
func writeError(w http.ResponseWriter, e *apiError) {
	writeJSON(w, e.status, struct {
		Error *apiError `json:"error"`
	}{e})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil { // only our own types are marshalled
		panic(err)
	}
	body = append(body, '\n')
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// Response bodies.

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

type chatCompletion struct {
	ID                string       `json:"id"`
	Object            string       `json:"object"`
	Created           int64        `json:"created"`
	Model             string       `json:"model"`
	SystemFingerprint string       `json:"system_fingerprint"`
	Choices           []chatChoice `json:"choices"`
	Usage             usage        `json:"usage"`
}

type chatChoice struct {
	Index        int         `json:"index"`
	Message      chatMessage `json:"message"`
	Logprobs     any         `json:"logprobs"`
	FinishReason string      `json:"finish_reason"`
}

type chatMessage struct {
	Role      string            `json:"role"`
	Content   any               `json:"content"` // a string, or null with tool calls
	Refusal   any               `json:"refusal"`
	ToolCalls []toolCallMessage `json:"tool_calls,omitempty"`
}

type chatChunk struct {
	ID                string            `json:"id"`
	Object            string            `json:"object"`
	Created           int64             `json:"created"`
	Model             string            `json:"model"`
	SystemFingerprint string            `json:"system_fingerprint"`
	Choices           []chatChunkChoice `json:"choices"`
	Usage             json.RawMessage   `json:"usage,omitempty"`
}

type chatChunkChoice struct {
	Index        int       `json:"index"`
	Delta        chatDelta `json:"delta"`
	Logprobs     any       `json:"logprobs"`
	FinishReason *string   `json:"finish_reason"`
}

type chatDelta struct {
	Role      string          `json:"role,omitempty"`
	Content   *string         `json:"content,omitempty"`
	ToolCalls []toolCallDelta `json:"tool_calls,omitempty"`
}

type textCompletion struct {
	ID                string          `json:"id"`
	Object            string          `json:"object"`
	Created           int64           `json:"created"`
	Model             string          `json:"model"`
	SystemFingerprint string          `json:"system_fingerprint"`
	Choices           []textChoice    `json:"choices"`
	Usage             json.RawMessage `json:"usage,omitempty"`
}

type textChoice struct {
	Text         string  `json:"text"`
	Index        int     `json:"index"`
	Logprobs     any     `json:"logprobs"`
	FinishReason *string `json:"finish_reason"`
}

type embeddingList struct {
	Object string      `json:"object"`
	Data   []embedding `json:"data"`
	Model  string      `json:"model"`
	Usage  struct {
		PromptTokens int `json:"prompt_tokens"`
		TotalTokens  int `json:"total_tokens"`
	} `json:"usage"`
}

type embedding struct {
	Object    string `json:"object"`
	Index     int    `json:"index"`
	Embedding any    `json:"embedding"` // []float32, or a base64 string
}

type modelObject struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

type modelList struct {
	Object string        `json:"object"`
	Data   []modelObject `json:"data"`
}

// Request bodies.

// genRequest is the part of a chat or completions request the simulator
// reads. Unknown fields are accepted, as providers accept them.
type genRequest struct {
	Model               string          `json:"model"`
	Messages            json.RawMessage `json:"messages"`
	Prompt              json.RawMessage `json:"prompt"`
	Stream              bool            `json:"stream"`
	StreamOptions       *streamOptions  `json:"stream_options"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	// Read with Config.Structured only.
	ResponseFormat *responseFormat `json:"response_format"`
	Tools          []toolSpec      `json:"tools"`
	ToolChoice     json.RawMessage `json:"tool_choice"`
	// ContinueFinalMessage (vLLM, SGLang) continues the last assistant
	// message instead of answering after it.
	ContinueFinalMessage bool `json:"continue_final_message"`
}

// continuedTokens is how many of the simulator's own answer tokens a
// partial answer to continue holds: the request ends with an assistant
// message marked "prefix": true (DeepSeek, Mistral) or sets
// continue_final_message (vLLM), and that message's text is
// "tok0 tok1 … tok<k-1>". The continuation is then tokens k, k+1, …, as a
// model continuing its own text would write. ok is false when the request
// asks for no continuation.
func continuedTokens(req *genRequest) (k int, ok bool) {
	var msgs []struct {
		Role    string `json:"role"`
		Content string `json:"content"`
		Prefix  bool   `json:"prefix"`
	}
	if json.Unmarshal(req.Messages, &msgs) != nil || len(msgs) == 0 {
		return 0, false
	}
	last := msgs[len(msgs)-1]
	if last.Role != "assistant" || !last.Prefix && !req.ContinueFinalMessage {
		return 0, false
	}
	for i, f := range strings.Fields(last.Content) {
		if f != "tok"+strconv.Itoa(i) {
			return 0, true // not the simulator's text: start over
		}
		k = i + 1
	}
	return k, true
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

type embeddingRequest struct {
	Model          string          `json:"model"`
	Input          json.RawMessage `json:"input"`
	EncodingFormat string          `json:"encoding_format"`
	Dimensions     *int            `json:"dimensions"`
}

// decodeBody parses a JSON request body into v.
func decodeBody(body []byte, v any) *apiError {
	if len(bytes.TrimSpace(body)) == 0 {
		return invalidRequest("We could not parse the JSON body of your request: the body is empty. The API expects a JSON payload.")
	}
	if err := json.Unmarshal(body, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return invalidParam(te.Field, "invalid_type",
				fmt.Sprintf("Invalid type for '%s': expected %s, but got a JSON %s instead.", te.Field, te.Type, te.Value))
		}
		return invalidRequest("We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The API expects a JSON payload, but what was sent was not valid JSON.) " + err.Error())
	}
	return nil
}

func isNull(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) == 0 || bytes.Equal(t, []byte("null"))
}

// chatPromptText returns the text of all messages, validating their shape.
func chatPromptText(raw json.RawMessage) ([]string, *apiError) {
	if isNull(raw) {
		return nil, invalidParam("messages", "missing_required_parameter", "Missing required parameter: 'messages'.")
	}
	var msgs []struct {
		Role    *string         `json:"role"`
		Content json.RawMessage `json:"content"`
	}
	if err := json.Unmarshal(raw, &msgs); err != nil {
		return nil, invalidParam("messages", "invalid_type", "Invalid type for 'messages': expected an array of objects.")
	}
	if len(msgs) == 0 {
		return nil, invalidParam("messages", "empty_array", "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.")
	}
	var texts []string
	for i, m := range msgs {
		param := fmt.Sprintf("messages[%d]", i)
		if m.Role == nil || *m.Role == "" {
			return nil, invalidParam(param+".role", "missing_required_parameter", fmt.Sprintf("Missing required parameter: '%s.role'.", param))
		}
		if isNull(m.Content) {
			continue
		}
		var s string
		if json.Unmarshal(m.Content, &s) == nil {
			texts = append(texts, s)
			continue
		}
		var parts []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		}
		if err := json.Unmarshal(m.Content, &parts); err != nil {
			return nil, invalidParam(param+".content", "invalid_type",
				fmt.Sprintf("Invalid type for '%s.content': expected a string or an array of content parts.", param))
		}
		for _, p := range parts {
			if p.Type == "text" {
				texts = append(texts, p.Text)
			}
		}
	}
	return texts, nil
}

// textInput is one prompt or embedding input: text or a token array.
type textInput struct {
	text     string
	tokens   []int
	isTokens bool
}

// tokenCount estimates the input's tokens: a token array counts its
// length, text counts ceil(bytes/4).
func (in textInput) tokenCount() int {
	if in.isTokens {
		return len(in.tokens)
	}
	return textTokens(in.text)
}

// textTokens estimates the tokens of a text as ceil(bytes/4), OpenAI's rule
// of thumb.
func textTokens(s string) int { return (len(s) + 3) / 4 }

// parseInputs reads a prompt or input parameter: a string, an array of
// strings, an array of token ids, or an array of token arrays.
func parseInputs(raw json.RawMessage, param string) ([]textInput, *apiError) {
	if isNull(raw) {
		return nil, invalidParam(param, "missing_required_parameter", fmt.Sprintf("Missing required parameter: '%s'.", param))
	}
	bad := invalidParam(param, "invalid_type",
		fmt.Sprintf("Invalid type for '%s': expected a string, an array of strings, an array of integers, or an array of integer arrays.", param))
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return []textInput{{text: s}}, nil
	}
	var elems []json.RawMessage
	if json.Unmarshal(raw, &elems) != nil {
		return nil, bad
	}
	if len(elems) == 0 {
		return nil, invalidParam(param, "empty_array", fmt.Sprintf("Invalid '%s': empty array. Expected an array with minimum length 1.", param))
	}
	var strs []string
	if json.Unmarshal(raw, &strs) == nil {
		out := make([]textInput, len(strs))
		for i, s := range strs {
			out[i] = textInput{text: s}
		}
		return out, nil
	}
	var toks []int
	if json.Unmarshal(raw, &toks) == nil {
		if !validTokens(toks) {
			return nil, bad
		}
		return []textInput{{tokens: toks, isTokens: true}}, nil
	}
	var arrs [][]int
	if json.Unmarshal(raw, &arrs) == nil {
		out := make([]textInput, len(arrs))
		for i, t := range arrs {
			if len(t) == 0 || !validTokens(t) {
				return nil, bad
			}
			out[i] = textInput{tokens: t, isTokens: true}
		}
		return out, nil
	}
	return nil, bad
}

func validTokens(toks []int) bool {
	for _, t := range toks {
		if t < 0 {
			return false
		}
	}
	return true
}
