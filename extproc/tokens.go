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

// exactPromptTokens counts req's prompt with tc: every text span decoded,
// tool definitions as written, per-message framing and a fixed cost per
// image.
func exactPromptTokens(tc TokenCounter, req *route.Request, body []byte, scratch []byte) (int, []byte) {
	n := 0
	for _, sp := range req.Texts {
		var err error
		scratch, err = route.UnquoteInto(scratch[:0], body[sp.Start:sp.End])
		if err != nil {
			// The parser accepted the literal, so this cannot happen; fall
			// back to the span's share of the estimate.
			n += sp.Len()/4 + 1
			continue
		}
		n += tc.CountTokens(unsafe.String(unsafe.SliceData(scratch), len(scratch)))
	}
	if req.Kind == route.KindChat {
		n += req.Messages*tokensPerMessage + tokensReplyPrime
		n += req.Images * route.ImageTokens
	}
	if req.ToolBytes > 0 {
		// Tools are not in Texts; their JSON is counted as written, which
		// slightly over-counts the provider's internal rendering.
		n += req.ToolBytes / 3
	}
	return n, scratch
}
