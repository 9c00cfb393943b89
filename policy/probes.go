package policy

// Probes configure the contextual health probes. (Filled in by the probe work.)
type Probes struct {
	// Disabled turns probing off. Default false.
	Disabled bool `yaml:"disabled,omitempty"`
}

func (p *Policy) applyProbeDefaults() {}

func (p *Policy) validateProbes(v *validator) {}
