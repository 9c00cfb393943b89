package route

import (
	"encoding/binary"
	"math/bits"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// This file is a small JSON scanner: it validates JSON and reports where
// values sit in the input without building any representation of them, so
// ParseRequest can read the few fields routing needs from a large body
// without allocating. encoding/json is avoided on purpose: it allocates per
// value and bloats the wasm plugin.

// maxDepth bounds object/array nesting so a hostile body cannot exhaust
// the stack of the recursive skipValue.
const maxDepth = 128

// ParseError is a request body ParseRequest rejected. Its message is
// meant for the client, which is why it names JSON fields rather than Go
// types.
type ParseError struct {
	// Offset is the byte offset in the body where the problem was found;
	// 0 for a missing field.
	Offset int
	// Msg says what is wrong, without the offset.
	Msg string

	// syntax marks malformed JSON, as opposed to valid JSON that is not a
	// valid request; only the former is worth a byte offset to the client.
	syntax bool
}

func (e *ParseError) Error() string {
	if e.syntax {
		return "invalid JSON at byte " + strconv.Itoa(e.Offset) + ": " + e.Msg
	}
	return e.Msg
}

// scanner walks a JSON document. Every method that consumes a value leaves
// pos just past it; none of them skips the whitespace after it.
type scanner struct {
	buf   []byte
	pos   int
	depth int
	// keyBuf holds a decoded object key or enum value that contained
	// escapes, so comparing it against known names does not allocate.
	keyBuf [128]byte
}

func (s *scanner) syntaxErr(off int, msg string) error {
	return &ParseError{Offset: off, Msg: msg, syntax: true}
}

// errHere reports msg at pos, or that the input ended early.
func (s *scanner) errHere(msg string) error {
	if s.pos >= len(s.buf) {
		msg = "unexpected end of input"
	}
	return s.syntaxErr(s.pos, msg)
}

func (s *scanner) skipWS() {
	for s.pos < len(s.buf) {
		// Compact bodies have no whitespace: decide those with one compare.
		if c := s.buf[s.pos]; c > ' ' || c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			return
		}
		s.pos++
	}
}

// peek skips whitespace and returns the next byte, or 0 at end of input
// (a NUL byte is never valid JSON outside a string, so 0 is unambiguous
// for callers that only branch on valid starting bytes).
func (s *scanner) peek() byte {
	s.skipWS()
	if s.pos < len(s.buf) {
		return s.buf[s.pos]
	}
	return 0
}

// Word-at-a-time byte tests (see "Bit Twiddling Hacks"): they flag, in
// bit 7 of each byte, the bytes of x that match. A flag may be spurious
// only above a true match, so the lowest flag is always exact.
const (
	lsb = 0x0101010101010101
	msb = 0x8080808080808080
)

// matchByte flags the bytes of x equal to b.
func matchByte(x uint64, b byte) uint64 {
	y := x ^ (lsb * uint64(b))
	return (y - lsb) &^ y & msb
}

// matchLess flags the bytes of x less than n (n <= 128).
func matchLess(x uint64, n byte) uint64 {
	return (x - lsb*uint64(n)) &^ x & msb
}

// scanString consumes the string literal at pos (which must be '"') and
// returns its span including the quotes, and whether it contains escapes.
// Escapes are validated; raw bytes >= 0x80 are accepted as they come, as
// encoding/json does.
func (s *scanner) scanString() (sp Span, escaped bool, err error) {
	start := s.pos
	i := start + 1
	buf := s.buf
	for {
		// Prompt text dominates request bodies, so look at 8 bytes at a
		// time for the next byte that needs attention.
		for i+8 <= len(buf) {
			x := binary.LittleEndian.Uint64(buf[i:])
			if m := matchByte(x, '"') | matchByte(x, '\\') | matchLess(x, 0x20); m != 0 {
				i += bits.TrailingZeros64(m) >> 3
				break
			}
			i += 8
		}
		if i >= len(buf) {
			return Span{}, false, s.syntaxErr(start, "unterminated string")
		}
		c := buf[i]
		switch {
		case c == '"':
			s.pos = i + 1
			return Span{start, i + 1}, escaped, nil
		case c == '\\':
			escaped = true
			if i+1 >= len(buf) {
				return Span{}, false, s.syntaxErr(start, "unterminated string")
			}
			switch buf[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(buf) {
					return Span{}, false, s.syntaxErr(i, "invalid \\u escape in string")
				}
				for _, h := range buf[i+2 : i+6] {
					if unhex(h) < 0 {
						return Span{}, false, s.syntaxErr(i, "invalid \\u escape in string")
					}
				}
				i += 6
			default:
				return Span{}, false, s.syntaxErr(i, "invalid escape in string")
			}
		case c < 0x20:
			return Span{}, false, s.syntaxErr(i, "control character in string")
		default:
			i++
		}
	}
}

