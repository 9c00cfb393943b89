package extproc

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// bench2KB is a chat body of about 2 KB for "auto", routed to fast-8k.
func bench2KB() []byte {
	return chat("auto", prose(470), obj{"temperature": 0.7, "max_tokens": 256, "stream": true})
}

// BenchmarkRoute2KB is the handler path for one request without gRPC:
// the headers message, then the body message that is parsed, decided and
// rewritten.
func BenchmarkRoute2KB(b *testing.B) {
	s, err := New(Config{Policy: quickstart(b, ""), Metrics: NewMetrics(prometheus.NewRegistry()), Tokenizer: realTokenizer(b)})
	if err != nil {
		b.Fatal(err)
	}
	body := bench2KB()
	hdr := headersMsg(call{path: "/v1/chat/completions"})
	msg := bodyMsg(body, true)
	ctx := context.Background()
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		st := s.state.Load()
		w := s.work.Get().(*work)
		w.reset()
		if r := s.handleSafely(ctx, st, w, hdr); r.GetRequestHeaders() == nil {
			b.Fatalf("headers: %v", r)
		}
		r := s.handleSafely(ctx, st, w, msg)
		if r.GetRequestBody().GetResponse().GetBodyMutation() == nil {
			b.Fatalf("body: %v", r)
		}
		s.work.Put(w)
	}
}

// BenchmarkProcessGRPC is one whole request over the real gRPC server on
// bufconn: open a stream, headers, body, close.
func BenchmarkProcessGRPC(b *testing.B) {
	h := newHarness(b, quickstart(b, ""), realTokenizer(b))
	body := bench2KB()
	c := post("/v1/chat/completions", body)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if r := h.do(b, c); r.routed == nil {
			b.Fatalf("not routed: %v", r.imm)
		}
	}
}

// BenchmarkProcessGRPCParallel is BenchmarkProcessGRPC from many
// goroutines on one connection, as Envoy multiplexes streams.
func BenchmarkProcessGRPCParallel(b *testing.B) {
	h := newHarness(b, quickstart(b, ""), realTokenizer(b))
	c := post("/v1/chat/completions", bench2KB())
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if r := h.do(b, c); r.routed == nil {
				b.Errorf("not routed: %v", r.imm)
				return
			}
		}
	})
}
