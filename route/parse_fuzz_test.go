package route

import (
	"encoding/json"
	"errors"
	"testing"
	"unicode/utf8"
)

// FuzzParseRequest checks that ParseRequest never panics, accepts only
// valid JSON, agrees with encoding/json on what it accepts, and that
// RewriteModel's output is valid JSON that parses back to the new model.
func FuzzParseRequest(f *testing.F) {
	for _, tt := range parseTests {
		f.Add(uint8(tt.kind), []byte(tt.body), "gpt-4o-mini")
	}
	for _, tt := range parseErrorTests {
		f.Add(uint8(tt.kind), []byte(tt.body), "m")
	}
	f.Add(uint8(KindChat), chatBody(4<<10), "a\"b\\\n\xff")
	f.Add(uint8(KindUnknown), []byte(`{"messages":[]}`), "")

	var req, re Request // reused, as in production
	f.Fuzz(func(t *testing.T, kind uint8, body []byte, model string) {
		k := Kind(kind % 4)
		err := ParseRequest(k, body, &req)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a *ParseError", err)
			}
			if pe.syntax && json.Valid(body) {
				t.Fatalf("syntax error %q for valid JSON %q", err, body)
			}
			if pe.Msg != "model is required" {
				if !json.Valid(body) {
					return
				}
				// A valid JSON body that is not a valid request: nothing
				// more to check, but a missing model must be the only
				// error that leaves req filled.
				if req.Kind != KindUnknown || len(req.Texts) != 0 {
					t.Fatalf("req not reset after %q: %+v", err, req)
				}
				return
			}
		}
		if !json.Valid(body) {
			t.Fatalf("ParseRequest accepted invalid JSON %q", body)
		}
		checkInvariants(t, &req, body)
		if err == nil {
			checkAgainstStdlib(t, body, &req)
		}

		out := RewriteModel(nil, body, &req, model)
		if !json.Valid(out) {
			t.Fatalf("RewriteModel(%q, %q) = %q, not valid JSON", body, model, out)
		}
		if err := ParseRequest(req.Kind, out, &re); err != nil {
			t.Fatalf("rewritten body %q: %v", out, err)
		}
		want := model
		if !utf8.ValidString(model) {
			want = string([]rune(model))
		}
		if re.Model != want {
			t.Fatalf("rewritten model %q, want %q", re.Model, want)
		}
		if re.Kind != req.Kind || re.Messages != req.Messages || len(re.Texts) != len(req.Texts) ||
			re.TextBytes != req.TextBytes || re.MaxOutputTokens != req.MaxOutputTokens || re.Stream != req.Stream {
			t.Fatalf("rewriting the model changed the request:\n%+v\n%+v", req, re)
		}
	})
}
