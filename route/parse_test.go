package route

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// view is the part of a Request the table tests compare, with spans
// resolved to the body text they cover so expectations stay readable.
type view struct {
	Kind      Kind
	Model     string
	ModelLit  string // body[ModelSpan]
	Stream    bool
	MaxOut    int
	HasImages bool
	HasTools  bool
	JSONMode  bool
	Messages  int
	Images    int
	Texts     []string // literals, quotes included
	ToolBytes int
	TokenIDs  int
}

func viewOf(r *Request, body []byte) view {
	v := view{
		Kind: r.Kind, Model: r.Model, ModelLit: string(body[r.ModelSpan.Start:r.ModelSpan.End]),
		Stream: r.Stream, MaxOut: r.MaxOutputTokens,
		HasImages: r.HasImages, HasTools: r.HasTools, JSONMode: r.JSONMode,
		Messages: r.Messages, Images: r.Images,
		ToolBytes: r.ToolBytes, TokenIDs: r.TokenIDs,
	}
	for _, sp := range r.Texts {
		v.Texts = append(v.Texts, string(body[sp.Start:sp.End]))
	}
	return v
}

func chat(model string, texts ...string) view {
	return view{Kind: KindChat, Model: model, ModelLit: strconv.Quote(model), Messages: len(texts), Texts: quoteAll(texts)}
}

func quoteAll(ss []string) []string {
	var q []string
	for _, s := range ss {
		q = append(q, strconv.Quote(s))
	}
	return q
}

// with returns v after applying f, to tweak a base expectation inline.
func (v view) with(f func(*view)) view { f(&v); return v }

const (
	toolsJSON     = `[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]`
	toolCallsJSON = `[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]`
)

