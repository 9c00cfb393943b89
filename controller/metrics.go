package controller

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the controller's Prometheus series, on the control plane's
// /metrics.
type Metrics struct {
	State        *prometheus.GaugeVec
	Transitions  *prometheus.CounterVec
	Evaluations  prometheus.Counter
	EvalTime     prometheus.Histogram
	SignalErrors prometheus.Counter
	SignalAge    *prometheus.GaugeVec
	Pushes       *prometheus.CounterVec
	Setting      *prometheus.GaugeVec
	Shed         *prometheus.GaugeVec
	Probes       *prometheus.CounterVec
	EndpointOuts *prometheus.CounterVec
	EndpointsOut *prometheus.GaugeVec
	// SilenceWakeups counts evaluations brought forward by the silence
	// check.
	SilenceWakeups prometheus.Counter
	// ReachChecks counts reachability checks of OPEN backends by result.
	ReachChecks *prometheus.CounterVec

	// detour's view of each backend, as the controller judged it.
	Requests  *prometheus.GaugeVec
	ErrorRate *prometheus.GaugeVec
	P95       *prometheus.GaugeVec
	TTFT      *prometheus.GaugeVec
	Rate      *prometheus.GaugeVec
	Total     *prometheus.GaugeVec
}

// NewMetrics registers the controller's series on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	gauge := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
	}
	m := &Metrics{
		State: gauge("detour_controller_backend_state", "1 for each backend's current state (HEALTHY, DEGRADED, OPEN, HALF_OPEN), 0 for the others.", "backend", "state"),
		Transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_controller_transitions_total",
			Help: "Backend state changes, by backend and states; each is also one log line with its reason.",
		}, []string{"backend", "from", "to"}),
		Evaluations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "detour_controller_evaluations_total",
			Help: "Controller evaluations (read signals, decide, push).",
		}),
		EvalTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "detour_controller_evaluation_seconds",
			Help:    "Time of one evaluation, signal reading included.",
			Buckets: prometheus.ExponentialBuckets(100e-6, 4, 9),
		}),
		SignalErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "detour_controller_signal_errors_total",
			Help: "Evaluations whose signals could not all be read (the error is logged); stale signals count as bad news.",
		}),
		SignalAge: gauge("detour_controller_signal_age_seconds", "Age of the newest signal per backend at the last evaluation.", "backend"),
		Pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_controller_pushes_total",
			Help: "Changes of computed settings pushed to Envoy, by resource type (endpoint, cluster, route).",
		}, []string{"type"}),
		Setting: gauge("detour_controller_setting", "Settings the controller pushes per backend (consecutive_errors, retry_budget_percent, min_retry_concurrency, max_requests).", "backend", "setting"),
		Shed:    gauge("detour_controller_shed_level", "Priorities a route sheds: 0 none, 1 every sheddable request, 2 every standard and sheddable one; fractions between (1.5: every sheddable request and half the standard ones).", "route"),
		Probes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_probe_results_total",
			Help: "Health probe results by backend, probe and result (ok, failed, slow).",
		}, []string{"backend", "probe", "result"}),
		EndpointOuts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_controller_endpoint_outs_total",
			Help: "Endpoints taken out of service on their own (answering nothing, or a backend's endpoint erring), by backend and cause (unanswering, erring); each is also one log line.",
		}, []string{"backend", "cause"}),
		SilenceWakeups: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "detour_controller_silence_wakeups_total",
			Help: "Evaluations brought forward because an endpoint in service went silent (controller.silence_check).",
		}),
		ReachChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_controller_reach_checks_total",
			Help: "Reachability checks (GET /v1/models, no tokens) of backends whose circuit is OPEN, by backend and result (reachable, unreachable); one turning reachable after a long outage ends the cool-down.",
		}, []string{"backend", "result"}),
		EndpointsOut: gauge("detour_controller_endpoints_out", "Endpoints of each backend currently out of service (pushed UNHEALTHY while the backend's others serve).", "backend"),
		Requests:     gauge("detour_backend_window_requests", "Requests to each backend over the controller's window (Envoy's counts, retried attempts included).", "backend"),
		ErrorRate:    gauge("detour_backend_error_ratio", "Each backend's error rate over the controller's window.", "backend"),
		P95:          gauge("detour_backend_response_p95_seconds", "Each backend's upstream response time p95 over the window (Envoy's histogram).", "backend"),
		TTFT:         gauge("detour_backend_ttft_p95_seconds", "Each backend's time to first token p95 over the window (detour's measurements; probes when idle).", "backend"),
		Rate:         gauge("detour_backend_output_tokens_per_second", "Each backend's median generation rate over the window (detour's measurements; probes when idle).", "backend"),
		Total:        gauge("detour_backend_total_time_p95_seconds", "Each backend's total response time p95 over the window (detour's measurements; probes when idle).", "backend"),
	}
	reg.MustRegister(m.State, m.Transitions, m.Evaluations, m.EvalTime, m.SignalErrors, m.SignalAge, m.Pushes,
		m.Setting, m.Shed, m.Probes, m.EndpointOuts, m.EndpointsOut, m.SilenceWakeups, m.ReachChecks, m.Requests, m.ErrorRate, m.P95, m.TTFT, m.Rate, m.Total)
	return m
}
