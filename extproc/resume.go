package extproc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/metadata"

	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/route"
)

// The resume stage (decision 0015). Once a stream has sent its first
// token, Envoy can no longer move it: the client holds part of an answer.
// So, for streaming chat requests, a third ext_proc filter on the
// listener passes the response body through detour in FULL_DUPLEX_STREAMED
// mode. detour forwards each chunk as it comes and follows the answer. If
// the provider then goes silent for resume.stall_timeout, detour sends the
// request again through Envoy with the answer so far as a final assistant
// message, to a backend that continues partial answers (continuation), and
// streams that backend's continuation to the client in the same response:
// one answer, with a pause where the first provider stalled. Envoy routes
// and retries the continuation like any request; the stalled attempt ends
// when detour ends the response.
//
// Whole answers (non-streaming requests) are held in Envoy, not in
// detour: their body goes to detour STREAMED, where Envoy keeps each chunk
// until detour answers it, and detour answers the headers and every chunk
// only when the body ends. If the body goes silent for
// resume.stall_timeout, detour asks the request again of another backend
// and, if that answer comes first, sends it as an immediate response in
// place of the held one. A processor that dies costs a held answer
// nothing: with failure_mode_allow, Envoy passes on what it kept
// (decision 0015).

const (
	// StageMetadataKey is the gRPC metadata key that names the filter a
	// stream comes from; StageResume marks the resume filter's streams.
	StageMetadataKey = "x-detour-stage"
	StageResume      = "resume"
	// HeaderResumeFrom marks a continuation request with the backend that
	// stalled: the router leaves it out, and each attempt's body is marked
	// for its backend's continuation style.
	HeaderResumeFrom = "x-detour-resume-from"
	// HeaderRedoFrom marks a whole request asked again because its answer
	// stopped coming from this backend: the router leaves it out.
	HeaderRedoFrom = "x-detour-redo-from"
	// HeaderResumed counts how many times an answer was moved.
	HeaderResumed = "x-detour-resumed"
)

// Outcomes of a stall (label of detour_extproc_resumes_total).
const (
	resumeResumed  = "resumed"
	resumeFailed   = "failed"
	resumeFinished = "finished"
	resumeNot      = "not_resumable"
)

// resumeState is the resume part of a policy.
type resumeState struct {
	stall time.Duration
	max   int
	// holdFor is how long Envoy may wait for held headers while a repeat
	// runs (envoy.request_timeout).
	holdFor time.Duration
	// maxHeld bounds a held whole answer; past it the answer is let go.
	// Envoy keeps the chunks within its connection buffer
	// (limits.max_body_bytes and some headroom): held past it, Envoy would
	// stop reading the provider, and the answer would stall itself.
	maxHeld int
	// url is where the processor reaches Envoy's listener.
	url string
	// continues marks, by backend index, the backends that take
	// continuations; styles holds their style by name.
	continues []bool
	styles    map[string]string
}

func newResumeState(p *policy.Policy, r *route.Router) resumeState {
	rs := resumeState{stall: p.Resume.StallTimeout.D(), max: p.Resume.MaxResumes, holdFor: p.Envoy.RequestTimeout.D(),
		maxHeld: int(p.Limits.MaxBodyBytes / 2), url: listenerURL(p), styles: map[string]string{}}
	rs.continues = make([]bool, len(r.Backends()))
	for _, b := range p.Backends {
		if b.Continuation == "" {
			continue
		}
		rs.styles[b.Name] = b.Continuation
		if i, ok := r.BackendIndex(b.Name); ok {
			rs.continues[i] = true
		}
	}
	return rs
}

// listenerURL is resume.via, else envoy.listen with a wildcard host
// replaced by loopback.
func listenerURL(p *policy.Policy) string {
	if p.Resume.Via != "" {
		return strings.TrimRight(p.Resume.Via, "/")
	}
	host, port, err := net.SplitHostPort(p.Envoy.Listen)
	if err != nil {
		return "http://" + p.Envoy.Listen
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port)
}

// anyContinues reports whether some backend takes continuations.
func (rs *resumeState) anyContinues() bool { return len(rs.styles) > 0 }

