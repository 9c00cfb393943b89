package main

import (
	"strings"
	"testing"
	"time"

	"github.com/detourhq/detour/bench/loadgen"
)

func TestWasmMarkdown(t *testing.T) {
	w := &wasmResult{ModulePath: "bin/detour.wasm", ModuleBytes: 3 << 20, BodyBytes: 1882, Workers: 2,
		Startup: map[string][]time.Duration{}, IdleMem: map[string][]memSample{}, LoadedMem: map[string]memSample{}}
	for i, s := range wasmSides {
		d := time.Duration(i+1) * time.Millisecond
		res := loadgen.Result{OK: 10, Sent: 10, Throughput: float64(1000 - 100*i), Latency: loadgen.Summary{P50: d, P90: d, P99: 2 * d, Max: 3 * d}}
		w.Fixed = append(w.Fixed, roundRun{Round: 1, Side: s, Res: res})
		w.Closed = append(w.Closed, roundRun{Round: 1, Side: s, Res: res})
		w.Startup[s] = []time.Duration{d}
		w.IdleMem[s] = []memSample{{RSS: 65 << 10, HWM: 66 << 10}}
		w.LoadedMem[s] = memSample{RSS: 70 << 10, HWM: 71 << 10}
	}
	r := &report{Options: options{rate: 500, workers: 32, rounds: 1}, Wasm: w}
	md := string(r.wasmMarkdown())
	for _, want := range []string{"### 7. proxy-wasm plugin", "| wasm routing: added p50 latency vs Envoy alone at 500 req/s ≤ 0.100 ms | 2.000 ms | **missed**",
		"0.80 (800 vs 1000 req/s) | **missed**", "3 VMs", "3,145,728 bytes"} {
		if !strings.Contains(md, want) {
			t.Errorf("wasm section lacks %q:\n%s", want, md)
		}
	}
	r = &report{Options: options{rate: 500}, WasmErr: "boom"}
	if md := string(r.wasmMarkdown()); !strings.Contains(md, "not measured") || !strings.Contains(md, "boom") {
		t.Errorf("failed run:\n%s", md)
	}
	doc := replaceBetween([]byte("x\n"+wasmBeginMarker+"\nold\n"+wasmEndMarker+"\ny\n"), []byte("new\n"), wasmBeginMarker, wasmEndMarker)
	if string(doc) != "x\n"+wasmBeginMarker+"\nnew\n"+wasmEndMarker+"\ny\n" {
		t.Errorf("replaceBetween: %q", doc)
	}
}
