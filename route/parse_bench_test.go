package route

import (
	"strconv"
	"testing"
)

// chatTurns are realistic chat messages, with escapes, non-ASCII text and
// content parts, that chatBody cycles through.
var chatTurns = []string{
	`{"role":"user","content":"Can you explain what a context window is, and why it matters when I pick a model?"}`,
	`{"role":"assistant","content":"A model's context window is the number of tokens it can attend to at once: the prompt plus the reply.\n\nIf a conversation grows past it, the oldest turns must be dropped or summarised, so a larger window lets you keep more history, longer documents and bigger tool schemas in play."}`,
	`{"role":"user","content":"Here is my config:\n\n` + "```" + `yaml\nroutes:\n  - match: \"gpt-4o*\"\n    backends: [openai, azure]\n` + "```" + `\nDoes the \"match\" glob look right?"}`,
	`{"role":"assistant","content":"Yes. The glob \"gpt-4o*\" matches gpt-4o and gpt-4o-mini; quote it as you did, since YAML treats a bare * as an alias."}`,
	`{"role":"user","content":[{"type":"text","text":"Translate to Japanese and French: \"The weather is lovely today.\""},{"type":"image_url","image_url":{"url":"https://example.com/sky.png","detail":"low"}}]}`,
	`{"role":"assistant","content":"日本語: 今日はとてもいい天気ですね。\nFrançais : « Il fait très beau aujourd\u2019hui. » 🌤️"}`,
	`{"role":"assistant","content":null,"tool_calls":[{"id":"call_9f2","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Zürich\",\"unit\":\"celsius\"}"}}]}`,
	`{"role":"tool","tool_call_id":"call_9f2","content":"{\"temp\":21.5,\"sky\":\"clear\",\"wind_kmh\":8}"}`,
}

// chatBody returns a chat request body of at least size bytes: a system
// prompt, tools and chatTurns repeated.
func chatBody(size int) []byte {
	b := []byte(`{"model":"gpt-4o","temperature":0.7,"stream":true,"max_completion_tokens":1024,` +
		`"tools":[{"type":"function","function":{"name":"get_weather","description":"Current weather for a city",` +
		`"parameters":{"type":"object","properties":{"city":{"type":"string"},"unit":{"type":"string","enum":["celsius","fahrenheit"]}},"required":["city"]}}}],` +
		`"messages":[{"role":"system","content":"You are a helpful assistant. Answer concisely.\nToday is 2025-06-01."}`)
	for i := 0; len(b) < size-2; i++ {
		b = append(b, ',')
		b = append(b, chatTurns[i%len(chatTurns)]...)
	}
	return append(b, "]}"...)
}

func BenchmarkParseRequest(b *testing.B) {
	for _, size := range []int{1 << 10, 2 << 10, 64 << 10, 1 << 20} {
		body := chatBody(size)
		name := strconv.Itoa(size>>10) + "KB"
		if size >= 1<<20 {
			name = strconv.Itoa(size>>20) + "MB"
		}
		b.Run(name, func(b *testing.B) {
			var req Request
			if err := ParseRequest(KindChat, body, &req); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if err := ParseRequest(KindChat, body, &req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkRewriteModel(b *testing.B) {
	body := chatBody(2 << 10)
	var req Request
	if err := ParseRequest(KindChat, body, &req); err != nil {
		b.Fatal(err)
	}
	dst := make([]byte, 0, len(body)+64)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		dst = RewriteModel(dst[:0], body, &req, "gpt-4o-2024-08-06")
	}
}