// skipFor is the health for routing a moved answer: the stalled backend
// is left out and, for a continuation, every backend that cannot continue.
func (rs *resumeState) skipFor(r *route.Router, from string, continuation bool, h *route.Health) *route.Health {
	out := &route.Health{Skip: make([]bool, len(rs.continues))}
	if h != nil {
		out.Rank, out.Trial = h.Rank, h.Trial
	}
	for i, ok := range rs.continues {
		out.Skip[i] = continuation && !ok
	}
	if i, ok := r.BackendIndex(from); ok && i < len(out.Skip) {
		out.Skip[i] = true
	}
	return out
}

// isResumeStage reports whether a gRPC stream comes from the resume filter.
func isResumeStage(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get(StageMetadataKey)
	return len(v) == 1 && v[0] == StageResume
}

// resumer is one request's resume stage.
type resumer struct {
	s       *Server
	st      *state
	send    func(*extprocv3.ProcessingResponse) error
	headers http.Header
	path    string
	host    string
	body    []byte
	target  string // the route the client asked for
	stream  bool   // a streaming request (HeaderStream)
	resumed int    // times this answer was already moved (HeaderResumed)
	backend string // the backend answering (response header)
	mode    watchMode
	t       answerTracker // follow: the answer so far
	// hold: the chunks Envoy keeps until detour answers them (the
	// headers are held from the moment mode is hold until release).
	heldChunks int
	heldBytes  int
	// lastToken is when the last chunk arrived.
	lastToken time.Time
}

// watchMode is how the resume stage treats a response.
type watchMode uint8

const (
	// passThrough: nothing to watch (an error, an unknown format).
	passThrough watchMode = iota
	// follow: a chat event stream, passed on as it comes and followed so
	// that another backend can continue it.
	follow
	// hold: a whole answer, held by Envoy (headers included) until its
	// body ends, so that another backend can answer instead if the body
	// stops.
	hold
)

// maxRedoBody bounds the repeated request's answer detour reads.
const maxRedoBody = 16 << 20

// redoDetails is the response code detail of an answer a repeat replaced;
// Envoy's local reply mappers leave detour_* replies as they are.
const redoDetails = "detour_redo"

type contEvent struct {
	data []byte // an event for the client, or nil at the end
	err  error  // at the end: why the continuation failed
}

// redoResult is another backend's whole answer to a request whose answer
// stopped coming.
type redoResult struct {
	status int
	header http.Header
	body   []byte
	err    error
}

