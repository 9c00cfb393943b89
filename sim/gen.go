package sim

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"math"
	"strconv"
	"strings"
)

// tokenText is the text of completion token i: "tok0", " tok1", " tok2", …
// so the tokens of a response concatenate to "tok0 tok1 … tok<n-1>".
func tokenText(i int) string {
	if i == 0 {
		return "tok0"
	}
	return " tok" + strconv.Itoa(i)
}

// completionText is the whole text of an n-token completion.
func completionText(n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString(tokenText(i))
	}
	return b.String()
}

// embeddingVector derives a unit-length vector of dims values from a hash
// of the input. Like OpenAI's text-embedding-3 models, asking for fewer
// dimensions than the native count truncates the native vector and
// renormalizes it.
func embeddingVector(in textInput, native, dims int) []float32 {
	seed := inputHash(in)
	raw := make([]float64, native)
	var block [sha256.Size]byte
	for i := range raw {
		if i%8 == 0 {
			var ctr [8]byte
			binary.BigEndian.PutUint64(ctr[:], uint64(i/8))
			block = sha256.Sum256(append(seed[:], ctr[:]...))
		}
		u := binary.BigEndian.Uint32(block[(i%8)*4:])
		raw[i] = float64(u)/float64(math.MaxUint32)*2 - 1
	}
	raw = raw[:dims]
	var norm float64
	for _, v := range raw {
		norm += v * v
	}
	norm = math.Sqrt(norm)
	out := make([]float32, dims)
	for i, v := range raw {
		if norm > 0 {
			out[i] = float32(v / norm)
		}
	}
	return out
}

func inputHash(in textInput) [sha256.Size]byte {
	if !in.isTokens {
		return sha256.Sum256([]byte("text:" + in.text))
	}
	var b strings.Builder
	b.WriteString("tokens:")
	for _, t := range in.tokens {
		b.WriteString(strconv.Itoa(t))
		b.WriteByte(',')
	}
	return sha256.Sum256([]byte(b.String()))
}

// base64Floats encodes a vector as OpenAI does for encoding_format
// "base64": little-endian float32s, standard base64.
func base64Floats(v []float32) string {
	buf := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(f))
	}
	return base64.StdEncoding.EncodeToString(buf)
}
