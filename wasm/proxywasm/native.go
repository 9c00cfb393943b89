//go:build !wasip1

package proxywasm

import (
	sdk "github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

// Natively every call goes to the SDK, so its proxytest host emulator can
// drive the plugin in `go test`.

func SetVMContext(c types.VMContext) { sdk.SetVMContext(c) }

func GetVMConfiguration() ([]byte, error)         { return sdk.GetVMConfiguration() }
func GetPluginConfiguration() ([]byte, error)     { return sdk.GetPluginConfiguration() }
func SetTickPeriodMilliSeconds(ms uint32) error   { return sdk.SetTickPeriodMilliSeconds(ms) }
func GetHttpRequestHeaders() ([][2]string, error) { return sdk.GetHttpRequestHeaders() }
func GetHttpRequestHeader(key string) (string, error) {
	return sdk.GetHttpRequestHeader(key)
}
func ReplaceHttpRequestHeader(key, value string) error {
	return sdk.ReplaceHttpRequestHeader(key, value)
}
func AddHttpRequestHeader(key, value string) error { return sdk.AddHttpRequestHeader(key, value) }
func RemoveHttpRequestHeader(key string) error     { return sdk.RemoveHttpRequestHeader(key) }
func GetHttpRequestBody(start, maxSize int) ([]byte, error) {
	return sdk.GetHttpRequestBody(start, maxSize)
}
func ReplaceHttpRequestBody(b []byte) error        { return sdk.ReplaceHttpRequestBody(b) }
func ResumeHttpRequest() error                     { return sdk.ResumeHttpRequest() }
func GetHttpResponseHeaders() ([][2]string, error) { return sdk.GetHttpResponseHeaders() }
func GetHttpResponseHeader(key string) (string, error) {
	return sdk.GetHttpResponseHeader(key)
}
func ReplaceHttpResponseHeader(key, value string) error {
	return sdk.ReplaceHttpResponseHeader(key, value)
}
func AddHttpResponseHeader(key, value string) error { return sdk.AddHttpResponseHeader(key, value) }
func RemoveHttpResponseHeader(key string) error     { return sdk.RemoveHttpResponseHeader(key) }
func GetHttpResponseBody(start, maxSize int) ([]byte, error) {
	return sdk.GetHttpResponseBody(start, maxSize)
}
func ResumeHttpResponse() error { return sdk.ResumeHttpResponse() }
func SendHttpResponse(status uint32, headers [][2]string, body []byte, gRPCStatus int32) error {
	return sdk.SendHttpResponse(status, headers, body, gRPCStatus)
}
func SendHttpResponseDetails(status uint32, _ string, headers [][2]string, body []byte, gRPCStatus int32) error {
	return sdk.SendHttpResponse(status, headers, body, gRPCStatus)
}
func GetProperty(path []string) ([]byte, error) { return sdk.GetProperty(path) }

func DispatchHttpCall(cluster string, headers [][2]string, body []byte, trailers [][2]string,
	timeoutMillisecond uint32, callBack func(numHeaders, bodySize, numTrailers int)) (uint32, error) {
	return sdk.DispatchHttpCall(cluster, headers, body, trailers, timeoutMillisecond, callBack)
}
func GetHttpCallResponseHeaders() ([][2]string, error) { return sdk.GetHttpCallResponseHeaders() }
func GetHttpCallResponseBody(start, maxSize int) ([]byte, error) {
	return sdk.GetHttpCallResponseBody(start, maxSize)
}

func LogTrace(msg string)    { sdk.LogTrace(msg) }
func LogDebug(msg string)    { sdk.LogDebug(msg) }
func LogInfo(msg string)     { sdk.LogInfo(msg) }
func LogWarn(msg string)     { sdk.LogWarn(msg) }
func LogError(msg string)    { sdk.LogError(msg) }
func LogCritical(msg string) { sdk.LogCritical(msg) }

type (
	MetricCounter   = sdk.MetricCounter
	MetricGauge     = sdk.MetricGauge
	MetricHistogram = sdk.MetricHistogram
)

func DefineCounterMetric(name string) MetricCounter     { return sdk.DefineCounterMetric(name) }
func DefineGaugeMetric(name string) MetricGauge         { return sdk.DefineGaugeMetric(name) }
func DefineHistogramMetric(name string) MetricHistogram { return sdk.DefineHistogramMetric(name) }

func SetProperty(path []string, value []byte) error { return sdk.SetProperty(path, value) }
func CallForeignFunction(name string, arg []byte) ([]byte, error) {
	return sdk.CallForeignFunction(name, arg)
}
