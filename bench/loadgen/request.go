package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// NewClient returns an HTTP/1.1 client tuned for load generation against a
// single host:
//
//   - keep-alive on, MaxIdleConns = MaxIdleConnsPerHost = maxConns (≤ 0
//     means 100), so a run at concurrency ≤ maxConns reuses connections;
//   - MaxConnsPerHost unlimited: the generator (MaxInFlight / Workers), not
//     the transport, bounds concurrency;
//   - no proxy (environment proxy variables are ignored), HTTP/2 disabled,
//     transparent compression disabled (bytes on the wire are what the
//     server sent), redirects are not followed (3xx is reported as is);
//   - dial and TLS handshake timeouts of 5 s, response header timeout of
//     30 s and an overall per-request timeout of 60 s (generous, because a
//     streamed LLM response may take a while).
func NewClient(maxConns int) *http.Client {
	if maxConns <= 0 {
		maxConns = 100
	}
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	tr := &http.Transport{
		Proxy: nil,
		DialContext: (&net.Dialer{
			Timeout:   5 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		Protocols:             protos,
		ForceAttemptHTTP2:     false,
		MaxIdleConns:          maxConns,
		MaxIdleConnsPerHost:   maxConns,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		ReadBufferSize:        32 << 10,
		WriteBufferSize:       32 << 10,
	}
	return &http.Client{
		Transport: tr,
		Timeout:   60 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// errDrain is the cancellation cause of requests still in flight when a
// run's drain period expires.
var errDrain = errors.New("loadgen: drain period expired")

// outcome is the result of one request.
type outcome struct {
	status  int    // HTTP status, 0 if no response
	kind    string // short error kind, "" if none
	ok      bool   // 2xx and body fully read
	ttfb    time.Duration
	latency time.Duration
}

// sender issues copies of one Request.
type sender struct {
	client *http.Client
	req    Request
	host   string
}

func newSender(client *http.Client, req Request) (*sender, error) {
	// Validate once so that a bad Request is a Run error rather than N
	// failures.
	if _, err := http.NewRequest(req.Method, req.URL, nil); err != nil {
		return nil, err
	}
	return &sender{client: client, req: req, host: req.Header.Get("Host")}, nil
}

// do sends one request. Latency and TTFB are measured from ref, which is the
// scheduled send time in an open loop (it may be in the past) and the actual
// send time in a closed loop.
func (s *sender) do(ctx context.Context, ref time.Time) outcome {
	var body io.Reader
	if s.req.Body != nil {
		body = bytes.NewReader(s.req.Body)
	}
	hr, err := http.NewRequestWithContext(ctx, s.req.Method, s.req.URL, body)
	if err != nil {
		return outcome{kind: classify(ctx, err, "")}
	}
	if s.req.Header != nil {
		hr.Header = s.req.Header.Clone()
	}
	if s.host != "" {
		hr.Host = s.host
	}
	resp, err := s.client.Do(hr)
	if err != nil {
		return outcome{kind: classify(ctx, err, "")}
	}
	o := outcome{status: resp.StatusCode}
	ttfb := time.Since(ref)
	if isEventStream(resp.Header.Get("Content-Type")) {
		var got bool
		var d time.Duration
		d, got, err = drainSSE(resp.Body, ref)
		if got {
			ttfb = d
		}
	} else {
		_, err = io.Copy(io.Discard, resp.Body)
	}
	o.latency = time.Since(ref)
	resp.Body.Close()
	if err != nil {
		o.kind = classify(ctx, err, "body ")
		return o
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		o.ok = true
		o.ttfb = ttfb
	}
	return o
}

func isEventStream(ct string) bool {
	if ct == "" {
		return false
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return strings.HasPrefix(strings.ToLower(strings.TrimSpace(ct)), "text/event-stream")
	}
	return mt == "text/event-stream"
}

// drainSSE reads an event stream to EOF. It reports the time since ref at
// which the first content-bearing data line (see isContentData) was fully
// received, and whether there was one.
func drainSSE(r io.Reader, ref time.Time) (ttfb time.Duration, got bool, err error) {
	br := bufio.NewReaderSize(r, 64<<10)
	lineStart := true
	for !got {
		line, rerr := br.ReadSlice('\n')
		if lineStart && isContentData(line, rerr == nil || rerr == bufio.ErrBufferFull || rerr == io.EOF) {
			ttfb, got = time.Since(ref), true
		}
		switch rerr {
		case nil:
			lineStart = true
		case bufio.ErrBufferFull:
			lineStart = false // rest of a long line; not a line start
		case io.EOF:
			return ttfb, got, nil
		default:
			return ttfb, got, rerr
		}
	}
	_, err = io.Copy(io.Discard, br)
	return ttfb, got, err
}

// isContentData reports whether an SSE line is a "data:" field with a
// non-blank payload other than the OpenAI terminator "[DONE]". complete is
// false for a fragment whose line ended with a read error.
func isContentData(line []byte, complete bool) bool {
	if !complete {
		return false
	}
	rest, found := bytes.CutPrefix(line, []byte("data:"))
	if !found {
		return false
	}
	rest = bytes.TrimSpace(rest)
	return len(rest) > 0 && !bytes.Equal(rest, []byte("[DONE]"))
}

// classify maps an error to a short, low-cardinality kind. prefix ("body ")
// marks errors that happened while reading the response body.
func classify(ctx context.Context, err error, prefix string) string {
	if ctx.Err() != nil {
		// The run itself aborted the request (Client.Timeout does not
		// cancel ctx, so this is never a per-request timeout).
		if errors.Is(context.Cause(ctx), errDrain) {
			return "drain timeout"
		}
		return "canceled"
	}
	var dnsErr *net.DNSError
	var recErr tls.RecordHeaderError
	var te interface{ Timeout() bool }
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return prefix + "connection reset"
	case errors.Is(err, syscall.EPIPE):
		return prefix + "broken pipe"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return "too many open files"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "address not available"
	case errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &te) && te.Timeout():
		return prefix + "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return prefix + "eof"
	case errors.As(err, &dnsErr):
		return "dns"
	case errors.As(err, &recErr):
		return "tls"
	}
	// Fall back to the innermost message without URLs and addresses.
	for {
		var ue *url.Error
		var oe *net.OpError
		switch {
		case errors.As(err, &ue) && ue.Err != nil && ue.Err != err:
			err = ue.Err
			continue
		case errors.As(err, &oe) && oe.Err != nil && oe.Err != err:
			err = oe.Err
			continue
		}
		break
	}
	msg := err.Error()
	if strings.Contains(msg, "tls:") || strings.Contains(msg, "x509:") {
		return "tls"
	}
	if len(msg) > 60 {
		msg = msg[:60]
	}
	return prefix + msg
}
