package route

import (
	"slices"
	"unicode/utf8"
)

// RewriteModel appends to dst a copy of body, the body req was parsed
// from, whose model is model, and returns the extended slice. The model
// value at req.ModelSpan is replaced; without one (the body had no model
// field) "model" is added as the first member of the object. The rest of
// the body is copied byte for byte. dst is grown at most once for the
// usual model names, and nothing else is allocated.
func RewriteModel(dst, body []byte, req *Request, model string) []byte {
	dst = slices.Grow(dst, len(body)+len(model)+len(`"model":"",`))
	sp := req.ModelSpan
	if sp != (Span{}) && 0 < sp.Start && sp.Start < sp.End && sp.End <= len(body) {
		dst = append(dst, body[:sp.Start]...)
		dst = AppendJSONString(dst, model)
		return append(dst, body[sp.End:]...)
	}

	// No model field: insert one after the opening brace.
	open := -1
	for i, c := range body {
		if c == '{' {
			open = i
			break
		}
		if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			break
		}
	}
	if open < 0 {
		return append(dst, body...) // not an object; nothing sensible to do
	}
	dst = append(dst, body[:open+1]...)
	dst = append(dst, `"model":`...)
	dst = AppendJSONString(dst, model)
	for _, c := range body[open+1:] {
		if c == ' ' || c == '\t' || c == '\n' || c == '\r' {
			continue
		}
		if c != '}' {
			dst = append(dst, ',')
		}
		break
	}
	return append(dst, body[open+1:]...)
}

// AppendJSONString appends s to dst as a JSON string literal. Quotes,
// backslashes and control characters are escaped; invalid UTF-8 becomes
// \ufffd, so the result is valid JSON whatever s holds.
func AppendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0 // s[start:i] is pending, needing no escape
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				dst = append(dst, s[start:i]...)
				dst = append(dst, `\ufffd`...)
				i += n
				start = i
				continue
			}
			i += n
			continue
		}
		if c >= 0x20 && c != '"' && c != '\\' {
			i++
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
		}
		i++
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// ModelWidth is the bytes model takes as a JSON string literal.
func ModelWidth(model string) int {
	var buf [128]byte
	return len(AppendJSONString(buf[:0], model))
}

// RewriteModelPadded is RewriteModel followed by spaces after the model
// value, so the value and its padding take at least width bytes. A later
// stage that must not change the body's length (its content-length has
// already gone upstream) can then put any model up to width bytes wide in
// its place with RewriteModelInPlace.
func RewriteModelPadded(dst, body []byte, req *Request, model string, width int) []byte {
	out := RewriteModel(dst, body, req, model)
	pad := width - ModelWidth(model)
	if pad <= 0 {
		return out
	}
	// The new value starts where the old one did. (A body without a model
	// never gets here: the router refuses it.)
	sp := req.ModelSpan
	if sp == (Span{}) || sp.Start <= 0 || sp.Start >= sp.End || sp.End > len(body) {
		return out
	}
	end := len(dst) + sp.Start + ModelWidth(model)
	out = slices.Grow(out, pad)
	out = out[:len(out)+pad]
	copy(out[end+pad:], out[end:len(out)-pad])
	for i := end; i < end+pad; i++ {
		out[i] = ' '
	}
	return out
}

// RewriteModelInPlace replaces the model value of body (as parsed into
// req) with model without changing the body's length, using the
// whitespace that follows the value. It reports false, leaving body alone,
// when model does not fit.
func RewriteModelInPlace(body []byte, req *Request, model string) bool {
	sp := req.ModelSpan
	if sp == (Span{}) || sp.Start <= 0 || sp.Start >= sp.End || sp.End > len(body) {
		return false
	}
	room := sp.End
	for room < len(body) && body[room] == ' ' {
		room++
	}
	var buf [128]byte
	lit := AppendJSONString(buf[:0], model)
	if len(lit) > room-sp.Start {
		return false
	}
	n := copy(body[sp.Start:], lit)
	for i := sp.Start + n; i < room; i++ {
		body[i] = ' '
	}
	return true
}
