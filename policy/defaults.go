package policy

import "time"

// Defaults from the mission brief. Every later component reads its figures
// from the Policy after ApplyDefaults, never from its own constants.
const (
	DefaultEnvoyListen    = "127.0.0.1:10000"
	DefaultEnvoyAdmin     = "127.0.0.1:9901"
	DefaultExtProcListen  = "127.0.0.1:9002"
	DefaultExtProcMetrics = "127.0.0.1:9190"
	DefaultXDSListen      = "127.0.0.1:18000"
	DefaultXDSMetrics     = "127.0.0.1:9191"

	DefaultMaxBodyBytes        Size = 8 << 20
	DefaultOutputReserveTokens      = 1024
	DefaultRequestTimeout           = 300 * time.Second
	DefaultMessageTimeout           = 4 * time.Second
	DefaultMaxConnections           = 50000

	// Health thresholds ("health monitoring").
	DefaultTTFT            = 500 * time.Millisecond
	DefaultTokensPerSecond = 20.0
	DefaultTotalTime       = 5 * time.Second
	DefaultErrorRate       = 0.001

	// Circuit breaker ("circuit breakers").
	DefaultBreakerErrorRate   = 0.25
	DefaultBreakerWindow      = 30 * time.Second
	DefaultBreakerMinRequests = 20
	DefaultSlowResponse       = 2 * time.Second
	DefaultFailuresPerMinute  = 50

	// Retry schedule ("smart retries"): 100, 200, 400, 800 ms ± 50 %,
	// capped at 1.2 s.
	DefaultRetryAttempts  = 4
	DefaultRetryBaseDelay = 100 * time.Millisecond
	DefaultRetryMaxDelay  = 1200 * time.Millisecond
	DefaultRetryJitter    = 0.5
	DefaultRetryBudget    = 100.0
	// DefaultMinRetryConc: concurrent retries always allowed. A backend
	// that fails fast has few requests in flight, so a percentage of them
	// is a tiny budget, while every retry waits out a back-off: at 200 req/s
	// about 11 retries are pending at once. With 10, `make bench` saw 479
	// of 4,000 requests fail on retry overflow during a provider outage.
	// Attempts per request stay capped by retry.attempts.
	DefaultMinRetryConc = 1000
	// DefaultFirstTokenTimeout: a stream without its first token by then
	// goes to the next backend. Far above a healthy time to first token
	// (DefaultTTFT, 500 ms) and the prefill of a long prompt (a few
	// seconds), so only a stalled provider hits it; far below the request
	// timeout, so the client still gets its answer from another backend.
	DefaultFirstTokenTimeout = 10 * time.Second
	// DefaultStallTimeout: a started stream silent this long is resumed
	// on another backend.
	DefaultStallTimeout = 3 * time.Second
	// DefaultMaxResumes: one move per answer.
	DefaultMaxResumes = 1

	// Outlier detection: fast sweeps, since a provider that fails five
	// times in a row is not coming back within a second.
	DefaultConsecutiveErrors = 5
	DefaultOutlierInterval   = time.Second
	DefaultBaseEjection      = 10 * time.Second
	DefaultMaxEjection       = 5 * time.Minute

	// DefaultCredentialHeader carries a backend's API key as a bearer token.
	DefaultCredentialHeader = "authorization"

	ObjectiveCheapest = "cheapest"
	ObjectiveOrdered  = "ordered"

	APIOpenAI = "openai"
)

// AllAPIs are the endpoint families a backend may serve.
var AllAPIs = []string{"chat", "completions", "embeddings"}

