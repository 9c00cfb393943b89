package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/detourhq/detour/bench/loadgen"
)

const (
	chatPath = "/v1/chat/completions"
	// simTokens is the simulated answer length: a fixed, small answer so the
	// provider's share of the latency is tiny and constant.
	simTokens = "16"
	// settle is the pause between runs, so one run's tail does not overlap
	// the next one's warm-up.
	settle = time.Second
)

var errNotRouted = errors.New("request was not routed by detour")

// Sides of the comparison.
const (
	sideA = "A"
	sideB = "B"
)

// sideLabel describes a side in the report.
func sideLabel(s string) string {
	if s == sideA {
		return "A: Envoy → provider"
	}
	return "B: Envoy + detour → provider"
}

// chatBody is the request every run sends: a realistic chat of a system
// prompt and three turns, about 2 KB, non-streaming, model "auto".
func chatBody() []byte {
	type msg struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	}
	body := struct {
		Model       string  `json:"model"`
		Messages    []msg   `json:"messages"`
		Temperature float64 `json:"temperature"`
		MaxTokens   int     `json:"max_tokens"`
		Stream      bool    `json:"stream"`
	}{
		Model: "auto",
		Messages: []msg{
			{"system", "You are a senior site-reliability engineer helping a team run an LLM gateway in production. " +
				"Answer precisely and briefly, prefer concrete configuration over general advice, and say so when you are unsure. " +
				"When you show configuration, use YAML and keep it minimal. Never invent metric names: if a metric is not " +
				"mentioned in the conversation, describe what it should measure instead."},
			{"user", "We put Envoy in front of two model providers and route with an external processor. Last night the primary " +
				"provider started answering 429 with Retry-After: 20 for about ten minutes, and our p99 went from 900 ms to 14 s " +
				"because clients kept retrying the same backend. What should the gateway do differently so that a burst of rate " +
				"limiting on one provider does not turn into a latency incident for everyone?"},
			{"assistant", "Three things. First, treat a 429 with Retry-After as a signal about the backend, not just the request: " +
				"mark the backend as cooling down for the advertised period and route new requests to the next qualified backend " +
				"instead of retrying the same one. Second, bound retries with a budget (for example at most 20% extra load) and " +
				"exponential back-off with jitter, so retries cannot amplify an outage. Third, watch the error rate per backend over " +
				"a short window and open a circuit when it crosses a threshold; half-open it after a cool-down with a few probe requests."},
			{"user", "That makes sense. Our requests are mostly short chats like this one, around 2 KB, with model set to \"auto\" " +
				"so the router picks the cheapest backend that fits. How much latency should the routing step itself add, and how " +
				"would you measure it without fooling ourselves on a noisy two-core test machine? Please keep the answer short."},
		},
		Temperature: 0.2,
		MaxTokens:   256,
	}
	b, err := json.Marshal(body)
	if err != nil {
		panic(err) // static data
	}
	return b
}

func chatRequest(url string, body []byte) loadgen.Request {
	return loadgen.Request{
		Method: http.MethodPost,
		URL:    url,
		Header: http.Header{"Content-Type": {"application/json"}, "X-Sim-Tokens": {simTokens}},
		Body:   body,
	}
}

// roundRun is one measured run of one side.
type roundRun struct {
	Round int
	Side  string
	Res   loadgen.Result
	// CPU is each process's CPU time per recorded request over the
	// measured part of the run (after the warm-up); empty if unknown.
	CPU map[string]time.Duration
}

// e2eResult is everything the end-to-end part measured.
type e2eResult struct {
	BodyBytes int
	Fixed     []roundRun // open loop, in the order run
	Closed    []roundRun // closed loop, in the order run
	// Decision-time histograms of detour's /metrics over each phase
	// (warm-ups included; only side B reaches detour).
	DecisionFixed, DecisionClosed histogram
	MetricsErr                    string
}

type e2eConfig struct {
	opts        options
	envoyBin    string
	detourBin   string
	workDir     string
	childOutput io.Writer
	log         *slog.Logger
}

