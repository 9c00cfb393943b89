package route

import (
	"encoding/binary"
	"math/bits"
)

// ImageTokens is what one input image is assumed to cost: 1105 tokens, the
// figure OpenAI's vision pricing guide gives for a high-detail 2048×4096
// image on GPT-4o (85 base + 6 tiles × 170). A 1024×1024 image costs 765
// there and the largest high-detail image 1445 (8 tiles); the body does not
// say how big an image is, so this is a deliberately generous middle.
const ImageTokens = 1105

// EstimateTokens returns a fast, conservative estimate of the prompt size
// of req, a request parsed from body, in tokens. It aims at or above what
// OpenAI's cl100k / o200k tokenizers count, so a backend chosen for its
// context window does not turn out too small; it misses for the kinds of
// text listed below.
//
// The rule:
//   - each text span: ceil(ASCII bytes / 4) + 1 per non-ASCII character,
//     counted in the JSON encoding: a \uXXXX escape is one non-ASCII
//     character, any other escape one ASCII byte;
//   - tools, functions and earlier tool calls: ceil(ToolBytes / 3), since
//     JSON schemas tokenize denser than prose;
//   - chat: 4 tokens per message for its role and delimiters, plus 3 that
//     prime the reply, as in OpenAI's own counting recipe;
//   - ImageTokens per image;
//   - token ids: 1 each.
//
// Prose in Latin, Cyrillic, Greek and most other scripts comes out at or
// above the real count. Text that tokenizes at 2-3 bytes a token comes out
// low: source code and JSON (by about 1.5x), digits, hex and base64 (by
// about 2x); so do emoji and rare CJK characters, which take 2-3 tokens
// each, and for cl100k common CJK, Korean and Devanagari too. Callers near
// a limit should count exactly.
func EstimateTokens(req *Request, body []byte) int {
	n := 0
	for _, sp := range req.Texts {
		// Guard against a body that is not the one req was parsed from.
		if sp.Start < 0 || sp.End > len(body) || sp.Len() < 2 {
			continue
		}
		ascii, other := countText(body[sp.Start+1 : sp.End-1])
		n += (ascii+3)/4 + other
	}
	n += (req.ToolBytes + 2) / 3
	if req.Kind == KindChat {
		n += 4*req.Messages + 3
	}
	n += req.Images * ImageTokens
	n += req.TokenIDs
	return n
}

// countText counts the ASCII bytes and the other characters in the
// content of a JSON string literal. A non-ASCII character is counted at
// its first byte (any byte >= 0xC0, i.e. not a UTF-8 continuation byte),
// which for invalid UTF-8 is close enough.
func countText(b []byte) (ascii, other int) {
	i := 0
	for i+8 <= len(b) {
		// 8 bytes at a time: high bit clear is ASCII, the top two bits
		// set starts a multi-byte character.
		x := binary.LittleEndian.Uint64(b[i:])
		n := 8
		if m := matchByte(x, '\\'); m != 0 {
			n = bits.TrailingZeros64(m) >> 3 // bytes before the escape
			x &= 1<<(8*n) - 1
		}
		hi := x & msb
		ascii += n - bits.OnesCount64(hi)
		other += bits.OnesCount64(hi & (x << 1))
		i += n
		if n < 8 {
			i += countEscape(b[i:], &ascii, &other)
		}
	}
	for i < len(b) {
		switch c := b[i]; {
		case c == '\\':
			i += countEscape(b[i:], &ascii, &other)
		case c < 0x80:
			ascii++
			i++
		default:
			if c >= 0xC0 {
				other++
			}
			i++
		}
	}
	return ascii, other
}

// countEscape counts the escape at the start of b and returns its length:
// \uXXXX is one non-ASCII character, any other escape one ASCII byte.
func countEscape(b []byte, ascii, other *int) int {
	if len(b) > 1 && b[1] == 'u' {
		*other++
		return 6
	}
	*ascii++
	return 2
}
