package route

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// APIError is a failure a client should see, in the OpenAI error shape:
// {"error":{"message":"…","type":"…","param":…,"code":"…"}}.
type APIError struct {
	Status  int    // HTTP status
	Type    string // invalid_request_error, server_error, …
	Code    string // machine-readable: model_not_found, context_length_exceeded, …
	Param   string // the request field at fault, or ""
	Message string
	// Kind labels the metric detour_extproc_errors_total.
	Kind string
}

// JSON renders the error body. Hand-written so the error path needs no
// reflection and the field order is stable for clients that log it.
func (e *APIError) JSON() []byte {
	b := make([]byte, 0, 96+len(e.Message))
	b = append(b, `{"error":{"message":`...)
	b = AppendJSONString(b, e.Message)
	b = append(b, `,"type":`...)
	b = AppendJSONString(b, e.Type)
	b = append(b, `,"param":`...)
	if e.Param == "" {
		b = append(b, "null"...)
	} else {
		b = AppendJSONString(b, e.Param)
	}
	b = append(b, `,"code":`...)
	if e.Code == "" {
		b = append(b, "null"...)
	} else {
		b = AppendJSONString(b, e.Code)
	}
	return append(b, "}}"...)
}

func ErrInvalidJSON(msg string) *APIError {
	return &APIError{Status: 400, Type: "invalid_request_error", Code: "invalid_request_body",
		Message: "could not parse the request body: " + msg, Kind: "invalid_body"}
}

func ErrBodyTooLarge(limit int64) *APIError {
	return &APIError{Status: 413, Type: "invalid_request_error", Code: "request_too_large",
		Message: "the request body is larger than the limit of " + strconv.FormatInt(limit, 10) + " bytes",
		Kind:    "body_too_large"}
}

func ErrEmptyBody() *APIError {
	return &APIError{Status: 400, Type: "invalid_request_error", Code: "invalid_request_body",
		Message: "the request has no body; send a JSON object", Kind: "invalid_body"}
}

func ErrUnsupportedPath(path string) *APIError {
	return &APIError{Status: 404, Type: "invalid_request_error", Code: "unknown_url",
		Message: "unknown endpoint " + path + "; detour serves /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/models",
		Kind:    "unknown_path"}
}

func ErrInternal(msg string) *APIError {
	return &APIError{Status: 500, Type: "server_error", Code: "internal_error",
		Message: "detour could not route the request: " + msg, Kind: "internal"}
}

// DecisionError is the client's answer when Router.Decide fails for a
// request of kind k: 404 for an unknown model, 400 naming the field at
// fault for a request no backend can serve.
func DecisionError(err error, k Kind) *APIError {
	var um *UnknownModelError
	var ue *UnsatisfiableError
	switch {
	case errors.As(err, &um):
		return &APIError{Status: 404, Type: "invalid_request_error", Code: "model_not_found",
			Param: "model", Message: um.Error(), Kind: "unknown_model"}
	case errors.As(err, &ue):
		code, param := "unsupported_request", ""
		switch ue.Requirement() {
		case RequireContext:
			// The field holding the prompt: messages, prompt or input.
			code, param = "context_length_exceeded", promptField(k)
		case RequireMaxOutput:
			code, param = "max_tokens_exceeded", "max_tokens"
		case RequireTools:
			param = "tools"
		case RequireJSONMode:
			param = "response_format"
		case RequireStreaming:
			param = "stream"
		case RequireVision:
			param = "messages"
		}
		return &APIError{Status: 400, Type: "invalid_request_error", Code: code,
			Param: param, Message: ue.Error(), Kind: "unsatisfiable"}
	}
	return ErrInternal(err.Error())
}

// promptField is the request field that holds the prompt for kind.
func promptField(k Kind) string {
	switch k {
	case KindCompletion:
		return "prompt"
	case KindEmbedding:
		return "input"
	}
	return "messages"
}

