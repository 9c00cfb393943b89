package policy

import "github.com/detourhq/detour/route"

var apiKinds = map[string]route.Kind{
	"chat":        route.KindChat,
	"completions": route.KindCompletion,
	"embeddings":  route.KindEmbedding,
}

// RouteTable converts a validated, defaulted policy into the routing core's
// table.
func (p *Policy) RouteTable() route.Table {
	t := route.Table{OutputReserve: p.Routing.OutputReserveTokens}
	for _, b := range p.Backends {
		c := b.Capabilities
		var apis route.APIs
		for _, a := range c.APIs {
			apis |= route.APIsOf(apiKinds[a])
		}
		t.Backends = append(t.Backends, route.Backend{
			Name:  b.Name,
			Model: b.Model,
			Caps: route.Capabilities{
				ContextWindow:   c.ContextWindow,
				MaxOutputTokens: c.MaxOutputTokens,
				Vision:          c.Vision,
				Tools:           c.Tools,
				JSONMode:        c.JSONMode,
				Streaming:       c.Streaming == nil || *c.Streaming,
				APIs:            apis,
			},
			InputPrice:  b.Price.Input,
			OutputPrice: b.Price.Output,
			Priority:    b.Priority,
		})
	}
	for _, r := range p.Routes {
		obj := route.Cheapest
		if r.Objective == ObjectiveOrdered {
			obj = route.Ordered
		}
		t.Aliases = append(t.Aliases, route.Alias{Name: r.Name, Backends: r.Backends, Objective: obj})
	}
	return t
}
