package policy

import (
	"strings"
	"testing"
	"time"

	"github.com/goccy/go-yaml"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want Size
		ok   bool
	}{
		{"0", 0, true},
		{"1024", 1024, true},
		{"1048576", 1 << 20, true},
		{"512B", 512, true},
		{"1KiB", 1 << 10, true},
		{"8MiB", 8 << 20, true},
		{"1GiB", 1 << 30, true},
		{"1KB", 1000, true},
		{"2 MB", 2_000_000, true},
		{"1GB", 1_000_000_000, true},
		{" 8MiB ", 8 << 20, true},
		{"1024GiB", 1 << 40, true}, // the largest accepted
		{"1025GiB", 0, false},
		{"-1", 0, false},
		{"-1MiB", 0, false},
		{"8XB", 0, false},
		{"8 mb", 0, false}, // units are case-sensitive
		{"1.5MiB", 0, false},
		{"MiB", 0, false},
		{"", 0, false},
		{"0x10", 0, false},
		{"99999999999999999999", 0, false},
		{"9223372036854775807", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if tt.ok && (err != nil || got != tt.want) {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
		if !tt.ok && err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", tt.in, got)
		}
		if !tt.ok && err != nil && !strings.Contains(err.Error(), `want a size such as 1048576 or "8MiB"`) {
			t.Errorf("ParseSize(%q) error %q does not say what a size looks like", tt.in, err)
		}
	}
}

func TestSizeYAML(t *testing.T) {
	tests := []struct {
		src  string
		want Size
		err  string // substring; empty when the value is accepted
	}{
		{"v: 1024", 1024, ""},
		{"v: 8MiB", 8 << 20, ""},
		{`v: "8MiB"`, 8 << 20, ""},
		{"v: 2 MB", 2_000_000, ""},
		{"v: 1GB", 1_000_000_000, ""},
		{"v: 0", 0, ""},
		{"v: -1", 0, `got "-1"`},
		{`v: "-1"`, 0, `got "-1"`},
		{"v: 8XB", 0, `got "8XB"`},
		{"v: 1.5", 0, "got 1.5"},
		{"v: true", 0, "got true"},
		{"v: 18446744073709551615", 0, `got "18446744073709551615"`},
	}
	for _, tt := range tests {
		var v struct {
			V Size `yaml:"v"`
		}
		err := yaml.Unmarshal([]byte(tt.src), &v)
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("%s: %v", tt.src, err)
		case tt.err == "" && v.V != tt.want:
			t.Errorf("%s: got %d, want %d", tt.src, v.V, tt.want)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("%s: error %v, want one containing %q", tt.src, err, tt.err)
		}
	}
}

func TestDurationYAML(t *testing.T) {
	tests := []struct {
		src  string
		want time.Duration
		err  string
	}{
		{"v: 500ms", 500 * time.Millisecond, ""},
		{`v: "30s"`, 30 * time.Second, ""},
		{"v: 1m30s", 90 * time.Second, ""},
		{"v: 1.5s", 1500 * time.Millisecond, ""},
		{"v: 250us", 250 * time.Microsecond, ""},
		{"v: 0s", 0, ""},
		{"v: 100", 0, `with a unit such as "500ms" or "30s", got 100`},
		{"v: 0", 0, "with a unit"},
		{"v: 1.5", 0, "with a unit"},
		{"v: true", 0, "with a unit"},
		{"v: -100ms", 0, `duration "-100ms" is negative`},
		{"v: 5 seconds", 0, `got "5 seconds"`},
		{"v: 100000000000h", 0, `got "100000000000h"`},
	}
	for _, tt := range tests {
		var v struct {
			V Duration `yaml:"v"`
		}
		err := yaml.Unmarshal([]byte(tt.src), &v)
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("%s: %v", tt.src, err)
		case tt.err == "" && v.V.D() != tt.want:
			t.Errorf("%s: got %v, want %v", tt.src, v.V.D(), tt.want)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("%s: error %v, want one containing %q", tt.src, err, tt.err)
		}
	}
}

func TestUnitsMarshalRoundTrip(t *testing.T) {
	in := struct {
		D Duration `yaml:"d"`
		S Size     `yaml:"s"`
	}{Duration(1500 * time.Millisecond), 8 << 20}
	b, err := yaml.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), "d: 1.5s\ns: 8388608\n"; got != want {
		t.Errorf("marshal = %q, want %q", got, want)
	}
	out := in
	out.D, out.S = 0, 0
	if err := yaml.Unmarshal(b, &out); err != nil || out != in {
		t.Errorf("round trip = %+v, %v; want %+v", out, err, in)
	}
}
