// Package policy is detour's policy file: its YAML schema, the defaults
// taken from the mission brief, loading with line:column errors, and the
// conversion into the routing core's table.
package policy

import "net"

// Policy is the whole policy file. Field comments are the documentation that
// `detour schema` puts into the JSON Schema for editors.
type Policy struct {
	// Version of the file format; only 1 exists.
	Version int `yaml:"version" jsonschema:"enum=1"`
	// Backends are the upstream deployments detour can route to.
	Backends []Backend `yaml:"backends" jsonschema:"minItems=1"`
	// Routes are model aliases (such as "auto") that clients may ask for.
	// A concrete model id needs no route: it goes to the backends serving it.
	Routes []Route `yaml:"routes,omitempty"`
	// Routing tunes how a request's needs are estimated.
	Routing Routing `yaml:"routing,omitempty"`
	// Limits bound what a client may send.
	Limits Limits `yaml:"limits,omitempty"`
	// Health holds the per-backend performance thresholds.
	Health HealthThresholds `yaml:"health,omitempty"`
	// CircuitBreaker holds the thresholds that take a backend out of service.
	CircuitBreaker CircuitBreaker `yaml:"circuit_breaker,omitempty"`
	// Retry is the retry schedule for a failed attempt.
	Retry Retry `yaml:"retry,omitempty"`
	// OutlierDetection ejects failing endpoints inside Envoy.
	OutlierDetection OutlierDetection `yaml:"outlier_detection,omitempty"`
	// Envoy describes the Envoy that detour configures.
	Envoy EnvoySettings `yaml:"envoy,omitempty"`
	// ExtProc configures detour's ext_proc service.
	ExtProc ExtProcSettings `yaml:"extproc,omitempty"`
	// XDS configures detour's control plane.
	XDS XDSSettings `yaml:"xds,omitempty"`
	// Wasm locates detour's proxy-wasm plugin.
	Wasm WasmSettings `yaml:"wasm,omitempty"`
	// Controller tunes the live-metrics controller.
	Controller Controller `yaml:"controller,omitempty"`
	// Probes are the contextual health probes the controller sends.
	Probes Probes `yaml:"probes,omitempty"`
	// Cache is the response cache (stale-if-error, and per-route TTLs).
	Cache Cache `yaml:"cache,omitempty"`
	// Queue holds requests while every backend of their route is OPEN.
	Queue Queue `yaml:"queue,omitempty"`
	// Resume moves a stream that stalls mid-answer to another backend,
	// which continues the same answer.
	Resume Resume `yaml:"resume,omitempty"`
}

// Resume is mid-answer failover (decision 0015). A stream whose provider
// goes silent after its first tokens is continued by another backend that
// accepts a partial answer to continue (a backend with continuation set);
// a whole answer whose body stops coming after its headers is asked again
// of another backend, before the client sees any of it. Either way the
// client receives one whole answer.
type Resume struct {
	// Enabled turns resumption on. Default true.
	Enabled *bool `yaml:"enabled,omitempty"`
	// StallTimeout is how long a started answer (a stream after its first
	// token, a whole answer after its headers) may send nothing before it
	// is moved. Default 3s: far above the gap between two
	// tokens of a healthy backend (50 ms at 20 tokens/s).
	StallTimeout Duration `yaml:"stall_timeout,omitempty"`
	// WholeAnswers holds whole (non-streaming) answers until complete, so
	// that one whose body stops can be asked again; it costs every such
	// request about 1 ms and half a millisecond of CPU (BENCHMARKS.md).
	// false keeps resumption for streams only. Default true.
	WholeAnswers *bool `yaml:"whole_answers,omitempty"`
	// MaxResumes bounds how many times one answer is moved. Default 1.
	MaxResumes int `yaml:"max_resumes,omitempty" jsonschema:"minimum=1,maximum=3"`
	// Via is the URL at which the ext_proc service reaches Envoy's
	// listener to send a continuation. Default: envoy.listen over http,
	// a wildcard host read as loopback.
	Via string `yaml:"via,omitempty"`
}

