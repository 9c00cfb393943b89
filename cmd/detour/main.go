// Command detour is failover and capability routing for LLM APIs, built as
// Envoy extensions: one binary, several subcommands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"up", "run the whole local stack: simulated providers, xds, ext_proc and Envoy", runUp},
		{"extproc", "run the ext_proc gRPC service that routes each request", runExtProc},
		{"xds", "run the control plane that serves Envoy its config and follows the policy file", runXDS},
		{"status", "show the controller's view: each backend's state and why, and the settings pushed", runStatus},
		{"bootstrap", "print the Envoy config generated from a policy", runBootstrap},
		{"validate", "check policy files; problems are reported as file:line:column", runValidate},
		{"sim", "run a simulated OpenAI-compatible provider with scripted faults", runSim},
		{"schema", "print the policy file's JSON Schema (for editors)", runSchema},
		{"version", "print detour's version", runVersion},
	}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, `detour: failover and capability routing for LLM APIs, built on Envoy.

Usage:
  detour <command> [flags]

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, `
Run 'detour <command> --help' for a command's flags.
Without --policy, commands use the embedded quickstart policy
(examples/quickstart/policy.yaml).
`)
}

// exitError carries a process exit code through the error chain.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdout, stderr)
		var ee *exitError
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.As(err, &ee):
			if ee.err != nil && ee.err.Error() != "" {
				fmt.Fprintln(stderr, ee.err)
			}
			return ee.code
		default:
			fmt.Fprintf(stderr, "detour %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "detour: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func runVersion(_ context.Context, _ []string, stdout, _ io.Writer) error {
	fmt.Fprintln(stdout, "detour", version)
	return nil
}

// newLogger writes JSON or text logs to w at the given level.
func newLogger(w io.Writer, level string, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("detour "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}
