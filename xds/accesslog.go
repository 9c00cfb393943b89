package xds

import (
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/detourhq/detour/extproc"
	"github.com/detourhq/detour/policy"
)

// AccessLogName is Envoy's file access logger.
const AccessLogName = "envoy.access_loggers.file"

// accessLogFields are what each line of envoy.access_log holds: enough to
// tell where a request went and why it ended as it did, nothing of the
// prompt or the caller's credentials (bodies and request headers other
// than the request id are not logged).
var accessLogFields = map[string]string{
	"start_time":       "%START_TIME%",
	"method":           "%REQ(:METHOD)%",
	"path":             "%REQ(:PATH)%",
	"request_id":       "%REQ(X-REQUEST-ID)%",
	"status":           "%RESPONSE_CODE%",
	"details":          "%RESPONSE_CODE_DETAILS%",
	"flags":            "%RESPONSE_FLAGS%",
	"duration_ms":      "%DURATION%",
	"first_byte_ms":    "%RESPONSE_DURATION%",
	"backend":          "%RESP(" + extproc.HeaderBackend + ")%",
	"upstream":         "%UPSTREAM_HOST%",
	"cluster":          "%UPSTREAM_CLUSTER%",
	"attempts":         "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
	"upstream_failure": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
	"bytes_received":   "%BYTES_RECEIVED%",
	"bytes_sent":       "%BYTES_SENT%",
}

// accessLogs are the listener's access logs: none unless envoy.access_log
// names a file.
func accessLogs(p *policy.Policy) ([]*accesslogv3.AccessLog, error) {
	if p.Envoy.AccessLog == "" {
		return nil, nil
	}
	fields := make(map[string]*structpb.Value, len(accessLogFields))
	for k, v := range accessLogFields {
		fields[k] = structpb.NewStringValue(v)
	}
	cfg, err := pack(&filev3.FileAccessLog{
		Path: p.Envoy.AccessLog,
		AccessLogFormat: &filev3.FileAccessLog_LogFormat{LogFormat: &corev3.SubstitutionFormatString{
			Format: &corev3.SubstitutionFormatString_JsonFormat{JsonFormat: &structpb.Struct{Fields: fields}},
		}},
	})
	if err != nil {
		return nil, err
	}
	return []*accesslogv3.AccessLog{{Name: AccessLogName, ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: cfg}}}, nil
}