// ApplyDefaults fills every unset field with its default. It is idempotent.
func (p *Policy) ApplyDefaults() {
	if p.Version == 0 {
		p.Version = 1
	}
	for i := range p.Backends {
		b := &p.Backends[i]
		if b.API == "" {
			b.API = APIOpenAI
		}
		if b.Capabilities.Streaming == nil {
			t := true
			b.Capabilities.Streaming = &t
		}
		if b.Credentials != nil && b.Credentials.Header == "" {
			b.Credentials.Header = DefaultCredentialHeader
		}
		if len(b.Capabilities.APIs) == 0 {
			b.Capabilities.APIs = append([]string(nil), AllAPIs...)
		}
	}
	for i := range p.Routes {
		if p.Routes[i].Objective == "" {
			p.Routes[i].Objective = ObjectiveCheapest
		}
	}
	setInt(&p.Routing.OutputReserveTokens, DefaultOutputReserveTokens)
	if p.Routing.Mode == "" {
		p.Routing.Mode = ModeExtProc
	}
	if p.Limits.MaxBodyBytes == 0 {
		p.Limits.MaxBodyBytes = DefaultMaxBodyBytes
	}
	setDur(&p.Health.TTFT, DefaultTTFT)
	setFloat(&p.Health.TokensPerSecond, DefaultTokensPerSecond)
	setDur(&p.Health.TotalTime, DefaultTotalTime)
	setFloat(&p.Health.ErrorRate, DefaultErrorRate)
	setFloat(&p.CircuitBreaker.ErrorRate, DefaultBreakerErrorRate)
	setDur(&p.CircuitBreaker.Window, DefaultBreakerWindow)
	setInt(&p.CircuitBreaker.MinRequests, DefaultBreakerMinRequests)
	setDur(&p.CircuitBreaker.SlowResponse, DefaultSlowResponse)
	setInt(&p.CircuitBreaker.FailuresPerMinute, DefaultFailuresPerMinute)
	setInt(&p.Retry.Attempts, DefaultRetryAttempts)
	setDur(&p.Retry.BaseDelay, DefaultRetryBaseDelay)
	setDur(&p.Retry.MaxDelay, DefaultRetryMaxDelay)
	setFloat(&p.Retry.Jitter, DefaultRetryJitter)
	setFloat(&p.Retry.BudgetPercent, DefaultRetryBudget)
	setInt(&p.Retry.MinRetryConcurrency, DefaultMinRetryConc)
	setDur(&p.Retry.FirstTokenTimeout, DefaultFirstTokenTimeout)
	setInt(&p.OutlierDetection.ConsecutiveErrors, DefaultConsecutiveErrors)
	setDur(&p.OutlierDetection.Interval, DefaultOutlierInterval)
	setDur(&p.OutlierDetection.BaseEjectionTime, DefaultBaseEjection)
	setDur(&p.OutlierDetection.MaxEjectionTime, DefaultMaxEjection)
	setStr(&p.Envoy.Listen, DefaultEnvoyListen)
	setStr(&p.Envoy.Admin, DefaultEnvoyAdmin)
	setDur(&p.Envoy.RequestTimeout, DefaultRequestTimeout)
	setInt(&p.Envoy.MaxConnections, DefaultMaxConnections)
	setStr(&p.ExtProc.Listen, DefaultExtProcListen)
	setStr(&p.ExtProc.Metrics, DefaultExtProcMetrics)
	setStr(&p.XDS.Listen, DefaultXDSListen)
	setStr(&p.XDS.Metrics, DefaultXDSMetrics)
	setDur(&p.ExtProc.MessageTimeout, DefaultMessageTimeout)
	if p.Resume.Enabled == nil {
		on := true
		p.Resume.Enabled = &on
	}
	setDur(&p.Resume.StallTimeout, DefaultStallTimeout)
	setInt(&p.Resume.MaxResumes, DefaultMaxResumes)
	p.applyControllerDefaults()
	p.applyProbeDefaults()
	p.applyCacheDefaults()
}

func setInt(v *int, d int) {
	if *v == 0 {
		*v = d
	}
}

func setFloat(v *float64, d float64) {
	if *v == 0 {
		*v = d
	}
}

func setDur(v *Duration, d time.Duration) {
	if *v == 0 {
		*v = Duration(d)
	}
}

func setStr(v *string, d string) {
	if *v == "" {
		*v = d
	}
}