// serveResume serves one resume-stage stream to its end.
func (s *Server) serveResume(stream extprocv3.ExternalProcessor_ProcessServer, st *state) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	in := make(chan *extprocv3.ProcessingRequest)
	go func() {
		defer close(in)
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			select {
			case in <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	r := &resumer{s: s, st: st, headers: http.Header{}, send: func(resp *extprocv3.ProcessingResponse) error {
		if err := stream.Send(resp); err != nil && ctx.Err() == nil {
			return fmt.Errorf("extproc: resume: send: %w", err)
		}
		return nil
	}}
	stall := time.NewTimer(time.Hour)
	stall.Stop()
	defer stall.Stop()
	var (
		cont         <-chan contEvent
		redo         <-chan redoResult
		moveStart    time.Time
		sentFromCont bool
	)
	// A repeat runs in moveCtx, cancelled when this stream ends: the held
	// answer completed first, or the repeat's answer was sent.
	moveCtx, cancelMove := context.WithCancel(ctx)
	defer cancelMove()
	for {
		select {
		case m, ok := <-in:
			if !ok {
				return nil
			}
			if cont != nil {
				// The stream is being continued elsewhere: anything more
				// of the stalled attempt is dropped (its other phases
				// answered).
				if resp := passive(m); resp != nil {
					if err := r.send(resp); err != nil {
						return err
					}
				}
				continue
			}
			// A held answer that completes while it is being asked again
			// wins the race: handle passes it on and ends the stream.
			end, err := r.handle(m)
			if err != nil || end {
				return err
			}
			if redo != nil && r.mode != hold {
				// Let go (too large to hold) while being asked again: its
				// headers are gone, so it can no longer be replaced.
				cancelMove()
				redo = nil
			}
			switch {
			case r.mode == follow && r.t.started() && !r.t.done,
				r.mode == hold && redo == nil:
				stall.Reset(st.resume.stall)
			}
		case <-stall.C:
			switch {
			case cont != nil:
				// The continuation went silent too.
				return r.giveUp(fmt.Errorf("the continuation sent nothing for %s", st.resume.stall))
			case r.mode == hold:
				if r.resumed >= st.resume.max || r.target == "" {
					s.metrics.Resumes.WithLabelValues(r.backend, resumeNot).Inc()
					continue
				}
				// The held headers now wait for the repeat: Envoy is asked
				// to wait for them up to the request's own timeout.
				if err := r.send(extendTimeout(st.resume.holdFor)); err != nil {
					return err
				}
				ch := make(chan redoResult, 1)
				go r.redo(moveCtx, ch)
				redo, moveStart = ch, time.Now()
			case r.mode == follow:
				c, end, err := r.onStall(ctx)
				if err != nil || end {
					return err
				}
				if c != nil {
					cont, moveStart = c, time.Now()
					stall.Reset(st.resume.stall + st.messageTimeout)
				}
			}
		case res := <-redo:
			return r.answerRedo(res, moveStart)
		case ev := <-cont:
			if ev.data == nil {
				if ev.err != nil {
					return r.giveUp(ev.err)
				}
				s.metrics.Resumes.WithLabelValues(r.backend, resumeResumed).Inc()
				return r.send(streamed(nil, true))
			}
			if !sentFromCont {
				sentFromCont = true
				s.metrics.ResumeGap.Observe(time.Since(r.lastToken).Seconds())
				s.log.Info("stream resumed on another backend", "stalled", r.backend, "tokens_before", r.t.events,
					"gap", time.Since(r.lastToken).Round(time.Millisecond), "continuation_first_token", time.Since(moveStart).Round(time.Millisecond))
			}
			if err := r.send(streamed(ev.data, false)); err != nil {
				return err
			}
			stall.Reset(st.resume.stall)
		}
	}
}

// handle answers one message while the provider's answer flows; end is
// true once the response has ended.
func (r *resumer) handle(m *extprocv3.ProcessingRequest) (end bool, err error) {
	switch v := m.Request.(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		r.readRequestHeaders(v.RequestHeaders)
		return false, r.send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}})
	case *extprocv3.ProcessingRequest_RequestBody:
		r.body = append(r.body, v.RequestBody.Body...)
		return false, r.send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}})
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		r.readResponseHeaders(v.ResponseHeaders)
		if r.mode == hold && !v.ResponseHeaders.EndOfStream {
			// Held: answered when the body ends (release).
			return false, nil
		}
		return v.ResponseHeaders.EndOfStream, r.send(passiveHeaders())
	case *extprocv3.ProcessingRequest_ResponseBody:
		b := v.ResponseBody
		if !r.stream {
			// STREAMED: Envoy keeps each chunk until detour answers it, so
			// detour only counts them.
			if r.mode != hold {
				return b.EndOfStream, r.send(passBody())
			}
			r.heldChunks++
			r.heldBytes += len(b.Body)
			if b.EndOfStream || r.heldBytes > r.st.resume.maxHeld {
				return b.EndOfStream, r.release()
			}
			return false, nil
		}
		if r.mode == follow {
			r.t.feed(b.Body)
			r.lastToken = time.Now()
		}
		return b.EndOfStream, r.send(streamed(b.Body, b.EndOfStream))
	}
	if resp := passive(m); resp != nil {
		return false, r.send(resp)
	}
	return false, nil
}

// release lets a held whole answer go: its headers, then each chunk
// Envoy kept, all unchanged; the rest of the answer passes.
func (r *resumer) release() error {
	r.mode = passThrough
	if err := r.send(passiveHeaders()); err != nil {
		return err
	}
	for ; r.heldChunks > 0; r.heldChunks-- {
		if err := r.send(passBody()); err != nil {
			return err
		}
	}
	return nil
}

// passBody lets one body chunk (STREAMED) go on unchanged.
func passBody() *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}}
}

func passiveHeaders() *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}
}

// passive answers the messages that need no thought.
func passive(m *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	switch m.Request.(type) {
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return passiveHeaders()
	}
	return nil
}

func streamed(b []byte, eos bool) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{Response: &extprocv3.CommonResponse{
		BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_StreamedResponse{StreamedResponse: &extprocv3.StreamedBodyResponse{Body: b, EndOfStream: eos}}},
	}}}}
}

