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

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
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

const (
	// StageMetadataKey is the gRPC metadata key that names the filter a
	// stream comes from; StageResume marks the resume filter's streams.
	StageMetadataKey = "x-detour-stage"
	StageResume      = "resume"
	// HeaderResumeFrom marks a continuation request with the backend that
	// stalled: the router leaves it out, and each attempt's body is marked
	// for its backend's continuation style.
	HeaderResumeFrom = "x-detour-resume-from"
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
	on    bool
	stall time.Duration
	max   int
	// url is where the processor reaches Envoy's listener.
	url string
	// continues marks, by backend index, the backends that take
	// continuations; styles holds their style by name.
	continues []bool
	styles    map[string]string
}

func newResumeState(p *policy.Policy, r *route.Router) resumeState {
	rs := resumeState{on: p.ResumeOn(), stall: p.Resume.StallTimeout.D(), max: p.Resume.MaxResumes, url: listenerURL(p), styles: map[string]string{}}
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

// skipForContinuation is the health for routing a continuation: the
// stalled backend and every backend that cannot continue are left out.
func (rs *resumeState) skipForContinuation(r *route.Router, from string, h *route.Health) *route.Health {
	out := &route.Health{Skip: make([]bool, len(rs.continues))}
	if h != nil {
		out.Rank, out.Trial = h.Rank, h.Trial
	}
	for i, ok := range rs.continues {
		out.Skip[i] = !ok
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

// resumer is one stream's resume stage.
type resumer struct {
	s       *Server
	st      *state
	send    func(*extprocv3.ProcessingResponse) error
	headers http.Header
	path    string
	host    string
	body    []byte
	target  string // the route the client asked for
	resumed int    // times this answer was already moved (HeaderResumed)
	backend string // the backend answering (response header)
	follow  bool   // a 200 chat event stream: worth following
	t       answerTracker
	// lastToken is when the last chunk arrived.
	lastToken time.Time
}

type contEvent struct {
	data []byte // an event for the client, or nil at the end
	err  error  // at the end: why the continuation failed
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
	var cont <-chan contEvent
	var contStart time.Time
	sentFromCont := false
	for {
		select {
		case m, ok := <-in:
			if !ok {
				return nil
			}
			if cont != nil {
				// The continuation owns the response now: the stalled
				// attempt's late chunks are dropped, its other phases
				// answered.
				if resp := passive(m); resp != nil {
					if err := r.send(resp); err != nil {
						return err
					}
				}
				continue
			}
			resp, end := r.handle(m)
			if resp != nil {
				if err := r.send(resp); err != nil {
					return err
				}
			}
			if end {
				return nil
			}
			if r.follow && r.t.started() && !r.t.done {
				stall.Reset(st.resume.stall)
			}
		case <-stall.C:
			if cont != nil {
				// The continuation went silent too.
				return r.giveUp(fmt.Errorf("the continuation sent nothing for %s", st.resume.stall))
			}
			c, end, err := r.onStall(ctx)
			if err != nil || end {
				return err
			}
			cont, contStart = c, time.Now()
			stall.Reset(st.resume.stall + st.messageTimeout)
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
					"gap", time.Since(r.lastToken).Round(time.Millisecond), "continuation_first_token", time.Since(contStart).Round(time.Millisecond))
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
func (r *resumer) handle(m *extprocv3.ProcessingRequest) (resp *extprocv3.ProcessingResponse, end bool) {
	switch v := m.Request.(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		r.readRequestHeaders(v.RequestHeaders)
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}}, false
	case *extprocv3.ProcessingRequest_RequestBody:
		r.body = append(r.body, v.RequestBody.Body...)
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}}, false
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		r.readResponseHeaders(v.ResponseHeaders)
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}, false
	case *extprocv3.ProcessingRequest_ResponseBody:
		b := v.ResponseBody
		if r.follow {
			r.t.feed(b.Body)
			r.lastToken = time.Now()
		}
		return streamed(b.Body, b.EndOfStream), b.EndOfStream
	}
	return passive(m), false
}

// passive answers the messages that need no thought.
func passive(m *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	switch m.Request.(type) {
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}
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
		case strings.HasPrefix(k, ":"), k == "content-length", k == "host", k == "connection", k == "transfer-encoding",
			k == "te", k == "keep-alive", k == "upgrade", k == "x-request-id",
			strings.HasPrefix(k, "x-envoy-"), strings.HasPrefix(k, "x-forwarded-"):
		case strings.HasPrefix(k, "x-detour-") && k != HeaderPriority:
		default:
			r.headers.Add(k, v)
		}
	}
}

func (r *resumer) readResponseHeaders(h *extprocv3.HttpHeaders) {
	status, eventStream := "", false
	for _, hv := range h.GetHeaders().GetHeaders() {
		switch hv.Key {
		case ":status":
			status = headerValue(hv)
		case "content-type":
			eventStream = strings.HasPrefix(strings.ToLower(headerValue(hv)), "text/event-stream")
		case "content-encoding":
			if v := headerValue(hv); v != "" && v != "identity" {
				eventStream = false // compressed: detour cannot read it
			}
		case HeaderBackend:
			r.backend = headerValue(hv)
		}
	}
	r.follow = status == "200" && eventStream && route.KindFromPath(r.path) == route.KindChat
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
	case r.t.unresumable || r.resumed >= r.st.resume.max || r.target == "":
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
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.st.resume.url+r.path, bytes.NewReader(body))
	if err != nil {
		finish(fmt.Errorf("build the continuation request: %w", err))
		return
	}
	req.Header = r.headers.Clone()
	req.Header.Set("content-type", "application/json")
	req.Header.Set(HeaderResumeFrom, r.backend)
	req.Header.Set(HeaderResumed, strconv.Itoa(r.resumed+1))
	if r.host != "" {
		req.Host = r.host
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
