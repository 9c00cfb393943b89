// Package signals reads the live signals detour's controller acts on: it
// scrapes an Envoy admin /stats/prometheus endpoint into per-backend
// cumulative counters (Scraper, Parse), and turns successive scrapes into
// windowed rates per backend (Window, Stats). A Source hands the
// controller every backend's Stats: EnvoySource scrapes each Envoy itself
// and merges their windows (MergeStats), PrometheusSource asks a
// Prometheus server that scrapes them, with the same definitions.
//
// # What Envoy counts, and what counts as an error here
//
// Measured on Envoy 1.40 (see testdata/capture.sh), a backend cluster's
// attempts end up in different stats depending on how they ended:
//
//   - A response Envoy passed downstream: upstream_rq_<N>xx and
//     upstream_rq_<code> (Prometheus: envoy_cluster_upstream_rq_xx and
//     envoy_cluster_upstream_rq). Counters carry no _total suffix.
//   - A response Envoy threw away to retry (say a 503 that failed over to
//     the next backend): retry.upstream_rq_<N>xx and retry.upstream_rq_<code>
//     only (envoy_cluster_retry_upstream_rq_xx). An error rate read from
//     upstream_rq_xx alone misses every error that was failed over.
//   - A refused or failed connection: upstream_cx_connect_fail, no code.
//   - An upstream reset: upstream_cx_destroy_remote_with_active_rq (HTTP/1)
//     or upstream_rq_rx_reset (HTTP/2 stream reset), no code when retried.
//   - A per-try timeout: upstream_rq_per_try_timeout; no code when retried,
//     a 504 in upstream_rq_5xx when it was the last attempt.
//
// So a window's Errors are 5xx responses (passed on or retried) + connect
// failures + resets + per-try timeouts, and its Requests are every response
// (any class, passed on or retried) + connect failures + resets + per-try
// timeouts. A per-try timeout on the last attempt is counted twice (as its
// 504 and as a timeout), which errs towards bad news. 4xx responses are
// requests but not errors: they are the client's fault. 429s are counted
// separately (TooManyRequests) and are not errors either: a rate-limited
// backend is healthy but full, which calls for shifting load, not for
// opening its circuit.
//
// The request time histogram (upstream_rq_time, milliseconds) only holds
// responses that were passed downstream, and Envoy merges histograms at its
// stats flush (every 5 s by default), so latency lags the counters by up to
// that much.
//
// detour's own measurements come from its wasm measure plugin, as
// histograms labelled with the backend that answered:
// detour_ttft_milliseconds (first byte of the body), detour_response_milliseconds
// (last byte) and detour_output_tokens_per_second (streams with usage).
// Stats report their p95, p95 and median over the window.
//
// Through Prometheus, a counter Envoy creates on first use (upstream_rq_5xx
// on the first 5xx) starts its series at its first value, which increase()
// cannot see: the first increments of each series are missing there, and
// the totals (current values) are exact.
package signals
