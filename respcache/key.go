// Package respcache is detour's response cache: exact-match keys built from
// a canonical form of an OpenAI-style request, scoped per tenant, and
// stores for the answers (in memory with a byte bound, or Redis shared by
// every replica). The ext_proc service uses it to serve a cached answer when
// every backend is down (stale-if-error) and, where a route asks for it, as
// a normal cache with a TTL.
package respcache

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// KeyPrefix starts every key; the version changes when the canonical form
// does, so old entries are simply never read again.
const KeyPrefix = "detour:rc1:"

// ignored are request fields that do not change the answer: how it is
// delivered (stream, stream_options), and labels for the provider's own
// bookkeeping. Everything else (model, messages, tools, tool_choice,
// response_format, max_tokens, temperature, top_p, seed, stop, n, logprobs,
// penalties, an unknown field) is part of the key: an unknown field is
// assumed to change the answer.
var ignored = map[string]bool{
	"stream":         true,
	"stream_options": true,
	"user":           true,
	"metadata":       true,
	"store":          true,
}

// Request is what the cache needs to know about one request body.
type Request struct {
	// Canonical is the body with the ignored fields removed, object keys
	// sorted and numbers in one spelling: two bodies that ask the same
	// question have the same canonical form.
	Canonical []byte
	// Stream is the request's "stream" flag: a cached answer to it is
	// replayed as server-sent events. IncludeUsage is its
	// stream_options.include_usage: the replay ends with the usage chunk.
	Stream, IncludeUsage bool
	// Temperature is the request's temperature; HasTemperature false when
	// absent (OpenAI's default is 1: not reusable).
	Temperature    float64
	HasTemperature bool
}

// ErrNotObject: the body is not a JSON object.
var ErrNotObject = errors.New("respcache: request body is not a JSON object")

// ErrNotReusable: the request asks for something a stored answer does not
// carry faithfully (log probabilities, audio), or its text does not
// survive decoding (invalid UTF-8 or a lone surrogate escape, which
// encoding/json turns into U+FFFD, so different prompts would share a key).
var ErrNotReusable = errors.New("respcache: request cannot be answered from the cache")

// maxDepth bounds nesting: the canonical writer recurses.
const maxDepth = 64

// Parse reads a request body into its canonical form.
func Parse(body []byte) (Request, error) {
	var r Request
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return r, fmt.Errorf("respcache: %w", err)
	}
	if _, err := dec.Token(); err == nil {
		return r, errors.New("respcache: data after the JSON object")
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return r, ErrNotObject
	}
	if !utf8.Valid(body) || notReusable(obj) {
		return r, ErrNotReusable
	}
	if s, ok := obj["stream"].(bool); ok {
		r.Stream = s
	}
	if so, ok := obj["stream_options"].(map[string]any); ok {
		r.IncludeUsage, _ = so["include_usage"].(bool)
	}
	if t, ok := obj["temperature"].(json.Number); ok {
		if f, err := t.Float64(); err == nil {
			r.Temperature, r.HasTemperature = f, true
		}
	}
	for k := range ignored {
		delete(obj, k)
	}
	var buf bytes.Buffer
	if err := writeCanonical(&buf, obj, 0); err != nil {
		return r, err
	}
	r.Canonical = buf.Bytes()
	if bytes.ContainsRune(r.Canonical, utf8.RuneError) {
		return r, ErrNotReusable
	}
	return r, nil
}

// notReusable: the stored answer would lose what the request asks for
// (the assembled and replayed answers keep no logprobs and no audio).
func notReusable(obj map[string]any) bool {
	if lp, ok := obj["logprobs"].(bool); ok && lp {
		return true
	}
	if _, ok := obj["top_logprobs"]; ok {
		return true
	}
	if m, ok := obj["modalities"].([]any); ok {
		for _, x := range m {
			if x == "audio" {
				return true
			}
		}
	}
	_, audio := obj["audio"]
	return audio
}

