package main

import (
	"context"
	"io"
	"log/slog"
	"os"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"

	"github.com/detourhq/detour/xds"
)

func runBootstrap(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bootstrap", stderr)
	var pf policyFlag
	pf.register(fs)
	static := fs.Bool("static", false, "inline every resource: no control plane needed, no hot reload")
	host, _ := os.Hostname()
	nodeID := fs.String("node-id", "envoy-"+host, "the Envoy's node id (unique per Envoy)")
	region := fs.String("region", "", "the Envoy's region: the backends' endpoints there come first")
	delta := fs.Bool("delta", false, "use incremental (delta) xDS")
	snippet := fs.Bool("snippet", false, "print only the pieces an existing Envoy adds to join detour (keeping its own listeners)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	p, err := pf.load()
	if err != nil {
		return err
	}
	if *snippet {
		sn, err := xds.JoinSnippet(p, xds.DynamicOptions{Region: *region, Delta: *delta})
		if err != nil {
			return err
		}
		out, err := xds.MarshalSnippet(sn)
		if err != nil {
			return err
		}
		_, err = stdout.Write(out)
		return err
	}
	var b *bootstrapv3.Bootstrap
	if *static {
		// The plugin is read from disk (no control plane serves it).
		wm, werr := findWasmModule(p, slog.New(slog.DiscardHandler))
		if werr != nil {
			return werr
		}
		b, err = xds.StaticBootstrapFor(p, xds.Options{Wasm: wm})
	} else {
		b, err = xds.DynamicBootstrap(p, xds.DynamicOptions{NodeID: *nodeID, Region: *region, Delta: *delta})
	}
	if err != nil {
		return err
	}
	out, err := xds.MarshalBootstrap(b)
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}
