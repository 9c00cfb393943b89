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
	h := [][2]string{{":path", "/v1/chat/completions"}, {"x-request-id", id}, {AttemptCountHeader, itoa(n)}}
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

// An upstream role in a VM without a router role (should Envoy ever put
// them in different VMs again) keeps no tracker: nothing would read it.
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

// upstreamIn starts an upstream role (every backend of healthTable) in vm.
func upstreamIn(t *testing.T, vm *VM) (proxytest.HostEmulator, func()) {
	t.Helper()
	up, _ := json.Marshal(Config{Role: RoleUpstream, Models: map[string]string{"fast": "fast-8k", "mid": "mid-32k", "long": "long-context-200k"}})
	return startIn(t, vm, up, nil)
}

// playMoves plays n requests whose first attempt on from is retried on to.
func playMoves(t *testing.T, host proxytest.HostEmulator, prefix, from, to string, n int) {
	t.Helper()
	for i := range n {
		id := fmt.Sprint(prefix, i)
		attemptOn(t, host, id, from, 1)
		attemptOn(t, host, id, to, 2)
	}
}

// The demotion in the plugin ends as the rule says: when the backend's
// trials answer again (a log line), and it never starts for a backend the
// router's view already ranks below HEALTHY.
func TestLocalDemotionInTheVMEnds(t *testing.T) {
	t.Run("trials answer again", func(t *testing.T) {
		vm := NewVM(func() int64 { return 1e9 })
		_, reset := startIn(t, vm, healthConfig(nil), nil)
		reset()
		host, reset := upstreamIn(t, vm)
		defer reset()
		playMoves(t, host, "req-", "fast", "mid", demote.MinMoves)
		if vm.demote.Active() != 1 {
			t.Fatalf("%d demotions, want fast's", vm.demote.Active())
		}
		for i := range demote.TrialsToEnd {
			attemptOn(t, host, fmt.Sprint("trial-", i), "fast", 1)
		}
		if vm.demote.Active() != 0 {
			t.Errorf("still demoted after %d clean trials", demote.TrialsToEnd)
		}
		if logs := strings.Join(host.GetInfoLogs(), "\n"); !strings.Contains(logs, "backend fast answers again") {
			t.Errorf("no log line for the end: %q", logs)
		}
	})
	t.Run("the view already ranks it low", func(t *testing.T) {
		vm := NewVM(func() int64 { return 1e9 })
		router, reset := startIn(t, vm, healthConfig(nil), nil)
		serve(t, router, states(7, map[string]string{"fast": "DEGRADED"}))
		reset()
		host, reset := upstreamIn(t, vm)
		defer reset()
		playMoves(t, host, "req-", "fast", "mid", 2*demote.MinMoves)
		if vm.demote.Active() != 0 {
			t.Error("demoted a backend the view already ranks DEGRADED")
		}
		if n, _ := host.GetCounterMetric(statDemotions + ".backend.fast"); n != 0 {
			t.Errorf("%s{fast} = %d, want 0", statDemotions, n)
		}
	})
}

// A request the ext_proc router decided names its backend in
// x-detour-backend on every attempt whose headers nothing stripped: a
// retry elsewhere still counts as a move away from it.
func TestLocalDemotionRoutedHeader(t *testing.T) {
	vm := NewVM(func() int64 { return 1e9 })
	_, reset := startIn(t, vm, healthConfig(nil), nil)
	reset()
	host, reset := upstreamIn(t, vm)
	defer reset()
	for i := range demote.MinMoves {
		for _, cluster := range []string{"fast", "mid"} {
			h := [][2]string{{":path", "/v1/chat/completions"}, {"x-request-id", fmt.Sprint("r", i)}, {HeaderBackend, "fast"}}
			host.SetProperty([]string{"xds", "cluster_name"}, []byte(cluster))
			ctx := host.InitializeHttpContext()
			host.CallOnRequestHeaders(ctx, h, false)
			host.CompleteHttpContext(ctx)
		}
	}
	if vm.demote.Active() != 1 {
		t.Errorf("%d demotions, want fast's", vm.demote.Active())
	}
}

// The observing instance in a keyed backend's own filters counts its
// attempts and changes nothing: no header removed, the body untouched.
func TestObserveOnly(t *testing.T) {
	vm := NewVM(func() int64 { return 1e9 })
	_, reset := startIn(t, vm, healthConfig(nil), nil)
	reset()
	obs, _ := json.Marshal(Config{Role: RoleUpstream, Backend: "fast", ObserveOnly: true})
	host, reset := startIn(t, vm, obs, nil)
	defer reset()
	for i := range demote.MinMoves {
		id := fmt.Sprint("req-", i)
		ctx := host.InitializeHttpContext()
		h := [][2]string{{":path", "/v1/chat/completions"}, {"x-request-id", id}, {AttemptCountHeader, "1"}, {HeaderBackend, "fast"}, {HeaderModel, "fast-8k"}}
		host.CallOnRequestHeaders(ctx, h, false)
		for _, k := range []string{HeaderBackend, HeaderModel} {
			if _, ok := header(host.GetCurrentRequestHeaders(ctx), k); !ok {
				t.Fatalf("%s removed: the processor's stage after needs it", k)
			}
		}
		body := []byte(`{"model":"auto","messages":[]}`)
		if a := host.CallOnRequestBody(ctx, body, true); a != types.ActionContinue || string(host.GetCurrentRequestBody(ctx)) != string(body) {
			t.Fatalf("body: %v %s", a, host.GetCurrentRequestBody(ctx))
		}
		host.CompleteHttpContext(ctx)
		// Its retry, seen by the router's upstream role in the same VM.
		vm.demote.Observe(vm.now(), id, "", "mid")
	}
	if vm.demote.Active() != 1 {
		t.Errorf("%d demotions, want fast's", vm.demote.Active())
	}
	if _, err := ParseConfig([]byte(`{"role":"upstream","observe_only":true}`)); err == nil {
		t.Error("observe_only without a backend accepted")
	}
}
