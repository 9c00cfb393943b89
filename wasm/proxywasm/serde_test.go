package proxywasm

import (
	"reflect"
	"testing"
)

func TestPairsRoundTrip(t *testing.T) {
	for _, pairs := range [][][2]string{
		{},
		{{":path", "/v1/chat/completions"}},
		{{"a", ""}, {"", "b"}, {"x-detour-backend", "fast"}, {"k", "v with\x00nul"}},
	} {
		got, err := decodePairs(encodePairs(pairs))
		if err != nil {
			t.Fatal(err)
		}
		if len(pairs) == 0 && len(got) == 0 {
			continue
		}
		if !reflect.DeepEqual(got, pairs) {
			t.Errorf("round trip %q: got %q", pairs, got)
		}
	}
}

func TestDecodePairsRejectsGarbage(t *testing.T) {
	good := encodePairs([][2]string{{"key", "value"}})
	for _, b := range [][]byte{
		{1, 2},
		{255, 255, 255, 255},
		good[:len(good)-3],
		append([]byte{1, 0, 0, 0, 255, 255, 255, 127, 0, 0, 0, 0}, "k\x00\x00"...),
	} {
		if _, err := decodePairs(b); err == nil {
			t.Errorf("decodePairs(%q) accepted garbage", b)
		}
	}
}

// FuzzDecodePairs: a header map from the host never crashes the guest,
// and what decodes encodes back to the same pairs.
func FuzzDecodePairs(f *testing.F) {
	f.Add(encodePairs([][2]string{{"a", "b"}, {"c", "d"}}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		pairs, err := decodePairs(b)
		if err != nil {
			return
		}
		again, err := decodePairs(encodePairs(pairs))
		if err != nil || len(again) != len(pairs) || (len(pairs) > 0 && !reflect.DeepEqual(again, pairs)) {
			t.Fatalf("re-encoding %q failed: %v", pairs, err)
		}
	})
}

func TestEncodePath(t *testing.T) {
	if got := string(encodePath([]string{"xds", "cluster_name"})); got != "xds\x00cluster_name" {
		t.Errorf("got %q", got)
	}
}