// XDSSettings configure the control plane Envoy takes its config from.
type XDSSettings struct {
	// Listen is the gRPC address of the ADS server. Default 127.0.0.1:18000.
	Listen string `yaml:"listen,omitempty"`
	// Metrics is the Prometheus /metrics address. Default 127.0.0.1:9191.
	Metrics string `yaml:"metrics,omitempty"`
}

// Backend is one provider deployment: a model served at some endpoints.
type Backend struct {
	// Name is unique; it names the Envoy cluster and appears in metrics and
	// in the x-detour-backend response header. Letters, digits, '-' and '_'.
	Name string `yaml:"name" jsonschema:"pattern=^[A-Za-z0-9][A-Za-z0-9_-]*$"`
	// API is the wire flavour the backend speaks.
	API string `yaml:"api,omitempty" jsonschema:"enum=openai,default=openai"`
	// Model is the provider's model id, written into each request sent here.
	Model string `yaml:"model"`
	// Endpoints are the addresses that serve this backend.
	Endpoints []Endpoint `yaml:"endpoints" jsonschema:"minItems=1"`
	// Capabilities say which requests this backend can serve.
	Capabilities Capabilities `yaml:"capabilities"`
	// Price in USD per million tokens; the "cheapest" objective reads it.
	Price Price `yaml:"price,omitempty"`
	// Priority is a tier: lower tiers are always preferred over higher ones,
	// whatever the objective says. Default 0.
	Priority int `yaml:"priority,omitempty" jsonschema:"minimum=0"`
	// Continuation says how this backend continues a partial answer, so
	// that it can take over a stream another backend stalled (resume):
	// "prefix" marks the partial assistant message with "prefix": true
	// (DeepSeek, Mistral); "continue_final_message" sets that request
	// field (vLLM, SGLang). Empty: the backend takes no resumed answers.
	Continuation string `yaml:"continuation,omitempty" jsonschema:"enum=,enum=prefix,enum=continue_final_message"`
	// Credentials are added to requests sent to this backend only, on each
	// attempt. The key comes from a file or the environment, never from
	// this file.
	Credentials *Credentials `yaml:"credentials,omitempty"`
}

// Backend continuation styles (Backend.Continuation).
const (
	ContinuationPrefix       = "prefix"
	ContinuationFinalMessage = "continue_final_message"
)

// ResumeOn reports whether answers that stall are moved to another
// backend (resume.enabled).
func (p *Policy) ResumeOn() bool { return p.Resume.Enabled == nil || *p.Resume.Enabled }

// HoldWholeAnswers reports whether whole answers are held for resumption
// (resume on, and resume.whole_answers not false).
func (p *Policy) HoldWholeAnswers() bool {
	return p.ResumeOn() && (p.Resume.WholeAnswers == nil || *p.Resume.WholeAnswers)
}

// Credentials name where a backend's API key is kept.
type Credentials struct {
	// APIKeyEnv names an environment variable of the ext_proc service.
	APIKeyEnv string `yaml:"api_key_env,omitempty"`
	// APIKeyFile is a file holding the key (surrounding space is trimmed).
	APIKeyFile string `yaml:"api_key_file,omitempty"`
	// Header carries the key. Default "authorization", sent as
	// "Bearer <key>"; any other header gets the bare key (e.g. "api-key").
	Header string `yaml:"header,omitempty"`
}

// Endpoint is one address of a backend.
type Endpoint struct {
	// Address is host:port.
	Address string `yaml:"address"`
	// Region groups endpoints for geographic failover.
	Region string `yaml:"region,omitempty"`
	// TLS enables TLS to this endpoint.
	TLS *TLS `yaml:"tls,omitempty"`
}

// TLS is the upstream TLS setting of an endpoint.
type TLS struct {
	// SNI sent in the handshake; defaults to the endpoint's host.
	SNI string `yaml:"sni,omitempty"`
	// CAFile is a PEM bundle to verify the server; empty uses the system roots.
	CAFile string `yaml:"ca_file,omitempty"`
}

