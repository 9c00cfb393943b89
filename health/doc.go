// Package health is the per-backend state machine of detour's controller:
// HEALTHY, DEGRADED, OPEN and HALF_OPEN, decided from Observations
// (windowed Envoy stats plus detour's own TTFT, token-rate and total-time
// measurements) with an injected clock. It does no I/O and starts no
// goroutines; every change of state comes back as a Transition with a
// human-readable reason, for one log line and one metric.
//
// The rules, with DefaultConfig's figures:
//
//   - HEALTHY or DEGRADED → OPEN at once (no dwell) when the error rate is
//     over 25 % with at least 20 requests in the window, or there were over
//     50 failures in the last minute.
//   - HEALTHY → DEGRADED when p95 > 2 s (from at least 10 responses), TTFT
//     > 500 ms, tokens/s < 20, total time > 5 s or error rate > 0.1 %; or
//     when the signals are stale.
//   - DEGRADED → HEALTHY once every measured signal is under its threshold
//     × 0.8 (tokens/s over 20 ÷ 0.8) and the signals are fresh. A signal
//     not measured (no traffic, fewer than 10 responses) is no evidence of
//     slowness: a DEGRADED backend that gets no traffic goes back to
//     HEALTHY after the dwell and is judged again on the traffic it gets.
//   - OPEN → HALF_OPEN after a cool-down of 10 s, doubling with every
//     re-opening up to 5 min; it starts again from 10 s once the backend
//     has stayed out of OPEN for 2 min after recovering.
//   - HALF_OPEN → OPEN on any failed trial request or probe; → HEALTHY
//     after 5 successful ones and none failed. The trial traffic itself is
//     the caller's to send: without any, HALF_OPEN lasts.
//   - Every transition other than into OPEN waits for 10 s in the current
//     state (the first transition of a new backend does not).
//
// Stale signals are suspect, never healthy: a HEALTHY backend with stale
// signals becomes DEGRADED, a DEGRADED one cannot recover, a HALF_OPEN one
// cannot be promoted, and no verdict of OPEN is drawn from them either.
// Staleness never opens a circuit by itself, even when it lasts: it
// usually means the observer lost Envoy's admin port, for every backend at
// once, and opening them all would turn a monitoring outage into a traffic
// outage. DEGRADED backends keep serving when nothing better is left.
//
// After HALF_OPEN → HEALTHY the 30 s window still holds the failures that
// opened the backend; until the window has slid past the recovery, the
// machine judges only the outcomes since then (from the monotonic totals
// in each Observation), so a recovered backend is not re-opened by its
// own past.
package health
