// Command wasm is detour's proxy-wasm module (detour.wasm), built with the
// standard Go toolchain:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o bin/detour.wasm ./wasm
//
// (`make wasm`). Envoy runs the module's _initialize, never main, so the
// plugin registers itself in init; see package plugin for what it does.
package main

import (
	"time"

	"github.com/detourhq/detour/wasm/plugin"
	"github.com/detourhq/detour/wasm/proxywasm"
)

func init() {
	proxywasm.SetVMContext(plugin.NewVM(func() int64 { return time.Now().UnixNano() }))
}

func main() {}