var parseTests = []struct {
	name string
	kind Kind
	body string
	want view
}{
	// Chat.
	{
		name: "minimal chat",
		body: `{"model":"gpt-4o","messages":[{"role":"user","content":"Hello"}]}`,
		want: chat("gpt-4o", "Hello"),
	},
	{
		name: "every chat field",
		kind: KindChat,
		body: `{"model":"gpt-4o","stream":true,"max_tokens":256,"temperature":0.2,
			"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object"}}},
			"tools":` + toolsJSON + `,
			"messages":[
				{"role":"system","content":"Be brief."},
				{"role":"user","name":"ann","content":[
					{"type":"text","text":"What is this?"},
					{"type":"image_url","image_url":{"url":"https://x/y.png","detail":"high"}},
					{"type":"input_image","image_url":"data:image/png;base64,AAAA"},
					{"type":"input_text","text":"And the weather?"}]},
				{"role":"assistant","content":null,"tool_calls":` + toolCallsJSON + `},
				{"role":"tool","tool_call_id":"call_1","content":"sunny"}]}`,
		want: view{
			Kind: KindChat, Model: "gpt-4o", ModelLit: `"gpt-4o"`, Stream: true, MaxOut: 256,
			HasImages: true, HasTools: true, JSONMode: true, Messages: 4, Images: 2,
			Texts:     quoteAll([]string{"Be brief.", "What is this?", "And the weather?", "sunny"}),
			ToolBytes: len(toolsJSON) + len(toolCallsJSON),
		},
	},
	{
		name: "model after messages",
		body: `{"messages":[{"role":"user","content":"hi"}],"stream":false,"model":"m"}`,
		want: chat("m", "hi"),
	},
	{
		name: "whitespace everywhere",
		body: " \r\n\t{ \"model\" :\t\"m\" ,\n \"messages\" : [ { \"content\" : [ { \"text\" : \"a\" , \"type\" : \"text\" } ] } ,\n{\"content\":\"b\"} ] , \"stream\" : true , \"max_tokens\" : 7 } \n\t ",
		want: chat("m", "a", "b").with(func(v *view) { v.Stream, v.MaxOut = true, 7 }),
	},
	{
		name: "max_completion_tokens wins, either order",
		body: `{"model":"m","max_completion_tokens":10,"messages":[],"max_tokens":20}`,
		want: chat("m").with(func(v *view) { v.MaxOut = 10 }),
	},
	{
		name: "max_completion_tokens null falls back to max_tokens",
		body: `{"model":"m","max_tokens":20,"messages":[],"max_completion_tokens":null}`,
		want: chat("m").with(func(v *view) { v.MaxOut = 20 }),
	},
	{
		name: "max_tokens zero and largest int",
		body: `{"model":"m","messages":[],"max_tokens":0,"max_completion_tokens":9223372036854775807}`,
		want: chat("m").with(func(v *view) { v.MaxOut = 9223372036854775807 }),
	},
	{
		name: "escaped model",
		body: `{"model":"gpt-\u0034o\/mini \"x\" \ud83d\ude00","messages":[]}`,
		want: view{Kind: KindChat, Model: "gpt-4o/mini \"x\" 😀", ModelLit: `"gpt-\u0034o\/mini \"x\" \ud83d\ude00"`},
	},
	{
		name: "escaped keys and enum values",
		body: `{"mod\u0065l":"m","m\u0065ssages":[{"content":[{"typ\u0065":"t\u0065xt","t\u0065xt":"a"},{"type":"image\u005furl"}]}],"str\u0065am":true,"response_format":{"type":"json\u005fobject"}}`,
		want: chat("m", "a").with(func(v *view) { v.Stream, v.JSONMode, v.Images, v.HasImages = true, true, 1, true }),
	},
	{
		name: "non-ASCII model and text",
		body: `{"model":"modèle-日本","messages":[{"content":"héllo 世界 😀"}]}`,
		want: view{Kind: KindChat, Model: "modèle-日本", ModelLit: `"modèle-日本"`, Messages: 1, Texts: []string{`"héllo 世界 😀"`}},
	},
	{
		name: "text escapes keep the literal",
		body: `{"model":"m","messages":[{"content":"line\nnext \"q\" \\ \u00e9"}]}`,
		want: view{Kind: KindChat, Model: "m", ModelLit: `"m"`, Messages: 1, Texts: []string{`"line\nnext \"q\" \\ \u00e9"`}},
	},
	{
		name: "duplicate keys: last wins",
		body: `{"model":"a","stream":true,"max_tokens":5,"response_format":{"type":"json_object"},
			"messages":[{"content":"old"},{"content":"old2"}],
			"tools":` + toolsJSON + `,
			"model":"b","stream":false,"max_tokens":null,"response_format":{"type":"text"},"tools":[],
			"messages":[{"content":"x","content":[{"type":"image_url"},{"type":"text","text":"y","text":"z"}]},
				{"content":[{"type":"image_url"}],"content":"w"}]}`,
		want: view{Kind: KindChat, Model: "b", ModelLit: `"b"`, Messages: 2, Images: 1, HasImages: true, Texts: []string{`"z"`, `"w"`}},
	},
	{
		name: "nulls mean absent",
		body: `{"model":"m","stream":null,"max_tokens":null,"max_completion_tokens":null,"tools":null,"functions":null,
			"response_format":null,"messages":[{"role":"assistant","content":null},{"content":[{"type":null,"text":"a"},{"type":"text","text":null}]}]}`,
		want: chat("m").with(func(v *view) { v.Messages = 2 }),
	},
	{
		name: "legacy functions",
		body: `{"model":"m","messages":[{"role":"assistant","content":null,"function_call":{"name":"f","arguments":"{}"}}],"functions":[{"name":"f"}]}`,
		want: chat("m").with(func(v *view) {
			v.Messages, v.HasTools = 1, true
			v.ToolBytes = len(`[{"name":"f"}]`) + len(`{"name":"f","arguments":"{}"}`)
		}),
	},
	{
		name: "empty tools",
		body: `{"model":"m","messages":[],"tools":[ ],"functions":[]}`,
		want: chat("m"),
	},
	{
		name: "response_format text and json_object",
		body: `{"model":"m","messages":[],"response_format":{"type":"text","type":"json_object","other":[1]}}`,
		want: chat("m").with(func(v *view) { v.JSONMode = true }),
	},
	{
		name: "unknown keys of every shape are skipped",
		body: `{"temperature":-0.5e-3,"seed":1e400,"n":123456789012345678901234567890,"logit_bias":{"123":-100},
			"user":"u\u0000\t","metadata":{"a":[[[],{}],[true,false,null]],"b":{}},"stop":["\n"],"model":"m",
			"messages":[{"role":"user","content":"hi","weird":{"content":"not me","text":"nor me"}}],"prompt":5,"input":{}}`,
		kind: KindChat,
		want: chat("m", "hi"),
	},
	{
		name: "parts without a known type add nothing",
		body: `{"model":"m","messages":[{"content":[{"text":"untyped"},{"type":"input_audio","input_audio":{"data":"x"}},{"type":"refusal","refusal":"no"},{}]}]}`,
		want: chat("m").with(func(v *view) { v.Messages = 1 }),
	},
	{
		name: "deep nesting within the limit",
		body: `{"model":"m","messages":[],"x":` + strings.Repeat("[", maxDepth-1) + strings.Repeat("]", maxDepth-1) + `}`,
		want: chat("m"),
	},
	{
		name: "chat wins over prompt and input",
		body: `{"input":"i","prompt":"p","model":"m","messages":[{"content":"c"}]}`,
		want: chat("m", "c"),
	},
	{
		name: "completion fields ignored in a chat",
		kind: KindChat,
		body: `{"model":"m","messages":[],"prompt":[1,2]}`,
		want: chat("m"),
	},

	// Completions.
	{
		name: "completion string prompt",
		body: `{"model":"davinci-002","prompt":"Say this","max_tokens":7,"stream":true,"suffix":"x"}`,
		want: view{Kind: KindCompletion, Model: "davinci-002", ModelLit: `"davinci-002"`, MaxOut: 7, Stream: true, Texts: []string{`"Say this"`}},
	},
	{
		name: "completion prompt arrays",
		kind: KindCompletion,
		body: `{"model":"m","prompt":["a","b\u00e9",[1,2,3],[],4,0],"messages":"ignored","tools":5}`,
		want: view{Kind: KindCompletion, Model: "m", ModelLit: `"m"`, Texts: []string{`"a"`, `"b\u00e9"`}, TokenIDs: 5},
	},
	{
		name: "completion empty prompt",
		body: `{"model":"m","prompt":[]}`,
		want: view{Kind: KindCompletion, Model: "m", ModelLit: `"m"`},
	},
	{
		name: "prompt wins over input",
		body: `{"model":"m","input":"i","prompt":"p"}`,
		want: view{Kind: KindCompletion, Model: "m", ModelLit: `"m"`, Texts: []string{`"p"`}},
	},
	{
		name: "duplicate prompt",
		body: `{"model":"m","prompt":["a",[1]],"prompt":[[1,2]]}`,
		want: view{Kind: KindCompletion, Model: "m", ModelLit: `"m"`, TokenIDs: 2},
	},

	// Embeddings.
	{
		name: "embedding string",
		body: `{"model":"text-embedding-3-small","input":"The food was delicious","encoding_format":"float","dimensions":256}`,
		want: view{Kind: KindEmbedding, Model: "text-embedding-3-small", ModelLit: `"text-embedding-3-small"`, Texts: []string{`"The food was delicious"`}},
	},
	{
		name: "embedding arrays",
		kind: KindEmbedding,
		body: `{"input":[[1,2],[3]],"model":"e","prompt":{}}`,
		want: view{Kind: KindEmbedding, Model: "e", ModelLit: `"e"`, TokenIDs: 3},
	},
	{
		name: "embedding strings",
		body: `{"model":"e","input":["x","y"]}`,
		want: view{Kind: KindEmbedding, Model: "e", ModelLit: `"e"`, Texts: []string{`"x"`, `"y"`}},
	},
}

