package route

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestAPIErrorJSON(t *testing.T) {
	var ctrl strings.Builder
	for c := 0; c < 0x20; c++ {
		ctrl.WriteByte(byte(c))
	}
	ctrl.WriteString("\x7f")
	for _, msg := range []string{
		"plain",
		`say "hi" to \ the "world\"`,
		"line one\nline two\r\n\ttabbed",
		ctrl.String(),
		"bad \xff\xfe utf-8 \xc3 truncated",
		"\xe2\x82", // truncated 3-byte sequence at the end
		"ok unicode: café 世界 😀 \u2028 \u2029",
		"</script><!-- & -->",
		strings.Repeat("long ", 10_000),
	} {
		e := &APIError{Status: 400, Type: "invalid_request_error", Code: "some_code", Param: "messages", Message: msg}
		b := e.JSON()
		if !json.Valid(b) {
			t.Errorf("JSON() for %q is not valid JSON: %q", msg, b)
			continue
		}
		got, err := DecodeAPIError(b)
		if err != nil {
			t.Fatal(err)
		}
		want := msg
		if !utf8.ValidString(msg) {
			want = string([]rune(msg)) // each invalid byte becomes U+FFFD
		}
		if got.Message != want {
			t.Errorf("message round trip: %q, want %q", got.Message, want)
		}
		if got.Type != e.Type || deref(got.Code) != e.Code || deref(got.Param) != e.Param {
			t.Errorf("fields: %+v", got)
		}
		// Key order is stable for clients that log the body.
		if !bytes.HasPrefix(b, []byte(`{"error":{"message":`)) || !bytes.Contains(b, []byte(`,"type":"invalid_request_error","param":"messages","code":"some_code"}}`)) {
			t.Errorf("layout: %s", b)
		}
	}
}

func TestAPIErrorNulls(t *testing.T) {
	for _, e := range []*APIError{
		{Type: "server_error", Message: "m"},
		{Type: "server_error", Message: "m", Param: "p"},
		{Type: "server_error", Message: "m", Code: "c"},
		ErrInternal("boom"),
		ErrEmptyBody(),
		ErrBodyTooLarge(2048),
		ErrInvalidJSON("x"),
		ErrUnsupportedPath("/v1/\"quoted\"\xff"),
	} {
		b := e.JSON()
		var m struct {
			Error map[string]json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		for field, val := range map[string]string{"param": e.Param, "code": e.Code} {
			raw := string(m.Error[field])
			if val == "" && raw != "null" {
				t.Errorf("%s: empty %s rendered as %s, want null", b, field, raw)
			}
			if val != "" && raw == "null" {
				t.Errorf("%s: %s %q rendered as null", b, field, val)
			}
		}
	}
}

func TestErrorConstructors(t *testing.T) {
	for _, tt := range []struct {
		e            *APIError
		status       int
		code, kind   string
		messageParts []string
	}{
		{ErrInvalidJSON("bad"), 400, "invalid_request_body", "invalid_body", []string{"bad"}},
		{ErrBodyTooLarge(8 << 20), 413, "request_too_large", "body_too_large", []string{"8388608 bytes"}},
		{ErrEmptyBody(), 400, "invalid_request_body", "invalid_body", []string{"no body"}},
		{ErrUnsupportedPath("/x"), 404, "unknown_url", "unknown_path", []string{"/x", "/v1/chat/completions", "/v1/models"}},
		{ErrInternal("why"), 500, "internal_error", "internal", []string{"why"}},
	} {
		if tt.e.Status != tt.status || tt.e.Code != tt.code || tt.e.Kind != tt.kind {
			t.Errorf("%+v: want status %d code %s kind %s", tt.e, tt.status, tt.code, tt.kind)
		}
		for _, p := range tt.messageParts {
			if !strings.Contains(tt.e.Message, p) {
				t.Errorf("%q does not mention %q", tt.e.Message, p)
			}
		}
	}
}

// FuzzAPIErrorJSON: the error body is valid JSON in OpenAI's shape that
// decodes back to the fields, invalid UTF-8 replaced as encoding/json does
// (one U+FFFD per bad byte); an empty param or code is null.
func FuzzAPIErrorJSON(f *testing.F) {
	f.Add("msg", "param", "code")
	f.Add("\x00\"\\\xff", "", "")
	f.Add("unknown model \"gpt-5\u2028\"; known: auto, fast", "model", "model_not_found")
	f.Add("caf\xc3\xa9 \xed\xa0\x80 \U0001F600 <b>&amp;</b>\t\x7f", "messages[0].content", "")
	f.Fuzz(func(t *testing.T, msg, param, code string) {
		b := (&APIError{Type: "t", Message: msg, Param: param, Code: code}).JSON()
		if !json.Valid(b) {
			t.Fatalf("invalid JSON %q", b)
		}
		var e struct {
			Error struct {
				Message string  `json:"message"`
				Type    string  `json:"type"`
				Param   *string `json:"param"`
				Code    *string `json:"code"`
			} `json:"error"`
		}
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatal(err)
		}
		valid := func(s string) string { return string([]rune(s)) }
		if e.Error.Message != valid(msg) || e.Error.Type != "t" || deref(e.Error.Param) != valid(param) || deref(e.Error.Code) != valid(code) ||
			(param == "") != (e.Error.Param == nil) || (code == "") != (e.Error.Code == nil) {
			t.Fatalf("%q decodes to %+v", b, e.Error)
		}
	})
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}