// Capabilities describe what a backend's model can do.
type Capabilities struct {
	// ContextWindow is the model's context in tokens (prompt + answer).
	ContextWindow int `yaml:"context_window" jsonschema:"minimum=1"`
	// MaxOutputTokens is the most tokens the model writes in one answer;
	// 0 means bounded by the context window only.
	MaxOutputTokens int  `yaml:"max_output_tokens,omitempty" jsonschema:"minimum=0"`
	Vision          bool `yaml:"vision,omitempty"`
	Tools           bool `yaml:"tools,omitempty"`
	JSONMode        bool `yaml:"json_mode,omitempty"`
	// Streaming defaults to true: almost every provider streams.
	Streaming *bool `yaml:"streaming,omitempty"`
	// APIs lists the endpoints served: chat, completions, embeddings.
	// Default: all three.
	APIs []string `yaml:"apis,omitempty" jsonschema:"uniqueItems=true"`
}

// Price is USD per million tokens.
type Price struct {
	Input  float64 `yaml:"input" jsonschema:"minimum=0"`
	Output float64 `yaml:"output" jsonschema:"minimum=0"`
}

// Route is a model alias clients may ask for.
type Route struct {
	// Name is the model name clients send, e.g. "auto".
	Name string `yaml:"name"`
	// Backends are the candidates; empty means every backend.
	Backends []string `yaml:"backends,omitempty"`
	// Objective orders the qualified candidates: "cheapest" (estimated cost
	// of this request) or "ordered" (the order of Backends).
	Objective string `yaml:"objective,omitempty" jsonschema:"enum=cheapest,enum=ordered,default=cheapest"`
	// Mode overrides routing.mode for requests that name this route.
	Mode string `yaml:"mode,omitempty" jsonschema:"enum=extproc,enum=wasm"`
	// Priority of requests naming this route when they carry no
	// x-detour-priority header: when healthy capacity runs short,
	// sheddable requests are refused first (429), then standard ones;
	// critical ones flow while any backend can serve them. Default
	// standard.
	Priority string `yaml:"priority,omitempty" jsonschema:"enum=critical,enum=standard,enum=sheddable,default=standard"`
	// Cache is this route's normal caching (a TTL); stale-if-error is
	// cache.stale_if_error for every route.
	Cache RouteCache `yaml:"cache,omitempty"`
	// Queue overrides the queue section for this route.
	Queue Queue `yaml:"queue,omitempty"`
}

// Routing tunes the estimate of what a request needs.
type Routing struct {
	// OutputReserveTokens is reserved for the answer when the client does
	// not set max_tokens, so a prompt that just fits is not sent to a model
	// with no room left to answer. Default 1024.
	OutputReserveTokens int `yaml:"output_reserve_tokens,omitempty" jsonschema:"minimum=0"`
	// Mode is what decides a request: "extproc", detour's ext_proc
	// service (a gRPC round trip, exact token counts), or "wasm", detour's
	// proxy-wasm plugin inside Envoy (no hop, token estimate only). A
	// route's own mode wins. Default extproc.
	Mode string `yaml:"mode,omitempty" jsonschema:"enum=extproc,enum=wasm,default=extproc"`
}

// Routing modes.
const (
	ModeExtProc = "extproc"
	ModeWasm    = "wasm"
)

// WasmSettings locate detour's proxy-wasm module (detour.wasm).
type WasmSettings struct {
	// Module is the path of detour.wasm. Default: detour.wasm beside the
	// detour executable. The control plane serves it to Envoy pinned by
	// its sha256.
	Module string `yaml:"module,omitempty"`
	// Measure loads the plugin into every Envoy to measure time to first
	// token, tokens per second and response time per backend (stats
	// detour_*). Default true when the module is found.
	Measure *bool `yaml:"measure,omitempty"`
}

// Limits bound what a client may send.
type Limits struct {
	// MaxBodyBytes is the largest request body accepted; larger gets 413.
	// Accepts a number of bytes or a size such as "8MiB". Default 8MiB.
	MaxBodyBytes Size `yaml:"max_body_bytes,omitempty"`
}

