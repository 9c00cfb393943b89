// Package probe sends detour's contextual health probes: sample chat
// requests of several kinds (short text, long context, tool call, JSON
// mode, image), taken from the policy's probes section and sent straight to
// one endpoint of a backend, not through Envoy. Each answer is checked by
// its rule (status, regex, JSON fields, tool name) and timed like traffic:
// time to first token, tokens per second and total time, against the
// policy's health thresholds. Two checks go with them: a request without
// credentials must be refused, and a malformed request must get a 4xx in
// OpenAI's error shape.
//
// A [Prober] sends one round of probes to a backend; the [Scheduler]
// decides when a backend is due for its next round: often when it is idle
// or suspect, seldom when it is busy and healthy, and never beyond its
// hourly budget. Both are driven by the caller (the controller), which
// counts each failed Result as a failed request of the backend and logs
// what it wants: the package starts no goroutines and logs nothing.
// Results never carry an API key or a prompt's text.
package probe
