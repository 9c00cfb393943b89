package extproc

import (
	"fmt"
	"unsafe"

	"github.com/detourhq/detour/route"
	"github.com/tiktoken-go/tokenizer"
)

// TokenCounter counts the tokens of a piece of text exactly.
type TokenCounter interface {
	CountTokens(text string) int
}

// tiktoken counts with OpenAI's o200k_base encoding, compiled into the
// binary (no download at run time). Other providers' tokenizers differ by a
// few percent; the router's answer room absorbs that.
type tiktoken struct{ codec tokenizer.Codec }

// NewTokenizer loads the o200k_base encoding.
func NewTokenizer() (TokenCounter, error) {
	c, err := tokenizer.Get(tokenizer.O200kBase)
	if err != nil {
		return nil, fmt.Errorf("load o200k_base tokenizer: %w", err)
	}
	return tiktoken{codec: c}, nil
}

func (t tiktoken) CountTokens(text string) int {
	n, err := t.codec.Count(text)
	if err != nil {
		return 0
	}
	return n
}

// Per-message framing tokens, as OpenAI counts them for chat models.
const (
	tokensPerMessage = 4
	tokensReplyPrime = 3
)

// chunkBytes bounds the text handed to the tokenizer at once. BPE merging
// is worse than linear on long runs without spaces (a 500 KB run of one
// letter took 300 ms); cutting at a space near this size keeps every call
// cheap and changes the count by at most a token per cut.
const chunkBytes = 8 << 10

// countChunked counts text in pieces of about chunkBytes, cut after a space
// or newline where one is near. It stops once the count reaches stopAt
// (when stopAt > 0), returning a lower bound.
func countChunked(tc TokenCounter, text []byte, stopAt int) int {
	n := 0
	for len(text) > 0 && (stopAt <= 0 || n < stopAt) {
		end := len(text)
		if end > chunkBytes {
			end = chunkBytes
			for i := end - 1; i > chunkBytes/2; i-- {
				if text[i] == ' ' || text[i] == '\n' {
					end = i + 1
					break
				}
			}
		}
		n += tc.CountTokens(unsafe.String(unsafe.SliceData(text), end))
		text = text[end:]
	}
	return n
}

// exactPromptTokens counts req's prompt with tc: every text span decoded,
// tool definitions as written, per-message framing and a fixed cost per
// image. It stops early once the count reaches limit (when limit > 0):
// past it the decision no longer depends on the exact number.
func exactPromptTokens(tc TokenCounter, req *route.Request, body []byte, scratch []byte, limit int) (int, []byte) {
	n := 0
	if req.Kind == route.KindChat {
		n += req.Messages*tokensPerMessage + tokensReplyPrime
		n += req.Images * route.ImageTokens
	}
	// Prompts sent as token ids are counted already.
	n += req.TokenIDs
	if req.ToolBytes > 0 {
		// Tools are not in Texts; their JSON is counted as written, which
		// slightly over-counts the provider's internal rendering.
		n += req.ToolBytes / 3
	}
	for _, sp := range req.Texts {
		if limit > 0 && n >= limit {
			break
		}
		var err error
		scratch, err = route.UnquoteInto(scratch[:0], body[sp.Start:sp.End])
		if err != nil {
			// The parser accepted the literal, so this cannot happen; fall
			// back to the span's share of the estimate.
			n += sp.Len()/4 + 1
			continue
		}
		stopAt := 0
		if limit > 0 {
			stopAt = limit - n
		}
		n += countChunked(tc, scratch, stopAt)
	}
	return n, scratch
}