// HealthThresholds are the performance a healthy backend shows (mission
// brief, "health monitoring").
type HealthThresholds struct {
	TTFT            Duration `yaml:"ttft,omitempty"`                                        // default 500ms
	TokensPerSecond float64  `yaml:"tokens_per_second,omitempty"`                           // default 20
	TotalTime       Duration `yaml:"total_time,omitempty"`                                  // default 5s
	ErrorRate       float64  `yaml:"error_rate,omitempty" jsonschema:"minimum=0,maximum=1"` // default 0.001
}

// CircuitBreaker holds when a backend is taken out of service (mission
// brief, "circuit breakers").
type CircuitBreaker struct {
	// ErrorRate over Window above which the circuit opens. Default 0.25.
	ErrorRate float64 `yaml:"error_rate,omitempty" jsonschema:"minimum=0,maximum=1"`
	// Window for ErrorRate. Default 30s.
	Window Duration `yaml:"window,omitempty"`
	// MinRequests in Window before ErrorRate is trusted. Default 20.
	MinRequests int `yaml:"min_requests,omitempty" jsonschema:"minimum=0"`
	// SlowResponse above which a backend is degraded. Default 2s.
	SlowResponse Duration `yaml:"slow_response,omitempty"`
	// FailuresPerMinute above which traffic switches to the backup. Default 50.
	FailuresPerMinute int `yaml:"failures_per_minute,omitempty" jsonschema:"minimum=0"`
}

// Retry is exponential back-off with jitter (mission brief, "smart retries").
type Retry struct {
	// Attempts is the total number of attempts, the first included. Default 4.
	Attempts int `yaml:"attempts,omitempty" jsonschema:"minimum=1,maximum=10"`
	// BaseDelay before the first retry; it doubles each time. Default 100ms.
	BaseDelay Duration `yaml:"base_delay,omitempty"`
	// MaxDelay caps a single wait. Default 1200ms.
	MaxDelay Duration `yaml:"max_delay,omitempty"`
	// Jitter is the ± share of each delay. Default 0.5. (Envoy's own
	// back-off is fully jittered: each wait is drawn from [0, delay).)
	Jitter float64 `yaml:"jitter,omitempty" jsonschema:"minimum=0,maximum=1"`
	// PerTryTimeout abandons an attempt of a non-streaming request that has
	// not answered by then and tries the next backend; it bounds the whole
	// generation, so it must exceed the longest answer expected. When set,
	// it is this hard timeout whatever the controller computes. Default 0:
	// no hard bound; the controller may then give attempts a deadline that
	// races instead of cuts (an attempt still running at it keeps running
	// while the next backend is tried, and the first complete answer wins).
	PerTryTimeout Duration `yaml:"per_try_timeout,omitempty"`
	// FirstTokenTimeout abandons an attempt of a streaming request that has
	// not sent its first token by then (response headers and empty preamble
	// chunks do not count) and tries the next backend. A stream that has
	// started is never cut by it. Default 10s: twenty times the 500 ms time
	// to first token a healthy backend shows, above the prefill of a long
	// prompt; raise it for models that think silently before answering.
	FirstTokenTimeout Duration `yaml:"first_token_timeout,omitempty"`
	// BudgetPercent bounds concurrent retries to this share of a backend's
	// active requests, so retries cannot snowball. Default 100: one retry
	// in flight per request, enough to move a whole backend's traffic.
	BudgetPercent float64 `yaml:"budget_percent,omitempty" jsonschema:"minimum=0,maximum=100"`
	// MinRetryConcurrency is always allowed whatever the budget. Default
	// 1000: a fast-failing backend has few requests in flight, and its
	// traffic must still move whole.
	MinRetryConcurrency int `yaml:"min_retry_concurrency,omitempty" jsonschema:"minimum=0"`
}

// OutlierDetection takes a failing endpoint out of its backend's rotation
// inside Envoy.
type OutlierDetection struct {
	// ConsecutiveErrors (5xx or connect failures) before an ejection. Default 5.
	ConsecutiveErrors int `yaml:"consecutive_errors,omitempty" jsonschema:"minimum=1"`
	// Interval between ejection sweeps. Default 1s (Envoy's own is 10s).
	Interval Duration `yaml:"interval,omitempty"`
	// BaseEjectionTime, multiplied by the number of ejections. Default 10s.
	BaseEjectionTime Duration `yaml:"base_ejection_time,omitempty"`
	// MaxEjectionTime caps it. Default 5m.
	MaxEjectionTime Duration `yaml:"max_ejection_time,omitempty"`
}

