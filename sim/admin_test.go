package sim

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

func TestAdminFaults(t *testing.T) {
	s := startSim(t, Config{Name: "adm"})
	c := newClient(t)
	zero := `{"status":0,"rate":0,"retry_after_s":0,"latency_ms":0,"ttft_ms":0,"tokens_per_second":0,"drop_after_tokens":0,"reset":false,"refuse":false}`
	steps := []struct {
		name       string
		method     string
		body       string
		wantStatus int
		wantBody   string // compact JSON; "" = don't check
		wantIn     string // substring of an error message
	}{
		{"initial", "GET", "", 200, zero, ""},
		{"set", "POST", `{"status":503,"retry_after_s":2}`, 200,
			`{"status":503,"rate":1,"retry_after_s":2,"latency_ms":0,"ttft_ms":0,"tokens_per_second":0,"drop_after_tokens":0,"reset":false,"refuse":false}`, ""},
		{"get after set", "GET", "", 200,
			`{"status":503,"rate":1,"retry_after_s":2,"latency_ms":0,"ttft_ms":0,"tokens_per_second":0,"drop_after_tokens":0,"reset":false,"refuse":false}`, ""},
		{"replace keeps rate", "POST", `{"latency_ms":5,"rate":0.5}`, 200,
			`{"status":0,"rate":0.5,"retry_after_s":0,"latency_ms":5,"ttft_ms":0,"tokens_per_second":0,"drop_after_tokens":0,"reset":false,"refuse":false}`, ""},
		{"unknown field", "POST", `{"latency":5}`, 400, "", "unknown field"},
		{"bad status", "POST", `{"status":200}`, 400, "", "status 200"},
		{"bad rate", "POST", `{"rate":2}`, 400, "", "rate"},
		{"negative latency", "POST", `{"latency_ms":-1}`, 400, "", "latency_ms"},
		{"not JSON", "POST", `{`, 400, "", "invalid fault JSON"},
		{"empty body", "POST", ``, 400, "", "empty body"},
		{"trailing data", "POST", `{} {}`, 400, "", "unexpected data"},
		{"rejected POSTs leave the fault", "GET", "", 200,
			`{"status":0,"rate":0.5,"retry_after_s":0,"latency_ms":5,"ttft_ms":0,"tokens_per_second":0,"drop_after_tokens":0,"reset":false,"refuse":false}`, ""},
		{"clear", "DELETE", "", 200, zero, ""},
		{"get after clear", "GET", "", 200, zero, ""},
		{"wrong method", "PUT", `{}`, 405, "", "not allowed"},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			r := call(t, c, st.method, adminURL(s, "/_sim/faults"), st.body, nil)
			if r.status != st.wantStatus {
				t.Fatalf("status %d, want %d: %s", r.status, st.wantStatus, r.body)
			}
			if r.header.Get("x-sim-name") != "adm" {
				t.Errorf("x-sim-name = %q", r.header.Get("x-sim-name"))
			}
			if st.wantBody != "" {
				if got := compactJSON(t, string(r.body)); got != st.wantBody {
					t.Errorf("body\n got %s\nwant %s", got, st.wantBody)
				}
			}
			if st.wantIn != "" {
				if msg, _ := errorOf(t, r)["message"].(string); !strings.Contains(msg, st.wantIn) {
					t.Errorf("message %q lacks %q", msg, st.wantIn)
				}
			}
		})
	}
	// The Go API sees what the admin API set.
	call(t, c, "POST", adminURL(s, "/_sim/faults"), `{"ttft_ms":10}`, nil)
	if f := s.Fault(); f.TTFTMS != 10 || f.Rate != 1 {
		t.Errorf("Fault() = %+v", f)
	}
}

