package abitest

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
)

// A minimal proxy-wasm host: just enough of Envoy for the plugin to run.
// Every call returns one of the ABI's status codes.
const (
	statusOK          = 0
	statusNotFound    = 1
	statusBadArgument = 2
)

// ABI enumerations the host understands.
const (
	bufRequestBody          = 0
	bufResponseBody         = 1
	bufHttpCallResponseBody = 4
	bufVMConfig             = 6
	bufPluginConfig         = 7

	mapRequestHeaders          = 0
	mapResponseHeaders         = 2
	mapHttpCallResponseHeaders = 6
)

// host is the state Envoy would keep for one VM: the current stream's
// headers, bodies and filter state, plus VM-wide stats. Host functions
// find it in the context of the call that entered the guest, so one
// compiled "env" module serves every instance.
type host struct {
	pluginConfig []byte

	// The current stream.
	reqHeaders, respHeaders [][2]string
	reqBody, respBody       []byte
	props                   map[string]string // path joined with "."
	local                   *localResponse
	foreign                 []string // names of foreign functions called
	continued               []uint32 // streams resumed

	// The VM.
	metricIDs map[string]uint32
	metrics   []metric // by id-1
	tick      uint32
	logs      []string // "level: message", capped

	// HTTP calls the guest dispatched (proxy_http_call), and the answer
	// being delivered (readable during proxy_on_http_call_response).
	calls         []httpCall
	callHeaders   [][2]string
	callBody      []byte
	nextCallToken uint32
	nLogs         int

	alloc      api.Function // the guest's proxy_on_memory_allocate
	allocs     int          // calls of alloc
	allocSpent time.Duration
}

type httpCall struct {
	token    uint32
	cluster  string
	headers  [][2]string
	body     []byte
	trailers [][2]string
	timeout  uint32
}

type localResponse struct {
	status  uint32
	details string
	body    []byte
	headers [][2]string
	grpc    int32
}

type metric struct {
	name   string
	kind   uint32 // 0 counter, 1 gauge, 2 histogram
	value  int64  // counters and gauges
	record []uint64
}

func newHost(config []byte) *host {
	h := &host{pluginConfig: config, metricIDs: map[string]uint32{}}
	h.newStream()
	return h
}

// newStream forgets the previous stream's state (metrics stay: they are
// the VM's, as Envoy's stats are).
func (h *host) newStream() {
	h.reqHeaders, h.respHeaders = nil, nil
	h.reqBody, h.respBody = nil, nil
	h.props = map[string]string{}
	h.local = nil
	h.foreign = h.foreign[:0]
	h.continued = h.continued[:0]
}

// metric returns the named metric, or nil.
func (h *host) metric(name string) *metric {
	if id, ok := h.metricIDs[name]; ok {
		return &h.metrics[id-1]
	}
	return nil
}

