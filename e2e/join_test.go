package e2e

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/detourhq/detour/envoy"
	"github.com/detourhq/detour/sim"
)

// An Envoy with its own static config (its own listeners and routes) joins
// detour with the pieces `detour bootstrap --snippet` prints: its other
// traffic is untouched, its LLM listener routes and fails over through
// detour, and it takes clusters and routes from detour's control plane.
func TestJoinExistingEnvoy(t *testing.T) {
	s := startStack(t, stackOptions{NoEnvoy: true})
	out, err := exec.Command(detourBin, "bootstrap", "--snippet", "--policy", s.policyPath).Output()
	if err != nil {
		t.Fatalf("detour bootstrap --snippet: %v", err)
	}
	var sn map[string]any
	if err := yaml.Unmarshal(out, &sn); err != nil {
		t.Fatalf("the snippet is not YAML: %v\n%s", err, out)
	}
	for _, k := range []string{"http_filter", "rds", "early_header_mutation", "local_reply_config", "cluster", "dynamic_resources"} {
		if sn[k] == nil {
			t.Fatalf("snippet lacks %s", k)
		}
	}

	appAddr, llmAddr, admin := freeAddr(t), freeAddr(t), freeAddr(t)
	sock := func(addr string) map[string]any {
		host, port, _ := strings.Cut(addr, ":")
		return map[string]any{"socket_address": map[string]any{"address": host, "port_value": json.Number(port)}}
	}
	router := map[string]any{"name": "envoy.filters.http.router", "typed_config": map[string]any{
		"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
	hcm := func(extra map[string]any) map[string]any {
		c := map[string]any{"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"}
		for k, v := range extra {
			c[k] = v
		}
		return map[string]any{"filters": []any{map[string]any{"name": "envoy.filters.network.http_connection_manager", "typed_config": c}}}
	}
	// The user's own config: an app listener of theirs, and the listener
	// for LLM traffic built from the snippet.
	cfg := map[string]any{
		"node":  map[string]any{"id": "user-envoy", "cluster": "user"},
		"admin": map[string]any{"address": sock(admin)},
		"static_resources": map[string]any{
			"listeners": []any{
				map[string]any{"name": "app", "address": sock(appAddr), "filter_chains": []any{hcm(map[string]any{
					"stat_prefix": "app",
					"route_config": map[string]any{"virtual_hosts": []any{map[string]any{
						"name": "app", "domains": []any{"*"},
						"routes": []any{map[string]any{"match": map[string]any{"prefix": "/"},
							"direct_response": map[string]any{"status": 200, "body": map[string]any{"inline_string": "the user's own app"}}}},
					}}},
					"http_filters": []any{router},
				})}},
				map[string]any{"name": "llm", "address": sock(llmAddr), "filter_chains": []any{hcm(map[string]any{
					"stat_prefix":                      "llm",
					"rds":                              sn["rds"],
					"early_header_mutation_extensions": []any{sn["early_header_mutation"]},
					"local_reply_config":               sn["local_reply_config"],
					"http_filters":                     []any{sn["http_filter"], router},
				})}},
			},
			"clusters": []any{sn["cluster"]},
		},
		"dynamic_resources": sn["dynamic_resources"],
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "user-envoy.json")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := envoy.Validate(context.Background(), envoyBin, path); err != nil {
		t.Fatalf("the assembled user config: %v", err)
	}
	var log logBuffer
	p, err := envoy.Start(context.Background(), envoy.Options{Bin: envoyBin, ConfigPath: path, AdminAddr: admin,
		Concurrency: 1, Stdout: &log, Stderr: &log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop(5 * time.Second)
		if t.Failed() {
			t.Logf("user envoy log:\n%s", log.String())
		}
	})
	if err := p.WaitReady(context.Background(), 30*time.Second); err != nil {
		t.Fatal(err)
	}

	resp, err := client.Get("http://" + appAddr + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "the user's own app" {
		t.Errorf("the user's own listener answered %q", body)
	}

	llm := "http://" + llmAddr + "/v1/chat/completions"
	r := post(t, llm, chat("auto", nil, user("hi")), "x-detour-backend", "vision")
	if r.Status != 200 || r.Header.Get("x-sim-name") != "fast" || r.Header.Get("x-detour-backend") != "fast" {
		t.Fatalf("LLM listener: %d from %q (x-detour-backend %q): %s", r.Status, r.Header.Get("x-sim-name"), r.Header.Get("x-detour-backend"), r.Body)
	}
	s.Sim("fast").SetFault(sim.Fault{Status: 503})
	r = post(t, llm, chat("auto", nil, user("hi")))
	if r.Status != 200 || r.Header.Get("x-sim-name") != "fast-b" {
		t.Fatalf("failover through the joined Envoy: %d from %q", r.Status, r.Header.Get("x-sim-name"))
	}
	assertOpenAIError(t, post(t, llm, chat("gpt-9", nil, user("hi"))), 404, "model_not_found")
}
