package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/detourhq/detour/sim"
)

// resumeBackends are the quickstart backends where fast continues partial
// answers the vLLM way and fast-b the DeepSeek way.
func resumeBackends() []backendSpec {
	b := quickstartBackends()
	b[0].Continuation = "continue_final_message"
	b[1].Continuation = "prefix"
	return b
}

// answerText joins the content deltas of an event stream; it fails the
// test on an event it cannot read, an error event, or two stream ids.
func answerText(t *testing.T, body string) (text string, done bool) {
	t.Helper()
	text, done, problems := readAnswer(body)
	for _, p := range problems {
		t.Error(p)
	}
	if len(problems) > 0 {
		t.FailNow()
	}
	return text, done
}

// readAnswer joins the content deltas of an event stream, and lists what
// is wrong with it.
func readAnswer(body string) (text string, done bool, problems []string) {
	var b strings.Builder
	id := ""
	for line := range strings.SplitSeq(body, "\n") {
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			done = true
			continue
		}
		var c struct {
			ID      string `json:"id"`
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
			Error any `json:"error"`
		}
		switch err := json.Unmarshal([]byte(data), &c); {
		case err != nil:
			problems = append(problems, fmt.Sprintf("unreadable event %q: %v", data, err))
			continue
		case c.Error != nil:
			problems = append(problems, "error event: "+data)
		case id == "":
			id = c.ID
		case c.ID != id:
			problems = append(problems, fmt.Sprintf("event of stream %q in stream %q: a resumed answer keeps its id", c.ID, id))
		}
		for _, ch := range c.Choices {
			b.WriteString(ch.Delta.Content)
		}
	}
	return b.String(), done, problems
}

// A stream whose provider stalls after its first tokens is finished by
// another backend, on Envoy 1.40: the client gets one whole answer, with
// a pause of about resume.stall_timeout, and the second backend was asked
// to continue from the token where the first stopped.
func TestResumeStalledStream(t *testing.T) {
	for _, wasm := range []string{"", "measure"} {
		t.Run("wasm="+wasm, func(t *testing.T) {
			s := startStack(t, stackOptions{Backends: resumeBackends(), Wasm: wasm, Extra: "resume: {stall_timeout: 1s}"})
			const want = "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 tok8 tok9 tok10 tok11"
			body := chat("auto", map[string]any{"stream": true, "max_tokens": 12, "stream_options": map[string]any{"include_usage": true}}, user("hello"))

			t.Run("healthy stream passes unchanged", func(t *testing.T) {
				s.ResetSims()
				r := stream(t, s.URL("/v1/chat/completions"), body)
				text, done := answerText(t, r.body)
				if r.status != 200 || text != want || !done {
					t.Fatalf("status %d, text %q, [DONE] %v; want 200, %q, true", r.status, text, done, want)
				}
			})

			t.Run("stall after 5 tokens", func(t *testing.T) {
				s.ResetSims()
				s.Sim("fast").SetFault(sim.Fault{StallAfterTokens: 5})
				defer s.Sim("fast").ClearFault()
				r := stream(t, s.URL("/v1/chat/completions"), body)
				text, done := answerText(t, r.body)
				if r.status != 200 || text != want || !done {
					t.Fatalf("status %d, text %q, [DONE] %v; want 200, %q, true\n%s", r.status, text, done, want, r.body)
				}
				if r.total < time.Second || r.total > 4*time.Second {
					t.Errorf("answer took %s; want about the 1s stall timeout", r.total)
				}
				recs := s.Sim("fast-b").Requests(10)
				if len(recs) != 1 || recs[0].ContinuedFrom != 5 {
					t.Fatalf("fast-b saw %+v; want one continuation from token 5", recs)
				}
				if m := s.Metrics(); !strings.Contains(m, `detour_extproc_resumes_total{backend="fast",outcome="resumed"} 1`) {
					t.Errorf("resume not counted:\n%s", grepLines(m, "detour_extproc_resume"))
				}
			})
		})
	}
}

