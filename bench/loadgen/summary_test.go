package loadgen

import (
	"strings"
	"testing"
	"time"
)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func seq(n int) []time.Duration {
	s := make([]time.Duration, n)
	for i := range s {
		s[i] = ms(i + 1)
	}
	return s
}

func TestSummarize(t *testing.T) {
	tests := []struct {
		name    string
		samples []time.Duration
		want    Summary
	}{
		{"empty", nil, Summary{}},
		{"single", []time.Duration{ms(7)}, Summary{N: 1, Min: ms(7), P50: ms(7), P90: ms(7), P99: ms(7), P999: ms(7), Max: ms(7), Mean: ms(7)}},
		{"two", []time.Duration{ms(2), ms(1)}, Summary{N: 2, Min: ms(1), P50: ms(1), P90: ms(2), P99: ms(2), P999: ms(2), Max: ms(2), Mean: 1500 * time.Microsecond}},
		{"1..10", seq(10), Summary{N: 10, Min: ms(1), P50: ms(5), P90: ms(9), P99: ms(10), P999: ms(10), Max: ms(10), Mean: 5500 * time.Microsecond}},
		{"1..100", seq(100), Summary{N: 100, Min: ms(1), P50: ms(50), P90: ms(90), P99: ms(99), P999: ms(100), Max: ms(100), Mean: 50500 * time.Microsecond}},
		{"1..1000", seq(1000), Summary{N: 1000, Min: ms(1), P50: ms(500), P90: ms(900), P99: ms(990), P999: ms(999), Max: ms(1000), Mean: 500500 * time.Microsecond}},
		{"1..10000", seq(10000), Summary{N: 10000, Min: ms(1), P50: ms(5000), P90: ms(9000), P99: ms(9900), P999: ms(9990), Max: ms(10000), Mean: 5000500 * time.Microsecond}},
		{"unsorted with outlier", []time.Duration{ms(3), ms(1000), ms(1), ms(2), ms(4)},
			Summary{N: 5, Min: ms(1), P50: ms(3), P90: ms(1000), P99: ms(1000), P999: ms(1000), Max: ms(1000), Mean: ms(202)}},
		{"equal", []time.Duration{ms(4), ms(4), ms(4)}, Summary{N: 3, Min: ms(4), P50: ms(4), P90: ms(4), P99: ms(4), P999: ms(4), Max: ms(4), Mean: ms(4)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]time.Duration(nil), tt.samples...)
			got := Summarize(in)
			if got != tt.want {
				t.Errorf("Summarize:\n got  %+v\n want %+v", got, tt.want)
			}
			for i := range in {
				if in[i] != tt.samples[i] {
					t.Fatalf("Summarize modified its input")
				}
			}
		})
	}
}

func TestCompareAndStrings(t *testing.T) {
	base := Result{Sent: 100, OK: 100, Throughput: 200,
		Latency:  Summarize(seq(100)),
		TTFB:     Summarize(seq(10)),
		ByStatus: map[int]int{200: 100}}
	other := Result{Sent: 100, OK: 98, Failed: 2, Throughput: 150,
		Latency:  Summarize([]time.Duration{ms(52), ms(101)}),
		TTFB:     Summarize([]time.Duration{ms(3)}),
		ByStatus: map[int]int{200: 98, 0: 2},
		Errors:   map[string]int{"connection refused": 2}}
	d := Compare(base, other)
	want := Delta{AddedP50: ms(2), AddedP90: ms(11), AddedP99: ms(2), AddedTTFBP50: ms(-2), AddedTTFBP99: ms(-7), ThroughputRatio: 0.75}
	if d != want {
		t.Errorf("Compare = %+v, want %+v", d, want)
	}
	if got := Compare(Result{}, other).ThroughputRatio; got != 0 {
		t.Errorf("ThroughputRatio with zero base = %v, want 0", got)
	}
	ds := d.String()
	for _, sub := range []string{"p50=+2ms", "p99=+2ms", "ttfb p50=-2ms", "x0.750"} {
		if !strings.Contains(ds, sub) {
			t.Errorf("Delta.String() = %q, missing %q", ds, sub)
		}
	}
	rs := other.String()
	for _, sub := range []string{"sent=100", "ok=98", "failed=2", "dropped=0", "rps=150.0", "p50=52ms", "status 0:2 200:98", `"connection refused":2`} {
		if !strings.Contains(rs, sub) {
			t.Errorf("Result.String() = %q, missing %q", rs, sub)
		}
	}
	if strings.Contains(rs, "\n") {
		t.Errorf("Result.String() is not one line: %q", rs)
	}
	_ = Result{}.String()
}
