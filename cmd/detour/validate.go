package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/detourhq/detour/policy"
)

func runValidate(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("validate", stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: detour validate FILE...\n\nChecks policy files. Every problem is printed as file:line:column: message (hint: …).\nExit status: 0 all valid, 2 problems found, 1 a file could not be read.")
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return &exitError{code: 2, err: errors.New("")}
	}
	code := 0
	for _, path := range fs.Args() {
		_, err := policy.LoadFile(path)
		var ve *policy.ValidationError
		switch {
		case err == nil:
			fmt.Fprintf(stdout, "%s: ok\n", path)
		case errors.As(err, &ve):
			fmt.Fprintln(stderr, ve.Error())
			code = max(code, 2)
		default:
			fmt.Fprintf(stderr, "%s: %v\n", path, err)
			code = max(code, 1)
		}
	}
	if code != 0 {
		return &exitError{code: code, err: errors.New("")}
	}
	return nil
}