// A whole answer whose body stops after its headers is held by detour
// (the client has seen nothing) and asked again of another backend: the
// client gets the other backend's whole answer, about resume.stall_timeout
// late, never the half body.
func TestRedoStalledAnswer(t *testing.T) {
	s := startStack(t, stackOptions{Backends: resumeBackends(), Extra: "resume: {stall_timeout: 1s}"})
	body := chat("auto", map[string]any{"max_tokens": 12}, user("hello"))
	s.Sim("fast").SetFault(sim.Fault{StallAfterTokens: 5}) // half the body, then silence
	start := time.Now()
	r := post(t, s.URL("/v1/chat/completions"), body)
	took := time.Since(start)
	content := contentOf(t, r.Body)
	if r.Status != 200 || content != "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 tok8 tok9 tok10 tok11" || r.Header.Get("x-detour-backend") != "fast-b" {
		t.Errorf("status %d from %q, content %q; want fast-b's whole answer", r.Status, r.Header.Get("x-detour-backend"), content)
	}
	if took < time.Second || took > 4*time.Second {
		t.Errorf("answer took %s; want about the 1s stall timeout", took)
	}
	if m := s.Metrics(); !strings.Contains(m, `detour_extproc_resumes_total{backend="fast",outcome="resumed"} 1`) {
		t.Errorf("repeat not counted:\n%s", grepLines(m, "detour_extproc_resume"))
	}
	// A healthy whole answer is held only until it is complete.
	s.Sim("fast").ClearFault()
	if r := post(t, s.URL("/v1/chat/completions"), body); r.Status != 200 || r.Header.Get("x-detour-backend") != "fast" {
		t.Errorf("healthy answer: status %d from %q", r.Status, r.Header.Get("x-detour-backend"))
	}
}

// The price of resumption, pinned on Envoy 1.40: a stream passes through
// the processor, so a processor killed while it carries a stream cuts that
// stream (Envoy resets the client's stream, failure_mode_allow or not). A
// processor stopped as a rolling restart stops it (SIGTERM) drains its
// streams first, and with resume off a kill costs a running stream
// nothing. Whole answers are held by Envoy, not the processor: a kill
// while one is held costs it nothing.
func TestResumeProcessorDeath(t *testing.T) {
	slowStream := chat("auto", map[string]any{"stream": true, "max_tokens": 20}, user("hello"))
	run := func(t *testing.T, s *stack, stop func()) (string, bool) {
		t.Helper()
		type result struct {
			text string
			done bool
		}
		ch := make(chan result, 1)
		go func() {
			r := streamNoFatal(s.URL("/v1/chat/completions"), slowStream, "x-sim-tokens-per-second", "10")
			text, done, _ := readAnswer(r) // a cut stream may end mid-event
			ch <- result{text, done}
		}()
		time.Sleep(700 * time.Millisecond) // a few tokens in
		stop()
		res := <-ch
		s.StartExtProc()
		return res.text, res.done
	}
	const whole = "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 tok8 tok9 tok10 tok11 tok12 tok13 tok14 tok15" // the simulator's 16 tokens, 1.6 s
	t.Run("resume on, killed: the stream is cut", func(t *testing.T) {
		s := startStack(t, stackOptions{Backends: resumeBackends()})
		text, done := run(t, s, s.StopExtProc)
		if done || text == whole {
			t.Errorf("stream survived its processor's death (%q, [DONE] %v): Envoy changed, update decision 0015", text, done)
		}
	})
	t.Run("resume on, SIGTERM: drained", func(t *testing.T) {
		s := startStack(t, stackOptions{Backends: resumeBackends()})
		if text, done := run(t, s, s.TermExtProc); !done || text != whole {
			t.Errorf("got %q, [DONE] %v; want the whole answer", text, done)
		}
	})
	t.Run("resume on, killed while Envoy holds a whole answer: nothing lost", func(t *testing.T) {
		// Half the body, a 1.5 s pause, the rest; the stall timeout is
		// longer, so detour only watches while Envoy holds the answer.
		s := startStack(t, stackOptions{Backends: resumeBackends(), Extra: "resume: {stall_timeout: 10s}"})
		s.Sim("fast").SetFault(sim.Fault{StallAfterTokens: 5, StallMS: 1500})
		ch := make(chan string, 1)
		go func() {
			ch <- streamNoFatal(s.URL("/v1/chat/completions"), chat("auto", map[string]any{"max_tokens": 12}, user("hello")))
		}()
		time.Sleep(700 * time.Millisecond)
		s.StopExtProc()
		got := <-ch
		s.StartExtProc()
		var v struct {
			Choices []struct {
				Message struct{ Content string } `json:"message"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(got), &v); err != nil || len(v.Choices) != 1 || v.Choices[0].Message.Content != "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 tok8 tok9 tok10 tok11" {
			t.Errorf("got %q (%v); want fast's whole answer", got, err)
		}
		if st := s.EnvoyStats("http.detour.ext_proc.detour_resume.failure_mode_allowed"); !strings.Contains(st, "failure_mode_allowed: 1") {
			t.Errorf("the resume filter did not see its processor die:\n%s", st)
		}
	})
	t.Run("resume off, killed: nothing lost", func(t *testing.T) {
		s := startStack(t, stackOptions{Backends: resumeBackends(), Extra: "resume: {enabled: false}"})
		if text, done := run(t, s, s.StopExtProc); !done || text != whole {
			t.Errorf("got %q, [DONE] %v; want the whole answer", text, done)
		}
	})
}

// streamNoFatal is stream for another goroutine: errors end up in the body.
func streamNoFatal(url string, body []byte, headers ...string) string {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err.Error()
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