func TestParseRequest(t *testing.T) {
	var req Request
	for _, tt := range parseTests {
		t.Run(tt.name, func(t *testing.T) {
			body := []byte(tt.body)
			if err := ParseRequest(tt.kind, body, &req); err != nil {
				t.Fatalf("ParseRequest: %v", err)
			}
			if got := viewOf(&req, body); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
			checkInvariants(t, &req, body)
			checkAgainstStdlib(t, body, &req)
		})
	}
}

// checkInvariants checks what must hold for any successfully parsed body.
func checkInvariants(t *testing.T, req *Request, body []byte) {
	t.Helper()
	total := 0
	for _, sp := range req.Texts {
		total += sp.Len()
		if _, err := UnquoteInto(nil, body[sp.Start:sp.End]); err != nil {
			t.Errorf("text span %v is not a string literal: %v", sp, err)
		}
	}
	if req.TextBytes != total {
		t.Errorf("TextBytes = %d, want %d", req.TextBytes, total)
	}
	if req.HasImages != (req.Images > 0) {
		t.Errorf("HasImages = %v with %d images", req.HasImages, req.Images)
	}
	if req.PromptTokens != EstimateTokens(req, body) || req.PromptTokensExact {
		t.Errorf("PromptTokens = %d (exact %v), want estimate %d", req.PromptTokens, req.PromptTokensExact, EstimateTokens(req, body))
	}
}

// checkAgainstStdlib decodes a body ParseRequest accepted with
// encoding/json and checks the two agree.
func checkAgainstStdlib(t *testing.T, body []byte, req *Request) {
	t.Helper()
	if !json.Valid(body) {
		t.Fatalf("ParseRequest accepted invalid JSON %q", body)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("encoding/json: %v", err)
	}
	if model, _ := m["model"].(string); req.Model != model {
		t.Errorf("Model = %q, encoding/json says %q", req.Model, model)
	}
	if stream, _ := m["stream"].(bool); req.Stream != stream {
		t.Errorf("Stream = %v, encoding/json says %v", req.Stream, stream)
	}
	limit := m["max_completion_tokens"]
	if limit == nil {
		limit = m["max_tokens"]
	}
	want := 0
	if limit != nil {
		n, err := strconv.Atoi(string(limit.(json.Number)))
		if err != nil {
			t.Fatalf("encoding/json max tokens %v: %v", limit, err)
		}
		want = n
	}
	if req.MaxOutputTokens != want {
		t.Errorf("MaxOutputTokens = %d, encoding/json says %d", req.MaxOutputTokens, want)
	}

	var texts []string
	var images, ids int
	switch req.Kind {
	case KindChat:
		msgs := m["messages"].([]any)
		if req.Messages != len(msgs) {
			t.Errorf("Messages = %d, encoding/json says %d", req.Messages, len(msgs))
		}
		for _, msg := range msgs {
			switch c := msg.(map[string]any)["content"].(type) {
			case string:
				texts = append(texts, c)
			case []any:
				for _, part := range c {
					part := part.(map[string]any)
					switch part["type"] {
					case "text", "input_text":
						if s, ok := part["text"].(string); ok {
							texts = append(texts, s)
						}
					case "image_url", "input_image":
						images++
					}
				}
			}
		}
		nonEmpty := func(k string) bool { a, _ := m[k].([]any); return len(a) > 0 }
		if req.HasTools != (nonEmpty("tools") || nonEmpty("functions")) {
			t.Errorf("HasTools = %v, encoding/json disagrees", req.HasTools)
		}
		rf, _ := m["response_format"].(map[string]any)
		if typ := rf["type"]; req.JSONMode != (typ == "json_object" || typ == "json_schema") {
			t.Errorf("JSONMode = %v, encoding/json says type %v", req.JSONMode, typ)
		}
	case KindCompletion, KindEmbedding:
		v := m["prompt"]
		if req.Kind == KindEmbedding {
			v = m["input"]
		}
		var walk func(v any)
		walk = func(v any) {
			switch v := v.(type) {
			case string:
				texts = append(texts, v)
			case json.Number:
				ids++
			case []any:
				for _, e := range v {
					walk(e)
				}
			}
		}
		walk(v)
	}
	if req.Images != images {
		t.Errorf("Images = %d, encoding/json says %d", req.Images, images)
	}
	if req.TokenIDs != ids {
		t.Errorf("TokenIDs = %d, encoding/json says %d", req.TokenIDs, ids)
	}
	var got []string
	for _, sp := range req.Texts {
		s, _ := UnquoteInto(nil, body[sp.Start:sp.End])
		got = append(got, string(s))
	}
	if !reflect.DeepEqual(got, texts) {
		t.Errorf("Texts = %q, encoding/json says %q", got, texts)
	}
}