// writeCanonical writes v with sorted object keys and canonical numbers.
func writeCanonical(buf *bytes.Buffer, v any, depth int) error {
	if depth > maxDepth {
		return errors.New("respcache: JSON nested too deeply")
	}
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sortStrings(keys)
		buf.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				buf.WriteByte(',')
			}
			writeString(buf, k)
			buf.WriteByte(':')
			if err := writeCanonical(buf, x[k], depth+1); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	case []any:
		buf.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := writeCanonical(buf, e, depth+1); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
	case string:
		writeString(buf, x)
	case json.Number:
		buf.WriteString(canonicalNumber(x))
	case bool:
		buf.WriteString(strconv.FormatBool(x))
	case nil:
		buf.WriteString("null")
	default:
		return fmt.Errorf("respcache: unexpected JSON value %T", v)
	}
	return nil
}

// canonicalNumber spells equal numbers alike: 1, 1.0 and 1e0 are "1".
// Integers that fit 64 bits keep every digit (a seed may use them all).
func canonicalNumber(n json.Number) string {
	s := string(n)
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		return strconv.FormatInt(i, 10)
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsInf(f, 0) {
		return s
	}
	if f == math.Trunc(f) && math.Abs(f) < 1<<53 {
		return strconv.FormatInt(int64(f), 10)
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

func writeString(buf *bytes.Buffer, s string) {
	// encoding/json's escaping is deterministic; HTML escaping is
	// harmless (both sides of a comparison get it).
	b, _ := json.Marshal(s)
	buf.Write(b)
}

func sortStrings(s []string) {
	// Insertion sort: objects in requests have few keys.
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// Scope is a tenant's part of a key: a hash of its credential (the API key
// or a tenant header), never the credential itself, so a key in Redis or
// in a log cannot be turned back into a secret. Empty credentials share
// the scope "anon".
func Scope(credential string) string {
	if credential == "" {
		return "anon"
	}
	h := sha256.Sum256([]byte("detour-tenant-v1\x00" + credential))
	return hex.EncodeToString(h[:16])
}

// Key is the cache key of a canonical request of kind (chat, completions,
// embeddings) sent to route, in scope.
func Key(scope, route, kind string, canonical []byte) string {
	h := sha256.New()
	h.Write([]byte(route))
	h.Write([]byte{0})
	h.Write([]byte(kind))
	h.Write([]byte{0})
	h.Write(canonical)
	return KeyPrefix + scope + ":" + hex.EncodeToString(h.Sum(nil))
}

// Credential picks the tenant credential from request headers: the tenant
// header when configured and present, plus the bearer token or x-api-key
// (both, so a tenant header a client forges still cannot read another
// key's answers). get returns a header's value ("" if absent).
func Credential(get func(string) string, tenantHeader string) string {
	var parts []string
	if tenantHeader != "" {
		if v := get(tenantHeader); v != "" {
			parts = append(parts, "t="+v)
		}
	}
	if v := get("authorization"); v != "" {
		parts = append(parts, "a="+strings.TrimSpace(v))
	}
	if v := get("x-api-key"); v != "" {
		parts = append(parts, "k="+v)
	}
	if v := get("api-key"); v != "" {
		parts = append(parts, "k2="+v)
	}
	return strings.Join(parts, "\x00")
}

// NoStore reports whether a Cache-Control value forbids caching.
func NoStore(cacheControl string) bool {
	for d := range strings.SplitSeq(cacheControl, ",") {
		d = strings.ToLower(strings.TrimSpace(d))
		if d == "no-store" {
			return true
		}
	}
	return false
}

// NoCache reports whether a Cache-Control value asks for a fresh answer
// (the cache is not read for normal hits, but the answer may be stored
// and still serves stale-if-error).
func NoCache(cacheControl string) bool {
	for d := range strings.SplitSeq(cacheControl, ",") {
		d = strings.ToLower(strings.TrimSpace(d))
		if d == "no-cache" || strings.HasPrefix(d, "max-age=0") {
			return true
		}
	}
	return false
}