// EnvoySettings describe the Envoy that detour configures.
type EnvoySettings struct {
	// Listen is where Envoy serves clients. Default 127.0.0.1:10000.
	Listen string `yaml:"listen,omitempty"`
	// Admin is Envoy's admin address. Default 127.0.0.1:9901.
	Admin string `yaml:"admin,omitempty"`
	// RequestTimeout bounds a whole request, generation included. Default 300s
	// (Envoy's own default of 15s cuts long generations).
	RequestTimeout Duration `yaml:"request_timeout,omitempty"`
	// MaxConnections bounds open client connections to Envoy. Default 50000.
	MaxConnections int `yaml:"max_connections,omitempty" jsonschema:"minimum=1"`
	// AccessLog is a file Envoy writes one JSON line to per client
	// request: status, response flags and details, duration, the backend
	// and endpoint that answered, upstream attempts. Never bodies or
	// credentials. "/dev/stdout" logs to Envoy's output. Default: off.
	AccessLog string `yaml:"access_log,omitempty"`
}

// ExtProcSettings configure detour's ext_proc service.
type ExtProcSettings struct {
	// Listen is the gRPC address Envoy calls. Default 127.0.0.1:9002.
	Listen string `yaml:"listen,omitempty"`
	// Replicas are the gRPC addresses of every ext_proc replica (host:port)
	// when several run: Envoy balances requests over them, checks each
	// with gRPC health checks every second and ejects one that stops
	// answering. Replicas share nothing but the Redis cache (cache.store:
	// redis). Default: listen alone.
	Replicas []string `yaml:"replicas,omitempty"`
	// Metrics is the Prometheus /metrics address. Default 127.0.0.1:9190.
	Metrics string `yaml:"metrics,omitempty"`
	// MessageTimeout is how long Envoy waits for each answer. Default 4s:
	// an 8 MiB body takes longer than Envoy's own 200ms default to cross
	// gRPC, and a processor that restarts within about 3 s is waited for
	// (the processing stream is retried inside this bound) rather than
	// failing the requests that arrive meanwhile. A processor that stays
	// dead costs each request this long before its 503.
	MessageTimeout Duration `yaml:"message_timeout,omitempty"`
	// FailureModeAllow lets requests through to the default route when the
	// processor is down: they go, unrewritten, to the first backend. Default
	// false: clients get a 503 in the OpenAI error shape.
	FailureModeAllow bool `yaml:"failure_mode_allow,omitempty"`
	// LogPrompts logs prompt text at debug level. Default false: prompts
	// are never logged unless a user opts in.
	LogPrompts bool `yaml:"log_prompts,omitempty"`
	// ControllerURL is where the service reads the controller's view of the
	// backends (states, shedding). Default: /v1/status on xds.metrics (on
	// loopback when that listens on every address). Unreachable: routing
	// goes on with the last view received, or as if all were healthy.
	ControllerURL string `yaml:"controller_url,omitempty"`
}

// ControllerURL is where the ext_proc service reads the controller's view.
func (p *Policy) ControllerURL() string {
	if p.ExtProc.ControllerURL != "" {
		return p.ExtProc.ControllerURL
	}
	host, port, err := net.SplitHostPort(p.XDS.Metrics)
	if err != nil {
		return ""
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/v1/status"
}

// ModeOf is the routing mode of requests that name target (a route or a
// backend's model id).
func (p *Policy) ModeOf(target string) string {
	for _, r := range p.Routes {
		if r.Name == target && r.Mode != "" {
			return r.Mode
		}
	}
	return p.Routing.Mode
}

// UsesWasmRouting reports whether any request is decided by the wasm plugin.
func (p *Policy) UsesWasmRouting() bool {
	if p.Routing.Mode == ModeWasm {
		return true
	}
	for _, r := range p.Routes {
		if r.Mode == ModeWasm {
			return true
		}
	}
	return false
}
