//go:build wasip1

package proxywasm

import (
	"unsafe"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

// vmState is the one VM's contexts. The ABI gives a module one set of
// exports, so this is the package's only mutable global; the host calls
// in one thread, so it needs no lock.
type vmState struct {
	vm      types.VMContext
	plugins map[uint32]types.PluginContext
	https   map[uint32]types.HttpContext
	// pins keeps memory handed to the host alive until the guest has read
	// it: Go's GC may run in any callback.
	pins map[unsafe.Pointer][]byte
	// root is the root context whose callback is running (on_configure,
	// on_tick, on_http_call_response): an HTTP call dispatched now is its,
	// and the host answers it on that root context.
	root uint32
	// callouts are the callbacks of outstanding HTTP calls, by root
	// context and token (Envoy numbers a root context's calls).
	callouts map[callout]func(numHeaders, bodySize, numTrailers int)
}

type callout struct{ root, token uint32 }

var vm = vmState{
	plugins:  map[uint32]types.PluginContext{},
	https:    map[uint32]types.HttpContext{},
	pins:     map[unsafe.Pointer][]byte{},
	callouts: map[callout]func(int, int, int){},
}

// SetVMContext registers the plugin's VM context. Call it from init():
// Envoy runs _initialize, never main.
func SetVMContext(c types.VMContext) { vm.vm = c }

func (s *vmState) unpin(p unsafe.Pointer) { delete(s.pins, p) }

//go:wasmexport proxy_abi_version_0_2_1
func abiVersion() {}

//go:wasmexport proxy_on_memory_allocate
func onMemoryAllocate(size uint32) unsafe.Pointer {
	if size == 0 {
		size = 1
	}
	b := make([]byte, size)
	p := unsafe.Pointer(&b[0])
	vm.pins[p] = b
	return p
}

//go:wasmexport proxy_on_context_create
func onContextCreate(id, parent uint32) {
	if parent == 0 {
		if vm.vm != nil {
			vm.plugins[id] = vm.vm.NewPluginContext(id)
		}
		return
	}
	if p := vm.plugins[parent]; p != nil {
		if h := p.NewHttpContext(id); h != nil {
			vm.https[id] = h
		}
	}
}

//go:wasmexport proxy_on_vm_start
func onVMStart(_, size uint32) uint32 {
	if vm.vm == nil {
		return 0
	}
	return b2u(vm.vm.OnVMStart(int(size)) == types.OnVMStartStatusOK)
}

//go:wasmexport proxy_on_configure
func onConfigure(id, size uint32) uint32 {
	p := vm.plugins[id]
	if p == nil {
		return 0
	}
	vm.root = id
	return b2u(p.OnPluginStart(int(size)) == types.OnPluginStartStatusOK)
}

//go:wasmexport proxy_on_tick
func onTick(id uint32) {
	if p := vm.plugins[id]; p != nil {
		vm.root = id
		p.OnTick()
	}
}

// proxy_on_http_call_response: the answer to an HTTP call of root context
// id (numHeaders 0: the call failed or timed out). Its headers and body
// are readable only during this callback.
//
//go:wasmexport proxy_on_http_call_response
func onHttpCallResponse(id, token, numHeaders, bodySize, numTrailers uint32) {
	k := callout{id, token}
	cb := vm.callouts[k]
	if cb == nil {
		return
	}
	delete(vm.callouts, k)
	if vm.plugins[id] == nil {
		return // its root context has gone
	}
	vm.root = id
	cb(int(numHeaders), int(bodySize), int(numTrailers))
}

//go:wasmexport proxy_on_queue_ready
func onQueueReady(id, queue uint32) {
	if p := vm.plugins[id]; p != nil {
		p.OnQueueReady(queue)
	}
}

//go:wasmexport proxy_on_request_headers
func onRequestHeaders(id, n, eos uint32) uint32 {
	if h := vm.https[id]; h != nil {
		return uint32(h.OnHttpRequestHeaders(int(n), eos != 0))
	}
	return uint32(types.ActionContinue)
}

//go:wasmexport proxy_on_request_body
func onRequestBody(id, size, eos uint32) uint32 {
	if h := vm.https[id]; h != nil {
		return uint32(h.OnHttpRequestBody(int(size), eos != 0))
	}
	return uint32(types.ActionContinue)
}

//go:wasmexport proxy_on_request_trailers
func onRequestTrailers(id, n uint32) uint32 {
	if h := vm.https[id]; h != nil {
		return uint32(h.OnHttpRequestTrailers(int(n)))
	}
	return uint32(types.ActionContinue)
}

//go:wasmexport proxy_on_response_headers
func onResponseHeaders(id, n, eos uint32) uint32 {
	if h := vm.https[id]; h != nil {
		return uint32(h.OnHttpResponseHeaders(int(n), eos != 0))
	}
	return uint32(types.ActionContinue)
}

//go:wasmexport proxy_on_response_body
func onResponseBody(id, size, eos uint32) uint32 {
	if h := vm.https[id]; h != nil {
		return uint32(h.OnHttpResponseBody(int(size), eos != 0))
	}
	return uint32(types.ActionContinue)
}

//go:wasmexport proxy_on_response_trailers
func onResponseTrailers(id, n uint32) uint32 {
	if h := vm.https[id]; h != nil {
		return uint32(h.OnHttpResponseTrailers(int(n)))
	}
	return uint32(types.ActionContinue)
}

//go:wasmexport proxy_on_done
func onDone(id uint32) uint32 {
	if h := vm.https[id]; h != nil {
		h.OnHttpStreamDone()
		return 1
	}
	if p := vm.plugins[id]; p != nil {
		return b2u(p.OnPluginDone())
	}
	return 1
}

//go:wasmexport proxy_on_log
func onLog(uint32) {}

//go:wasmexport proxy_on_delete
func onDelete(id uint32) {
	delete(vm.https, id)
	if _, ok := vm.plugins[id]; ok {
		delete(vm.plugins, id)
		for k := range vm.callouts {
			if k.root == id {
				delete(vm.callouts, k)
			}
		}
	}
}

func b2u(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}
