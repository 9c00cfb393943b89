package extproc

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the ext_proc service's Prometheus series. They are registered
// on a registry the caller owns, never on the global one.
type Metrics struct {
	Decisions     *prometheus.CounterVec
	DecisionTime  prometheus.Histogram
	Errors        *prometheus.CounterVec
	Rejections    *prometheus.CounterVec
	TokenCounts   *prometheus.CounterVec
	StreamsActive prometheus.Gauge
	PolicyVersion prometheus.Gauge
	PolicyReloads *prometheus.CounterVec
	BodyBytes     prometheus.Histogram
	Panics        prometheus.Counter
	// Shed counts requests refused by priority while capacity is short.
	Shed *prometheus.CounterVec
	// LocalDemotions counts backends this processor ranked OPEN on its
	// own evidence (demote.go).
	LocalDemotions *prometheus.CounterVec
	// HealthView and HealthViewErrors follow the controller's view.
	HealthView       prometheus.Gauge
	HealthViewErrors prometheus.Counter
	Attempts         *prometheus.CounterVec
	// FirstTokenHolds and FirstTokenWait describe the first-token stage.
	FirstTokenHolds *prometheus.CounterVec
	FirstTokenWait  *prometheus.HistogramVec
	// Resumes counts streams that stalled mid-answer (resume.go);
	// ResumeGap is the client's wait from the last token to the first
	// token of the continuation.
	Resumes   *prometheus.CounterVec
	ResumeGap prometheus.Histogram
	// QueueDepth, QueueOutcomes and QueueWait describe the queue of
	// requests whose backends are all OPEN.
	QueueDepth    *prometheus.GaugeVec
	QueueOutcomes *prometheus.CounterVec
	QueueWait     *prometheus.HistogramVec
	// CacheServed counts answers served from the response cache, by route
	// and kind (hit, stale) and why a stale one was served (open, failed).
	CacheServed *prometheus.CounterVec
}

