package xds

import (
	"strings"
	"testing"

	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
)

func TestAccessLog(t *testing.T) {
	p := quickstart(t)
	if logs := hcmOf(t, mustBuild(t, p).Listeners[0]).AccessLog; len(logs) != 0 {
		t.Fatalf("access log without envoy.access_log: %v", logs)
	}

	p.Envoy.AccessLog = "/var/log/detour/access.log"
	logs := hcmOf(t, mustBuild(t, p).Listeners[0]).AccessLog
	if len(logs) != 1 || logs[0].Name != AccessLogName {
		t.Fatalf("access logs %v, want one %s", logs, AccessLogName)
	}
	f := unpack(t, logs[0].GetTypedConfig(), &filev3.FileAccessLog{})
	if f.Path != p.Envoy.AccessLog {
		t.Errorf("path %q, want %q", f.Path, p.Envoy.AccessLog)
	}
	fields := f.GetLogFormat().GetJsonFormat().GetFields()
	for _, k := range []string{"status", "flags", "details", "duration_ms", "backend", "upstream", "attempts", "request_id"} {
		if _, ok := fields[k]; !ok {
			t.Errorf("access log has no %q field", k)
		}
	}
	// Nothing of the prompt or the caller's credentials.
	for k, v := range fields {
		s := strings.ToUpper(v.GetStringValue())
		for _, bad := range []string{"AUTHORIZATION", "API-KEY", "BODY", "%REQ(X-DETOUR-PROMPT"} {
			if strings.Contains(s, bad) {
				t.Errorf("field %s logs %s", k, v.GetStringValue())
			}
		}
	}
}
