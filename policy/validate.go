package policy

import (
	"fmt"
	"math"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

var (
	nameRE       = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]*$`)
	envNameRE    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	headerNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)
)

// MaxBodyLimit is the largest max_body_bytes accepted: Envoy buffers the
// whole body in memory for routing and retries.
const MaxBodyLimit Size = 64 << 20

// Validate checks a defaulted policy and returns every problem, each with
// the path of the value at fault (positions are added by Parse).
func (p *Policy) Validate() []Problem {
	var v validator
	if p.Version != 1 {
		v.add("version", fmt.Sprintf("unsupported version %d", p.Version), "use version: 1")
	}
	if len(p.Backends) == 0 {
		v.add("backends", "no backends", "add at least one backend with a name, model, endpoints and capabilities")
	}
	byName := map[string]int{}
	models := map[string]string{}
	for i, b := range p.Backends {
		at := fmt.Sprintf("backends[%d]", i)
		switch {
		case b.Name == "":
			v.add(at+".name", "backend has no name", "")
		case !nameRE.MatchString(b.Name):
			v.add(at+".name", fmt.Sprintf("backend name %q has characters Envoy cluster names cannot carry", b.Name), "use letters, digits, '-' and '_' (a dot would break Envoy's stats tags)")
		default:
			if j, dup := byName[b.Name]; dup {
				v.add(at+".name", fmt.Sprintf("backend name %q is used twice (also backends[%d])", b.Name, j), "names must be unique")
			} else {
				byName[b.Name] = i
			}
		}
		if b.API != APIOpenAI {
			v.add(at+".api", fmt.Sprintf("unsupported api %q", b.API), "only \"openai\" is supported")
		}
		switch b.Continuation {
		case "", ContinuationPrefix, ContinuationFinalMessage:
		default:
			v.add(at+".continuation", fmt.Sprintf("unknown continuation %q", b.Continuation), `"prefix" (DeepSeek, Mistral), "continue_final_message" (vLLM, SGLang), or leave it out`)
		}
		if b.Model == "" {
			v.add(at+".model", "backend has no model id", "the provider's model id, e.g. gpt-4o-mini")
		} else if _, ok := models[b.Model]; !ok {
			models[b.Model] = b.Name
		}
		if len(b.Endpoints) == 0 {
			v.add(at+".endpoints", "backend has no endpoints", "add one: - address: host:port")
		}
		for j, e := range b.Endpoints {
			if (e.TLS == nil) != (b.Endpoints[0].TLS == nil) {
				v.add(fmt.Sprintf("%s.endpoints[%d].tls", at, j), "endpoints of one backend must all use TLS or all not", "a backend is one Envoy cluster with one transport; split it into two backends")
			}
			if msg := checkAddress(e.Address); msg != "" {
				v.add(fmt.Sprintf("%s.endpoints[%d].address", at, j), msg, "write host:port, e.g. api.example.com:443")
			}
		}
		c := b.Capabilities
		if c.ContextWindow <= 0 {
			v.add(at+".capabilities.context_window", "context_window must be a positive number of tokens", "e.g. 128000")
		}
		if c.MaxOutputTokens < 0 {
			v.add(at+".capabilities.max_output_tokens", "max_output_tokens cannot be negative", "")
		} else if c.ContextWindow > 0 && c.MaxOutputTokens > c.ContextWindow {
			v.add(at+".capabilities.max_output_tokens", fmt.Sprintf("max_output_tokens %d exceeds context_window %d", c.MaxOutputTokens, c.ContextWindow), "")
		}
		for j, api := range c.APIs {
			if !slices.Contains(AllAPIs, api) {
				v.add(fmt.Sprintf("%s.capabilities.apis[%d]", at, j), fmt.Sprintf("unknown api %q", api), "one of "+strings.Join(AllAPIs, ", "))
			}
		}
		if !finite(b.Price.Input) || !finite(b.Price.Output) {
			v.add(at+".price", "prices must be finite numbers", "")
		} else if b.Price.Input < 0 || b.Price.Output < 0 {
			v.add(at+".price", "prices cannot be negative", "")
		}
		if b.Priority < 0 {
			v.add(at+".priority", "priority cannot be negative", "0 is the first tier")
		}
		if c := b.Credentials; c != nil {
			switch {
			case (c.APIKeyEnv == "") == (c.APIKeyFile == ""):
				v.add(at+".credentials", "name exactly one of api_key_env and api_key_file", "keys never go in the policy itself")
			case c.APIKeyEnv != "" && !envNameRE.MatchString(c.APIKeyEnv):
				v.add(at+".credentials.api_key_env", fmt.Sprintf("%q is not an environment variable name", c.APIKeyEnv), "e.g. OPENAI_API_KEY")
			}
			if !headerNameRE.MatchString(c.Header) || c.Header == "host" {
				v.add(at+".credentials.header", fmt.Sprintf("%q cannot carry a key", c.Header), "a lower-case header name such as authorization or api-key")
			}
		}
	}
	routeNames := map[string]int{}
	for i, r := range p.Routes {
		at := fmt.Sprintf("routes[%d]", i)
		if r.Name == "" {
			v.add(at+".name", "route has no name", "the model name clients send, e.g. auto")
		} else if j, dup := routeNames[r.Name]; dup {
			v.add(at+".name", fmt.Sprintf("route %q is defined twice (also routes[%d])", r.Name, j), "")
		} else {
			routeNames[r.Name] = i
			if b, clash := models[r.Name]; clash {
				v.add(at+".name", fmt.Sprintf("route %q has the name of a model id served by backend %q", r.Name, b), "give the alias another name")
			}
		}
		for j, name := range r.Backends {
			if _, ok := byName[name]; !ok {
				v.add(fmt.Sprintf("%s.backends[%d]", at, j), fmt.Sprintf("unknown backend %q", name), suggestName(name, p.Backends))
			}
			if slices.Index(r.Backends, name) != j {
				v.add(fmt.Sprintf("%s.backends[%d]", at, j), fmt.Sprintf("backend %q is listed twice", name), "")
			}
		}
		if r.Objective != ObjectiveCheapest && r.Objective != ObjectiveOrdered {
			v.add(at+".objective", fmt.Sprintf("unknown objective %q", r.Objective), "one of cheapest, ordered")
		}
		if r.Mode != "" && r.Mode != ModeExtProc && r.Mode != ModeWasm {
			v.add(at+".mode", fmt.Sprintf("unknown mode %q", r.Mode), "one of extproc, wasm")
		}
	}
	if p.Routing.Mode != ModeExtProc && p.Routing.Mode != ModeWasm {
		v.add("routing.mode", fmt.Sprintf("unknown mode %q", p.Routing.Mode), "one of extproc, wasm")
	}
	if p.Envoy.MaxConnections < 1 {
		v.add("envoy.max_connections", "must be at least 1", "")
	}
	// Envoy opens the file from its own working directory, which the
	// policy's author rarely knows.
	if a := p.Envoy.AccessLog; a != "" && !filepath.IsAbs(a) {
		v.add("envoy.access_log", fmt.Sprintf("%q is not an absolute path", a), "for example /var/log/envoy/detour-access.log or /dev/stdout")
	}
	if p.Routing.OutputReserveTokens < 0 {
		v.add("routing.output_reserve_tokens", "cannot be negative", "")
	}
	if p.Limits.MaxBodyBytes < 1024 || p.Limits.MaxBodyBytes > MaxBodyLimit {
		v.add("limits.max_body_bytes", fmt.Sprintf("max_body_bytes %d is out of range", p.Limits.MaxBodyBytes), "between 1KiB and 64MiB")
	}
	v.rate("health.error_rate", p.Health.ErrorRate)
	if !(p.Health.TokensPerSecond >= 0) || !finite(p.Health.TokensPerSecond) {
		v.add("health.tokens_per_second", "must be a finite number, not negative", "")
	}
	v.rate("circuit_breaker.error_rate", p.CircuitBreaker.ErrorRate)
	if p.CircuitBreaker.MinRequests < 0 {
		v.add("circuit_breaker.min_requests", "cannot be negative", "")
	}
	if p.CircuitBreaker.FailuresPerMinute < 0 {
		v.add("circuit_breaker.failures_per_minute", "cannot be negative", "")
	}
	if p.Retry.Attempts < 1 || p.Retry.Attempts > 10 {
		v.add("retry.attempts", fmt.Sprintf("attempts %d is out of range", p.Retry.Attempts), "between 1 (no retry) and 10")
	}
	if !(p.Retry.BudgetPercent > 0 && p.Retry.BudgetPercent <= 100) {
		v.add("retry.budget_percent", fmt.Sprintf("%g is not a percentage in (0, 100]", p.Retry.BudgetPercent), "100 lets every request have one retry in flight")
	}
	if p.Retry.MinRetryConcurrency < 0 {
		v.add("retry.min_retry_concurrency", "cannot be negative", "")
	}
	if p.OutlierDetection.ConsecutiveErrors < 1 {
		v.add("outlier_detection.consecutive_errors", "must be at least 1", "")
	}
	if p.OutlierDetection.MaxEjectionTime < p.OutlierDetection.BaseEjectionTime {
		v.add("outlier_detection.max_ejection_time", "max_ejection_time is shorter than base_ejection_time", "")
	}
	if p.Retry.MaxDelay < p.Retry.BaseDelay {
		v.add("retry.max_delay", "max_delay is shorter than base_delay", "")
	}
	if !(p.Retry.Jitter >= 0 && p.Retry.Jitter <= 1) { // NaN too
		v.add("retry.jitter", "jitter is a share between 0 and 1", "0.5 means ±50 %")
	}
	if p.Resume.StallTimeout.D() < 100*time.Millisecond {
		v.add("resume.stall_timeout", fmt.Sprintf("%s would take pauses between healthy tokens for stalls", p.Resume.StallTimeout.D()), "e.g. 3s")
	}
	if p.Resume.MaxResumes < 1 || p.Resume.MaxResumes > 3 {
		v.add("resume.max_resumes", fmt.Sprintf("%d is outside 1-3", p.Resume.MaxResumes), "1 moves an answer once")
	}
	// A first-token deadline under a healthy time to first token would
	// abandon healthy streams; one past the request timeout never fires.
	switch ft := p.Retry.FirstTokenTimeout; {
	case ft < p.Health.TTFT:
		v.add("retry.first_token_timeout", fmt.Sprintf("%s is shorter than health.ttft (%s), the time to first token of a healthy backend", ft.D(), p.Health.TTFT.D()),
			"e.g. 10s: well above a normal time to first token")
	case ft >= p.Envoy.RequestTimeout:
		v.add("retry.first_token_timeout", fmt.Sprintf("%s is not shorter than envoy.request_timeout (%s), so it could never fire", ft.D(), p.Envoy.RequestTimeout.D()),
			"e.g. 10s: well above a normal time to first token")
	}
	for _, a := range [...]struct{ path, addr string }{
		{"envoy.listen", p.Envoy.Listen}, {"envoy.admin", p.Envoy.Admin},
		{"extproc.listen", p.ExtProc.Listen}, {"extproc.metrics", p.ExtProc.Metrics},
		{"xds.listen", p.XDS.Listen}, {"xds.metrics", p.XDS.Metrics},
	} {
		if msg := checkAddress(a.addr); msg != "" {
			v.add(a.path, msg, "write host:port, e.g. 127.0.0.1:9002")
		} else if strings.HasPrefix(a.path, "envoy.") {
			// Envoy binds socket addresses only: it will not resolve a name.
			if host, _, _ := net.SplitHostPort(a.addr); net.ParseIP(host) == nil {
				v.add(a.path, fmt.Sprintf("Envoy listens on IP addresses only, not %q", host), "e.g. 127.0.0.1 or 0.0.0.0")
			}
		}
	}
	for i, a := range p.ExtProc.Replicas {
		if msg := checkAddress(a); msg != "" {
			v.add(fmt.Sprintf("extproc.replicas[%d]", i), msg, "write host:port, e.g. 10.0.0.5:9002")
		}
	}
	p.validateController(&v)
	p.validateProbes(&v)
	p.validateCache(&v)
	return v.problems
}

type validator struct{ problems []Problem }

func (v *validator) add(path, msg, hint string) {
	v.problems = append(v.problems, Problem{Path: path, Message: msg, Hint: hint})
}

func (v *validator) rate(path string, r float64) {
	if !(r > 0 && r <= 1) { // NaN too
		v.add(path, fmt.Sprintf("%g is not a share between 0 and 1", r), "0.25 means 25 %")
	}
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

func checkAddress(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Sprintf("address %q is not host:port", addr)
	}
	if host == "" {
		return fmt.Sprintf("address %q has no host", addr)
	}
	// Digits only, as the Envoy config builder reads it: Atoi takes "+80".
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n < 1 {
		return fmt.Sprintf("address %q has no valid port", addr)
	}
	return ""
}

func suggestName(name string, backends []Backend) string {
	best, bestD := "", 1<<30
	for _, b := range backends {
		if d := editDistance(name, b.Name); d < bestD {
			best, bestD = b.Name, d
		}
	}
	if best != "" && bestD <= max(2, len(name)/3) {
		return fmt.Sprintf("did you mean %q?", best)
	}
	return ""
}