func unhex(c byte) rune {
	switch {
	case '0' <= c && c <= '9':
		return rune(c - '0')
	case 'a' <= c && c <= 'f':
		return rune(c - 'a' + 10)
	case 'A' <= c && c <= 'F':
		return rune(c - 'A' + 10)
	}
	return -1
}

// scanNumber consumes the number at pos and reports whether it is a
// natural number written as plain digits, the only form token counts and
// token ids may take.
func (s *scanner) scanNumber() (natural bool, err error) {
	buf := s.buf
	start := s.pos
	i := start
	natural = true
	if i < len(buf) && buf[i] == '-' {
		natural = false
		i++
	}
	switch {
	case i < len(buf) && buf[i] == '0':
		i++
	case i < len(buf) && '1' <= buf[i] && buf[i] <= '9':
		for i < len(buf) && '0' <= buf[i] && buf[i] <= '9' {
			i++
		}
	default:
		s.pos = i
		return false, s.errHere("invalid number")
	}
	if i < len(buf) && buf[i] == '.' {
		natural = false
		i++
		d := i
		for i < len(buf) && '0' <= buf[i] && buf[i] <= '9' {
			i++
		}
		if i == d {
			return false, s.syntaxErr(i, "expected digit after decimal point")
		}
	}
	if i < len(buf) && (buf[i] == 'e' || buf[i] == 'E') {
		natural = false
		i++
		if i < len(buf) && (buf[i] == '+' || buf[i] == '-') {
			i++
		}
		d := i
		for i < len(buf) && '0' <= buf[i] && buf[i] <= '9' {
			i++
		}
		if i == d {
			return false, s.syntaxErr(i, "expected digit in exponent")
		}
	}
	s.pos = i
	return natural, nil
}

// scanLiteral consumes true, false or null at pos.
func (s *scanner) scanLiteral() error {
	for _, lit := range [...]string{"true", "false", "null"} {
		if lit[0] == s.buf[s.pos] {
			if len(s.buf)-s.pos >= len(lit) && string(s.buf[s.pos:s.pos+len(lit)]) == lit {
				s.pos += len(lit)
				return nil
			}
			break
		}
	}
	return s.errHere("invalid literal")
}

// skipValue consumes and validates one value of any type at pos, which
// must not be whitespace.
func (s *scanner) skipValue() error {
	if s.pos >= len(s.buf) {
		return s.errHere("")
	}
	switch c := s.buf[s.pos]; {
	case c == '"':
		_, _, err := s.scanString()
		return err
	case c == '{':
		if err := s.enter(); err != nil {
			return err
		}
		for first := true; ; first = false {
			_, more, err := s.nextKey(first)
			if err != nil || !more {
				return err
			}
			if err := s.skipValue(); err != nil {
				return err
			}
		}
	case c == '[':
		if err := s.enter(); err != nil {
			return err
		}
		for first := true; ; first = false {
			more, err := s.nextElem(first)
			if err != nil || !more {
				return err
			}
			if err := s.skipValue(); err != nil {
				return err
			}
		}
	case c == '-' || '0' <= c && c <= '9':
		_, err := s.scanNumber()
		return err
	case c == 't' || c == 'f' || c == 'n':
		return s.scanLiteral()
	}
	return s.syntaxErr(s.pos, "expected a value")
}

// enter consumes the '{' or '[' at pos, enforcing maxDepth.
func (s *scanner) enter() error {
	if s.depth >= maxDepth {
		return &ParseError{Offset: s.pos, Msg: "request body nests deeper than " + strconv.Itoa(maxDepth) + " levels"}
	}
	s.depth++
	s.pos++
	return nil
}

// nextKey advances to the next member of the object entered last and
// returns its key, leaving pos at the member's value (so callers may look
// at s.buf[s.pos]). first is true for
// the first call after enter. At the closing '}' it consumes it and
// returns more == false.
//
// A key with escapes is decoded into s.keyBuf, so it stays valid only
// until the next key is read; keys too long to be one routing reads are
// returned raw, escapes and all, which matches nothing.
func (s *scanner) nextKey(first bool) (key []byte, more bool, err error) {
	c := s.peek()
	if !first {
		switch c {
		case ',':
			s.pos++
			c = s.peek()
		case '}':
			s.pos++
			s.depth--
			return nil, false, nil
		default:
			return nil, false, s.errHere("expected ',' or '}' after object value")
		}
	} else if c == '}' {
		s.pos++
		s.depth--
		return nil, false, nil
	}
	if c != '"' {
		return nil, false, s.errHere("expected string for object key")
	}
	sp, esc, err := s.scanString()
	if err != nil {
		return nil, false, err
	}
	key = s.text(sp, esc)
	if s.peek() != ':' {
		return nil, false, s.errHere("expected ':' after object key")
	}
	s.pos++
	if s.skipWS(); s.pos >= len(s.buf) {
		return nil, false, s.errHere("")
	}
	return key, true, nil
}

