// Package sim is an honest simulated OpenAI-compatible LLM provider.
//
// It stands in for real providers (never for Envoy) in detour's quickstart,
// end-to-end tests, benchmarks and chaos tests. A [Server] answers
// POST /v1/chat/completions, POST /v1/completions, POST /v1/embeddings and
// GET /v1/models on its serving listener the way OpenAI does (same JSON
// shapes, same SSE framing, same error envelope), with deterministic content
// so tests can check what came back.
//
// Faults are scripted globally ([Server.SetFault] or the admin endpoint
// POST /_sim/faults on the admin listener, by default serving port + 1000) or
// per request with x-sim-* request headers. A fault can answer an HTTP error
// status (with Retry-After), delay the response headers or the first token,
// pace tokens, cut a response off mid-body, reset the TCP connection, or
// close the serving listener so that connections are refused.
//
// The admin listener also exposes counters (GET /_sim/stats) and the last
// 256 request records (GET /_sim/requests). Records never contain prompts or
// raw Authorization values: the Authorization header is kept only as a short
// SHA-256 fingerprint.
//
// docs/simulator.md describes the wire behaviour in full.
package sim
