package main

import (
	"context"
	"fmt"
	"io"

	"github.com/detourhq/detour/xds"
)

func runBootstrap(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bootstrap", stderr)
	var pf policyFlag
	pf.register(fs)
	static := fs.Bool("static", true, "inline every resource (no xDS server needed)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !*static {
		return fmt.Errorf("only --static bootstraps exist so far")
	}
	p, err := pf.load()
	if err != nil {
		return err
	}
	b, err := xds.StaticBootstrap(p)
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
