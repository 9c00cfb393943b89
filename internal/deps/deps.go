//go:build tools

package deps

import (
	_ "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	_ "google.golang.org/grpc"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/prometheus/common/expfmt"
	_ "go.yaml.in/yaml/v3"
	_ "github.com/invopop/jsonschema"
	_ "github.com/tiktoken-go/tokenizer"
)
