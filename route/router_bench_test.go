package route

import (
	"strconv"
	"strings"
	"testing"
)

func BenchmarkDecide(b *testing.B) {
	r := mustRouter(b, quickstartTable())
	req := Request{Kind: KindChat, Model: "auto", PromptTokens: 120, Messages: 2}
	var d Decision
	if err := r.Decide(&req, &d); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := r.Decide(&req, &d); err != nil {
			b.Fatal(err)
		}
	}
}

// conversation2KB is a chat body of about 2 KB: a system prompt and a few
// user / assistant turns, as a client of "auto" sends it.
func conversation2KB() []byte {
	turns := []struct{ role, content string }{
		{"system", "You are a careful assistant for a platform team. Answer in plain English, cite config keys exactly, and say so when you are unsure. Keep answers under 200 words unless asked for more. The team runs Envoy in front of every provider, deploys with a YAML policy file checked into git, and reviews each change; prefer answers they can paste into that file, and point out anything that needs a restart rather than a reload."},
		{"user", "We run three LLM providers behind one gateway. When the primary times out we want requests to move to the secondary without the client noticing. What should we configure first?"},
		{"assistant", "Start with the retry policy: a small number of attempts (three or four) with exponential back-off and jitter, so a burst of failures does not turn into a burst of retries. Then add a circuit breaker per backend: when its error rate over a window passes a threshold, stop sending it traffic for a while and probe it before trusting it again. Finally make sure every backend can serve the requests you will fail over: context window, tools, vision and JSON mode must match, or the failover turns a timeout into a 400."},
		{"user", "Our prompts are usually short, but some users paste whole log files (up to 100k tokens). How do we stop those from going to the 8k model?"},
		{"assistant", "Route by need rather than by name. Estimate the prompt size from the body, add the room you reserve for the answer, and only consider backends whose context window fits the total. Short chats then go to the cheapest small model, and the pasted logs go to the long-context one. If nothing fits, reject the request with a clear error naming each backend's limit instead of letting the provider truncate silently."},
		{"user", "Makes sense. Can you show the policy snippet for an \"auto\" route that picks the cheapest backend which fits?"},
	}
	var sb strings.Builder
	sb.WriteString(`{"model":"auto","temperature":0.2,"stream":true,"messages":[`)
	for i, t := range turns {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(`{"role":"` + t.role + `","content":` + strconv.Quote(t.content) + `}`)
	}
	sb.WriteString(`]}`)
	return []byte(sb.String())
}

func TestConversation2KB(t *testing.T) {
	body := conversation2KB()
	if n := len(body); n < 1950 || n > 2150 {
		t.Errorf("the 2 KB benchmark body is %d bytes", n)
	}
	r := mustRouter(t, quickstartTable())
	var req Request
	var d Decision
	if err := ParseRequest(KindChat, body, &req); err != nil {
		t.Fatal(err)
	}
	if err := r.Decide(&req, &d); err != nil {
		t.Fatal(err)
	}
	if r.Backend(d.Backend).Name != "fast" || req.Messages != 6 || !req.Stream {
		t.Errorf("decision %+v for %+v", d, req)
	}
	out := RewriteModel(nil, body, &req, d.UpstreamModel)
	if !strings.HasPrefix(string(out), `{"model":"fast-8k",`) {
		t.Errorf("rewritten body starts %q", out[:30])
	}
}

// BenchmarkParseAndDecide2KB is the routing hot path for one request:
// parse the body, decide, rewrite the model, with everything reused.
func BenchmarkParseAndDecide2KB(b *testing.B) {
	r := mustRouter(b, quickstartTable())
	body := conversation2KB()
	var (
		req Request
		d   Decision
		dst []byte
	)
	run := func() {
		if err := ParseRequest(KindChat, body, &req); err != nil {
			b.Fatal(err)
		}
		if err := r.Decide(&req, &d); err != nil {
			b.Fatal(err)
		}
		dst = RewriteModel(dst[:0], body, &req, d.UpstreamModel)
	}
	run()
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		run()
	}
}