// text returns the content of the string literal at sp for comparison
// against known names: the raw bytes, or when it has escapes its decoding
// in s.keyBuf (valid until the next call). Literals longer than any name
// routing reads are not decoded.
func (s *scanner) text(sp Span, esc bool) []byte {
	raw := s.buf[sp.Start+1 : sp.End-1]
	if !esc || len(raw) > len(s.keyBuf) {
		return raw
	}
	dec, err := UnquoteInto(s.keyBuf[:0], s.buf[sp.Start:sp.End])
	if err != nil {
		return raw // unreachable: scanString validated the escapes
	}
	return dec
}

// nextElem advances to the next element of the array entered last,
// leaving pos at it (so callers may look at s.buf[s.pos]). At the closing ']' it consumes it and returns false.
func (s *scanner) nextElem(first bool) (more bool, err error) {
	c := s.peek()
	if c == ']' && first {
		s.pos++
		s.depth--
		return false, nil
	}
	if !first {
		switch c {
		case ',':
			s.pos++
			s.skipWS()
		case ']':
			s.pos++
			s.depth--
			return false, nil
		default:
			return false, s.errHere("expected ',' or ']' after array element")
		}
	}
	if s.pos >= len(s.buf) {
		return false, s.errHere("")
	}
	return true, nil
}

// UnquoteInto decodes the JSON string literal lit, quotes included, and
// appends the result to dst. It decodes every escape, joins UTF-16
// surrogate pairs, and like encoding/json replaces lone surrogates and
// invalid UTF-8 with U+FFFD, so its output is always valid UTF-8. It
// returns an error for a literal that is not valid JSON.
func UnquoteInto(dst []byte, lit []byte) ([]byte, error) {
	if len(lit) < 2 || lit[0] != '"' || lit[len(lit)-1] != '"' {
		return dst, &ParseError{Offset: 0, Msg: "string literal must be quoted", syntax: true}
	}
	end := len(lit) - 1
	for i := 1; i < end; {
		c := lit[i]
		switch {
		case c == '\\':
			if i+1 >= end {
				return dst, &ParseError{Offset: i, Msg: "unterminated string", syntax: true}
			}
			switch lit[i+1] {
			case '"', '\\', '/':
				dst = append(dst, lit[i+1])
			case 'b':
				dst = append(dst, '\b')
			case 'f':
				dst = append(dst, '\f')
			case 'n':
				dst = append(dst, '\n')
			case 'r':
				dst = append(dst, '\r')
			case 't':
				dst = append(dst, '\t')
			case 'u':
				r := hex4(lit[i+2 : min(i+6, end)])
				if r < 0 {
					return dst, &ParseError{Offset: i, Msg: "invalid \\u escape in string", syntax: true}
				}
				i += 6
				if utf16.IsSurrogate(r) {
					r2 := rune(-1)
					if i+6 <= end && lit[i] == '\\' && lit[i+1] == 'u' {
						r2 = hex4(lit[i+2 : i+6])
					}
					if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
						i += 6
						r = dec
					} else {
						r = utf8.RuneError
					}
				}
				dst = utf8.AppendRune(dst, r)
				continue
			default:
				return dst, &ParseError{Offset: i, Msg: "invalid escape in string", syntax: true}
			}
			i += 2
		case c == '"':
			return dst, &ParseError{Offset: i, Msg: "unescaped quote in string", syntax: true}
		case c < 0x20:
			return dst, &ParseError{Offset: i, Msg: "control character in string", syntax: true}
		case c < utf8.RuneSelf:
			dst = append(dst, c)
			i++
		default:
			r, n := utf8.DecodeRune(lit[i:end])
			if r == utf8.RuneError && n == 1 {
				dst = utf8.AppendRune(dst, utf8.RuneError)
			} else {
				dst = append(dst, lit[i:i+n]...)
			}
			i += n
		}
	}
	return dst, nil
}

// hex4 decodes four hex digits, or returns -1.
func hex4(b []byte) rune {
	if len(b) != 4 {
		return -1
	}
	var r rune
	for _, c := range b {
		h := unhex(c)
		if h < 0 {
			return -1
		}
		r = r<<4 | h
	}
	return r
}