func (h *host) metricNames() []string {
	var n []string
	for k := range h.metricIDs {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

func (h *host) buffer(kind uint32) *[]byte {
	switch kind {
	case bufRequestBody:
		return &h.reqBody
	case bufResponseBody:
		return &h.respBody
	case bufPluginConfig:
		return &h.pluginConfig
	case bufHttpCallResponseBody:
		return &h.callBody
	case bufVMConfig:
		return new([]byte) // none
	}
	return nil
}

func (h *host) headerMap(kind uint32) *[][2]string {
	switch kind {
	case mapRequestHeaders:
		return &h.reqHeaders
	case mapResponseHeaders:
		return &h.respHeaders
	case mapHttpCallResponseHeaders:
		return &h.callHeaders
	}
	return nil
}

type hostKey struct{}

// withHost makes h the host of guest calls made with the returned context.
func withHost(ctx context.Context, h *host) context.Context {
	return context.WithValue(ctx, hostKey{}, h)
}

// Guest memory. Reads copy: the guest may reuse or free the memory after
// the call.

func read(m api.Module, ptr, size uint32) ([]byte, bool) {
	if size == 0 {
		return nil, true
	}
	b, ok := m.Memory().Read(ptr, size)
	return bytes.Clone(b), ok
}

func readString(m api.Module, ptr, size uint32) (string, bool) {
	b, ok := read(m, ptr, size)
	return string(b), ok
}

// give hands data to the guest as Envoy does: memory from the guest's own
// allocator (so the Go GC knows about it), its address and size written
// to the two out-pointers the guest passed.
func (h *host) give(ctx context.Context, m api.Module, data []byte, retPtr, retSize uint32) uint32 {
	var p uint32
	if len(data) > 0 {
		begin := time.Now()
		r, err := h.alloc.Call(ctx, uint64(len(data)))
		h.allocs++
		h.allocSpent += time.Since(begin)
		if err != nil {
			panic(fmt.Sprintf("proxy_on_memory_allocate(%d): %v", len(data), err))
		}
		p = api.DecodeU32(r[0])
		if !m.Memory().Write(p, data) {
			return statusBadArgument
		}
	}
	if !m.Memory().WriteUint32Le(retPtr, p) || !m.Memory().WriteUint32Le(retSize, uint32(len(data))) {
		return statusBadArgument
	}
	return statusOK
}

// encodePairs and decodePairs are the ABI's header map layout: count (u32
// LE), per pair key and value lengths (u32 LE each), then per pair
// key NUL value NUL. Written here independently of the guest's codec so
// a shared mistake cannot hide.
func encodePairs(pairs [][2]string) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(pairs)))
	for _, p := range pairs {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(p[0])))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(p[1])))
	}
	for _, p := range pairs {
		b = append(append(append(append(b, p[0]...), 0), p[1]...), 0)
	}
	return b
}

func decodePairs(b []byte) ([][2]string, error) {
	if len(b) == 0 {
		return nil, nil
	}
	if len(b) < 4 {
		return nil, fmt.Errorf("header map of %d bytes", len(b))
	}
	n := int(binary.LittleEndian.Uint32(b))
	data := 4 + 8*n
	if n > len(b) || data > len(b) {
		return nil, fmt.Errorf("header map: %d pairs in %d bytes", n, len(b))
	}
	out := make([][2]string, n)
	for i := range out {
		k := int(binary.LittleEndian.Uint32(b[4+8*i:]))
		v := int(binary.LittleEndian.Uint32(b[8+8*i:]))
		if data+k+v+2 > len(b) || b[data+k] != 0 || b[data+k+1+v] != 0 {
			return nil, fmt.Errorf("header map: pair %d overruns or lacks NULs", i)
		}
		out[i] = [2]string{string(b[data : data+k]), string(b[data+k+1 : data+k+1+v])}
		data += k + v + 2
	}
	return out, nil
}

func u32(a []uint64, i int) uint32 { return api.DecodeU32(a[i]) }

const i32, i64 = api.ValueTypeI32, api.ValueTypeI64

// hostFunc is one env.proxy_* import: its parameters (every one returns
// an i32 status) and its implementation, which reads its arguments from a.
type hostFunc struct {
	params []api.ValueType
	fn     func(ctx context.Context, h *host, m api.Module, a []uint64) uint32
}

