package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

var client = &http.Client{Timeout: 30 * time.Second}

type response struct {
	Status int
	Header http.Header
	Body   []byte
}

func (r response) JSON(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatalf("response body is not JSON: %v\n%s", err, r.Body)
	}
	return m
}

func post(t testing.TB, url string, body []byte, headers ...string) response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("content-type", "application/json")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return response{Status: resp.StatusCode, Header: resp.Header, Body: b}
}

// chat builds a chat completion body.
func chat(model string, extra map[string]any, messages ...any) []byte {
	m := map[string]any{"model": model, "messages": messages}
	for k, v := range extra {
		m[k] = v
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

func user(content any) map[string]any { return map[string]any{"role": "user", "content": content} }

// words is a prompt of about n tokens (one short English word each).
func words(n int) string {
	var b strings.Builder
	b.Grow(n * 5)
	vocab := []string{"river", "stone", "light", "cloud", "paper", "green", "house", "quiet"}
	for i := 0; i < n; i++ {
		b.WriteString(vocab[i%len(vocab)])
		b.WriteByte(' ')
	}
	return b.String()
}

var weatherTool = map[string]any{
	"type": "function",
	"function": map[string]any{
		"name":        "get_weather",
		"description": "Current weather for a city",
		"parameters": map[string]any{
			"type":       "object",
			"properties": map[string]any{"city": map[string]any{"type": "string"}},
			"required":   []string{"city"},
		},
	},
}

// assertOpenAIError checks an error response's status and shape.
func assertOpenAIError(t testing.TB, r response, status int, code string) map[string]any {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d; body %s", r.Status, status, r.Body)
	}
	if ct := r.Header.Get("content-type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("content-type %q, want application/json", ct)
	}
	var shape struct {
		Error *struct {
			Message *string `json:"message"`
			Type    *string `json:"type"`
			Param   any     `json:"param"`
			Code    any     `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(r.Body, &shape); err != nil || shape.Error == nil || shape.Error.Message == nil || shape.Error.Type == nil {
		t.Fatalf("body is not an OpenAI error: %s", r.Body)
	}
	if *shape.Error.Message == "" {
		t.Errorf("error message is empty: %s", r.Body)
	}
	if code != "" && shape.Error.Code != code {
		t.Errorf("error code %v, want %q; body %s", shape.Error.Code, code, r.Body)
	}
	return r.JSON(t)["error"].(map[string]any)
}
