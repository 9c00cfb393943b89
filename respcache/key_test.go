package respcache

import (
	"errors"
	"strings"
	"testing"
)

func TestParseCanonical(t *testing.T) {
	tests := []struct {
		name       string
		a, b       string
		same       bool
		wantStream bool
		wantTemp   float64
		hasTemp    bool
	}{
		{name: "key order", a: `{"model":"auto","temperature":0,"messages":[{"role":"user","content":"hi"}]}`,
			b: `{"messages":[{"content":"hi","role":"user"}],"temperature":0,"model":"auto"}`, same: true, hasTemp: true},
		{name: "stream flag ignored", a: `{"model":"auto","messages":[],"stream":true,"stream_options":{"include_usage":true}}`,
			b: `{"model":"auto","messages":[]}`, same: true, wantStream: true},
		{name: "user and metadata ignored", a: `{"model":"m","messages":[],"user":"u1","metadata":{"a":"b"}}`,
			b: `{"model":"m","messages":[],"user":"u2"}`, same: true},
		{name: "number spelling", a: `{"model":"m","temperature":0.0,"max_tokens":100}`, b: `{"model":"m","temperature":0,"max_tokens":1e2}`, same: true, hasTemp: true},
		{name: "big seed keeps digits", a: `{"model":"m","seed":9007199254740993}`, b: `{"model":"m","seed":9007199254740992}`, same: false},
		{name: "whitespace", a: "{ \"model\" : \"m\" ,\n \"messages\": [ ] }", b: `{"model":"m","messages":[]}`, same: true},
		{name: "message content differs", a: `{"model":"m","messages":[{"role":"user","content":"a"}]}`, b: `{"model":"m","messages":[{"role":"user","content":"b"}]}`},
		{name: "array order matters", a: `{"model":"m","stop":["a","b"]}`, b: `{"model":"m","stop":["b","a"]}`},
		{name: "temperature differs", a: `{"model":"m","temperature":0}`, b: `{"model":"m","temperature":0.5}`, hasTemp: true},
		{name: "tools differ", a: `{"model":"m","tools":[{"type":"function","function":{"name":"f"}}]}`, b: `{"model":"m","tools":[{"type":"function","function":{"name":"g"}}]}`},
		{name: "tool_choice", a: `{"model":"m","tool_choice":"auto"}`, b: `{"model":"m","tool_choice":"none"}`},
		{name: "response_format", a: `{"model":"m","response_format":{"type":"json_object"}}`, b: `{"model":"m"}`},
		{name: "max_tokens", a: `{"model":"m","max_tokens":5}`, b: `{"model":"m","max_tokens":6}`},
		{name: "top_p", a: `{"model":"m","top_p":1}`, b: `{"model":"m","top_p":0.9}`},
		{name: "n", a: `{"model":"m","n":1}`, b: `{"model":"m","n":2}`},
		{name: "unknown field counts", a: `{"model":"m","x_new":1}`, b: `{"model":"m"}`},
		{name: "model", a: `{"model":"a"}`, b: `{"model":"b"}`},
		{name: "unicode escapes", a: `{"model":"m","messages":[{"content":"\u00e9"}]}`, b: `{"model":"m","messages":[{"content":"é"}]}`, same: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ra, err := Parse([]byte(tt.a))
			if err != nil {
				t.Fatal(err)
			}
			rb, err := Parse([]byte(tt.b))
			if err != nil {
				t.Fatal(err)
			}
			ka, kb := Key("s", "auto", "chat", ra.Canonical), Key("s", "auto", "chat", rb.Canonical)
			if (ka == kb) != tt.same {
				t.Errorf("same key = %v, want %v\n a: %s\n b: %s", ka == kb, tt.same, ra.Canonical, rb.Canonical)
			}
			if ra.Stream != tt.wantStream {
				t.Errorf("stream = %v", ra.Stream)
			}
			if ra.HasTemperature != tt.hasTemp || ra.Temperature != tt.wantTemp {
				t.Errorf("temperature = %v %v", ra.HasTemperature, ra.Temperature)
			}
		})
	}
}

