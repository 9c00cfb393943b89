package main

import (
	"flag"

	"github.com/detourhq/detour/examples"
	"github.com/detourhq/detour/policy"
)

// policyFlag is --policy: a file path, or empty for the embedded quickstart.
type policyFlag struct{ path string }

func (f *policyFlag) register(fs *flag.FlagSet) {
	fs.StringVar(&f.path, "policy", "", "policy file (default: the embedded quickstart policy)")
}

func (f *policyFlag) load() (*policy.Policy, error) {
	if f.path == "" {
		return policy.Parse("<embedded quickstart policy>", examples.QuickstartPolicy)
	}
	return policy.LoadFile(f.path)
}
