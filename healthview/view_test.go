package healthview

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestRouteRefuses(t *testing.T) {
	prios := []string{Critical, Standard, Sheddable, "", "bulk"}
	tests := []struct {
		shed    string
		refused []string // of prios
	}{
		{"", nil},
		{Sheddable, []string{Sheddable}},
		// Unknown priorities count as standard: refused with standard.
		{Standard, []string{Standard, Sheddable, "", "bulk"}},
		// Not a level a route sheds at: nothing refused.
		{Critical, nil},
		{"everything", nil},
	}
	for _, tc := range tests {
		for _, prio := range prios {
			r := Route{Shed: tc.shed}
			want := slices.Contains(tc.refused, prio)
			if got := r.Refuses(prio, 0.5); got != want {
				t.Errorf("Route{Shed: %q}.Refuses(%q) = %v, want %v", tc.shed, prio, got, want)
			}
		}
	}
}

// A fraction admitted: of the edge priority, Admit of any run of
// requests goes (Draw spreads evenly); the priorities either side are
// not affected.
func TestRouteAdmitsAFraction(t *testing.T) {
	for _, tc := range []struct {
		shed, edge, above, below string
	}{
		{Sheddable, Sheddable, Standard, ""},
		{Standard, Standard, Critical, Sheddable},
	} {
		for _, admit := range []float64{0, 0.1, 0.25, 0.5, 0.9} {
			r := Route{Shed: tc.shed, Admit: admit}
			for start := uint64(0); start < 1000; start += 97 {
				const run = 100
				admitted := 0
				for n := start; n < start+run; n++ {
					d := Draw(n)
					if d < 0 || d >= 1 {
						t.Fatalf("Draw(%d) = %v, out of [0, 1)", n, d)
					}
					if !r.Refuses(tc.edge, d) {
						admitted++
					}
					if r.Refuses(tc.above, d) {
						t.Fatalf("%+v refused %s", r, tc.above)
					}
					if tc.below != "" && !r.Refuses(tc.below, d) {
						t.Fatalf("%+v admitted %s", r, tc.below)
					}
				}
				if want := admit * run; float64(admitted) < want-2 || float64(admitted) > want+2 {
					t.Errorf("%+v: admitted %d of %d %s requests from draw %d, want %.0f ± 2", r, admitted, run, tc.edge, start, want)
				}
			}
		}
	}
}

func TestRank(t *testing.T) {
	order := []string{Healthy, Degraded, HalfOpen, Open}
	for i, s := range order {
		if got := Rank(s); got != uint8(i) {
			t.Errorf("Rank(%s) = %d, want %d", s, got, i)
		}
		if i > 0 && Rank(order[i-1]) >= Rank(s) {
			t.Errorf("%s does not rank before %s", order[i-1], s)
		}
	}
	if Rank("") != Rank(Healthy) || Rank("UNKNOWN") != Rank(Healthy) {
		t.Errorf("unknown states rank %d/%d, want as HEALTHY", Rank(""), Rank("UNKNOWN"))
	}
}

func TestDurationJSON(t *testing.T) {
	tests := []struct {
		d    time.Duration
		text string
	}{
		{0, `"0s"`},
		{1500 * time.Millisecond, `"1.5s"`},
		{90 * time.Second, `"1m30s"`},
		{250 * time.Microsecond, `"250µs"`},
		{-2 * time.Second, `"-2s"`},
	}
	for _, tc := range tests {
		b, err := json.Marshal(Duration(tc.d))
		if err != nil || string(b) != tc.text {
			t.Errorf("Marshal(%s) = %s, %v; want %s", tc.d, b, err, tc.text)
		}
		var back Duration
		if err := json.Unmarshal(b, &back); err != nil || time.Duration(back) != tc.d {
			t.Errorf("Unmarshal(%s) = %s, %v", b, time.Duration(back), err)
		}
	}
	for _, bad := range []string{`"soon"`, `"5"`, `""`} {
		var d Duration
		if err := json.Unmarshal([]byte(bad), &d); err == nil {
			t.Errorf("Unmarshal(%s) = %s, want an error", bad, time.Duration(d))
		}
	}
	// 1500 as a number is not a duration.
	var d Duration
	if err := json.Unmarshal([]byte(`1500`), &d); err == nil {
		t.Errorf("Unmarshal(1500) = %s, want an error", time.Duration(d))
	}
}

// A whole view survives JSON both ways, and zero optional fields are left
// out.
func TestSnapshotJSONRoundTrip(t *testing.T) {
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	retry := at.Add(30 * time.Second)
	in := &Snapshot{
		Version: 12, At: at, Source: "envoy", SignalError: "scrape: timeout",
		Backends: map[string]Backend{
			"a": {State: Open, Since: at, Reason: "error rate 0.6", RetryAt: &retry, Opens: 2,
				Signals:     Signals{Age: Duration(2 * time.Second), Window: Duration(time.Minute), Requests: 100, ErrorRate: 0.6, P95: Duration(800 * time.Millisecond)},
				Settings:    []Setting{{Name: "timeout", Value: "30s", Why: "default"}},
				Transitions: []Transition{{From: Healthy, To: Open, Reason: "errors", At: at}},
				Probes:      []Probe{{Name: "chat", OK: false, Reason: "503", At: at}}},
			"b": {State: Healthy, Throttled: true, ThrottledWhy: "429s"},
		},
		Routes:            map[string]Route{"auto": {Shed: Sheddable, Reason: "share", RetryAfter: 3, HealthyShare: 0.5}},
		TrialShare:        0.25,
		FirstTokenTimeout: Duration(4 * time.Second), FirstTokenWhy: "p95 ttft × 4",
	}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out Snapshot
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	b2, _ := json.Marshal(&out)
	if string(b) != string(b2) {
		t.Errorf("round trip changed the view:\n%s\n%s", b, b2)
	}
	if !out.Backends["a"].RetryAt.Equal(retry) || time.Duration(out.Backends["a"].Signals.P95) != 800*time.Millisecond {
		t.Errorf("decoded %+v", out.Backends["a"])
	}

	empty, _ := json.Marshal(&Snapshot{Version: 1})
	for _, key := range []string{"signal_error", "trial_share", "first_token_why", "first_token_timeout"} {
		if strings.Contains(string(empty), `"`+key+`"`) {
			t.Errorf("empty view has %q: %s", key, empty)
		}
	}
}