// Requests a stored answer cannot serve faithfully get no key.
func TestParseNotReusable(t *testing.T) {
	for _, body := range []string{
		`{"model":"m","temperature":0,"logprobs":true,"messages":[]}`,
		`{"model":"m","temperature":0,"top_logprobs":3,"messages":[]}`,
		`{"model":"m","temperature":0,"modalities":["text","audio"],"messages":[]}`,
		`{"model":"m","temperature":0,"audio":{"voice":"x"},"messages":[]}`,
		`{"model":"m","messages":[{"role":"user","content":"\ud83d"}]}`,             // a lone surrogate: decodes to U+FFFD
		"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}", // invalid UTF-8
	} {
		if _, err := Parse([]byte(body)); !errors.Is(err, ErrNotReusable) {
			t.Errorf("Parse(%q) = %v, want ErrNotReusable", body, err)
		}
	}
	for _, body := range []string{
		`{"model":"m","temperature":0,"logprobs":false,"messages":[]}`,
		`{"model":"m","messages":[{"role":"user","content":"\ud83d\ude00 caf\u00e9"}]}`,
	} {
		if _, err := Parse([]byte(body)); err != nil {
			t.Errorf("Parse(%q) = %v, want a key", body, err)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, body := range []string{``, `[]`, `"x"`, `{"a":1} {"b":2}`, `{"a":`, strings.Repeat(`{"a":`, 100) + `1` + strings.Repeat(`}`, 100)} {
		if _, err := Parse([]byte(body)); err == nil {
			t.Errorf("Parse(%.40q) = nil error", body)
		}
	}
}

func TestKeyScopesAndRoutes(t *testing.T) {
	c := []byte(`{"model":"m"}`)
	keys := map[string]string{}
	for _, k := range []struct{ scope, route, kind string }{
		{Scope("sk-a"), "auto", "chat"}, {Scope("sk-b"), "auto", "chat"}, {Scope(""), "auto", "chat"},
		{Scope("sk-a"), "other", "chat"}, {Scope("sk-a"), "auto", "completion"},
	} {
		key := Key(k.scope, k.route, k.kind, c)
		if prev, dup := keys[key]; dup {
			t.Errorf("%v and %s share key %s", k, prev, key)
		}
		keys[key] = k.scope + "/" + k.route + "/" + k.kind
		if !strings.HasPrefix(key, KeyPrefix+k.scope+":") {
			t.Errorf("key %s does not start with its scope", key)
		}
	}
	if s := Scope("sk-secret-123"); strings.Contains(s, "secret") || len(s) != 32 {
		t.Errorf("Scope leaks or has the wrong length: %s", s)
	}
	if Scope("a") == Scope("b") || Scope("a") != Scope("a") {
		t.Error("Scope is not a function of the credential")
	}
}

func TestCredential(t *testing.T) {
	h := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	tests := []struct {
		name    string
		headers map[string]string
		tenant  string
		want    string
	}{
		{"none", nil, "", ""},
		{"bearer", map[string]string{"authorization": "Bearer sk-1"}, "", "a=Bearer sk-1"},
		{"x-api-key", map[string]string{"x-api-key": "k"}, "", "k=k"},
		{"tenant header configured", map[string]string{"x-tenant": "acme", "authorization": "Bearer sk-1"}, "x-tenant", "t=acme\x00a=Bearer sk-1"},
		{"tenant header not configured", map[string]string{"x-tenant": "acme"}, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Credential(h(tt.headers), tt.tenant); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestCacheControl(t *testing.T) {
	tests := []struct {
		v                string
		noStore, noCache bool
	}{
		{"", false, false},
		{"no-store", true, false},
		{"No-Store, max-age=0", true, true},
		{"private, no-cache", false, true},
		{"max-age=60", false, false},
	}
	for _, tt := range tests {
		if NoStore(tt.v) != tt.noStore || NoCache(tt.v) != tt.noCache {
			t.Errorf("%q: no-store %v no-cache %v", tt.v, NoStore(tt.v), NoCache(tt.v))
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"model":"auto","temperature":0,"messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"m","seed":9007199254740993,"stop":["a"],"tools":[{"type":"function"}]}`,
		`{"a":1e400,"b":-0,"c":0.1e-7,"d":null,"e":true}`,
		`[1,2]`, `{"a":"\ud800"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := Parse(body)
		if err != nil {
			return
		}
		// The canonical form is itself valid and canonical: parsing it
		// again gives the same bytes (a fixed point), so equal requests
		// can never drift apart.
		r2, err := Parse(r.Canonical)
		if err != nil {
			t.Fatalf("canonical form does not parse: %v\n%s", err, r.Canonical)
		}
		if string(r2.Canonical) != string(r.Canonical) {
			t.Fatalf("canonical form is not a fixed point:\n%s\n%s", r.Canonical, r2.Canonical)
		}
	})
}
