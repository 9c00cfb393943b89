package probe

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"strings"

	"github.com/detourhq/detour/policy"
)

// chatRequest is the body of a probe. No temperature or other sampling
// parameter is sent: reasoning models refuse some of them.
type chatRequest struct {
	Model          string          `json:"model"`
	Messages       []message       `json:"messages"`
	MaxTokens      int             `json:"max_tokens"`
	Stream         bool            `json:"stream"`
	StreamOptions  *streamOptions  `json:"stream_options,omitempty"`
	ResponseFormat *responseFormat `json:"response_format,omitempty"`
	Tools          []tool          `json:"tools,omitempty"`
	ToolChoice     any             `json:"tool_choice,omitempty"`
}

type message struct {
	Role    string `json:"role"`
	Content any    `json:"content"` // a string, or content parts
}

type contentPart struct {
	Type     string    `json:"type"`
	Text     string    `json:"text,omitempty"`
	ImageURL *imageURL `json:"image_url,omitempty"`
}

type imageURL struct {
	URL string `json:"url"`
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

type responseFormat struct {
	Type string `json:"type"`
}

type tool struct {
	Type     string       `json:"type"`
	Function toolFunction `json:"function"`
}

type toolFunction struct {
	Name        string         `json:"name"`
	Description string         `json:"description"`
	Parameters  map[string]any `json:"parameters"`
}

type toolChoice struct {
	Type     string `json:"type"`
	Function struct {
		Name string `json:"name"`
	} `json:"function"`
}

// filler is repeated to make a long context: plain prose that tokenizes
// at about four bytes a token, as detour's own estimate assumes.
const filler = "The quick brown fox jumps over the lazy dog while the band plays on. "

// buildBody is the JSON body of prompt q for backend b. image is the
// data URL an image probe sends.
func buildBody(pol *policy.Policy, b *policy.Backend, q policy.ProbePrompt, image string) ([]byte, error) {
	req := chatRequest{Model: b.Model, MaxTokens: pol.Probes.MaxTokens}
	if streams(b) {
		req.Stream = true
		req.StreamOptions = &streamOptions{IncludeUsage: true}
	}
	var content any = q.Prompt
	switch q.Kind {
	case policy.ProbeLongContext:
		n := pol.ProbeContextTokens(b, q)
		reps := max(1, n*4/len(filler))
		content = strings.Repeat(filler, reps) + "\n\n" + q.Prompt
	case policy.ProbeImage:
		content = []contentPart{
			{Type: "text", Text: q.Prompt},
			{Type: "image_url", ImageURL: &imageURL{URL: image}},
		}
	case policy.ProbeJSON:
		req.ResponseFormat = &responseFormat{Type: "json_object"}
	case policy.ProbeToolCall:
		req.Tools = []tool{{Type: "function", Function: toolFunction{
			Name:        q.Expect.Tool,
			Description: "Looks up the answer to the user's question.",
			Parameters: map[string]any{
				"type":       "object",
				"properties": map[string]any{"query": map[string]any{"type": "string", "description": "What to look up."}},
				"required":   []string{"query"},
			},
		}}}
		// Named, not "auto": a model free to answer in text often does,
		// and the probe would fail a backend that works.
		var tc toolChoice
		tc.Type = "function"
		tc.Function.Name = q.Expect.Tool
		req.ToolChoice = tc
	}
	req.Messages = []message{{Role: "user", Content: content}}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode %s probe: %w", q.Name, err)
	}
	return body, nil
}

// malformedBody is the error check's request: messages is a string, not
// an array, which every OpenAI-compatible API refuses before generating.
func malformedBody(b *policy.Backend) []byte {
	body, _ := json.Marshal(map[string]any{"model": b.Model, "messages": "not a list of messages", "max_tokens": 1})
	return body
}

// streams reports whether probes to b are streamed: unless its
// capabilities say it cannot stream.
func streams(b *policy.Backend) bool {
	return b.Capabilities.Streaming == nil || *b.Capabilities.Streaming
}

// testImage is a data URL of a small red PNG, for image probes: big enough
// for providers that refuse 1×1 images, tiny on the wire.
func testImage() (string, error) {
	img := image.NewRGBA(image.Rect(0, 0, 16, 16))
	for y := range 16 {
		for x := range 16 {
			img.Set(x, y, color.RGBA{R: 220, A: 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return "", fmt.Errorf("encode probe image: %w", err)
	}
	return "data:image/png;base64," + base64.StdEncoding.EncodeToString(buf.Bytes()), nil
}
