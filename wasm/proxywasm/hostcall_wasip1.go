//go:build wasip1

package proxywasm

import (
	"errors"
	"math"
	"unsafe"
)

// ABI enumerations used below.
const (
	bufRequestBody          = 0
	bufResponseBody         = 1
	bufHttpCallResponseBody = 4
	bufVMConfig             = 6
	bufPluginConfig         = 7

	mapRequestHeaders          = 0
	mapResponseHeaders         = 2
	mapHttpCallResponseHeaders = 6

	streamRequest  = 0
	streamResponse = 1

	metricCounter   = 0
	metricGauge     = 1
	metricHistogram = 2
)

func ptr(b []byte) unsafe.Pointer {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Pointer(&b[0])
}

func strPtr(s string) unsafe.Pointer {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Pointer(unsafe.StringData(s))
}

// hostBytes turns memory the host filled through proxy_on_memory_allocate
// into a slice and releases the allocation's pin.
func hostBytes(p unsafe.Pointer, n uint32) []byte {
	vm.unpin(p)
	if p == nil || n == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(p), n)
}

func getBuffer(kind uint32, start, maxSize int) ([]byte, error) {
	var data unsafe.Pointer
	var size uint32
	if err := statusErr(hostGetBufferBytes(kind, uint32(start), uint32(maxSize), unsafe.Pointer(&data), unsafe.Pointer(&size))); err != nil {
		return nil, err
	}
	return hostBytes(data, size), nil
}

func replaceBuffer(kind uint32, b []byte) error {
	return statusErr(hostSetBufferBytes(kind, 0, math.MaxInt32, ptr(b), uint32(len(b))))
}

func getHeaders(kind uint32) ([][2]string, error) {
	var data unsafe.Pointer
	var size uint32
	if err := statusErr(hostGetHeaderMapPairs(kind, unsafe.Pointer(&data), unsafe.Pointer(&size))); err != nil {
		return nil, err
	}
	return decodePairs(hostBytes(data, size))
}

func getHeader(kind uint32, key string) (string, error) {
	var data unsafe.Pointer
	var size uint32
	if err := statusErr(hostGetHeaderMapValue(kind, strPtr(key), uint32(len(key)), unsafe.Pointer(&data), unsafe.Pointer(&size))); err != nil {
		return "", err
	}
	return string(hostBytes(data, size)), nil
}

func replaceHeader(kind uint32, key, value string) error {
	return statusErr(hostReplaceHeaderMapValue(kind, strPtr(key), uint32(len(key)), strPtr(value), uint32(len(value))))
}

func addHeader(kind uint32, key, value string) error {
	return statusErr(hostAddHeaderMapValue(kind, strPtr(key), uint32(len(key)), strPtr(value), uint32(len(value))))
}

func removeHeader(kind uint32, key string) error {
	return statusErr(hostRemoveHeaderMapValue(kind, strPtr(key), uint32(len(key))))
}

// GetVMConfiguration returns vm_config.configuration.
func GetVMConfiguration() ([]byte, error) { return getBuffer(bufVMConfig, 0, math.MaxInt32) }

// GetPluginConfiguration returns the plugin's configuration.
func GetPluginConfiguration() ([]byte, error) { return getBuffer(bufPluginConfig, 0, math.MaxInt32) }

// SetTickPeriodMilliSeconds asks for OnTick every ms milliseconds.
func SetTickPeriodMilliSeconds(ms uint32) error { return statusErr(hostSetTickPeriod(ms)) }

func GetHttpRequestHeaders() ([][2]string, error)     { return getHeaders(mapRequestHeaders) }
func GetHttpRequestHeader(key string) (string, error) { return getHeader(mapRequestHeaders, key) }
func ReplaceHttpRequestHeader(key, value string) error {
	return replaceHeader(mapRequestHeaders, key, value)
}
func AddHttpRequestHeader(key, value string) error { return addHeader(mapRequestHeaders, key, value) }
func RemoveHttpRequestHeader(key string) error     { return removeHeader(mapRequestHeaders, key) }
func GetHttpRequestBody(start, maxSize int) ([]byte, error) {
	return getBuffer(bufRequestBody, start, maxSize)
}
func ReplaceHttpRequestBody(b []byte) error { return replaceBuffer(bufRequestBody, b) }
func ResumeHttpRequest() error              { return statusErr(hostContinueStream(streamRequest)) }

func GetHttpResponseHeaders() ([][2]string, error)     { return getHeaders(mapResponseHeaders) }
func GetHttpResponseHeader(key string) (string, error) { return getHeader(mapResponseHeaders, key) }
func ReplaceHttpResponseHeader(key, value string) error {
	return replaceHeader(mapResponseHeaders, key, value)
}
func AddHttpResponseHeader(key, value string) error { return addHeader(mapResponseHeaders, key, value) }
func RemoveHttpResponseHeader(key string) error     { return removeHeader(mapResponseHeaders, key) }
func GetHttpResponseBody(start, maxSize int) ([]byte, error) {
	return getBuffer(bufResponseBody, start, maxSize)
}
func ResumeHttpResponse() error { return statusErr(hostContinueStream(streamResponse)) }

// SendHttpResponse answers the client from the plugin; return
// types.ActionPause afterwards. gRPCStatus -1 means not gRPC.
func SendHttpResponse(status uint32, headers [][2]string, body []byte, gRPCStatus int32) error {
	return SendHttpResponseDetails(status, "", headers, body, gRPCStatus)
}

