package proxywasm

import (
	"encoding/binary"
	"errors"
)

// The ABI passes header maps as: count (u32 LE), then per pair the key and
// value lengths (u32 LE each), then per pair key NUL value NUL.

// encodePairs serialises pairs into the ABI's map layout.
func encodePairs(pairs [][2]string) []byte {
	size := 4
	for _, p := range pairs {
		size += 8 + len(p[0]) + len(p[1]) + 2
	}
	b := make([]byte, 4+8*len(pairs), size)
	binary.LittleEndian.PutUint32(b, uint32(len(pairs)))
	for i, p := range pairs {
		binary.LittleEndian.PutUint32(b[4+8*i:], uint32(len(p[0])))
		binary.LittleEndian.PutUint32(b[8+8*i:], uint32(len(p[1])))
	}
	for _, p := range pairs {
		b = append(b, p[0]...)
		b = append(b, 0)
		b = append(b, p[1]...)
		b = append(b, 0)
	}
	return b
}

var errBadMap = errors.New("proxywasm: malformed header map from host")

// decodePairs parses the ABI's map layout. It copies: the host's buffer is
// guest memory the next host call may reuse.
func decodePairs(b []byte) ([][2]string, error) {
	if len(b) == 0 {
		return nil, nil
	}
	if len(b) < 4 {
		return nil, errBadMap
	}
	n := int(binary.LittleEndian.Uint32(b))
	if n < 0 || n > (len(b)-4)/10 {
		return nil, errBadMap
	}
	sizes := b[4:]
	data := 4 + 8*n
	out := make([][2]string, n)
	for i := 0; i < n; i++ {
		k := int(binary.LittleEndian.Uint32(sizes[8*i:]))
		v := int(binary.LittleEndian.Uint32(sizes[8*i+4:]))
		if k < 0 || v < 0 || data+k+v+2 > len(b) || data+k+v+2 < data {
			return nil, errBadMap
		}
		out[i][0] = string(b[data : data+k])
		data += k + 1
		out[i][1] = string(b[data : data+v])
		data += v + 1
	}
	return out, nil
}

// encodePath joins a property path with NULs, as the host expects.
func encodePath(path []string) []byte {
	var b []byte
	for i, p := range path {
		if i > 0 {
			b = append(b, 0)
		}
		b = append(b, p...)
	}
	return b
}
