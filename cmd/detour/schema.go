package main

import (
	"context"
	"io"

	"github.com/detourhq/detour/policy"
)

func runSchema(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("schema", stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	b, err := policy.JSONSchema()
	if err != nil {
		return err
	}
	_, err = stdout.Write(b)
	return err
}
