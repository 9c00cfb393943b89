package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// microPkgs are the packages whose benchmarks are run.
var microPkgs = []string{"./route/", "./extproc/"}

const microCount = 5

// microArgs is the go test command line, also quoted in the report.
func microArgs() []string {
	return append([]string{"test", "-run", "^$", "-bench", ".", "-benchmem", "-count", strconv.Itoa(microCount)}, microPkgs...)
}

// benchSample is one line of `go test -bench` output.
type benchSample struct {
	Pkg         string // import path, from the preceding "pkg:" line
	Name        string // without the -GOMAXPROCS suffix
	NsPerOp     float64
	BytesPerOp  float64 // NaN without -benchmem
	AllocsPerOp float64 // NaN without -benchmem
}

// benchStat aggregates the samples of one benchmark.
type benchStat struct {
	Pkg, Name        string
	N                int
	NsMedian         float64
	NsMin, NsMax     float64
	BytesMedian      float64
	AllocsMedian     float64
	IsDecisionTarget bool // the 2 KB parse+decide+rewrite benchmark
}

// runMicro runs the micro benchmarks in the module root. A failing go test
// (e.g. a package that does not compile) still returns what the other
// packages measured, together with the error.
func runMicro(ctx context.Context, root string, log *slog.Logger) ([]benchStat, error) {
	args := microArgs()
	log.Info("micro benchmarks", "cmd", "go "+strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	runErr := cmd.Run()
	samples, err := parseBenchOutput(bytes.NewReader(out.Bytes()))
	if err != nil {
		return nil, fmt.Errorf("parse go test output: %w", err)
	}
	stats := aggregate(samples)
	for _, s := range stats {
		log.Info("micro", "pkg", s.Pkg, "bench", s.Name, "ns_op_median", s.NsMedian, "allocs_op", s.AllocsMedian)
	}
	if runErr != nil {
		return stats, fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), runErr, tail(out.String(), 30))
	}
	if len(stats) == 0 {
		return nil, fmt.Errorf("go %s printed no benchmark results:\n%s", strings.Join(args, " "), tail(out.String(), 30))
	}
	return stats, nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

var procsSuffix = regexp.MustCompile(`-\d+$`)

// parseBenchOutput reads `go test -bench` output: "pkg:" lines set the
// package of the result lines that follow; a result line is
//
//	BenchmarkName-2   123456   987.6 ns/op   12.3 MB/s   64 B/op   2 allocs/op
//
// with any set of value-unit pairs after the iteration count. Other lines
// are ignored.
func parseBenchOutput(r io.Reader) ([]benchSample, error) {
	var out []benchSample
	pkg := ""
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimSpace(p)
			continue
		}
		if s, ok := parseBenchLine(line); ok {
			s.Pkg = pkg
			out = append(out, s)
		}
	}
	return out, sc.Err()
}

func parseBenchLine(line string) (benchSample, bool) {
	f := strings.Fields(line)
	if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
		return benchSample{}, false
	}
	if _, err := strconv.ParseInt(f[1], 10, 64); err != nil {
		return benchSample{}, false
	}
	s := benchSample{Name: procsSuffix.ReplaceAllString(f[0], ""), BytesPerOp: nan(), AllocsPerOp: nan()}
	haveNs := false
	for i := 2; i+1 < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return benchSample{}, false
		}
		switch f[i+1] {
		case "ns/op":
			s.NsPerOp, haveNs = v, true
		case "B/op":
			s.BytesPerOp = v
		case "allocs/op":
			s.AllocsPerOp = v
		}
	}
	return s, haveNs
}

// isDecisionBenchmark reports whether a benchmark is the one behind the
// target "routing decision ≤ 20 µs for a 2 KB chat body": in the route
// package, with "decide" and "2KB" in its name.
func isDecisionBenchmark(pkg, name string) bool {
	n := strings.ToLower(name)
	return strings.HasSuffix(pkg, "/route") && strings.Contains(n, "decide") && strings.Contains(n, "2kb")
}

// aggregate groups samples by package and name, in first-seen order.
func aggregate(samples []benchSample) []benchStat {
	type key struct{ pkg, name string }
	var order []key
	groups := map[key][]benchSample{}
	for _, s := range samples {
		k := key{s.Pkg, s.Name}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], s)
	}
	var out []benchStat
	for _, k := range order {
		g := groups[k]
		ns := pluck(g, func(s benchSample) float64 { return s.NsPerOp })
		lo, hi := minMax(ns)
		out = append(out, benchStat{
			Pkg: k.pkg, Name: k.name, N: len(g),
			NsMedian: median(ns), NsMin: lo, NsMax: hi,
			BytesMedian:      median(pluck(g, func(s benchSample) float64 { return s.BytesPerOp })),
			AllocsMedian:     median(pluck(g, func(s benchSample) float64 { return s.AllocsPerOp })),
			IsDecisionTarget: isDecisionBenchmark(k.pkg, k.name),
		})
	}
	return out
}

func pluck(g []benchSample, f func(benchSample) float64) []float64 {
	out := make([]float64, len(g))
	for i, s := range g {
		out[i] = f(s)
	}
	return out
}
