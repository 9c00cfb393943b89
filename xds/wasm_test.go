package xds

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/detourhq/detour/envoy"
	"github.com/detourhq/detour/examples"
	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/wasm/wasmtest"
)

// Every shape of the wasm configuration passes ValidateAll and Envoy's own
// validation, with the real module.
func TestWasmBootstrapEnvoyValidates(t *testing.T) {
	bin, err := envoy.Locate("")
	if err != nil {
		t.Fatalf("cannot validate without Envoy: %v", err)
	}
	m, err := LoadWasmModule(wasmtest.Module(t))
	if err != nil {
		t.Fatal(err)
	}
	off := false
	for _, tt := range []struct {
		name   string
		mutate func(p *policy.Policy)
	}{
		{"measure only", func(*policy.Policy) {}},
		{"wasm routing", func(p *policy.Policy) { p.Routing.Mode = policy.ModeWasm }},
		{"wasm routing, a keyed backend", func(p *policy.Policy) {
			p.Routing.Mode = policy.ModeWasm
			p.Backends[0].Credentials = &policy.Credentials{APIKeyEnv: "DETOUR_TEST_KEY"}
		}},
		{"one route in wasm mode", func(p *policy.Policy) { p.Routes[0].Mode = policy.ModeWasm }},
		{"plugin off", func(p *policy.Policy) { p.Wasm.Measure = &off }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := parsePolicy(t, string(examples.QuickstartPolicy))
			tt.mutate(p)
			b, err := StaticBootstrapFor(p, Options{Wasm: m})
			if err != nil {
				t.Fatal(err)
			}
			out, err := MarshalBootstrap(b)
			if err != nil {
				t.Fatal(err)
			}
			hasWasm := strings.Contains(string(out), WasmFilter)
			if want := tt.name != "plugin off"; hasWasm != want {
				t.Errorf("wasm filter present %v, want %v", hasWasm, want)
			}
			path := filepath.Join(t.TempDir(), "envoy.json")
			if err := os.WriteFile(path, out, 0o600); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
			defer cancel()
			if err := envoy.Validate(ctx, bin, path); err != nil {
				t.Fatalf("Envoy rejects the bootstrap: %v", err)
			}
		})
	}
}

func TestWasmRoutingNeedsModule(t *testing.T) {
	p := parsePolicy(t, string(examples.QuickstartPolicy))
	p.Routing.Mode = policy.ModeWasm
	if _, err := BuildFor(p, Options{}); err == nil || !strings.Contains(err.Error(), "wasm module") {
		t.Errorf("BuildFor without a module: %v", err)
	}
}

func TestLoadWasmModule(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "x.wasm")
	os.WriteFile(bad, []byte("not wasm at all"), 0o600)
	if _, err := LoadWasmModule(bad); err == nil {
		t.Error("accepted a file that is not WebAssembly")
	}
	if _, err := LoadWasmModule(filepath.Join(dir, "missing.wasm")); err == nil {
		t.Error("accepted a missing file")
	}
	m, err := LoadWasmModule(wasmtest.Module(t))
	if err != nil || len(m.SHA256) != 64 || !strings.HasPrefix(m.WasmURLPath(), "/wasm/") {
		t.Fatalf("%+v %v", m, err)
	}
}

// Fed over xDS, the measure role fetches the module from the control
// plane; in wasm routing both the router and the upstream role read it
// from disk, so that they share each worker's VM (local demotion needs
// the two in one VM: decision 0016), and so does the observing instance
// in a keyed backend's own filters. Every instance names the module's
// sha256 in its VM configuration, so a new module is new configuration.
func TestWasmCodeSources(t *testing.T) {
	m, err := LoadWasmModule(wasmtest.Module(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name         string
		routing      bool
		remote, disk int // wasm filters whose code comes each way
		observing    int // observe-only instances in clusters
	}{
		{"measure only", false, 1, 0, 0},
		{"wasm routing", true, 0, 3, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := parsePolicy(t, string(examples.QuickstartPolicy))
			p.Backends[0].Credentials = &policy.Credentials{APIKeyEnv: "DETOUR_TEST_KEY"}
			if tt.routing {
				p.Routing.Mode = policy.ModeWasm
			}
			r, err := BuildFor(p, Options{Wasm: m, Dynamic: true})
			if err != nil {
				t.Fatal(err)
			}
			var text strings.Builder
			for _, l := range r.Listeners {
				b, err := protojson.Marshal(l)
				if err != nil {
					t.Fatal(err)
				}
				text.Write(b)
			}
			for _, c := range r.Clusters {
				b, err := protojson.Marshal(c)
				if err != nil {
					t.Fatal(err)
				}
				text.Write(b)
			}
			s := text.String()
			remote := strings.Count(s, m.WasmURLPath())
			disk := strings.Count(s, `"filename":"`+m.Path+`"`)
			if remote != tt.remote || disk != tt.disk {
				t.Errorf("%d filters fetch the module and %d read it from disk, want %d and %d", remote, disk, tt.remote, tt.disk)
			}
			if n := strings.Count(s, `observe_only`); n != tt.observing {
				t.Errorf("%d observe-only instances, want %d", n, tt.observing)
			}
			if n := strings.Count(s, "sha256:"+m.SHA256); n != tt.remote+tt.disk {
				t.Errorf("%d VM configurations name the module's sha256, want every one (%d)", n, tt.remote+tt.disk)
			}
		})
	}
}
