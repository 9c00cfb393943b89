package plugin

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/detourhq/detour/demote"
)

// attemptOn plays upstream attempt n of request id on cluster, as wasm
// routing sends it (Envoy's x-envoy-attempt-count; an ext_proc decision
// would also name the backend on the first).
func attemptOn(t *testing.T, host proxytest.HostEmulator, id, cluster string, n int) {
	t.Helper()
	h := [][2]string{{":path", "/v1/chat/completions"}, {"x-request-id", id}, {"x-envoy-attempt-count", itoa(n)}}
	host.SetProperty([]string{"xds", "cluster_name"}, []byte(cluster))
	ctx := host.InitializeHttpContext()
	if a := host.CallOnRequestHeaders(ctx, h, false); a != types.ActionContinue {
		t.Fatalf("attempt headers: %v", a)
	}
	host.CompleteHttpContext(ctx)
}

// In wasm routing, the upstream role's attempts demote a backend whose
// attempts are all retried elsewhere, and the router role of the same VM
// then sends requests to the next backend first, but for one in three, a
// trial; with no controller at all.
func TestLocalDemotionInTheVM(t *testing.T) {
	vm := NewVM(func() int64 { return 1e9 })
	_, reset := startIn(t, vm, routerConfig(nil), nil)
	reset()
	if vm.demote == nil {
		t.Fatal("the router role did not give the VM a tracker")
	}

	up, _ := json.Marshal(Config{Role: RoleUpstream, Models: map[string]string{"fast": "fast-8k", "long": "long-context-200k"}})
	host, reset := startIn(t, vm, up, nil)
	for i := range demote.MinMoves {
		id := fmt.Sprint("req-", i)
		attemptOn(t, host, id, "fast", 1)
		attemptOn(t, host, id, "long", 2)
	}
	if n, _ := host.GetCounterMetric(statDemotions + ".backend.fast"); n != 1 {
		t.Errorf("%s{fast} = %d, want 1", statDemotions, n)
	}
	if logs := strings.Join(host.GetWarnLogs(), "\n"); !strings.Contains(logs, "backend fast demoted locally") {
		t.Errorf("no warning for the demotion: %q", logs)
	}
	reset()

	host, reset = startIn(t, vm, routerConfig(nil), nil)
	defer reset()
	var direct, trials int
	for range 3 * 10 {
		order, r := decideN(t, host, "auto", 2)
		switch {
		case r != nil:
			t.Fatalf("local reply %+v", r)
		case strings.Join(order, ",") == "long,fast":
			direct++
		case strings.Join(order, ",") == "fast,long":
			trials++
		default:
			t.Fatalf("order %v", order)
		}
	}
	if trials != 10 || direct != 20 {
		t.Errorf("%d decisions put fast first (trials), %d long; want 10 and 20", trials, direct)
	}
}

// With ext_proc routing no router role runs in the VM: the upstream role
// observes nothing (the processor demotes).
func TestUpstreamAloneDoesNotDemote(t *testing.T) {
	vm := NewVM(func() int64 { return 1e9 })
	up, _ := json.Marshal(Config{Role: RoleUpstream, Models: map[string]string{"fast": "fast-8k", "long": "long-context-200k"}})
	host, reset := startIn(t, vm, up, nil)
	defer reset()
	for i := range 2 * demote.MinMoves {
		id := fmt.Sprint("req-", i)
		attemptOn(t, host, id, "fast", 1)
		attemptOn(t, host, id, "long", 2)
	}
	if vm.demote != nil {
		t.Error("a tracker without a router role")
	}
	if n, _ := host.GetCounterMetric(statDemotions + ".backend.fast"); n != 0 {
		t.Errorf("%s{fast} = %d, want 0", statDemotions, n)
	}
}
