package extproc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The first-token stage. Envoy retries an attempt only while its router has
// no response headers, and a provider that accepts a stream (200, SSE
// headers) and then stalls has sent them. So, for streaming requests, each
// backend cluster runs a third ext_proc filter (enabled by the stream route
// only) that sends detour the attempt's response headers and, without
// waiting for their answer, its body chunks. detour answers the headers once
// the body holds a first token; until then the router has seen no response,
// and the route's per_try_timeout (retry.first_token_timeout) can still move
// the request to the next backend. Once released, detour closes the gRPC
// stream: Envoy passes the rest of the body on without a round trip per
// chunk (probed on Envoy 1.40: chunks already in flight at the close are
// passed on, in order).

// maxHeldBytes bounds what is held without a token: a provider sending that
// much is not stalled, whatever its format.
const maxHeldBytes = 64 << 10

// Outcomes of a first-token hold (label of detour_extproc_first_token_holds_total).
const (
	holdToken     = "token"        // released on the first token
	holdEnded     = "ended"        // the body ended first
	holdLimit     = "limit"        // maxHeldBytes without a token
	holdNotStream = "not_a_stream" // not an uncompressed 200 event stream: answered at once
	holdAbandoned = "abandoned"    // Envoy ended the attempt while its headers were held
)

// holdFirstToken serves a first-token stage stream, from its response
// headers message to the release. It ends the stream itself.
func (s *Server) holdFirstToken(stream extprocv3.ExternalProcessor_ProcessServer, st *state, w *work, cluster string, h *extprocv3.HttpHeaders) (err error) {
	start := time.Now()
	backend := cluster
	if _, known := st.router.BackendIndex(cluster); !known {
		backend = "unknown"
	}
	outcome := holdAbandoned
	defer func() {
		if r := recover(); r != nil {
			// Closing the stream releases whatever is held (the filter
			// fails open): a bug here must not cost the client its answer.
			s.metrics.Panics.Inc()
			s.log.Error("panic while holding a stream for its first token", "panic", fmt.Sprint(r), "backend", backend)
			err = nil
			return
		}
		s.metrics.FirstTokenHolds.WithLabelValues(backend, outcome).Inc()
		switch outcome {
		case holdAbandoned:
			s.log.Info("attempt abandoned before its first token", "backend", backend, "held", time.Since(start).Round(time.Millisecond))
		case holdNotStream:
		default:
			s.metrics.FirstTokenWait.WithLabelValues(backend).Observe(time.Since(start).Seconds())
		}
	}()
	send := func(r *extprocv3.ProcessingResponse) error {
		if err := stream.Send(r); err != nil && stream.Context().Err() == nil {
			return fmt.Errorf("extproc: send: %w", err)
		}
		return nil
	}
	if !holdable(h) {
		outcome = holdNotStream
		return send(passiveHeaders())
	}
	// The held chunks, answered in order at the release; w.body is free
	// (this stream carries no request).
	pending, scanned := 0, 0
	for {
		msg, rerr := stream.Recv()
		if rerr != nil {
			if errors.Is(rerr, io.EOF) || status.Code(rerr) == codes.Canceled || stream.Context().Err() != nil {
				return nil
			}
			return fmt.Errorf("extproc: receive: %w", rerr)
		}
		b := msg.GetResponseBody()
		if b == nil {
			// Nothing else is configured; should trailers come, closing the
			// stream releases them with everything held.
			outcome = holdEnded
			break
		}
		pending++
		w.body = append(w.body, b.Body...)
		var found bool
		if scanned, found = scanFirstToken(w.body, scanned); found {
			outcome = holdToken
			break
		}
		if b.EndOfStream {
			outcome = holdEnded
			break
		}
		if len(w.body) > maxHeldBytes {
			outcome = holdLimit
			break
		}
	}
	if err := send(passiveHeaders()); err != nil {
		return err
	}
	for range pending {
		if err := send(passBody()); err != nil {
			return err
		}
	}
	if s.log.Enabled(stream.Context(), slog.LevelDebug) {
		s.log.Debug("first token released", "backend", backend, "outcome", outcome, "held", time.Since(start), "chunks", pending)
	}
	return nil
}

