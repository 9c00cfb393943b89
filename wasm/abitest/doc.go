// Package abitest loads the built detour.wasm into wazero and drives it
// through the proxy-wasm ABI (0.2.1) as Envoy would: the exported
// proxy_on_* callbacks in, the env.proxy_* host calls out, memory handed
// over through proxy_on_memory_allocate. The plugin's unit tests run
// natively on the SDK's emulator; these tests cover what they cannot:
// the wasip1 binding, the reactor start-up, and the module's memory over
// many requests. The package has tests only.
package abitest
