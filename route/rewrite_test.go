package route

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestRewriteModel(t *testing.T) {
	tests := []struct {
		name  string
		body  string
		model string
		want  string
	}{
		{"replace", `{"model":"gpt-4o","messages":[]}`, "gpt-4o-mini", `{"model":"gpt-4o-mini","messages":[]}`},
		{"replace last", ` {"messages":[], "model" : "a\u0062" }`, "c", ` {"messages":[], "model" : "c" }`},
		{"replace duplicate", `{"model":"a","messages":[],"model":"b"}`, "c", `{"model":"a","messages":[],"model":"c"}`},
		{"replace null", `{"model":null,"messages":[]}`, "m", `{"model":"m","messages":[]}`},
		{"escape", `{"model":"x","messages":[]}`, "a\"b\\c\n\t\r\b\f\x01\x1f/é😀", `{"model":"a\"b\\c\n\t\r\b\f\u0001\u001f/é😀","messages":[]}`},
		{"invalid utf-8", `{"model":"x","messages":[]}`, "a\xffb\xe6\x97", `{"model":"a\ufffdb\ufffd\ufffd","messages":[]}`},
		{"empty model", `{"model":"x","messages":[]}`, "", `{"model":"","messages":[]}`},
		{"insert", `{"messages":[]}`, "m", `{"model":"m","messages":[]}`},
		{"insert with whitespace", "\n {\n  \"messages\": []\n}\n", "m", "\n {\"model\":\"m\",\n  \"messages\": []\n}\n"},
		{"insert into empty object", `{ }`, "m", `{"model":"m" }`},
		{"insert into empty object, no space", `{}`, "m", `{"model":"m"}`},
		{"not an object", `[1]`, "m", `[1]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := []byte(tt.body)
			var req Request
			_ = ParseRequest(KindChat, body, &req) // some bodies lack a model, or are not requests
			got := RewriteModel([]byte("dst:"), body, &req, tt.model)
			if string(got) != "dst:"+tt.want {
				t.Fatalf("RewriteModel = %q, want %q", got, "dst:"+tt.want)
			}
			got = got[len("dst:"):]
			if json.Valid(body) && !json.Valid(got) {
				t.Errorf("output is not valid JSON: %s", got)
			}
			if req.Kind != KindChat {
				return
			}
			var re Request
			if err := ParseRequest(KindChat, got, &re); err != nil {
				t.Fatalf("reparse: %v", err)
			}
			want := tt.model
			if !utf8.ValidString(want) {
				want = string([]rune(want)) // what a JSON decoder sees: U+FFFD per bad byte
			}
			if re.Model != want {
				t.Errorf("reparsed model %q, want %q", re.Model, want)
			}
		})
	}
}

func TestRewriteModelAllocs(t *testing.T) {
	body := chatBody(2 << 10)
	var req Request
	if err := ParseRequest(KindChat, body, &req); err != nil {
		t.Fatal(err)
	}
	if raceEnabled {
		t.Skip("allocation counts are not exact under the race detector")
	}
	dst := make([]byte, 0, len(body)+64)
	if n := testing.AllocsPerRun(100, func() { dst = RewriteModel(dst[:0], body, &req, "gpt-4o-mini") }); n != 0 {
		t.Errorf("%v allocs with room in dst, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() { _ = RewriteModel(nil, body, &req, "a\"very\"long\nmodel/name") }); n != 1 {
		t.Errorf("%v allocs into a nil dst, want 1", n)
	}
}

func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"", "plain", "\x00\x7f\"\\</script>\u2028", "日本語😀", "\xff\xfe", "a\xc3"} {
		got := AppendJSONString(nil, s)
		var back string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Errorf("AppendJSONString(%q) = %s: %v", s, got, err)
			continue
		}
		if want := string([]rune(s)); back != want {
			t.Errorf("AppendJSONString(%q) decodes to %q, want %q", s, back, want)
		}
	}
}

func TestRewriteModelPaddedThenInPlace(t *testing.T) {
	for _, body := range []string{
		`{"model":"auto","messages":[{"role":"user","content":"hi"}]}`,
		`{"messages":[{"role":"user","content":"hi"}],"model":"auto"}`,
		`{ "model" : "auto" , "stream":true, "messages":[{"role":"user","content":"x"}]}`,
	} {
		var req Request
		if err := ParseRequest(KindChat, []byte(body), &req); err != nil {
			t.Fatal(err)
		}
		models := []string{"m-fast", "m-much-longer-model", `quote"d`}
		width := 0
		for _, m := range models {
			width = max(width, ModelWidth(m))
		}
		padded := RewriteModelPadded(nil, []byte(body), &req, "m-fast", width)
		if !json.Valid(padded) {
			t.Fatalf("%s: padded body is not JSON: %s", body, padded)
		}
		for _, m := range models {
			b := append([]byte(nil), padded...)
			var r2 Request
			if err := ParseRequest(KindChat, b, &r2); err != nil {
				t.Fatal(err)
			}
			if !RewriteModelInPlace(b, &r2, m) {
				t.Fatalf("%s: %q does not fit in %s", body, m, padded)
			}
			if len(b) != len(padded) {
				t.Fatalf("length changed")
			}
			var back Request
			if err := ParseRequest(KindChat, b, &back); err != nil || back.Model != m {
				t.Fatalf("%s → %s: model %q, err %v", body, b, back.Model, err)
			}
		}
		// Wider than the padding: refused, body untouched.
		b := append([]byte(nil), padded...)
		var r3 Request
		_ = ParseRequest(KindChat, b, &r3)
		if RewriteModelInPlace(b, &r3, strings.Repeat("x", width+1)) || string(b) != string(padded) {
			t.Errorf("too wide a model was written: %s", b)
		}
	}
}