// runE2E starts the stack and runs the fixed-rate and throughput phases.
func runE2E(ctx context.Context, c e2eConfig) (*e2eResult, error) {
	st, err := startStack(ctx, stackConfig{
		envoyBin: c.envoyBin, detourBin: c.detourBin, dir: c.workDir, tee: c.childOutput, log: c.log,
		policyExtra: c.opts.policyExtra,
	})
	if err != nil {
		return nil, err
	}
	defer st.close()

	body := chatBody()
	reqs := map[string]loadgen.Request{sideA: chatRequest(st.urlA, body), sideB: chatRequest(st.urlB, body)}
	if err := checkSides(ctx, reqs); err != nil {
		return nil, err
	}
	res := &e2eResult{BodyBytes: len(body)}
	o := c.opts
	c.log.Info("end-to-end benchmark", "body_bytes", len(body), "rate", o.rate, "duration", o.duration,
		"rounds", o.rounds, "workers", o.workers,
		"estimated", estimateE2E(o).Round(time.Second))

	h0, err0 := st.decisionHistogram(ctx)
	fixed := phase{name: "fixed rate", warmup: o.warmup, load: func(ctx context.Context, req loadgen.Request) (loadgen.Result, error) {
		return loadgen.OpenLoop{Rate: o.rate, Duration: o.duration, Warmup: o.warmup}.Run(ctx, req)
	}}
	if res.Fixed, err = runRounds(ctx, st, fixed, o.rounds, reqs, c.log); err != nil {
		return nil, err
	}
	h1, err1 := st.decisionHistogram(ctx)
	closed := phase{name: "max throughput", warmup: o.closedWarmup, load: func(ctx context.Context, req loadgen.Request) (loadgen.Result, error) {
		return loadgen.ClosedLoop{Workers: o.workers, Duration: o.closedDuration, Warmup: o.closedWarmup}.Run(ctx, req)
	}}
	if res.Closed, err = runRounds(ctx, st, closed, o.rounds, reqs, c.log); err != nil {
		return nil, err
	}
	h2, err2 := st.decisionHistogram(ctx)
	if err := firstErr(err0, err1, err2); err != nil {
		res.MetricsErr = err.Error()
		c.log.Warn("could not read detour's decision histogram", "err", err)
	} else {
		res.DecisionFixed, res.DecisionClosed = h1.sub(h0), h2.sub(h1)
	}
	return res, nil
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// estimateE2E is roughly how long the end-to-end part takes.
func estimateE2E(o options) time.Duration {
	per := o.warmup + o.duration + settle + o.closedWarmup + o.closedDuration + settle
	return 2 * time.Duration(o.rounds) * per
}

// phase is one kind of load, run for both sides in alternating rounds.
type phase struct {
	name   string
	warmup time.Duration // of each run: CPU time is counted after it
	load   func(context.Context, loadgen.Request) (loadgen.Result, error)
}

// runRounds runs the phase's load against A then B, rounds times, so that
// drift in the machine's load hits both sides alike.
func runRounds(ctx context.Context, st *stack, ph phase, rounds int, reqs map[string]loadgen.Request, log *slog.Logger) ([]roundRun, error) {
	var out []roundRun
	for r := 1; r <= rounds; r++ {
		for _, side := range []string{sideA, sideB} {
			if err := sleepCtx(ctx, settle); err != nil {
				return nil, err
			}
			x, err := runOnce(ctx, st, ph, side, reqs[side])
			if err != nil {
				return nil, fmt.Errorf("%s round %d side %s: %w", ph.name, r, side, err)
			}
			x.Round = r
			log.Info(ph.name, "round", r, "side", side, "result", x.Res.String())
			out = append(out, x)
		}
	}
	return out, nil
}

// runOnce runs the load once against one side and accounts the CPU time of
// each process from the end of the warm-up to the end of the run.
func runOnce(ctx context.Context, st *stack, ph phase, side string, req loadgen.Request) (roundRun, error) {
	pids := st.pids(side)
	warm := make(chan cpuSnapshot, 1)
	t := time.AfterFunc(ph.warmup, func() { warm <- takeCPU(pids) })
	defer t.Stop()
	res, err := ph.load(ctx, req)
	after := takeCPU(pids)
	if err != nil {
		return roundRun{}, err
	}
	if err := st.alive(); err != nil {
		return roundRun{}, err
	}
	x := roundRun{Side: side, Res: res}
	select {
	case before := <-warm:
		x.CPU = perRequest(before, after, res.Sent)
	default: // the run ended before its warm-up did
	}
	return x, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// checkSides sends one request to each side and checks that both succeed,
// that B was routed by detour (the provider saw the model detour wrote) and
// that A was not (the provider saw the alias the client sent).
func checkSides(ctx context.Context, reqs map[string]loadgen.Request) error {
	client := &http.Client{Timeout: 10 * time.Second}
	for _, side := range []string{sideA, sideB} {
		model, err := probe(ctx, client, reqs[side])
		if err != nil {
			return fmt.Errorf("side %s probe: %w", side, err)
		}
		switch {
		case side == sideB && model != backendModel:
			return fmt.Errorf("side B probe: %w (the provider answered for model %q, want %q)", errNotRouted, model, backendModel)
		case side == sideA && model == backendModel:
			return fmt.Errorf("side A probe: the provider answered for model %q: ext_proc is still in the baseline", model)
		}
	}
	return nil
}

// probe sends req once and returns the model the provider answered for
// (the simulated provider echoes the model it was sent).
func probe(ctx context.Context, client *http.Client, r loadgen.Request) (string, error) {
	req, err := http.NewRequestWithContext(ctx, r.Method, r.URL, bytes.NewReader(r.Body))
	if err != nil {
		return "", err
	}
	req.Header = r.Header.Clone()
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, bytes.TrimSpace(b))
	}
	var answer struct {
		Model string `json:"model"`
	}
	if err := json.Unmarshal(b, &answer); err != nil {
		return "", fmt.Errorf("answer is not JSON: %w", err)
	}
	return answer.Model, nil
}

// pids are the processes serving one side (and the load generator).
func (s *stack) pids(side string) map[string]int {
	e := s.envoyA
	if side == sideB {
		e = s.envoyB
	}
	return map[string]int{
		procLoadgen:  os.Getpid(),
		procEnvoy:    e.proc.Pid(),
		procExtProc:  s.extproc.cmd.Process.Pid,
		procProvider: s.sim.cmd.Process.Pid,
	}
}

// decisionHistogram scrapes detour's decision-time histogram.
func (s *stack) decisionHistogram(ctx context.Context) (histogram, error) {
	url := "http://" + s.metricsAddr + "/metrics"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return histogram{}, err
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return histogram{}, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return histogram{}, fmt.Errorf("scrape %s: status %d", url, resp.StatusCode)
	}
	text, err := io.ReadAll(resp.Body)
	if err != nil {
		return histogram{}, fmt.Errorf("scrape %s: %w", url, err)
	}
	return parseHistogram(text, decisionMetric)
}

const decisionMetric = "detour_extproc_decision_duration_seconds"
