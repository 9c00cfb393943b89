// Package proxywasm is detour's binding of the proxy-wasm ABI 0.2.1 for the
// standard Go toolchain (GOOS=wasip1, -buildmode=c-shared).
//
// Its API follows github.com/tetratelabs/proxy-wasm-go-sdk so plugin code
// reads the same and uses the SDK's types (types.HttpContext, types.Action,
// ...). Built for wasip1 it talks to the host through go:wasmimport and
// exports the proxy_on_* callbacks with go:wasmexport; built natively it
// forwards every call to the SDK, whose proxytest host emulator then runs
// the plugin in ordinary `go test`. The SDK itself cannot be used inside the
// module: v0.24.0 only works under TinyGo, and a standard-Go build of it
// exports nothing Envoy can call.
//
// Only what detour's plugin needs is bound; each call is a thin wrapper.
package proxywasm