var parseErrorTests = []struct {
	name   string
	kind   Kind
	body   string
	msg    string // the full Error()
	offset int
}{
	// Not a request at all.
	{"empty", 0, ``, "request body is empty", 0},
	{"only whitespace", 0, " \n\t", "request body is empty", 0},
	{"array", 0, `[{"model":"m"}]`, "request body must be a JSON object", 0},
	{"string", 0, `"x"`, "request body must be a JSON object", 0},
	{"null", 0, `null`, "request body must be a JSON object", 0},
	{"number", 0, ` 42`, "request body must be a JSON object", 0},
	{"NUL byte", 0, "\x00", "invalid JSON at byte 0: expected a value", 0},
	{"garbage", 0, `hello`, "invalid JSON at byte 0: expected a value", 0},

	// Malformed JSON.
	{"open brace", 0, `{`, "invalid JSON at byte 1: unexpected end of input", 1},
	{"truncated", 0, `{"model":"m","messages":[{"content":"hi"}`, "invalid JSON at byte 41: unexpected end of input", 41},
	{"trailing garbage", 0, `{"model":"m","messages":[]} x`, "invalid JSON at byte 28: unexpected data after the top-level object", 28},
	{"second object", 0, `{"model":"m","messages":[]}{}`, "invalid JSON at byte 27: unexpected data after the top-level object", 27},
	{"missing colon", 0, `{"model" "m"}`, "invalid JSON at byte 9: expected ':' after object key", 9},
	{"unquoted key", 0, `{model:"m"}`, "invalid JSON at byte 1: expected string for object key", 1},
	{"trailing comma in object", 0, `{"model":"m",}`, "invalid JSON at byte 13: expected string for object key", 13},
	{"trailing comma in array", 0, `{"model":"m","x":[1,]}`, "invalid JSON at byte 20: expected a value", 20},
	{"trailing comma in messages", 0, `{"model":"m","messages":[{},]}`, "invalid JSON at byte 28: expected a value", 28},
	{"missing comma", 0, `{"model":"m" "messages":[]}`, "invalid JSON at byte 13: expected ',' or '}' after object value", 13},
	{"missing comma in array", 0, `{"x":[1 2]}`, "invalid JSON at byte 8: expected ',' or ']' after array element", 8},
	{"no value", 0, `{"model":`, "invalid JSON at byte 9: unexpected end of input", 9},
	{"no value after whitespace", 0, `{"model": `, "invalid JSON at byte 10: unexpected end of input", 10},
	{"unterminated string", 0, `{"model":"m`, "invalid JSON at byte 9: unterminated string", 9},
	{"unterminated key", 0, `{"mod`, "invalid JSON at byte 1: unterminated string", 1},
	{"backslash at end", 0, `{"model":"m\`, "invalid JSON at byte 9: unterminated string", 9},
	{"bad escape", 0, `{"model":"\x"}`, "invalid JSON at byte 10: invalid escape in string", 10},
	{"bad unicode escape", 0, `{"model":"\u12G4"}`, "invalid JSON at byte 10: invalid \\u escape in string", 10},
	{"short unicode escape", 0, `{"model":"\u12`, "invalid JSON at byte 10: invalid \\u escape in string", 10},
	{"raw newline in string", 0, "{\"model\":\"a\nb\"}", "invalid JSON at byte 11: control character in string", 11},
	{"leading zero", 0, `{"x":01}`, "invalid JSON at byte 6: expected ',' or '}' after object value", 6},
	{"lone minus", 0, `{"x":-}`, "invalid JSON at byte 6: invalid number", 6},
	{"bare decimal point", 0, `{"x":1.}`, "invalid JSON at byte 7: expected digit after decimal point", 7},
	{"bare exponent", 0, `{"x":1e+}`, "invalid JSON at byte 8: expected digit in exponent", 8},
	{"plus sign", 0, `{"x":+1}`, "invalid JSON at byte 5: expected a value", 5},
	{"bad literal", 0, `{"x":nul}`, "invalid JSON at byte 5: invalid literal", 5},
	{"capitalised literal", 0, `{"x":True}`, "invalid JSON at byte 5: expected a value", 5},
	{"single quotes", 0, `{'model':'m'}`, "invalid JSON at byte 1: expected string for object key", 1},
	{"bad value beats bad type", 0, `{"model":"m","messages":[],"stream":tru}`, "invalid JSON at byte 36: invalid literal", 36},
	{"too deep", 0, `{"x":` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `}`, "request body nests deeper than 128 levels", 132},
	{"too deep in messages", 0, `{"messages":[{"content":[{"x":` + strings.Repeat(`{"a":`, 200), "request body nests deeper than 128 levels", 30 + 5*123},

	// Wrong types.
	{"model number", 0, `{"model":5,"messages":[]}`, "model must be a string", 9},
	{"model object", 0, `{"model":{"name":"m"},"messages":[]}`, "model must be a string", 9},
	{"messages object", 0, `{"model":"m","messages":{}}`, "messages must be an array", 24},
	{"messages string", 0, `{"model":"m","messages":"hi"}`, "messages must be an array", 24},
	{"message string", 0, `{"model":"m","messages":[{},"hi"]}`, "messages[1] must be an object", 28},
	{"content number", 0, `{"model":"m","messages":[{"content":5}]}`, "messages[0].content must be a string, an array of content parts, or null", 36},
	{"content object", 0, `{"model":"m","messages":[{},{"content":{"type":"text"}}]}`, "messages[1].content must be a string, an array of content parts, or null", 39},
	{"part string", 0, `{"model":"m","messages":[{"content":[{},"hi"]}]}`, "messages[0].content[1] must be an object", 40},
	{"part text number", 0, `{"model":"m","messages":[{"content":[{"type":"text","text":1}]}]}`, "messages[0].content[0].text must be a string", 59},
	{"part type bool", 0, `{"model":"m","messages":[{"content":[{"type":true}]}]}`, "messages[0].content[0].type must be a string", 45},
	{"stream string", 0, `{"model":"m","messages":[],"stream":"true"}`, "stream must be a boolean", 36},
	{"stream number", 0, `{"model":"m","messages":[],"stream":1}`, "stream must be a boolean", 36},
	{"max_tokens negative", 0, `{"model":"m","messages":[],"max_tokens":-1}`, "max_tokens must be a non-negative integer", 40},
	{"max_tokens negative zero", 0, `{"model":"m","messages":[],"max_tokens":-0}`, "max_tokens must be a non-negative integer", 40},
	{"max_tokens fraction", 0, `{"model":"m","messages":[],"max_tokens":1.5}`, "max_tokens must be a non-negative integer", 40},
	{"max_tokens exponent", 0, `{"model":"m","messages":[],"max_tokens":1e3}`, "max_tokens must be a non-negative integer", 40},
	{"max_tokens string", 0, `{"model":"m","messages":[],"max_tokens":"100"}`, "max_tokens must be a non-negative integer", 40},
	{"max_tokens huge", 0, `{"model":"m","messages":[],"max_tokens":9223372036854775808}`, "max_tokens is too large", 40},
	{"max_tokens very huge", 0, `{"model":"m","messages":[],"max_tokens":123456789012345678901234567890}`, "max_tokens is too large", 40},
	{"max_completion_tokens negative", 0, `{"model":"m","messages":[],"max_completion_tokens":-5}`, "max_completion_tokens must be a non-negative integer", 51},
	{"tools object", 0, `{"model":"m","messages":[],"tools":{}}`, "tools must be an array", 35},
	{"functions string", 0, `{"model":"m","messages":[],"functions":"f"}`, "functions must be an array", 39},
	{"response_format string", 0, `{"model":"m","messages":[],"response_format":"json"}`, "response_format must be an object", 45},
	{"response_format type number", 0, `{"model":"m","messages":[],"response_format":{"type":1}}`, "response_format.type must be a string", 53},
	{"prompt number", 0, `{"model":"m","prompt":5}`, "prompt must be a string or an array", 22},
	{"prompt bool item", 0, `{"model":"m","prompt":["a",true]}`, "prompt[1] must be a string, a token id or an array of token ids", 27},
	{"prompt null item", 0, `{"model":"m","prompt":[null]}`, "prompt[0] must be a string, a token id or an array of token ids", 23},
	{"prompt fraction item", 0, `{"model":"m","prompt":[1.5]}`, "prompt[0] must be a token id (a non-negative integer)", 23},
	{"prompt negative token", 0, `{"model":"m","prompt":[[1,-2]]}`, "prompt[0][1] must be a token id (a non-negative integer)", 26},
	{"prompt string token", 0, `{"model":"m","prompt":[[1,"a"]]}`, "prompt[0][1] must be a token id (a non-negative integer)", 26},
	{"prompt nested too far", 0, `{"model":"m","prompt":[[[1]]]}`, "prompt[0][0] must be a token id (a non-negative integer)", 24},
	{"input object", 0, `{"model":"m","input":{"text":"x"}}`, "input must be a string or an array", 21},
	{"input item object", 0, `{"model":"m","input":[{}]}`, "input[0] must be a string, a token id or an array of token ids", 22},

	// Missing fields.
	{"no model", 0, `{"messages":[]}`, "model is required", 0},
	{"null model", 0, `{"model":null,"messages":[]}`, "model is required", 0},
	{"no messages", KindChat, `{"model":"m","prompt":"p"}`, "messages is required", 0},
	{"null messages", 0, `{"model":"m","messages":null}`, "request body has no messages, prompt or input", 0},
	{"later null messages", KindChat, `{"model":"m","messages":[],"messages":null}`, "messages is required", 0},
	{"no prompt", KindCompletion, `{"model":"m","messages":[]}`, "prompt is required", 0},
	{"no input", KindEmbedding, `{"model":"m","prompt":"p"}`, "input is required", 0},
	{"nothing to infer from", 0, `{"model":"m","temperature":1}`, "request body has no messages, prompt or input", 0},
	{"empty object", 0, `{}`, "request body has no messages, prompt or input", 0},
	{"bad kind", Kind(9), `{"model":"m"}`, "unsupported endpoint kind 9", 0},
}

func TestParseRequestErrors(t *testing.T) {
	req := Request{Texts: make([]Span, 0, 4)}
	for _, tt := range parseErrorTests {
		t.Run(tt.name, func(t *testing.T) {
			err := ParseRequest(tt.kind, []byte(tt.body), &req)
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("ParseRequest(%q) = %v, want a *ParseError", tt.body, err)
			}
			if pe.Error() != tt.msg || pe.Offset != tt.offset {
				t.Errorf("ParseRequest(%q) =\n\t%q at %d, want\n\t%q at %d", tt.body, pe.Error(), pe.Offset, tt.msg, tt.offset)
			}
			if pe.syntax && json.Valid([]byte(tt.body)) {
				t.Errorf("syntax error for valid JSON")
			}
			if pe.Msg != "model is required" && !reflect.DeepEqual(req, Request{Texts: req.Texts[:0]}) {
				t.Errorf("req not reset after error: %+v", req)
			}
		})
	}
}

// TestParseRequestTruncated cuts every valid test body short at every
// byte: each prefix is malformed JSON and must be rejected (a wrong type
// met before the cut may be what is reported).
func TestParseRequestTruncated(t *testing.T) {
	var req Request
	for _, tt := range parseTests {
		body := []byte(tt.body)
		end := bytes.LastIndexByte(body, '}')
		for n := range end {
			for _, kind := range []Kind{KindUnknown, KindChat, KindCompletion, KindEmbedding} {
				err := ParseRequest(kind, body[:n], &req)
				var pe *ParseError
				if !errors.As(err, &pe) {
					t.Fatalf("%s: ParseRequest(%v, %q) = %v, want a *ParseError", tt.name, kind, body[:n], err)
				}
			}
		}
	}
}

func TestParseRequestMissingModelFillsTheRest(t *testing.T) {
	body := []byte(`{"messages":[{"content":"hi"}],"stream":true}`)
	var req Request
	err := ParseRequest(KindUnknown, body, &req)
	if err == nil || err.Error() != "model is required" {
		t.Fatalf("err = %v, want model is required", err)
	}
	want := chat("").with(func(v *view) { v.ModelLit, v.Messages, v.Texts, v.Stream = "", 1, []string{`"hi"`}, true })
	if got := viewOf(&req, body); !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	if req.PromptTokens != 1+4+3 {
		t.Errorf("PromptTokens = %d, want 8", req.PromptTokens)
	}
}

func TestParseRequestReuse(t *testing.T) {
	var req Request
	big := chatBody(64 << 10)
	if err := ParseRequest(KindChat, big, &req); err != nil {
		t.Fatal(err)
	}
	small := []byte(`{"model":"m","prompt":"p"}`)
	if err := ParseRequest(KindUnknown, small, &req); err != nil {
		t.Fatal(err)
	}
	want := view{Kind: KindCompletion, Model: "m", ModelLit: `"m"`, Texts: []string{`"p"`}}
	if got := viewOf(&req, small); !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	checkInvariants(t, &req, small)
}

func TestParseRequestAllocs(t *testing.T) {
	body := chatBody(2 << 10)
	other := bytes.Replace(body, []byte(`"model":"gpt-4o"`), []byte(`"model":"gpt-4.1"`), 1)
	var req Request
	if err := ParseRequest(KindChat, body, &req); err != nil {
		t.Fatal(err)
	}
	if raceEnabled {
		t.Skip("allocation counts are not exact under the race detector")
	}
	if n := testing.AllocsPerRun(100, func() { _ = ParseRequest(KindChat, body, &req) }); n != 0 {
		t.Errorf("same model: %v allocs per parse, want 0", n)
	}
	flip := false
	n := testing.AllocsPerRun(100, func() {
		flip = !flip
		if flip {
			_ = ParseRequest(KindChat, other, &req)
		} else {
			_ = ParseRequest(KindChat, body, &req)
		}
	})
	if n > 1 {
		t.Errorf("changing model: %v allocs per parse, want at most 1", n)
	}
}

func TestParseErrorMessage(t *testing.T) {
	e := &ParseError{Offset: 17, Msg: "expected ':' after object key", syntax: true}
	if got, want := e.Error(), "invalid JSON at byte 17: expected ':' after object key"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	e = &ParseError{Offset: 3, Msg: "stream must be a boolean"}
	if got, want := e.Error(), "stream must be a boolean"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestUnquoteInto(t *testing.T) {
	tests := []struct {
		lit, want string
		err       bool
	}{
		{lit: `""`, want: ""},
		{lit: `"plain ascii"`, want: "plain ascii"},
		{lit: `"\"\\\/\b\f\n\r\t"`, want: "\"\\/\b\f\n\r\t"},
		{lit: `"\u0041\u00e9\u65e5\uFFFF"`, want: "Aé日\uffff"},
		{lit: `"\ud83d\ude00"`, want: "😀"},
		{lit: `"\uD83D\uDE00x"`, want: "😀x"},
		{lit: `"\ud83d"`, want: "\ufffd"},
		{lit: `"\ude00\ud83d"`, want: "\ufffd\ufffd"},
		{lit: `"\ud83dx"`, want: "\ufffdx"},
		{lit: `"\ud83d\u0041"`, want: "\ufffdA"},
		{lit: `"\ud83d\ud83d\ude00"`, want: "\ufffd😀"},
		{lit: "\"héllo 世界\"", want: "héllo 世界"},
		{lit: "\"a\xffb\xc3\"", want: "a\ufffdb\ufffd"},
		{lit: "\"\x7f\"", want: "\x7f"},
		{lit: ``, err: true},
		{lit: `"`, err: true},
		{lit: `abc`, err: true},
		{lit: `"abc`, err: true},
		{lit: `"abc\"`, err: true},
		{lit: `"a"b"`, err: true},
		{lit: `"\x"`, err: true},
		{lit: `"\u12"`, err: true},
		{lit: `"\u12g4"`, err: true},
		{lit: "\"a\tb\"", err: true},
		{lit: "\"\x00\"", err: true},
	}
	for _, tt := range tests {
		got, err := UnquoteInto([]byte("prefix:"), []byte(tt.lit))
		if tt.err {
			if err == nil {
				t.Errorf("UnquoteInto(%q) = %q, want an error", tt.lit, got)
			}
			if json.Valid([]byte(tt.lit)) {
				t.Errorf("%q is valid JSON", tt.lit)
			}
			continue
		}
		if err != nil || string(got) != "prefix:"+tt.want {
			t.Errorf("UnquoteInto(%q) = %q, %v; want %q", tt.lit, got, err, "prefix:"+tt.want)
		}
		var std string
		if err := json.Unmarshal([]byte(tt.lit), &std); err != nil || std != tt.want {
			t.Errorf("encoding/json decodes %q as %q, %v; the test wants %q", tt.lit, std, err, tt.want)
		}
	}
}

func TestEstimateTokens(t *testing.T) {
	tests := []struct {
		name string
		kind Kind
		body string
		want int
	}{
		// Chat: 4 per message + 3 for the reply.
		{"ascii", 0, `{"model":"m","messages":[{"content":"Hello, world!"}]}`, 4 + 4 + 3},                                 // 13 bytes → 4
		{"long ascii", 0, `{"model":"m","messages":[{"content":"The quick brown fox jumps over the lazy dog"}]}`, 11 + 7}, // 43 → 11
		{"no messages", 0, `{"model":"m","messages":[]}`, 3},
		{"empty text", 0, `{"model":"m","messages":[{"content":""},{"content":null}]}`, 0 + 8 + 3},
		{"accents", 0, `{"model":"m","messages":[{"content":"héllo"}]}`, 1 + 1 + 7},           // 4 ascii → 1, é → 1
		{"cjk", 0, `{"model":"m","messages":[{"content":"日本語のテキスト"}]}`, 8 + 7},                // 8 runes
		{"emoji", 0, `{"model":"m","messages":[{"content":"ok 😀👍"}]}`, 1 + 2 + 7},             // "ok " → 1
		{"escapes", 0, `{"model":"m","messages":[{"content":"a\nb\"c\u00e9"}]}`, 2 + 1 + 7},   // a \n b \" c: 5 bytes → 2
		{"surrogate pair", 0, `{"model":"m","messages":[{"content":"\ud83d\ude00"}]}`, 2 + 7}, // two \u escapes
		{"escaped ascii", 0, `{"model":"m","messages":[{"content":"\u0041BCD"}]}`, 1 + 1 + 7},
		{"rounding per span", 0, `{"model":"m","messages":[{"content":[{"type":"text","text":"abc"},{"type":"text","text":"abcde"}]}]}`, 1 + 2 + 7},
		{"long mixed", 0, `{"model":"m","messages":[{"content":"abcdefghijklmnopé1234567890123456789ü"}]}`, 9 + 2 + 7}, // 35 ascii → 9
		{"image", 0, `{"model":"m","messages":[{"content":[{"type":"text","text":"what?"},{"type":"image_url","image_url":{"url":"u"}}]}]}`, 2 + ImageTokens + 7},
		{"tools", 0, `{"model":"m","messages":[],"tools":[{"name":"abcdefgh"}]}`, 7 + 3},                // 19 bytes → 7
		{"tool calls", 0, `{"model":"m","messages":[{"content":null,"tool_calls":[1234]}]}`, 2 + 4 + 3}, // 6 bytes → 2
		// Completions and embeddings: no message overhead; token ids 1 each.
		{"prompt", 0, `{"model":"m","prompt":"abcd"}`, 1},
		{"prompt list", 0, `{"model":"m","prompt":["abcde","日本"]}`, 2 + 2},
		{"token ids", 0, `{"model":"m","prompt":[[1,2,3],[4],5]}`, 5},
		{"embedding", 0, `{"model":"m","input":["ab","cd",[7,8]]}`, 1 + 1 + 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var req Request
			if err := ParseRequest(tt.kind, []byte(tt.body), &req); err != nil {
				t.Fatal(err)
			}
			if got := EstimateTokens(&req, []byte(tt.body)); got != tt.want {
				t.Errorf("EstimateTokens = %d, want %d", got, tt.want)
			}
			if req.PromptTokens != tt.want || req.PromptTokensExact {
				t.Errorf("PromptTokens = %d (exact %v), want %d", req.PromptTokens, req.PromptTokensExact, tt.want)
			}
		})
	}
}

func TestEstimateTokensForeignBody(t *testing.T) {
	// Spans that do not fit the body must not panic.
	req := Request{Texts: []Span{{5, 100}, {-1, 3}, {2, 2}, {1, 4}}}
	if got := EstimateTokens(&req, []byte(`"a\"`)); got != 1 {
		t.Errorf("EstimateTokens = %d, want 1", got)
	}
}

// TestCountText checks the word-at-a-time counting against a byte loop.
func TestCountText(t *testing.T) {
	ref := func(b []byte) (ascii, other int) {
		for i := 0; i < len(b); {
			switch {
			case b[i] == '\\' && i+1 < len(b) && b[i+1] == 'u':
				other++
				i += 6
			case b[i] == '\\':
				ascii++
				i += 2
			case b[i] < utf8.RuneSelf:
				ascii++
				i++
			default:
				_, n := utf8.DecodeRune(b[i:])
				other++
				i += n
			}
		}
		return
	}
	alphabet := []string{"a", " ", "Z", "\\n", "\\\"", "\\u00e9", "é", "日", "😀", "\\\\"}
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		var b []byte
		for range r.IntN(40) {
			b = append(b, alphabet[r.IntN(len(alphabet))]...)
		}
		a1, o1 := countText(b)
		a2, o2 := ref(b)
		if a1 != a2 || o1 != o2 {
			t.Fatalf("countText(%q) = %d, %d; want %d, %d", b, a1, o1, a2, o2)
		}
	}
}

func TestTemperatureZero(t *testing.T) {
	for _, tt := range []struct {
		body string
		zero bool
	}{
		{`{"model":"m","messages":[],"temperature":0}`, true},
		{`{"model":"m","messages":[],"temperature":0.0}`, true},
		{`{"model":"m","messages":[],"temperature":-0}`, true},
		{`{"model":"m","messages":[],"temperature":0e5}`, true},
		{`{"model":"m","messages":[],"temperature":0.00001}`, false},
		{`{"model":"m","messages":[],"temperature":1}`, false},
		{`{"model":"m","messages":[],"temperature":10}`, false},
		{`{"model":"m","messages":[],"temperature":"0"}`, false},
		{`{"model":"m","messages":[],"temperature":null}`, false},
		{`{"model":"m","messages":[]}`, false},
		{`{"model":"m","prompt":"x","temperature":0}`, true},
	} {
		var r Request
		if err := ParseRequest(KindUnknown, []byte(tt.body), &r); err != nil {
			t.Fatalf("%s: %v", tt.body, err)
		}
		if r.TemperatureZero != tt.zero {
			t.Errorf("%s: TemperatureZero %v, want %v", tt.body, r.TemperatureZero, tt.zero)
		}
	}
}
