package extproc

import (
	"strconv"
	"unicode/utf8"
)

// apiError is a failure a client should see, in the OpenAI error shape:
// {"error":{"message":"…","type":"…","param":…,"code":"…"}}.
type apiError struct {
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
func (e *apiError) JSON() []byte {
	b := make([]byte, 0, 96+len(e.Message))
	b = append(b, `{"error":{"message":`...)
	b = appendJSONString(b, e.Message)
	b = append(b, `,"type":`...)
	b = appendJSONString(b, e.Type)
	b = append(b, `,"param":`...)
	if e.Param == "" {
		b = append(b, "null"...)
	} else {
		b = appendJSONString(b, e.Param)
	}
	b = append(b, `,"code":`...)
	if e.Code == "" {
		b = append(b, "null"...)
	} else {
		b = appendJSONString(b, e.Code)
	}
	return append(b, "}}"...)
}

// appendJSONString appends s as a JSON string literal; invalid UTF-8 becomes
// U+FFFD so the output is always valid JSON.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

func errInvalidJSON(msg string) *apiError {
	return &apiError{Status: 400, Type: "invalid_request_error", Code: "invalid_request_body",
		Message: "could not parse the request body: " + msg, Kind: "invalid_body"}
}

func errBodyTooLarge(limit int64) *apiError {
	return &apiError{Status: 413, Type: "invalid_request_error", Code: "request_too_large",
		Message: "the request body is larger than the limit of " + strconv.FormatInt(limit, 10) + " bytes",
		Kind:    "body_too_large"}
}

func errEmptyBody() *apiError {
	return &apiError{Status: 400, Type: "invalid_request_error", Code: "invalid_request_body",
		Message: "the request has no body; send a JSON object", Kind: "invalid_body"}
}

func errUnsupportedPath(path string) *apiError {
	return &apiError{Status: 404, Type: "invalid_request_error", Code: "unknown_url",
		Message: "unknown endpoint " + path + "; detour serves /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/models",
		Kind:    "unknown_path"}
}

func errInternal(msg string) *apiError {
	return &apiError{Status: 500, Type: "server_error", Code: "internal_error",
		Message: "detour could not route the request: " + msg, Kind: "internal"}
}
