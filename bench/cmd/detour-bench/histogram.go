package main

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// histogram is one Prometheus histogram read from the text exposition
// format: cumulative bucket counts by upper bound (the last is +Inf).
type histogram struct {
	Buckets []bucket
	Sum     float64
	Count   float64
}

type bucket struct {
	LE    float64 // upper bound, inclusive; +Inf for the last
	Count float64 // cumulative
}

// parseHistogram reads the unlabelled histogram name (its _bucket, _sum and
// _count series) from a /metrics page.
func parseHistogram(text []byte, name string) (histogram, error) {
	var h histogram
	var haveSum, haveCount bool
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		series, value, ok := splitSample(line)
		if !ok {
			continue
		}
		switch metric, labels, _ := strings.Cut(series, "{"); metric {
		case name + "_bucket":
			le, err := leLabel(labels)
			if err != nil {
				return h, fmt.Errorf("%s: %w", line, err)
			}
			h.Buckets = append(h.Buckets, bucket{LE: le, Count: value})
		case name + "_sum":
			h.Sum, haveSum = value, true
		case name + "_count":
			h.Count, haveCount = value, true
		}
	}
	if err := sc.Err(); err != nil {
		return h, err
	}
	if !haveSum || !haveCount || len(h.Buckets) == 0 {
		return h, fmt.Errorf("histogram %s not found", name)
	}
	slices.SortFunc(h.Buckets, func(a, b bucket) int { return cmpFloat(a.LE, b.LE) })
	return h, nil
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// splitSample splits `series value [timestamp]`; series may hold spaces
// inside its label values.
func splitSample(line string) (series string, value float64, ok bool) {
	end := strings.LastIndexByte(line, '}')
	rest := line
	if end >= 0 {
		series, rest = line[:end+1], line[end+1:]
	}
	f := strings.Fields(rest)
	if end < 0 {
		if len(f) < 2 {
			return "", 0, false
		}
		series, f = f[0], f[1:]
	}
	if len(f) == 0 {
		return "", 0, false
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return "", 0, false
	}
	return series, v, true
}

// leLabel extracts the le label from `le="0.005",...}`.
func leLabel(labels string) (float64, error) {
	for _, kv := range strings.Split(strings.TrimSuffix(labels, "}"), ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || k != "le" {
			continue
		}
		v = strings.Trim(v, `"`)
		if v == "+Inf" {
			return math.Inf(1), nil
		}
		return strconv.ParseFloat(v, 64)
	}
	return 0, fmt.Errorf("no le label")
}

// sub is h − o: the observations made between two scrapes of the same
// histogram (o the earlier).
func (h histogram) sub(o histogram) histogram {
	d := histogram{Sum: h.Sum - o.Sum, Count: h.Count - o.Count}
	for _, b := range h.Buckets {
		for _, ob := range o.Buckets {
			if ob.LE == b.LE {
				b.Count -= ob.Count
				break
			}
		}
		d.Buckets = append(d.Buckets, b)
	}
	return d
}

// mean is Sum/Count, NaN without observations.
func (h histogram) mean() float64 {
	if h.Count <= 0 {
		return math.NaN()
	}
	return h.Sum / h.Count
}

// quantile estimates the q-quantile the way Prometheus' histogram_quantile
// does: linear interpolation inside the bucket holding rank q·Count (the
// first bucket's lower bound is 0). If that is the +Inf bucket, the result
// is the largest finite bound (the quantile is above it). NaN without
// observations.
func (h histogram) quantile(q float64) float64 {
	if h.Count <= 0 || len(h.Buckets) == 0 {
		return math.NaN()
	}
	rank := q * h.Count
	lower, below := 0.0, 0.0
	for _, b := range h.Buckets {
		if b.Count >= rank {
			if math.IsInf(b.LE, 1) {
				return lower
			}
			if b.Count == below {
				return b.LE
			}
			return lower + (b.LE-lower)*(rank-below)/(b.Count-below)
		}
		lower, below = b.LE, b.Count
	}
	return lower
}