// SendHttpResponseDetails is SendHttpResponse with Envoy's response code
// details (%RESPONSE_CODE_DETAILS%, response.code_details), which tell a
// local reply mapper who answered.
func SendHttpResponseDetails(status uint32, details string, headers [][2]string, body []byte, gRPCStatus int32) error {
	h := encodePairs(headers)
	return statusErr(hostSendLocalResponse(status, strPtr(details), uint32(len(details)), ptr(body), uint32(len(body)), ptr(h), uint32(len(h)), gRPCStatus))
}

// DispatchHttpCall sends an HTTP request to the host's cluster; headers
// must hold :method, :path and :authority (Envoy refuses the call without
// them). callBack runs with the response (numHeaders 0: the call failed or
// timed out), on the root context that dispatched it: call this from a
// root context's callback (OnPluginStart, OnTick, or another call's
// callBack). The returned id is the host's token for the call.
func DispatchHttpCall(cluster string, headers [][2]string, body []byte, trailers [][2]string,
	timeoutMillisecond uint32, callBack func(numHeaders, bodySize, numTrailers int)) (uint32, error) {
	h, tr := encodePairs(headers), encodePairs(trailers)
	var token uint32
	if err := statusErr(hostHttpCall(strPtr(cluster), uint32(len(cluster)), ptr(h), uint32(len(h)),
		ptr(body), uint32(len(body)), ptr(tr), uint32(len(tr)), timeoutMillisecond, unsafe.Pointer(&token))); err != nil {
		return 0, err
	}
	vm.callouts[callout{vm.root, token}] = callBack
	return token, nil
}

// GetHttpCallResponseHeaders returns the headers of the HTTP call being
// answered (only within its callback).
func GetHttpCallResponseHeaders() ([][2]string, error) { return getHeaders(mapHttpCallResponseHeaders) }

// GetHttpCallResponseBody returns [start, start+maxSize) of the body of the
// HTTP call being answered (only within its callback).
func GetHttpCallResponseBody(start, maxSize int) ([]byte, error) {
	return getBuffer(bufHttpCallResponseBody, start, maxSize)
}

// GetProperty reads a host attribute, e.g. {"xds", "cluster_name"}.
func GetProperty(path []string) ([]byte, error) {
	if len(path) == 0 {
		return nil, errors.New("proxywasm: empty property path")
	}
	p := encodePath(path)
	var data unsafe.Pointer
	var size uint32
	if err := statusErr(hostGetProperty(ptr(p), uint32(len(p)), unsafe.Pointer(&data), unsafe.Pointer(&size))); err != nil {
		return nil, err
	}
	return hostBytes(data, size), nil
}

func logAt(level uint32, msg string) { hostLog(level, strPtr(msg), uint32(len(msg))) }

func LogTrace(msg string)    { logAt(0, msg) }
func LogDebug(msg string)    { logAt(1, msg) }
func LogInfo(msg string)     { logAt(2, msg) }
func LogWarn(msg string)     { logAt(3, msg) }
func LogError(msg string)    { logAt(4, msg) }
func LogCritical(msg string) { logAt(5, msg) }

// Metrics live in the host (Envoy stats); the guest holds their ids.
type (
	MetricCounter   uint32
	MetricGauge     uint32
	MetricHistogram uint32
)

func defineMetric(kind uint32, name string) uint32 {
	var id uint32
	if err := statusErr(hostDefineMetric(kind, strPtr(name), uint32(len(name)), unsafe.Pointer(&id))); err != nil {
		panic("proxywasm: define metric " + name + ": " + err.Error())
	}
	return id
}

func DefineCounterMetric(name string) MetricCounter {
	return MetricCounter(defineMetric(metricCounter, name))
}
func DefineGaugeMetric(name string) MetricGauge { return MetricGauge(defineMetric(metricGauge, name)) }
func DefineHistogramMetric(name string) MetricHistogram {
	return MetricHistogram(defineMetric(metricHistogram, name))
}

func (m MetricCounter) Increment(n uint64) { hostIncrementMetric(uint32(m), int64(n)) }
func (m MetricCounter) Value() uint64      { return metricValue(uint32(m)) }
func (m MetricGauge) Add(n int64)          { hostIncrementMetric(uint32(m), n) }
func (m MetricGauge) Value() int64         { return int64(metricValue(uint32(m))) }
func (m MetricHistogram) Record(v uint64)  { hostRecordMetric(uint32(m), v) }

func metricValue(id uint32) uint64 {
	var v uint64
	hostGetMetric(id, unsafe.Pointer(&v))
	return v
}

// SetProperty writes a host attribute. Envoy keeps it as filter state
// named "wasm." + the path, readable by route matchers and other filters.
func SetProperty(path []string, value []byte) error {
	if len(path) == 0 {
		return errors.New("proxywasm: empty property path")
	}
	p := encodePath(path)
	return statusErr(hostSetProperty(ptr(p), uint32(len(p)), ptr(value), uint32(len(value))))
}

// CallForeignFunction calls a host-specific function, e.g. Envoy's
// "clear_route_cache".
func CallForeignFunction(name string, arg []byte) ([]byte, error) {
	var data unsafe.Pointer
	var size uint32
	if err := statusErr(hostCallForeignFunction(strPtr(name), uint32(len(name)), ptr(arg), uint32(len(arg)), unsafe.Pointer(&data), unsafe.Pointer(&size))); err != nil {
		return nil, err
	}
	return hostBytes(data, size), nil
}
