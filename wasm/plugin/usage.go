package plugin

// usageScanner finds the output token count in a response as it streams
// by: the last `"completion_tokens": N` of the body, which is the usage
// block of an OpenAI-compatible answer (the final SSE event when the
// client asked for stream_options.include_usage, or the JSON body's usage
// object). The tail of each chunk is kept and scanned again with the next
// one, so a key or number split between chunks is still found; finding a
// key twice is harmless (same value).
type usageScanner struct {
	buf              []byte // carried tail, then the new chunk
	completionTokens int
}

// carryBytes is kept across chunks: longer than the key, its separator
// (at most maxSep bytes of colon and spaces) and a number.
const (
	carryBytes = 48
	maxSep     = 8
)

var usageKey = `"completion_tokens"`

// scan reads the next bytes of the body; gap says bytes were skipped
// before b, so nothing carried from the previous chunk joins it.
func (u *usageScanner) scan(b []byte, gap bool) {
	if gap {
		u.buf = u.buf[:0]
	}
	u.buf = append(u.buf, b...)
	u.find(u.buf)
	if n := len(u.buf); n > carryBytes {
		u.buf = u.buf[:copy(u.buf, u.buf[n-carryBytes:])]
	}
}

// find records every complete `"completion_tokens": N` in b. A number
// that reaches the end of b may be cut: it is read with the next chunk.
func (u *usageScanner) find(b []byte) {
	for i := 0; i+len(usageKey) <= len(b); i++ {
		if b[i] != '"' || string(b[i:i+len(usageKey)]) != usageKey {
			continue
		}
		j := i + len(usageKey)
		for j < len(b) && (b[j] == ' ' || b[j] == ':') && j-i-len(usageKey) < maxSep {
			j++
		}
		n, k := 0, j
		for k < len(b) && b[k] >= '0' && b[k] <= '9' && k-j < 9 {
			n = n*10 + int(b[k]-'0')
			k++
		}
		if k > j && k < len(b) && (b[k] == ',' || b[k] == '}' || b[k] == ' ' || b[k] == '\n' || b[k] == '\r') {
			u.completionTokens = n
		}
		// The scan goes on at the next byte, not past the key: another key
		// can begin at its closing quote, and skipping it made the count
		// depend on where the chunks were cut (the carried tail may start
		// at that quote).
	}
}