// NewMetrics creates the series and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_extproc_decisions_total",
			Help: "Routing decisions, by the model name asked for (route), the backend chosen and why.",
		}, []string{"route", "backend", "reason"}),
		DecisionTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "detour_extproc_decision_duration_seconds",
			Help:    "Time from a complete request body to the routing answer: parse, token count, decide, rewrite.",
			Buckets: []float64{5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3},
		}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_extproc_errors_total",
			Help: "Requests answered with an error by detour, by kind (invalid_body, body_too_large, unknown_model, unsatisfiable, unknown_path, internal).",
		}, []string{"kind"}),
		Rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_extproc_unsatisfiable_total",
			Help: "Requests no backend could serve, by route and by the requirement that rejected the most candidates.",
		}, []string{"route", "requirement"}),
		TokenCounts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_extproc_prompt_token_counts_total",
			Help: "How prompt sizes were measured: estimate (fast, conservative) or exact (tokenizer, run only when the estimate could change the decision).",
		}, []string{"method"}),
		StreamsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "detour_extproc_streams_active",
			Help: "ext_proc streams currently open from Envoy.",
		}),
		PolicyVersion: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "detour_extproc_policy_loaded_timestamp_seconds",
			Help: "When the policy in force was loaded.",
		}),
		PolicyReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_extproc_policy_reloads_total",
			Help: "Policy loads, by result (ok, invalid).",
		}, []string{"result"}),
		BodyBytes: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "detour_extproc_request_body_bytes",
			Help:    "Size of request bodies routed.",
			Buckets: prometheus.ExponentialBuckets(256, 4, 10),
		}),
		Panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "detour_extproc_panics_total",
			Help: "Panics recovered while handling a request (each answered with a 500); any is a bug worth reporting.",
		}),
	}
	m.Shed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "detour_extproc_shed_total",
		Help: "Requests refused with 429 because their route's healthy capacity is short, by route and priority.",
	}, []string{"route", "priority"})
	m.LocalDemotions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "detour_extproc_local_demotions_total",
		Help: "Times this processor stopped routing to a backend on its own evidence (at least 5 attempts, and half of those routed to it, retried elsewhere within a second) until the controller's view ranks it below HEALTHY or 5 s pass.",
	}, []string{"backend"})
	m.HealthView = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "detour_extproc_health_view_version",
		Help: "Version of the controller's health view in use (0: none received; every backend taken as healthy).",
	})
	m.HealthViewErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "detour_extproc_health_view_errors_total",
		Help: "Failed reads of the controller's health view; the last view received stays in use.",
	})
	m.Attempts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "detour_extproc_upstream_attempts_total",
		Help: "Attempts prepared for a backend by the per-attempt (upstream) stage, by whether the body had to be rewritten for it (rewritten: a fallback with another model id; continuation: a resumed answer marked for this backend).",
	}, []string{"backend", "body"})
	m.FirstTokenHolds = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "detour_extproc_first_token_holds_total",
		Help: "Streaming attempts whose response headers the first-token stage held, by backend and outcome: token (released on the first token), ended (the body ended first), limit (64 KiB without a token), not_a_stream (an error or a whole answer: not held), abandoned (Envoy ended the attempt first: retry.first_token_timeout, retried on the next backend, or the client left).",
	}, []string{"backend", "outcome"})
	m.FirstTokenWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "detour_extproc_first_token_hold_seconds",
		Help:    "How long a streaming attempt's response headers were held, from their arrival to the first token: the provider's silence after accepting the stream.",
		Buckets: []float64{1e-3, 5e-3, 25e-3, 100e-3, 250e-3, 500e-3, 1, 2.5, 5, 10, 30, 60},
	}, []string{"backend"})
	m.QueueDepth = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "detour_queue_depth",
		Help: "Requests waiting in a route's queue because every backend that can serve them is OPEN.",
	}, []string{"route"})
	m.QueueOutcomes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "detour_queue_outcomes_total",
		Help: "Requests that entered the queue, by route and outcome: released (a backend recovered), timeout (503 after max_wait), full (503 at once: max_depth reached), cancelled (the client or Envoy gave up).",
	}, []string{"route", "outcome"})
	m.QueueWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "detour_queue_wait_seconds",
		Help:    "Time requests spent in the queue, by outcome.",
		Buckets: []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60},
	}, []string{"outcome"})
	m.CacheServed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "detour_cache_served_total",
		Help: "Answers served from the response cache, by route and result (hit: fresh, within the route's TTL; stale: every backend OPEN or failed) and why (ttl, open, failed).",
	}, []string{"route", "result", "why"})
	m.Resumes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "detour_extproc_resumes_total",
		Help: "Streams that went silent for resume.stall_timeout after their first token, by the backend that stalled and outcome: resumed (another backend finished the answer), failed (the continuation failed: the client got an error event), finished (the answer was complete but its end never came: detour ended it), not_resumable (tool calls, several choices, no backend able to continue, or resume.max_resumes reached).",
	}, []string{"backend", "outcome"})
	m.ResumeGap = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "detour_extproc_resume_gap_seconds",
		Help:    "For resumed streams, the client's wait between the last token of the stalled backend and the first token of the continuation.",
		Buckets: []float64{0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30},
	})
	reg.MustRegister(m.QueueDepth, m.QueueOutcomes, m.QueueWait, m.CacheServed, m.Resumes, m.ResumeGap)
	reg.MustRegister(m.Shed, m.LocalDemotions, m.HealthView, m.HealthViewErrors, m.FirstTokenHolds, m.FirstTokenWait, m.Attempts, m.Panics, m.Decisions, m.DecisionTime, m.Errors, m.Rejections, m.TokenCounts,
		m.StreamsActive, m.PolicyVersion, m.PolicyReloads, m.BodyBytes)
	return m
}