func TestAdminStatsAndRequests(t *testing.T) {
	const key = "sk-very-secret"
	const prompt = "my secret prompt text"
	s := startSim(t, Config{APIKey: key})
	c := newClient(t)
	auth := map[string]string{
		"Authorization":         "Bearer " + key,
		"X-Request-Id":          "req-1",
		"X-Detour-Backend":      "b1",
		"X-Detour-Api-Key":      "should-not-be-kept",
		"X-Envoy-Attempt-Count": "2",
		"Cookie":                "session=abc",
		"X-Other":               "dropped",
	}
	body := `{"model":"m1","stream":true,"max_tokens":3,"messages":[{"role":"user","content":"` + prompt + `"}]}`
	call(t, c, "POST", apiURL(s, "/v1/chat/completions"), body, auth)
	call(t, c, "POST", apiURL(s, "/v1/chat/completions"), chatBody(""), map[string]string{"Authorization": "Bearer " + key, "x-sim-status": "429"})
	call(t, c, "POST", apiURL(s, "/v1/chat/completions"), chatBody(""), nil) // 401
	call(t, c, "GET", apiURL(s, "/v1/models"), "", map[string]string{"Authorization": "Bearer " + key})
	call(t, c, "GET", apiURL(s, "/elsewhere"), "", nil)

	r := call(t, c, "GET", adminURL(s, "/_sim/stats"), "", nil)
	var st Stats
	if err := json.Unmarshal(r.body, &st); err != nil {
		t.Fatal(err)
	}
	want := Stats{
		Requests:       5,
		ByStatus:       map[string]int64{"200": 2, "429": 1, "401": 1, "404": 1},
		ByPath:         map[string]int64{"/v1/chat/completions": 3, "/v1/models": 1, "other": 1},
		FaultsInjected: 1,
	}
	if !statsEqual(st, want) {
		t.Errorf("stats\n got %+v\nwant %+v", st, want)
	}
	for _, k := range []string{`"requests"`, `"by_status"`, `"by_path"`, `"faults_injected"`} {
		if !strings.Contains(string(r.body), k) {
			t.Errorf("stats JSON lacks %s: %s", k, r.body)
		}
	}

	r = call(t, c, "GET", adminURL(s, "/_sim/requests?limit=2"), "", nil)
	var recs []RequestRecord
	if err := json.Unmarshal(r.body, &recs); err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].Path != "/v1/models" || recs[1].Path != "/elsewhere" || recs[1].Status != 404 {
		t.Errorf("last 2 records: %+v", recs)
	}

	r = call(t, c, "GET", adminURL(s, "/_sim/requests"), "", nil)
	raw := string(r.body)
	if err := json.Unmarshal(r.body, &recs); err != nil || len(recs) != 5 {
		t.Fatalf("all records: %v %s", err, raw)
	}
	for _, secret := range []string{key, prompt, "should-not-be-kept", "session=abc"} {
		if strings.Contains(raw, secret) {
			t.Errorf("records leak %q: %s", secret, raw)
		}
	}
	first := recs[0]
	if first.Method != "POST" || first.Model != "m1" || !first.Stream || first.MaxTokens != 3 || first.Status != 200 || first.Fault != "" {
		t.Errorf("first record: %+v", first)
	}
	if !strings.HasPrefix(first.Auth, "sha256:") || len(first.Auth) != len("sha256:")+12 {
		t.Errorf("auth = %q", first.Auth)
	}
	if recs[2].Auth != "none" {
		t.Errorf("auth without header = %q", recs[2].Auth)
	}
	if recs[1].Auth != first.Auth {
		t.Error("the same Authorization value gave different fingerprints")
	}
	if recs[1].Fault != "status" || recs[1].Headers["x-sim-status"] != "429" {
		t.Errorf("faulted record: %+v", recs[1])
	}
	wantHdr := map[string]string{
		"x-request-id": "req-1", "x-detour-backend": "b1", "x-envoy-attempt-count": "2",
		"content-length": "",
	}
	for k, v := range wantHdr {
		got, ok := first.Headers[k]
		if !ok || (v != "" && got != v) {
			t.Errorf("header %s = %q (present %v), want %q", k, got, ok, v)
		}
	}
	for _, k := range []string{"authorization", "x-detour-api-key", "cookie", "x-other"} {
		if _, ok := first.Headers[k]; ok {
			t.Errorf("record keeps header %s", k)
		}
	}
	if first.Time.IsZero() || first.DurationMS < 0 {
		t.Errorf("time/duration: %+v", first)
	}

	if r := call(t, c, "GET", adminURL(s, "/_sim/requests?limit=x"), "", nil); r.status != 400 {
		t.Errorf("bad limit: %d", r.status)
	}
	if r := call(t, c, "DELETE", adminURL(s, "/_sim/stats"), "", nil); r.status != 200 {
		t.Errorf("DELETE stats: %d", r.status)
	}
	if st := s.Stats(); st.Requests != 0 || len(st.ByStatus) != 0 || st.FaultsInjected != 0 || len(s.Requests(0)) != 0 {
		t.Errorf("after reset: %+v, %d records", st, len(s.Requests(0)))
	}
	// Admin requests are not counted.
	if st := s.Stats(); st.Requests != 0 {
		t.Errorf("admin requests counted: %+v", st)
	}
}