// IsModelsPath reports whether p (query ignored) is the model list.
func IsModelsPath(p string) bool {
	for i := 0; i < len(p); i++ {
		if p[i] == '?' {
			p = p[:i]
			break
		}
	}
	return p == "/v1/models" || p == "/models"
}

// ModelsList renders GET /v1/models: every name a client may send.
func ModelsList(names []string) []byte {
	b := []byte(`{"object":"list","data":[`)
	for i, n := range names {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"id":`...)
		b = AppendJSONString(b, n)
		b = append(b, `,"object":"model","created":0,"owned_by":"detour"}`...)
	}
	return append(b, "]}"...)
}

// WireError is the "error" object of an OpenAI error body as a client
// decodes it; Param and Code are null when absent.
type WireError struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

// DecodeAPIError checks that b is exactly {"error":{"message","type",
// "param","code"}} with a message and a type, as OpenAI's clients expect,
// and decodes it. Tests of every layer use it on what clients receive.
func DecodeAPIError(b []byte) (WireError, error) {
	var e WireError
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		return e, fmt.Errorf("error body %q: %w", b, err)
	}
	if len(top) != 1 || top["error"] == nil {
		return e, fmt.Errorf("error body %q: want exactly one key, error", b)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(top["error"], &fields); err != nil {
		return e, fmt.Errorf("error body %q: error is not an object: %w", b, err)
	}
	for _, k := range []string{"message", "type", "param", "code"} {
		if _, ok := fields[k]; !ok {
			return e, fmt.Errorf("error body %q: no %q", b, k)
		}
	}
	if len(fields) != 4 {
		return e, fmt.Errorf("error body %q: want exactly message, type, param, code", b)
	}
	if err := json.Unmarshal(top["error"], &e); err != nil {
		return e, fmt.Errorf("error body %q: %w", b, err)
	}
	if e.Message == "" || e.Type == "" {
		return e, fmt.Errorf("error body %q: empty message or type", b)
	}
	return e, nil
}

// ErrShed refuses a request its route cannot take now: healthy capacity
// is short and the request's priority is among those shed first.
func ErrShed(target, priority, why string) *APIError {
	return &APIError{Status: 429, Type: "rate_limit_error", Code: "capacity_shed", Kind: "shed",
		Message: fmt.Sprintf("%s requests to %q are shed while its healthy capacity is short (%s); retry later or send a higher priority", priority, target, why)}
}

// HeaderPriorityName is the request header that carries a priority.
const HeaderPriorityName = "x-detour-priority"

// ErrBadPriority refuses a request whose priority header is unknown.
func ErrBadPriority(v string) *APIError {
	return &APIError{Status: 400, Type: "invalid_request_error", Code: "invalid_priority", Kind: "invalid_priority",
		Message: fmt.Sprintf("x-detour-priority %q is not a priority: use critical, standard or sheddable", v)}
}

// ErrQueueTimeout answers a request that waited the route's whole queue
// wait while every backend that could serve it stayed down.
func ErrQueueTimeout(target string, waited string) *APIError {
	return &APIError{Status: 503, Type: "server_error", Code: "all_backends_down", Kind: "queue_timeout",
		Message: fmt.Sprintf("every backend that can serve %q is down; the request waited %s in detour's queue for one to recover; retry later", target, waited)}
}

// ErrQueueFull answers a request that found its route's queue full while
// every backend that could serve it is down.
func ErrQueueFull(target string, depth int) *APIError {
	return &APIError{Status: 503, Type: "server_error", Code: "all_backends_down", Kind: "queue_full",
		Message: fmt.Sprintf("every backend that can serve %q is down and %d requests already wait for one to recover; retry later", target, depth)}
}

// ErrStalled is the error event that ends a stream whose provider went
// silent mid-answer and whose continuation failed: the answer is cut.
func ErrStalled(why string) *APIError {
	return &APIError{Status: 502, Type: "server_error", Code: "stream_stalled", Kind: "stream_stalled",
		Message: "the answer stalled and could not be resumed on another backend: " + why}
}