// hostFuncs implements the imports the binding declares
// (wasm/proxywasm/abi_wasip1.go), with Envoy's semantics where the plugin
// depends on them.
var hostFuncs = map[string]hostFunc{
	"proxy_log": {[]api.ValueType{i32, i32, i32}, func(_ context.Context, h *host, m api.Module, a []uint64) uint32 {
		msg, ok := readString(m, u32(a, 1), u32(a, 2))
		if !ok {
			return statusBadArgument
		}
		// Capped: the long test logs nothing per request, but a
		// regression that did must not exhaust the test's memory.
		if h.nLogs++; len(h.logs) < 100 {
			h.logs = append(h.logs, fmt.Sprintf("%d: %s", u32(a, 0), msg))
		}
		return statusOK
	}},
	"proxy_get_buffer_bytes": {[]api.ValueType{i32, i32, i32, i32, i32}, func(ctx context.Context, h *host, m api.Module, a []uint64) uint32 {
		buf := h.buffer(u32(a, 0))
		if buf == nil {
			return statusNotFound
		}
		start, size := uint64(u32(a, 1)), uint64(u32(a, 2)) // 64-bit: size may be MaxInt32
		if start > uint64(len(*buf)) {
			return statusBadArgument
		}
		end := min(start+size, uint64(len(*buf)))
		return h.give(ctx, m, (*buf)[start:end], u32(a, 3), u32(a, 4))
	}},
	"proxy_set_buffer_bytes": {[]api.ValueType{i32, i32, i32, i32, i32}, func(_ context.Context, h *host, m api.Module, a []uint64) uint32 {
		buf := h.buffer(u32(a, 0))
		data, ok := read(m, u32(a, 3), u32(a, 4))
		if buf == nil || !ok {
			return statusBadArgument
		}
		// Envoy replaces [start, start+size) clipped to the buffer:
		// start 0 and a size past the end replace it whole.
		start, size := uint64(u32(a, 1)), uint64(u32(a, 2))
		if start > uint64(len(*buf)) {
			return statusBadArgument
		}
		end := min(start+size, uint64(len(*buf)))
		*buf = append(append(append([]byte(nil), (*buf)[:start]...), data...), (*buf)[end:]...)
		return statusOK
	}},
	"proxy_get_header_map_pairs": {[]api.ValueType{i32, i32, i32}, func(ctx context.Context, h *host, m api.Module, a []uint64) uint32 {
		hm := h.headerMap(u32(a, 0))
		if hm == nil {
			return statusBadArgument
		}
		return h.give(ctx, m, encodePairs(*hm), u32(a, 1), u32(a, 2))
	}},
	"proxy_get_header_map_value": {[]api.ValueType{i32, i32, i32, i32, i32}, func(ctx context.Context, h *host, m api.Module, a []uint64) uint32 {
		hm := h.headerMap(u32(a, 0))
		key, ok := readString(m, u32(a, 1), u32(a, 2))
		if hm == nil || !ok {
			return statusBadArgument
		}
		for _, kv := range *hm {
			if kv[0] == key {
				return h.give(ctx, m, []byte(kv[1]), u32(a, 3), u32(a, 4))
			}
		}
		return statusNotFound
	}},
	"proxy_add_header_map_value": {[]api.ValueType{i32, i32, i32, i32, i32}, func(_ context.Context, h *host, m api.Module, a []uint64) uint32 {
		hm := h.headerMap(u32(a, 0))
		key, ok1 := readString(m, u32(a, 1), u32(a, 2))
		val, ok2 := readString(m, u32(a, 3), u32(a, 4))
		if hm == nil || !ok1 || !ok2 {
			return statusBadArgument
		}
		*hm = append(*hm, [2]string{key, val})
		return statusOK
	}},
	"proxy_replace_header_map_value": {[]api.ValueType{i32, i32, i32, i32, i32}, func(_ context.Context, h *host, m api.Module, a []uint64) uint32 {
		hm := h.headerMap(u32(a, 0))
		key, ok1 := readString(m, u32(a, 1), u32(a, 2))
		val, ok2 := readString(m, u32(a, 3), u32(a, 4))
		if hm == nil || !ok1 || !ok2 {
			return statusBadArgument
		}
		*hm = removeHeader(*hm, key)
		*hm = append(*hm, [2]string{key, val}) // replace adds a missing header
		return statusOK
	}},
	"proxy_remove_header_map_value": {[]api.ValueType{i32, i32, i32}, func(_ context.Context, h *host, m api.Module, a []uint64) uint32 {
		hm := h.headerMap(u32(a, 0))
		key, ok := readString(m, u32(a, 1), u32(a, 2))
		if hm == nil || !ok {
			return statusBadArgument
		}
		*hm = removeHeader(*hm, key) // removing a missing header is no error
		return statusOK
	}},
	"proxy_get_property": {[]api.ValueType{i32, i32, i32, i32}, func(ctx context.Context, h *host, m api.Module, a []uint64) uint32 {
		path, ok := readString(m, u32(a, 0), u32(a, 1))
		if !ok {
			return statusBadArgument
		}
		v, found := h.props[propertyKey(path)]
		if !found {
			return statusNotFound
		}
		return h.give(ctx, m, []byte(v), u32(a, 2), u32(a, 3))
	}},
	"proxy_set_property": {[]api.ValueType{i32, i32, i32, i32}, func(_ context.Context, h *host, m api.Module, a []uint64) uint32 {
		path, ok1 := readString(m, u32(a, 0), u32(a, 1))
		val, ok2 := readString(m, u32(a, 2), u32(a, 3))
		if !ok1 || !ok2 {
			return statusBadArgument
		}
		h.props[propertyKey(path)] = val
		return statusOK
	}},
	"proxy_send_local_response": {[]api.ValueType{i32, i32, i32, i32, i32, i32, i32, i32}, func(_ context.Context, h *host, m api.Module, a []uint64) uint32 {
		details, ok1 := readString(m, u32(a, 1), u32(a, 2))
		body, ok2 := read(m, u32(a, 3), u32(a, 4))
		raw, ok3 := read(m, u32(a, 5), u32(a, 6))
		headers, err := decodePairs(raw)
		if !ok1 || !ok2 || !ok3 || err != nil {
			return statusBadArgument
		}
		h.local = &localResponse{status: u32(a, 0), details: details, body: body, headers: headers, grpc: api.DecodeI32(a[7])}
		return statusOK
	}},
	"proxy_continue_stream": {[]api.ValueType{i32}, func(_ context.Context, h *host, _ api.Module, a []uint64) uint32 {
		h.continued = append(h.continued, u32(a, 0))
		return statusOK
	}},
	"proxy_set_tick_period_milliseconds": {[]api.ValueType{i32}, func(_ context.Context, h *host, _ api.Module, a []uint64) uint32 {
		h.tick = u32(a, 0)
		return statusOK
	}},
	"proxy_http_call": {[]api.ValueType{i32, i32, i32, i32, i32, i32, i32, i32, i32, i32}, func(_ context.Context, h *host, m api.Module, a []uint64) uint32 {
		cluster, ok1 := readString(m, u32(a, 0), u32(a, 1))
		rawHeaders, ok2 := read(m, u32(a, 2), u32(a, 3))
		body, ok3 := read(m, u32(a, 4), u32(a, 5))
		rawTrailers, ok4 := read(m, u32(a, 6), u32(a, 7))
		headers, err1 := decodePairs(rawHeaders)
		trailers, err2 := decodePairs(rawTrailers)
		if !ok1 || !ok2 || !ok3 || !ok4 || err1 != nil || err2 != nil {
			return statusBadArgument
		}
		// Envoy refuses a call without these, or to an unknown cluster.
		for _, k := range []string{":method", ":path", ":authority"} {
			if v, _ := headerOf(headers, k); v == "" {
				return statusBadArgument
			}
		}
		if cluster == "" {
			return statusBadArgument
		}
		h.nextCallToken++
		if !m.Memory().WriteUint32Le(u32(a, 9), h.nextCallToken) {
			return statusBadArgument
		}
		h.calls = append(h.calls, httpCall{token: h.nextCallToken, cluster: cluster, headers: headers, body: body, trailers: trailers, timeout: u32(a, 8)})
		return statusOK
	}},
	"proxy_define_metric": {[]api.ValueType{i32, i32, i32, i32}, func(_ context.Context, h *host, m api.Module, a []uint64) uint32 {
		name, ok := readString(m, u32(a, 1), u32(a, 2))
		if !ok || u32(a, 0) > 2 {
			return statusBadArgument
		}
		// Envoy hands back the same stat for the same name.
		id, found := h.metricIDs[name]
		if !found {
			h.metrics = append(h.metrics, metric{name: name, kind: u32(a, 0)})
			id = uint32(len(h.metrics))
			h.metricIDs[name] = id
		}
		if !m.Memory().WriteUint32Le(u32(a, 3), id) {
			return statusBadArgument
		}
		return statusOK
	}},
	"proxy_increment_metric": {[]api.ValueType{i32, i64}, func(_ context.Context, h *host, _ api.Module, a []uint64) uint32 {
		id := u32(a, 0)
		if id == 0 || int(id) > len(h.metrics) || h.metrics[id-1].kind == 2 {
			return statusNotFound
		}
		h.metrics[id-1].value += int64(a[1])
		return statusOK
	}},
	"proxy_record_metric": {[]api.ValueType{i32, i64}, func(_ context.Context, h *host, _ api.Module, a []uint64) uint32 {
		id := u32(a, 0)
		if id == 0 || int(id) > len(h.metrics) {
			return statusNotFound
		}
		mt := &h.metrics[id-1]
		if mt.kind == 2 {
			if len(mt.record) < 1000 { // bounded, as for logs
				mt.record = append(mt.record, a[1])
			}
		} else {
			mt.value = int64(a[1])
		}
		return statusOK
	}},
	"proxy_get_metric": {[]api.ValueType{i32, i32}, func(_ context.Context, h *host, m api.Module, a []uint64) uint32 {
		id := u32(a, 0)
		if id == 0 || int(id) > len(h.metrics) {
			return statusNotFound
		}
		if !m.Memory().WriteUint64Le(u32(a, 1), uint64(h.metrics[id-1].value)) {
			return statusBadArgument
		}
		return statusOK
	}},
	"proxy_call_foreign_function": {[]api.ValueType{i32, i32, i32, i32, i32, i32}, func(ctx context.Context, h *host, m api.Module, a []uint64) uint32 {
		name, ok := readString(m, u32(a, 0), u32(a, 1))
		if !ok {
			return statusBadArgument
		}
		if name != "clear_route_cache" { // the only one Envoy has that detour uses
			return statusNotFound
		}
		h.foreign = append(h.foreign, name)
		return h.give(ctx, m, nil, u32(a, 4), u32(a, 5)) // it returns nothing
	}},
}

func headerOf(hm [][2]string, key string) (string, bool) {
	for _, kv := range hm {
		if kv[0] == key {
			return kv[1], true
		}
	}
	return "", false
}

func removeHeader(hm [][2]string, key string) [][2]string {
	out := hm[:0]
	for _, kv := range hm {
		if kv[0] != key {
			out = append(out, kv)
		}
	}
	return out
}

// propertyKey turns the ABI's NUL-separated property path into the dotted
// form Envoy's configuration uses (the filter state "wasm.<key>" aside).
func propertyKey(path string) string { return strings.ReplaceAll(path, "\x00", ".") }

// instantiateEnv registers hostFuncs as the "env" module of r.
func instantiateEnv(ctx context.Context, r wazero.Runtime) error {
	b := r.NewHostModuleBuilder("env")
	for name, f := range hostFuncs {
		fn := f.fn
		b.NewFunctionBuilder().
			WithGoModuleFunction(api.GoModuleFunc(func(ctx context.Context, m api.Module, stack []uint64) {
				h := ctx.Value(hostKey{}).(*host)
				stack[0] = uint64(fn(ctx, h, m, stack))
			}), f.params, []api.ValueType{i32}).
			Export(name)
	}
	_, err := b.Instantiate(ctx)
	return err
}
