package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/detourhq/detour/xds"
)

// grpcReport mirrors the JSON that e2e/internal/xdsclient prints.
type grpcReport struct {
	Targets []struct {
		Target, State string
		RPCError      string `json:"rpc_error"`
	} `json:"targets"`
	Clients []struct {
		Scope, Node string
		Resources   []grpcResource
	} `json:"clients"`
}

type grpcResource struct {
	Type, Name, Version, Status, Error string
	ErrorVersion                       string `json:"error_version"`
	Endpoints                          []string
}

// resources returns what gRPC's xDS client for target holds.
func (r *grpcReport) resources(target string) []grpcResource {
	for _, c := range r.Clients {
		if c.Scope == target {
			return c.Resources
		}
	}
	return nil
}

// buildXDSClient compiles e2e/internal/xdsclient (gRPC-Go's own xDS client)
// into dir. gRPC reads its xDS bootstrap from the environment when its
// first xDS client starts, so the client runs as its own process.
func buildXDSClient(dir string) (string, error) {
	bin := filepath.Join(dir, "xdsclient")
	out, err := exec.Command("go", "build", "-o", bin, "./internal/xdsclient").CombinedOutput()
	if err != nil {
		hint := ""
		if bytes.Contains(out, []byte("missing go.sum entry")) {
			hint = "\n(go.mod lacks what google.golang.org/grpc/xds needs: run `go get google.golang.org/grpc/xds@v1.85.0`)"
		}
		return "", fmt.Errorf("build e2e/internal/xdsclient: %v\n%s%s", err, out, hint)
	}
	return bin, nil
}

// snapshotVersion reads the version detour last gave node from its metrics.
func snapshotVersion(metrics, node string) string {
	m := regexp.MustCompile(`detour_xds_snapshot_info\{node="` + regexp.QuoteMeta(node) + `",version="([^"]+)"\} 1`).FindStringSubmatch(metrics)
	if m == nil {
		return ""
	}
	return m[1]
}

func metricValue(metrics, series string) float64 {
	for _, l := range strings.Split(metrics, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// gRPC-Go's xDS client, an independent consumer of `detour xds`, next to
// the stack's Envoy. What it can take from detour today: the Listener. A
// gRPC channel (xds:///name) starts from an API listener named by its
// target and reaches clusters and endpoints only through it; gRPC-Go has
// no public API that watches a cluster by itself (its xdsclient packages
// are internal). detour serves one socket listener, detour_ingress, for
// Envoy and no API listener, so gRPC:
//   - takes detour_ingress at the version detour gave the Envoy of the same
//     region, and rejects it (as a server-side listener its HTTP filters
//     include ext_proc, which gRPC does not implement by default), which
//     detour counts and logs with gRPC's reason;
//   - gets no answer for a listener named after a backend (xds:///fast);
//   - therefore never asks for a cluster or a load assignment.
//
// For gRPC to resolve a backend's endpoints detour would have to serve,
// per backend, an API listener and a route configuration to its cluster,
// weigh its localities, and answer requests for a subset of the listeners
// (see the report of the change that added this test).
func TestGRPCXDSClient(t *testing.T) {
	built := make(chan error, 1)
	var bin string
	go func() {
		var err error
		bin, err = buildXDSClient(t.TempDir())
		built <- err
	}()
	s := startStack(t, stackOptions{})
	if err := <-built; err != nil {
		t.Fatal(err)
	}

	const node = "grpc-consumer"
	bootstrap, err := json.Marshal(map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri":      s.XDSAddr,
			"channel_creds":   []any{map[string]any{"type": "insecure"}},
			"server_features": []string{"xds_v3"},
		}},
		"node": map[string]any{"id": node},
	})
	if err != nil {
		t.Fatal(err)
	}
	ingress, backend := "xds:///"+xds.ListenerName, "xds:///"+s.opts.Backends[0].Name
	cmd := exec.Command(bin, "-target", ingress, "-target", backend, "-wait", "2s")
	cmd.Env = append(os.Environ(), "GRPC_XDS_BOOTSTRAP_CONFIG="+string(bootstrap))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	out, err := cmd.Output()
	ran := time.Since(start)
	if err != nil {
		t.Fatalf("xdsclient: %v\n%s", err, stderr.String())
	}
	var rep grpcReport
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("xdsclient output: %v\n%s", err, out)
	}
	t.Logf("gRPC's view after %s:\n%s", ran.Round(time.Millisecond), out)
	metrics := s.XDSMetrics()

	// gRPC's client got detour's listener, at the version detour computed
	// for it, the same as the stack's Envoy got (same policy, same region:
	// the version is a digest of the resources).
	version := snapshotVersion(metrics, node)
	if version == "" {
		t.Fatalf("detour has no snapshot for gRPC's node %s:\n%s", node, grepLines(metrics, "snapshot_info"))
	}
	if envoyVersion := snapshotVersion(metrics, "e2e-"+t.Name()); envoyVersion != version {
		t.Errorf("gRPC got version %s, the Envoy of the same region %s", version, envoyVersion)
	}
	res := rep.resources(ingress)
	if len(res) != 1 || res[0].Type != "listener" || res[0].Name != xds.ListenerName {
		t.Fatalf("gRPC's client for %s holds %+v, want the listener %s", ingress, res, xds.ListenerName)
	}
	l := res[0]
	if l.Status != "NACKED" || l.ErrorVersion != version {
		t.Errorf("listener %s: %s at version %q, want NACKED at detour's version %s", l.Name, l.Status, l.ErrorVersion, version)
	}
	if !strings.Contains(l.Error, "ext_proc") {
		t.Errorf("gRPC's reason %q does not name the ext_proc filter", l.Error)
	}

	// detour saw the rejection: counted by type and logged with the reason.
	nacks := metricValue(metrics, `detour_xds_nacks_total{type="listener"}`)
	t.Logf("detour counted %v listener NACKs", nacks)
	if nacks < 1 {
		t.Errorf("detour did not count gRPC's NACK:\n%s", grepLines(metrics, "nacks"))
	}
	log := s.xdsLog.String()
	if !strings.Contains(log, "envoy rejected an update") || !strings.Contains(log, "node="+node) || !strings.Contains(log, "no filter implementation found") {
		t.Errorf("detour did not log gRPC's NACK with its node and reason:\n%s", tail(s.xdsLog, 10))
	}
	// A rejected version must not be sent again until it changes: gRPC NACKs
	// every copy, so resending makes a loop (TestADSNACKedVersionNotResent
	// in xds/server_test.go).
	if nacks > 5 {
		t.Errorf("detour sent the rejected listener again and again: %v NACKs from one client in %s", nacks, ran.Round(time.Millisecond))
	}

	// The channel cannot resolve: no API listener.
	for _, tr := range rep.Targets {
		if tr.State == "READY" || tr.RPCError == "" {
			t.Errorf("%s: state %s, RPC error %q; want a failure (detour serves no API listener)", tr.Target, tr.State, tr.RPCError)
		}
	}
	// A backend's name is no listener detour serves: never answered.
	res = rep.resources(backend)
	if len(res) != 1 || res[0].Type != "listener" || res[0].Status != "REQUESTED" {
		t.Errorf("gRPC's client for %s holds %+v, want the listener requested and unanswered", backend, res)
	}
	// So gRPC never gets to clusters or endpoints.
	for _, c := range rep.Clients {
		for _, r := range c.Resources {
			if r.Type != "listener" {
				t.Errorf("%s: gRPC holds %s %s (%s): detour now serves something gRPC can follow; extend this test to resolve the endpoints", c.Scope, r.Type, r.Name, r.Status)
			}
		}
	}
}
