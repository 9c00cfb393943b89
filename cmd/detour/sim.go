package main

import (
	"context"
	"flag"
	"io"
	"os"
	"strings"
	"time"

	"github.com/detourhq/detour/sim"
)

func runSim(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("sim", stderr)
	name := fs.String("name", "sim", "name reported in the x-sim-name response header")
	listen := fs.String("listen", "127.0.0.1:8101", "serving address")
	admin := fs.String("admin", "", "fault admin address (default: serving port + 1000)")
	var models stringList
	fs.Var(&models, "model", "model id advertised by /v1/models (repeatable; default: any)")
	keyEnv := fs.String("api-key-env", "", "require Authorization: Bearer $VAR (names an environment variable)")
	tokens := fs.Int("tokens", 16, "completion length when a request sets no max_tokens")
	structured := fs.Bool("structured", true, "answer JSON-mode requests with a JSON object and tool requests with a tool call, as a real model would")
	capacity := fs.Int("capacity", 0, "completions in flight before answering 429 with Retry-After: 1, as a provider's concurrency limit (0: unbounded)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := newLogger(stderr, *logLevel, "text")
	if err != nil {
		return err
	}
	cfg := sim.Config{Name: *name, Addr: *listen, AdminAddr: *admin, Models: models, DefaultTokens: *tokens, Structured: *structured, Capacity: *capacity, Logger: log}
	if *keyEnv != "" {
		cfg.APIKey = os.Getenv(*keyEnv)
	}
	s, err := sim.New(cfg)
	if err != nil {
		return err
	}
	if err := s.Start(ctx); err != nil {
		return err
	}
	log.Info("simulated provider serving", "name", *name, "addr", s.Addr(), "admin", s.AdminAddr())
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.Close(sctx)
}

// stringList is a repeatable string flag.
type stringList []string

var _ flag.Value = (*stringList)(nil)

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }
