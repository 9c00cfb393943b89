package sim

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
)

// Config configures a [Server]. The zero value is usable: it serves on a
// random loopback port with a random admin port, no auth and no model list.
type Config struct {
	// Name is reported in the x-sim-name response header so tests can tell
	// which simulated backend answered. Default "sim".
	Name string
	// Addr is the serving address, host:port. Port 0 picks a free port
	// (read it back with [Server.Addr]). Default "127.0.0.1:0".
	Addr string
	// AdminAddr is the admin address. Empty derives it from Addr: same host,
	// port + 1000; when Addr's port is 0 the admin port is 0 (random) too.
	AdminAddr string
	// Models are the model ids advertised by GET /v1/models. When non-empty,
	// requests for any other model get 404 model_not_found, as OpenAI
	// answers. Empty means any model is served.
	Models []string
	// APIKey, when set, is required as "Authorization: Bearer <APIKey>" on
	// the serving listener. Empty disables auth.
	APIKey string
	// DefaultTokens is how many completion tokens a response has when
	// neither max_tokens nor x-sim-tokens shortens or overrides it.
	// Default 16.
	DefaultTokens int
	// EmbeddingDims is the length of embedding vectors (the model's native
	// dimension). Default 8.
	EmbeddingDims int
	// AlwaysUsage sends the usage chunk at the end of every stream. Without
	// it (the default) the usage chunk is sent only when the request asks
	// with stream_options.include_usage, as OpenAI does.
	AlwaysUsage bool
	// Structured answers a chat request that asks for JSON (response_format
	// json_object or json_schema) with a JSON object, and one that offers
	// tools with a call of the tool_choice function (else the first one),
	// its arguments filled from the function's parameter schema. Default
	// false: every answer is the plain "tok0 tok1 …" text.
	Structured bool
	// Capacity bounds the completions in flight, as a provider's
	// concurrency limit does: past it a request gets 429
	// rate_limit_exceeded with Retry-After: 1. 0 = unbounded.
	Capacity int
	// Seed seeds the generator that decides which requests a fault with
	// rate < 1 hits. 0 picks a random seed. With a fixed seed, the hit
	// sequence is deterministic for a given order of requests.
	Seed int64
	// Logger receives the simulator's logs. nil discards them. Prompts and
	// keys are never logged.
	Logger *slog.Logger
}

const (
	defaultName          = "sim"
	defaultAddr          = "127.0.0.1:0"
	defaultTokens        = 16
	defaultEmbeddingDims = 8
	adminPortOffset      = 1000

	// maxTokens bounds DefaultTokens, x-sim-tokens and drop_after_tokens.
	maxTokens = 1_000_000
	// maxEmbeddingDims bounds EmbeddingDims.
	maxEmbeddingDims = 65536
)

// normalize validates cfg, fills in defaults and works out the admin
// address to bind.
func (c Config) normalize() (Config, error) {
	if c.Name == "" {
		c.Name = defaultName
	}
	if c.Addr == "" {
		c.Addr = defaultAddr
	}
	port, err := splitPort(c.Addr)
	if err != nil {
		return c, fmt.Errorf("sim: Addr %q: %w", c.Addr, err)
	}
	if c.AdminAddr == "" {
		host, _, _ := net.SplitHostPort(c.Addr)
		adminPort := 0
		if port != 0 {
			adminPort = port + adminPortOffset
			if adminPort > 65535 {
				return c, fmt.Errorf("sim: Addr %q: derived admin port %d is out of range; set AdminAddr", c.Addr, adminPort)
			}
		}
		c.AdminAddr = net.JoinHostPort(host, strconv.Itoa(adminPort))
	} else if _, err := splitPort(c.AdminAddr); err != nil {
		return c, fmt.Errorf("sim: AdminAddr %q: %w", c.AdminAddr, err)
	}
	if c.Capacity < 0 {
		return c, fmt.Errorf("sim: Capacity %d: must be >= 0", c.Capacity)
	}
	switch {
	case c.DefaultTokens < 0 || c.DefaultTokens > maxTokens:
		return c, fmt.Errorf("sim: DefaultTokens %d out of range [0, %d]", c.DefaultTokens, maxTokens)
	case c.DefaultTokens == 0:
		c.DefaultTokens = defaultTokens
	}
	switch {
	case c.EmbeddingDims < 0 || c.EmbeddingDims > maxEmbeddingDims:
		return c, fmt.Errorf("sim: EmbeddingDims %d out of range [0, %d]", c.EmbeddingDims, maxEmbeddingDims)
	case c.EmbeddingDims == 0:
		c.EmbeddingDims = defaultEmbeddingDims
	}
	models := make([]string, 0, len(c.Models))
	for _, m := range c.Models {
		if m == "" {
			return c, errors.New("sim: Models contains an empty model id")
		}
		models = append(models, m)
	}
	c.Models = models
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// splitPort returns the numeric port of a host:port address.
func splitPort(addr string) (int, error) {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return 0, fmt.Errorf("port %q is not a number in [0, 65535]", p)
	}
	return port, nil
}
