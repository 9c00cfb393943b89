package sim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// startSim starts a simulator on random loopback ports and closes it when
// the test ends.
func startSim(t *testing.T, cfg Config) *Server {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// newClient returns a client with its own connection pool.
func newClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

type reply struct {
	status int
	header http.Header
	body   []byte
	err    error // transport or body-read error
}

func (r reply) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body is not a JSON object: %v\n%s", err, r.body)
	}
	return m
}

// call sends a request and reads the whole body.
func call(t *testing.T, c *http.Client, method, url, body string, hdr map[string]string) reply {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return reply{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, header: resp.Header, body: b, err: err}
}

func apiURL(s *Server, path string) string   { return "http://" + s.Addr() + path }
func adminURL(s *Server, path string) string { return "http://" + s.AdminAddr() + path }

// event is one SSE data line and when it arrived, relative to the request.
type event struct {
	data string
	at   time.Duration
}

// streamCall sends a request and reads SSE events as they arrive. err is
// the error that ended the body (nil for a clean EOF).
func streamCall(t *testing.T, c *http.Client, url, body string, hdr map[string]string) (resp *http.Response, events []event, headersAt time.Duration, err error) {
	t.Helper()
	req, rerr := http.NewRequestWithContext(t.Context(), http.MethodPost, url, strings.NewReader(body))
	if rerr != nil {
		t.Fatal(rerr)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	start := time.Now()
	resp, err = c.Do(req)
	if err != nil {
		return nil, nil, 0, err
	}
	headersAt = time.Since(start)
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	for {
		line, rerr := br.ReadString('\n')
		if d, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), "data: "); ok && strings.HasSuffix(line, "\n") {
			events = append(events, event{data: d, at: time.Since(start)})
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				rerr = nil
			}
			return resp, events, headersAt, rerr
		}
	}
}

func mustJSON(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("not JSON: %v: %s", err, s)
	}
	return m
}

// dig walks a decoded JSON value by object keys and array indexes.
func dig(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			a, ok := v.([]any)
			if !ok || k >= len(a) {
				return nil
			}
			v = a[k]
		}
	}
	return v
}

// errorOf returns the decoded "error" object of an OpenAI error body.
func errorOf(t *testing.T, r reply) map[string]any {
	t.Helper()
	e, ok := r.json(t)["error"].(map[string]any)
	if !ok {
		t.Fatalf("no error object in %s", r.body)
	}
	for _, k := range []string{"message", "type", "param", "code"} {
		if _, ok := e[k]; !ok {
			t.Errorf("error object lacks %q: %s", k, r.body)
		}
	}
	return e
}

func chatBody(extra string) string {
	b := `{"model":"m1","messages":[{"role":"user","content":"hello there, simulator"}]`
	if extra != "" {
		b += "," + extra
	}
	return b + "}"
}

// compactJSON re-encodes JSON so bodies compare without whitespace.
func compactJSON(t *testing.T, s string) string {
	t.Helper()
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(s)); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
