// Package plugin is detour's proxy-wasm plugin: the routing decision and the
// per-attempt rewrite inside Envoy (no gRPC hop), and passive measurement of
// every attempt (time to first token, tokens per second, total time,
// status) as Envoy stats named detour_*.
//
// One module serves three roles, chosen by the plugin configuration that
// detour's control plane delivers over xDS:
//   - "router", an HTTP filter before Envoy's router: reads the buffered
//     request, decides (package route, as the ext_proc service does),
//     rewrites the model, and leaves the backend order in filter state that
//     the route's matcher cluster specifier follows attempt by attempt,
//     and measures the response as the client gets it;
//   - "upstream", an upstream HTTP filter of one backend cluster (so once
//     per attempt): rewrites the model for this backend when the body
//     carries another one, strips detour's headers and counts the attempt;
//   - "measure": measurement only, for an Envoy routed by the ext_proc
//     service.
package plugin

import (
	"github.com/detourhq/detour/healthview"

	"encoding/json"
	"errors"
	"fmt"

	"github.com/detourhq/detour/route"
)

// Roles.
const (
	RoleRouter   = "router"
	RoleUpstream = "upstream"
	RoleMeasure  = "measure"
)

// Header names shared with the Envoy configuration detour generates.
const (
	HeaderBackend = "x-detour-backend"
	HeaderModel   = "x-detour-model"
	HeaderRoute   = "x-detour-route"
	HeaderError   = "x-detour-error"
	// HeaderReason tells the client why its first choice was made.
	HeaderReason = "x-detour-reason"
	// HeaderStream marks a streaming request the ext_proc service routed.
	HeaderStream = "x-detour-stream"
	// HeaderPriority is a request's priority (critical, standard,
	// sheddable); without it the route's default applies.
	HeaderPriority = route.HeaderPriorityName
	// AttemptCountHeader is Envoy's count of attempts, which detour's
	// routes add to every response (include_attempt_count_in_response)
	// and, in wasm routing, to each attempt's request.
	AttemptCountHeader = "x-envoy-attempt-count"
)

// Filter state the router role sets (Envoy stores it as "wasm." + name).
const (
	StateBackend = "detour_backend"
	StateModel   = "detour_model"
	StateRoute   = "detour_route"
	// StateStream marks a streaming request, so the route with the
	// first-token deadline takes it.
	StateStream = "detour_stream"
	// StateTryPrefix + N (1-based) names the backend of attempt N.
	StateTryPrefix = "detour_try_"
)

// Config is the plugin configuration (JSON), one per filter instance.
type Config struct {
	Role string `json:"role"`

	// Router role.
	Table        *route.Table `json:"table,omitempty"`
	Attempts     int          `json:"attempts,omitempty"`
	MaxBodyBytes int          `json:"max_body_bytes,omitempty"`
	// FailOpen lets a request through to Envoy's fallback route when the
	// plugin itself fails (a bug, not a bad request); otherwise 500.
	FailOpen bool `json:"fail_open,omitempty"`
	// Requests for these targets (route names or model ids) are left to
	// the ext_proc filter that follows; with ExtProcByDefault, every
	// target not in WasmTargets is.
	ExtProcTargets   []string `json:"extproc_targets,omitempty"`
	WasmTargets      []string `json:"wasm_targets,omitempty"`
	ExtProcByDefault bool     `json:"extproc_by_default,omitempty"`
	// Priorities are the routes' default priorities (critical, standard,
	// sheddable) by route name, for requests without x-detour-priority;
	// a route not named here is standard.
	Priorities map[string]string `json:"priorities,omitempty"`
	// Health is where the controller's view is read; nil: every backend
	// counts as healthy and nothing is shed.
	Health *HealthConfig `json:"health,omitempty"`

	// Upstream role: the backend this instance serves (set in a cluster's
	// own filters), or, for the router's upstream filters shared by every
	// cluster, each backend's model id by name: the attempt's backend is
	// its cluster (xds.cluster_name).
	Backend string            `json:"backend,omitempty"`
	Model   string            `json:"model,omitempty"`
	Models  map[string]string `json:"models,omitempty"`
	// ObserveOnly: the upstream role only counts Backend's attempts for
	// local demotion, changing nothing: in a backend's own filters (a
	// backend with credentials), where the processor's per-attempt stage
	// rewrites the request and adds the key.
	ObserveOnly bool `json:"observe_only,omitempty"`
}

// ParseConfig decodes and checks a plugin configuration.
func ParseConfig(b []byte) (*Config, error) {
	if len(b) == 0 {
		return nil, errors.New("empty plugin configuration")
	}
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("plugin configuration: %w", err)
	}
	switch c.Role {
	case RoleRouter:
		if c.Table == nil {
			return nil, errors.New("plugin configuration: role router needs a table")
		}
		if c.Attempts <= 0 {
			c.Attempts = 1
		}
		if err := c.Health.check(); err != nil {
			return nil, fmt.Errorf("plugin configuration: health: %w", err)
		}
		for name, prio := range c.Priorities {
			if !healthview.ValidPriority(prio) || prio == "" {
				return nil, fmt.Errorf("plugin configuration: route %q: unknown priority %q", name, prio)
			}
		}
	case RoleUpstream:
		if c.ObserveOnly {
			if c.Backend == "" {
				return nil, errors.New("plugin configuration: role upstream, observe_only, needs backend")
			}
			break
		}
		if (c.Backend == "" || c.Model == "") && len(c.Models) == 0 {
			return nil, errors.New("plugin configuration: role upstream needs backend and model, or models")
		}
	case RoleMeasure:
	default:
		return nil, fmt.Errorf("plugin configuration: unknown role %q (want router, upstream or measure)", c.Role)
	}
	return &c, nil
}