func statsEqual(a, b Stats) bool {
	if a.Requests != b.Requests || a.FaultsInjected != b.FaultsInjected || len(a.ByStatus) != len(b.ByStatus) || len(a.ByPath) != len(b.ByPath) {
		return false
	}
	for k, v := range b.ByStatus {
		if a.ByStatus[k] != v {
			return false
		}
	}
	for k, v := range b.ByPath {
		if a.ByPath[k] != v {
			return false
		}
	}
	return true
}

func TestRequestRing(t *testing.T) {
	s := startSim(t, Config{})
	c := newClient(t)
	for i := range ringSize + 10 {
		call(t, c, "GET", apiURL(s, "/v1/models"), "", map[string]string{"X-Request-Id": fmt.Sprintf("r%03d", i)})
	}
	recs := s.Requests(0)
	if len(recs) != ringSize {
		t.Fatalf("%d records, want %d", len(recs), ringSize)
	}
	if recs[0].Headers["x-request-id"] != fmt.Sprintf("r%03d", 10) || recs[ringSize-1].Headers["x-request-id"] != fmt.Sprintf("r%03d", ringSize+9) {
		t.Errorf("ring order: first %v last %v", recs[0].Headers, recs[ringSize-1].Headers)
	}
	if got := s.Requests(3); len(got) != 3 || got[2].Headers["x-request-id"] != fmt.Sprintf("r%03d", ringSize+9) {
		t.Errorf("Requests(3): %+v", got)
	}
	if s.Stats().Requests != int64(ringSize+10) {
		t.Errorf("requests = %d", s.Stats().Requests)
	}
}

func TestAdminMisc(t *testing.T) {
	s := startSim(t, Config{Name: "h"})
	c := newClient(t)
	r := call(t, c, "GET", adminURL(s, "/_sim/health"), "", nil)
	m := r.json(t)
	if r.status != 200 || m["status"] != "ok" || m["name"] != "h" || m["listening"] != true || m["addr"] != s.Addr() {
		t.Errorf("health: %d %s", r.status, r.body)
	}
	r = call(t, c, "GET", adminURL(s, "/_sim/nope"), "", nil)
	if r.status != 404 || r.header.Get("x-sim-name") != "h" {
		t.Errorf("unknown admin path: %d", r.status)
	}
	errorOf(t, r)
	for _, p := range []string{"/_sim/stats", "/_sim/requests", "/_sim/health"} {
		if r := call(t, c, "PUT", adminURL(s, p), "{}", nil); r.status != 405 || r.header.Get("Allow") == "" {
			t.Errorf("PUT %s: %d", p, r.status)
		}
	}
	// The admin API is not served on the serving listener and vice versa.
	if r := call(t, c, "GET", apiURL(s, "/_sim/stats"), "", nil); r.status != 404 {
		t.Errorf("serving /_sim/stats: %d", r.status)
	}
	if r := call(t, c, "GET", adminURL(s, "/v1/models"), "", nil); r.status != 404 {
		t.Errorf("admin /v1/models: %d", r.status)
	}
}