// readRequestHeaders keeps what a continuation request repeats: the
// client's own headers (its credentials for Envoy's listener, its
// priority), not the ones detour or Envoy added.
func (r *resumer) readRequestHeaders(h *extprocv3.HttpHeaders) {
	for _, hv := range h.GetHeaders().GetHeaders() {
		k, v := hv.Key, headerValue(hv)
		switch {
		case k == ":path":
			r.path = v
		case k == ":authority":
			r.host = v
		case k == HeaderRoute:
			r.target = v
		case k == HeaderResumed:
			r.resumed, _ = strconv.Atoi(v)
		case k == HeaderStream:
			r.stream = true
		case strings.HasPrefix(k, ":"), k == "content-length", k == "host", k == "connection", k == "transfer-encoding",
			k == "te", k == "keep-alive", k == "upgrade", k == "x-request-id",
			strings.HasPrefix(k, "x-envoy-"), strings.HasPrefix(k, "x-forwarded-"):
		case strings.HasPrefix(k, "x-detour-") && k != HeaderPriority:
		default:
			r.headers.Add(k, v)
		}
	}
}

// readResponseHeaders picks the watch mode: a 200 chat event stream
// (uncompressed: detour reads it) is followed, any other 200 answer to a
// request that did not ask for a stream is watched while Envoy holds it;
// anything else passes.
func (r *resumer) readResponseHeaders(h *extprocv3.HttpHeaders) {
	rs := readResponseShape(h)
	switch {
	case rs.status != "200":
	case r.stream && rs.readableStream() && route.KindFromPath(r.path) == route.KindChat:
		r.mode = follow
	case !r.stream && !rs.readableStream():
		r.mode = hold
	}
	r.backend = rs.backend
	if r.backend == "" {
		r.backend = "unknown"
	}
}

// onStall acts on a stream that went silent: it ends an answer that was
// complete, or starts a continuation. end is true when the stream is done
// with (nothing more will be sent).
func (r *resumer) onStall(ctx context.Context) (<-chan contEvent, bool, error) {
	s := r.s
	switch {
	case r.t.finished && !r.t.done:
		// The answer was whole; only its end never came.
		s.metrics.Resumes.WithLabelValues(r.backend, resumeFinished).Inc()
		return nil, true, r.send(streamed([]byte("data: [DONE]\n\n"), true))
	case r.t.unresumable || r.resumed >= r.st.resume.max || r.target == "" || !r.st.resume.anyContinues():
		s.metrics.Resumes.WithLabelValues(r.backend, resumeNot).Inc()
		s.log.Info("stream stalled and cannot be resumed", "backend", r.backend, "tool_calls_or_unreadable", r.t.unresumable, "resumed", r.resumed)
		return nil, false, nil
	}
	body, err := continuationBody(r.body, r.target, r.t.text.String(), r.t.events)
	if err != nil {
		s.metrics.Resumes.WithLabelValues(r.backend, resumeNot).Inc()
		s.log.Info("stream stalled and cannot be resumed", "backend", r.backend, "error", err)
		return nil, false, nil
	}
	ch := make(chan contEvent, 16)
	go r.continuation(ctx, body, ch)
	return ch, false, nil
}

// giveUp ends a stream whose continuation failed with an error event (as
// OpenAI sends mid-stream errors): the client learns the answer is cut.
func (r *resumer) giveUp(err error) error {
	r.s.metrics.Resumes.WithLabelValues(r.backend, resumeFailed).Inc()
	r.s.log.Warn("stream stalled and its continuation failed", "backend", r.backend, "error", err)
	ev := route.ErrStalled(err.Error()).JSON()
	return r.send(streamed(append(append([]byte("data: "), ev...), "\n\n"...), true))
}

