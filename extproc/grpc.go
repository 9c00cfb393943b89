package extproc

import (
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
)

// GRPCOptions are the server options every detour gRPC server uses: bounded
// streams, keepalives that detect a dead Envoy, and room for the largest
// body the policy admits.
func GRPCOptions(maxMsgBytes int) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxConcurrentStreams(10000),
		grpc.MaxRecvMsgSize(maxMsgBytes),
		grpc.MaxSendMsgSize(maxMsgBytes),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		// Envoy opens one stream per request on a few connections: large
		// windows keep a 1 MB body from stalling on flow control.
		grpc.InitialWindowSize(1 << 20),
		grpc.InitialConnWindowSize(8 << 20),
	}
}

// NewGRPCServer registers s and a gRPC health service on a new gRPC server.
// The health service reports SERVING under "" and the ext_proc service name.
func NewGRPCServer(s *Server, maxMsgBytes int) (*grpc.Server, *health.Server) {
	g := grpc.NewServer(GRPCOptions(maxMsgBytes)...)
	extprocv3.RegisterExternalProcessorServer(g, s)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(extprocv3.ExternalProcessor_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(g, hs)
	return g, hs
}
