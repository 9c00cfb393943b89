//go:build wasip1

package proxywasm

import "unsafe"

// Host functions of proxy-wasm ABI 0.2.1 (module "env"). Sizes and
// pointers are 32-bit in wasm32; every call returns a status code.

//go:wasmimport env proxy_log
func hostLog(level uint32, msg unsafe.Pointer, size uint32) uint32

//go:wasmimport env proxy_get_buffer_bytes
func hostGetBufferBytes(kind, start, maxSize uint32, retData unsafe.Pointer, retSize unsafe.Pointer) uint32

//go:wasmimport env proxy_set_buffer_bytes
func hostSetBufferBytes(kind, start, size uint32, data unsafe.Pointer, dataSize uint32) uint32

//go:wasmimport env proxy_get_header_map_pairs
func hostGetHeaderMapPairs(kind uint32, retData unsafe.Pointer, retSize unsafe.Pointer) uint32

//go:wasmimport env proxy_get_header_map_value
func hostGetHeaderMapValue(kind uint32, key unsafe.Pointer, keySize uint32, retData unsafe.Pointer, retSize unsafe.Pointer) uint32

//go:wasmimport env proxy_add_header_map_value
func hostAddHeaderMapValue(kind uint32, key unsafe.Pointer, keySize uint32, value unsafe.Pointer, valueSize uint32) uint32

//go:wasmimport env proxy_replace_header_map_value
func hostReplaceHeaderMapValue(kind uint32, key unsafe.Pointer, keySize uint32, value unsafe.Pointer, valueSize uint32) uint32

//go:wasmimport env proxy_remove_header_map_value
func hostRemoveHeaderMapValue(kind uint32, key unsafe.Pointer, keySize uint32) uint32

//go:wasmimport env proxy_get_property
func hostGetProperty(path unsafe.Pointer, pathSize uint32, retData unsafe.Pointer, retSize unsafe.Pointer) uint32

//go:wasmimport env proxy_send_local_response
func hostSendLocalResponse(status uint32, details unsafe.Pointer, detailsSize uint32, body unsafe.Pointer, bodySize uint32, headers unsafe.Pointer, headersSize uint32, grpcStatus int32) uint32

//go:wasmimport env proxy_continue_stream
func hostContinueStream(stream uint32) uint32

//go:wasmimport env proxy_set_tick_period_milliseconds
func hostSetTickPeriod(ms uint32) uint32

//go:wasmimport env proxy_http_call
func hostHttpCall(upstream unsafe.Pointer, upstreamSize uint32, headers unsafe.Pointer, headersSize uint32, body unsafe.Pointer, bodySize uint32, trailers unsafe.Pointer, trailersSize uint32, timeoutMS uint32, retToken unsafe.Pointer) uint32

//go:wasmimport env proxy_define_metric
func hostDefineMetric(kind uint32, name unsafe.Pointer, nameSize uint32, retID unsafe.Pointer) uint32

//go:wasmimport env proxy_increment_metric
func hostIncrementMetric(id uint32, offset int64) uint32

//go:wasmimport env proxy_record_metric
func hostRecordMetric(id uint32, value uint64) uint32

//go:wasmimport env proxy_get_metric
func hostGetMetric(id uint32, ret unsafe.Pointer) uint32

//go:wasmimport env proxy_set_property
func hostSetProperty(path unsafe.Pointer, pathSize uint32, value unsafe.Pointer, valueSize uint32) uint32

//go:wasmimport env proxy_call_foreign_function
func hostCallForeignFunction(name unsafe.Pointer, nameSize uint32, arg unsafe.Pointer, argSize uint32, retData unsafe.Pointer, retSize unsafe.Pointer) uint32