// continuation sends the continuation request through Envoy and passes its
// events, rewritten for the client, to ch; it ends with a nil data event.
func (r *resumer) continuation(ctx context.Context, body []byte, ch chan<- contEvent) {
	finish := func(err error) {
		select {
		case ch <- contEvent{err: err}:
		case <-ctx.Done():
		}
	}
	req, err := r.moveRequest(ctx, body, HeaderResumeFrom)
	if err != nil {
		finish(err)
		return
	}
	resp, err := r.s.client.Do(req)
	if err != nil {
		finish(fmt.Errorf("continuation request: %w", err))
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		finish(fmt.Errorf("continuation answered %d: %s", resp.StatusCode, bytes.TrimSpace(msg)))
		return
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), maxPendingEvent)
	sawDone := false
	for sc.Scan() {
		data, ok := bytes.CutPrefix(sc.Bytes(), []byte("data:"))
		if !ok {
			continue
		}
		out, keep := r.t.continuationEvent(data)
		if !keep {
			continue
		}
		sawDone = sawDone || bytes.Equal(bytes.TrimSpace(data), []byte("[DONE]"))
		select {
		case ch <- contEvent{data: out}:
		case <-ctx.Done():
			return
		}
	}
	if err := sc.Err(); err != nil {
		finish(fmt.Errorf("read the continuation: %w", err))
		return
	}
	if !sawDone {
		finish(errors.New("the continuation ended without [DONE]"))
		return
	}
	select {
	case ch <- contEvent{}:
	case <-ctx.Done():
	}
}

// redo asks the whole request again of another backend, through Envoy.
func (r *resumer) redo(ctx context.Context, ch chan<- redoResult) {
	body, err := withModel(r.body, r.target)
	if err != nil {
		ch <- redoResult{err: err}
		return
	}
	req, err := r.moveRequest(ctx, body, HeaderRedoFrom)
	if err != nil {
		ch <- redoResult{err: err}
		return
	}
	resp, err := r.s.client.Do(req)
	if err != nil {
		ch <- redoResult{err: fmt.Errorf("repeated request: %w", err)}
		return
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxRedoBody))
	if err != nil {
		ch <- redoResult{err: fmt.Errorf("read the repeated request's answer: %w", err)}
		return
	}
	ch <- redoResult{status: resp.StatusCode, header: resp.Header, body: b}
}

// answerRedo replaces the held answer with the other backend's (status,
// body, type and detour's headers from it): an immediate response, which
// Envoy sends in place of the held headers and resets the stalled attempt.
func (r *resumer) answerRedo(res redoResult, start time.Time) error {
	s := r.s
	if res.err != nil {
		s.metrics.Resumes.WithLabelValues(r.backend, resumeFailed).Inc()
		s.log.Warn("answer stalled and could not be asked again", "backend", r.backend, "error", res.err)
		res = redoResult{status: http.StatusBadGateway, header: http.Header{"Content-Type": {"application/json"}},
			body: route.ErrStalled(res.err.Error()).JSON()}
	} else {
		outcome := resumeResumed
		if res.status != http.StatusOK {
			outcome = resumeFailed
		}
		s.metrics.Resumes.WithLabelValues(r.backend, outcome).Inc()
		s.log.Info("answer stalled and was asked again of another backend", "stalled", r.backend,
			"answered_by", res.header.Get(HeaderBackend), "status", res.status, "took", time.Since(start).Round(time.Millisecond))
	}
	var set []*corev3.HeaderValueOption
	for _, k := range []string{"content-type", HeaderBackend, HeaderModel, HeaderError, "retry-after"} {
		if v := res.header.Get(k); v != "" {
			set = append(set, setHeader(k, v))
		}
	}
	return r.send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{
		Status:  &typev3.HttpStatus{Code: typev3.StatusCode(res.status)},
		Headers: &extprocv3.HeaderMutation{SetHeaders: set},
		Body:    res.body,
		Details: redoDetails,
	}}})
}

// moveRequest is the request that moves this answer to another backend,
// through Envoy's listener: the client's own headers, marked with the
// stalled backend (under header: HeaderResumeFrom for a continuation,
// HeaderRedoFrom for a repeat) and the move count.
func (r *resumer) moveRequest(ctx context.Context, body []byte, header string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.st.resume.url+r.path, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("build the request to another backend: %w", err)
	}
	req.Header = r.headers.Clone()
	req.Header.Set("content-type", "application/json")
	req.Header.Set(header, r.backend)
	req.Header.Set(HeaderResumed, strconv.Itoa(r.resumed+1))
	if r.host != "" {
		req.Host = r.host
	}
	return req, nil
}
