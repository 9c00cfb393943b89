package loadgen

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
)

// Summary describes a latency distribution. Percentiles are exact, computed
// from all samples with the nearest-rank method: Pq is the smallest sample
// such that at least q·N samples are <= it. The zero Summary (N == 0) means
// "no samples".
type Summary struct {
	N                                   int
	Min, P50, P90, P99, P999, Max, Mean time.Duration
}

// Summarize computes a Summary of samples. It does not modify samples.
func Summarize(samples []time.Duration) Summary {
	if len(samples) == 0 {
		return Summary{}
	}
	return summarizeInPlace(slices.Clone(samples))
}

// summarizeInPlace sorts s and summarizes it.
func summarizeInPlace(s []time.Duration) Summary {
	n := len(s)
	if n == 0 {
		return Summary{}
	}
	slices.Sort(s)
	var sum float64
	for _, d := range s {
		sum += float64(d)
	}
	return Summary{
		N:    n,
		Min:  s[0],
		P50:  rank(s, 0.50),
		P90:  rank(s, 0.90),
		P99:  rank(s, 0.99),
		P999: rank(s, 0.999),
		Max:  s[n-1],
		Mean: time.Duration(math.Round(sum / float64(n))),
	}
}

// rank returns the nearest-rank q-quantile of the sorted slice s.
func rank(s []time.Duration, q float64) time.Duration {
	// Index ceil(q·n)-1; the tiny epsilon keeps e.g. 0.9·10 = 9.000000000000002
	// from rounding up to 10.
	i := int(math.Ceil(q*float64(len(s))-1e-9)) - 1
	return s[max(0, min(i, len(s)-1))]
}

// String formats the summary as "n=… p50=… p90=… p99=… p99.9=… max=…".
func (s Summary) String() string {
	if s.N == 0 {
		return "n=0"
	}
	return fmt.Sprintf("n=%d min=%s p50=%s p90=%s p99=%s p99.9=%s max=%s mean=%s",
		s.N, fmtDur(s.Min), fmtDur(s.P50), fmtDur(s.P90), fmtDur(s.P99),
		fmtDur(s.P999), fmtDur(s.Max), fmtDur(s.Mean))
}

// fmtDur rounds a duration to a readable precision (µs below one second,
// ms above).
func fmtDur(d time.Duration) string {
	if d >= time.Second || d <= -time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Microsecond).String()
}

// fmtSigned is fmtDur with an explicit sign.
func fmtSigned(d time.Duration) string {
	if d >= 0 {
		return "+" + fmtDur(d)
	}
	return fmtDur(d)
}

// String returns a one-line human summary of the run.
func (r Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "sent=%d ok=%d failed=%d dropped=%d dur=%s rps=%.1f",
		r.Sent, r.OK, r.Failed, r.Dropped, fmtDur(r.Duration), r.Throughput)
	if r.Latency.N > 0 {
		fmt.Fprintf(&b, " | latency p50=%s p90=%s p99=%s p99.9=%s max=%s",
			fmtDur(r.Latency.P50), fmtDur(r.Latency.P90), fmtDur(r.Latency.P99),
			fmtDur(r.Latency.P999), fmtDur(r.Latency.Max))
	}
	if r.TTFB.N > 0 {
		fmt.Fprintf(&b, " | ttfb p50=%s p99=%s", fmtDur(r.TTFB.P50), fmtDur(r.TTFB.P99))
	}
	if len(r.ByStatus) > 0 {
		b.WriteString(" | status")
		for _, k := range slices.Sorted(maps.Keys(r.ByStatus)) {
			fmt.Fprintf(&b, " %d:%d", k, r.ByStatus[k])
		}
	}
	if len(r.Errors) > 0 {
		b.WriteString(" | errors")
		for _, k := range slices.Sorted(maps.Keys(r.Errors)) {
			fmt.Fprintf(&b, " %q:%d", k, r.Errors[k])
		}
	}
	return b.String()
}

// Delta is the difference between two runs, typically a direct-to-provider
// baseline and the same load through Envoy + detour. Latency fields are
// other − base (positive means other is slower).
type Delta struct {
	AddedP50, AddedP90, AddedP99 time.Duration // full response latency
	AddedTTFBP50, AddedTTFBP99   time.Duration // time to first byte / first SSE data line
	// ThroughputRatio is other.Throughput / base.Throughput; 0 if the base
	// throughput is 0.
	ThroughputRatio float64
}

// Compare returns how much latency other adds over base and the ratio of
// their throughputs.
func Compare(base, other Result) Delta {
	d := Delta{
		AddedP50:     other.Latency.P50 - base.Latency.P50,
		AddedP90:     other.Latency.P90 - base.Latency.P90,
		AddedP99:     other.Latency.P99 - base.Latency.P99,
		AddedTTFBP50: other.TTFB.P50 - base.TTFB.P50,
		AddedTTFBP99: other.TTFB.P99 - base.TTFB.P99,
	}
	if base.Throughput > 0 {
		d.ThroughputRatio = other.Throughput / base.Throughput
	}
	return d
}

// String returns a one-line human summary of the delta.
func (d Delta) String() string {
	return fmt.Sprintf("added latency p50=%s p90=%s p99=%s | ttfb p50=%s p99=%s | throughput x%.3f",
		fmtSigned(d.AddedP50), fmtSigned(d.AddedP90), fmtSigned(d.AddedP99),
		fmtSigned(d.AddedTTFBP50), fmtSigned(d.AddedTTFBP99), d.ThroughputRatio)
}