// holdable: only an uncompressed 200 event stream is held. Anything else
// (an error to retry, a whole JSON answer) goes on at once, and a
// compressed stream cannot be read for its first token.
func holdable(h *extprocv3.HttpHeaders) bool {
	rs := readResponseShape(h)
	return !h.EndOfStream && rs.status == "200" && rs.readableStream()
}

// responseShape is what the response stages read of response headers.
type responseShape struct {
	status, contentType, encoding string
	backend                       string // HeaderBackend
}

func readResponseShape(h *extprocv3.HttpHeaders) responseShape {
	var rs responseShape
	for _, hv := range h.GetHeaders().GetHeaders() {
		switch hv.Key {
		case ":status":
			rs.status = headerValue(hv)
		case "content-type":
			rs.contentType = headerValue(hv)
		case "content-encoding":
			rs.encoding = headerValue(hv)
		case HeaderBackend:
			rs.backend = headerValue(hv)
		}
	}
	return rs
}

// readableStream: an event stream detour can read (not compressed).
func (rs responseShape) readableStream() bool {
	mediaType, _, _ := strings.Cut(rs.contentType, ";")
	return strings.EqualFold(strings.TrimSpace(mediaType), "text/event-stream") &&
		(rs.encoding == "" || strings.EqualFold(rs.encoding, "identity"))
}

// scanFirstToken reads the complete lines of an event stream from offset
// from, and reports whether one is a first token; next is where the lines
// not yet read start (an incomplete line waits for more bytes).
func scanFirstToken(buf []byte, from int) (next int, found bool) {
	for {
		i := bytes.IndexAny(buf[from:], "\r\n")
		if i < 0 {
			return from, false
		}
		line := buf[from : from+i]
		from += i + 1
		if isFirstToken(line) {
			return from, true
		}
	}
}

// isFirstToken reports whether one line of an event stream carries output.
// Comments (keep-alives), event names, ids and blank lines do not; a data
// line does unless it is an OpenAI-style preamble: a chunk whose choices
// say nothing yet (the role chunk, Azure's filter results). "[DONE]" and
// data in an unknown shape count, so a stream detour cannot read is never
// held for long.
func isFirstToken(line []byte) bool {
	payload, ok := bytes.CutPrefix(line, []byte("data:"))
	if !ok {
		return false
	}
	payload = bytes.TrimSpace(payload)
	if len(payload) == 0 {
		return false
	}
	return !isPreamble(payload)
}

// chunkShape is what isPreamble reads of a streamed chunk.
type chunkShape struct {
	Choices *[]struct {
		Delta        map[string]json.RawMessage `json:"delta"`
		Text         *string                    `json:"text"`
		FinishReason json.RawMessage            `json:"finish_reason"`
	} `json:"choices"`
}

// isPreamble reports whether a data payload is a chat or completions chunk
// with no output: every choice without a finish reason, text or any delta
// field other than the role that holds a value.
func isPreamble(payload []byte) bool {
	var c chunkShape
	if json.Unmarshal(payload, &c) != nil || c.Choices == nil {
		return false
	}
	for _, ch := range *c.Choices {
		if !emptyJSON(ch.FinishReason) || (ch.Text != nil && *ch.Text != "") {
			return false
		}
		for k, v := range ch.Delta {
			if k != "role" && !emptyJSON(v) {
				return false
			}
		}
	}
	return true
}

// emptyJSON: absent, null, "", [] or {}.
func emptyJSON(v json.RawMessage) bool {
	switch string(bytes.TrimSpace(v)) {
	case "", "null", `""`, "[]", "{}":
		return true
	}
	return false
}
