package sim

import (
	"math"
	"net/http"
	"strings"
	"testing"
)

func TestFaultValidateAndSanitize(t *testing.T) {
	tests := []struct {
		name    string
		f       Fault
		wantErr string
		want    Fault // after sanitize
	}{
		{"zero", Fault{}, "", Fault{}},
		{"rate defaults to 1", Fault{Status: 503}, "", Fault{Status: 503, Rate: 1}},
		{"rate kept", Fault{LatencyMS: 5, Rate: 0.25}, "", Fault{LatencyMS: 5, Rate: 0.25}},
		{"rate alone has no effect", Fault{Rate: 0.5}, "", Fault{Rate: 0.5}},
		{"refuse", Fault{Refuse: true}, "", Fault{Refuse: true, Rate: 1}},
		{"status too low", Fault{Status: 302}, "status 302", Fault{}},
		{"status too high", Fault{Status: 600, LatencyMS: 1}, "status 600", Fault{LatencyMS: 1, Rate: 1}},
		{"rate above 1", Fault{Status: 500, Rate: 3}, "rate", Fault{Status: 500, Rate: 1}},
		{"rate NaN", Fault{Status: 500, Rate: math.NaN()}, "rate", Fault{Status: 500, Rate: 1}},
		{"negative latency", Fault{LatencyMS: -3, Status: 500}, "latency_ms", Fault{Status: 500, Rate: 1}},
		{"huge ttft", Fault{TTFTMS: maxDelayMS + 1}, "ttft_ms", Fault{TTFTMS: maxDelayMS, Rate: 1}},
		{"negative tps", Fault{TokensPerSecond: -1, Reset: true}, "tokens_per_second", Fault{Reset: true, Rate: 1}},
		{"negative retry", Fault{RetryAfterS: -1, Status: 429}, "retry_after_s", Fault{Status: 429, Rate: 1}},
		{"negative drop", Fault{DropAfterTokens: -1, Status: 429}, "drop_after_tokens", Fault{Status: 429, Rate: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.f.Validate()
			if (err != nil) != (tt.wantErr != "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("Validate() = %v, want error containing %q", err, tt.wantErr)
			}
			if got := tt.f.sanitize(); got != tt.want {
				t.Errorf("sanitize() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseOverrides(t *testing.T) {
	h := http.Header{}
	h.Set("X-Sim-Status", "503")
	h.Set("X-Sim-Ttft-Ms", "20")
	h.Set("X-Sim-Tokens-Per-Second", "12.5")
	h.Set("X-Sim-Drop-After-Tokens", "4")
	h.Set("X-Sim-Retry-After-S", "9")
	h.Set("X-Sim-Tokens", "33")
	ov, err := parseOverrides(h, "a")
	if err != nil {
		t.Fatal(err)
	}
	want := Fault{Status: 503, Rate: 1, RetryAfterS: 9, TTFTMS: 20, TokensPerSecond: 12.5, DropAfterTokens: 4}
	if !ov.hasFault || ov.fault != want || !ov.hasTokens || ov.tokens != 33 {
		t.Errorf("overrides = %+v", ov)
	}
	h.Add("X-Sim-Status", "500")
	if _, err := parseOverrides(h, "a"); err == nil || !strings.Contains(err.Error(), "x-sim-status") {
		t.Errorf("repeated header: %v", err)
	}
	if ov, err := parseOverrides(http.Header{}, "a"); err != nil || ov.hasFault || ov.hasTokens {
		t.Errorf("no headers: %+v %v", ov, err)
	}
}

func TestParseInputs(t *testing.T) {
	tests := []struct {
		raw        string
		wantN      int
		wantTokens int
		wantErr    bool
	}{
		{`"abcdefgh"`, 1, 2, false},
		{`"abcdefghi"`, 1, 3, false},
		{`""`, 1, 0, false},
		{`["ab","cd"]`, 2, 2, false},
		{`[1,2,3]`, 1, 3, false},
		{`[[1,2],[3]]`, 2, 3, false},
		{`[]`, 0, 0, true},
		{`[[]]`, 0, 0, true},
		{`[-1]`, 0, 0, true},
		{`["a",1]`, 0, 0, true},
		{`{"a":1}`, 0, 0, true},
		{`5`, 0, 0, true},
		{`null`, 0, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			ins, e := parseInputs([]byte(tt.raw), "input")
			if (e != nil) != tt.wantErr {
				t.Fatalf("err = %v", e)
			}
			if e != nil {
				if e.Param == nil || *e.Param != "input" {
					t.Errorf("param = %v", e.Param)
				}
				return
			}
			n := 0
			for _, in := range ins {
				n += in.tokenCount()
			}
			if len(ins) != tt.wantN || n != tt.wantTokens {
				t.Errorf("%d inputs, %d tokens; want %d, %d", len(ins), n, tt.wantN, tt.wantTokens)
			}
		})
	}
}

func TestEmbeddingVectorDeterministic(t *testing.T) {
	a := embeddingVector(textInput{text: "x"}, 8, 8)
	b := embeddingVector(textInput{text: "x"}, 8, 8)
	c := embeddingVector(textInput{tokens: []int{1}, isTokens: true}, 8, 8)
	for i := range a {
		if a[i] != b[i] {
			t.Fatal("not deterministic")
		}
	}
	same := true
	for i := range a {
		same = same && a[i] == c[i]
	}
	if same {
		t.Error("text and token inputs collide")
	}
}

func TestCompletionText(t *testing.T) {
	if got := completionText(3); got != "tok0 tok1 tok2" {
		t.Errorf("completionText(3) = %q", got)
	}
	if completionText(0) != "" {
		t.Error("completionText(0) not empty")
	}
}
