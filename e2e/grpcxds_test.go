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

	"github.com/detourhq/detour/policy"
	"github.com/detourhq/detour/xds"
)

// grpcReport mirrors the JSON that e2e/internal/xdsclient prints.
type grpcReport struct {
	Targets []struct {
		Target, State string
		RPCError      string `json:"rpc_error"`
		Dialled       []string
	} `json:"targets"`
	Clients []struct {
		Scope, Node string
		Resources   []grpcResource
	} `json:"clients"`
}

type grpcResource struct {
	Type, Name, Version, Status, Error string
	ErrorVersion                       string `json:"error_version"`
	Refs, Endpoints                    []string
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

// grpcVersion is the version detour gives a gRPC client of region for the
// policy at path: the same on every replica.
func grpcVersion(t *testing.T, path, region string) string {
	t.Helper()
	p, err := policy.LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	r, err := xds.BuildGRPC(p, region)
	if err != nil {
		t.Fatal(err)
	}
	v, err := xds.Version(r)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// dialled returns the addresses target's channel connected to.
func (r *grpcReport) dialled(target string) []string {
	for _, t := range r.Targets {
		if t.Target == target {
			return t.Dialled
		}
	}
	return nil
}

// gRPC-Go's xDS client, an independent consumer of `detour xds`, next to
// the stack's Envoy: a gRPC channel to xds:///fast resolves the backend
// fast through detour, as any proxyless gRPC service would.
//
// A gRPC channel (xds:///name) starts from an API listener named by its
// target and reaches clusters and endpoints only through it; gRPC-Go has
// no public API that watches a cluster by itself (its xdsclient packages
// are internal). detour tells gRPC clients from Envoys by their node
// (user agent "gRPC Go") and serves them, per backend, an API listener
// named after it, a route configuration to its cluster, the cluster and
// its load assignment, and not the Envoy listener with its ext_proc filter
// (which gRPC would reject). The test shows that gRPC:
//   - takes all four resources of fast (ACKED, at the version detour
//     computed for a gRPC client of its region) and rejects nothing;
//   - resolves fast to exactly fast's endpoints, its own region's at
//     priority 0, and its channel dials fast's near endpoint first (the
//     simulated providers speak HTTP/1.1, not gRPC, so no call succeeds:
//     where the channel connects is the proof).
//
// A name detour does not serve is answered at once without it (gRPC
// subscribes by name, and the cache must not wait for every name to
// exist), but gRPC-Go only calls a name it never saw missing after a 15 s
// timer, so that case is tested against a raw stream in xds/
// (TestADSGRPCUnknownNameDoesNotStall) rather than here.
func TestGRPCXDSClient(t *testing.T) {
	built := make(chan error, 1)
	var bin string
	go func() {
		var err error
		bin, err = buildXDSClient(t.TempDir())
		built <- err
	}()
	backends := quickstartBackends()
	backends[0].Region, backends[0].FarRegion = "near", "far"
	s := startStack(t, stackOptions{Backends: backends, Region: "near"})
	if err := <-built; err != nil {
		t.Fatal(err)
	}
	fast := s.opts.Backends[0]

	const node = "grpc-consumer"
	bootstrap, err := json.Marshal(map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri":      s.XDSAddr,
			"channel_creds":   []any{map[string]any{"type": "insecure"}},
			"server_features": []string{"xds_v3"},
		}},
		"node": map[string]any{"id": node, "locality": map[string]any{"region": "near"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	target := "xds:///" + fast.Name
	cmd := exec.Command(bin, "-target", target, "-wait", "10s")
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

	// The version detour gave gRPC's node: a digest of the gRPC resources
	// for its region, not the Envoy's (other resources, other version).
	version := snapshotVersion(metrics, node)
	if version == "" {
		t.Fatalf("detour has no snapshot for gRPC's node %s:\n%s", node, grepLines(metrics, "snapshot_info"))
	}
	envoyVersion := snapshotVersion(metrics, "e2e-"+t.Name())
	if envoyVersion == "" || envoyVersion == version {
		t.Errorf("gRPC got version %s, the Envoy %q: want two versions of two sets of resources", version, envoyVersion)
	}
	if want := grpcVersion(t, s.policyPath, "near"); version != want {
		t.Errorf("gRPC's node got version %s, want %s (the digest of xds.BuildGRPC for the policy and region near)", version, want)
	}
	t.Logf("detour's version for gRPC's node: %s (the Envoy's: %s)", version, envoyVersion)

	// Listener → route → cluster → load assignment, all fast's, each
	// accepted at detour's version.
	want := map[string][]string{
		"listener": {"route " + fast.Name},
		"route":    {"cluster " + fast.Name},
		"cluster":  {"endpoint " + fast.Name},
		"endpoint": nil,
	}
	got := map[string]grpcResource{}
	for _, r := range rep.resources(target) {
		got[r.Type] = r
		if _, ok := want[r.Type]; !ok || r.Name != fast.Name {
			t.Errorf("gRPC holds %s %s (%s) for %s: want only fast's listener, route, cluster and endpoints", r.Type, r.Name, r.Status, target)
		}
	}
	for _, typ := range []string{"listener", "route", "cluster", "endpoint"} {
		r, ok := got[typ]
		switch {
		case !ok:
			t.Errorf("gRPC did not get %s's %s", fast.Name, typ)
		case r.Status != "ACKED" || r.Version != version:
			t.Errorf("%s %s: %s at version %q (error %q), want ACKED at detour's version %s", typ, r.Name, r.Status, r.Version, r.Error, version)
		case fmt.Sprint(r.Refs) != fmt.Sprint(want[typ]):
			t.Errorf("%s %s leads gRPC to %v, want %v", typ, r.Name, r.Refs, want[typ])
		}
	}

	// The endpoints gRPC resolved are fast's, the near one at priority 0
	// for a client in the near region.
	eps := map[string]string{} // address → "region=R priority=P"
	for _, e := range got["endpoint"].Endpoints {
		addr, rest, _ := strings.Cut(e, " ")
		eps[addr] = rest
	}
	wantEps := map[string]string{
		fast.Addr:    "region=near priority=0 weight=1",
		fast.FarAddr: "region=far priority=1 weight=1",
	}
	if fmt.Sprint(eps) != fmt.Sprint(wantEps) {
		t.Errorf("gRPC resolved %s to %v, want fast's endpoints %v", target, eps, wantEps)
	}
	// And the channel went there: its first connection to the near
	// endpoint, every one to one of fast's.
	dialled := rep.dialled(target)
	if len(dialled) == 0 || dialled[0] != fast.Addr {
		t.Errorf("the channel dialled %v, want fast's near endpoint %s first", dialled, fast.Addr)
	}
	for _, a := range dialled {
		if _, ok := wantEps[a]; !ok {
			t.Errorf("the channel dialled %s, not one of fast's endpoints %v", a, wantEps)
		}
	}

	// detour counted no NACK (of gRPC's, or of the Envoy's) and logged the
	// client as gRPC.
	for _, typ := range []string{"listener", "route", "cluster", "endpoint"} {
		if n := metricValue(metrics, `detour_xds_nacks_total{type="`+typ+`"}`); n != 0 {
			t.Errorf("detour counted %v %s NACKs:\n%s", n, typ, tail(s.xdsLog, 10))
		}
	}
	log := s.xdsLog.String()
	if !strings.Contains(log, "node="+node+" client=grpc") {
		t.Errorf("detour did not log gRPC's node as a gRPC client:\n%s", tail(s.xdsLog, 10))
	}
}
