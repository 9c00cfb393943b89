package route

// APIs is a set of Kinds a backend serves.
type APIs uint8

// Has reports whether k is in the set.
func (a APIs) Has(k Kind) bool { return a&(1<<k) != 0 }

// APIsOf builds a set.
func APIsOf(kinds ...Kind) APIs {
	var a APIs
	for _, k := range kinds {
		a |= 1 << k
	}
	return a
}

// Capabilities is what a backend's model can do.
type Capabilities struct {
	ContextWindow   int  `json:"context_window"`
	MaxOutputTokens int  `json:"max_output_tokens,omitempty"` // 0: bounded by the context only
	Vision          bool `json:"vision,omitempty"`
	Tools           bool `json:"tools,omitempty"`
	JSONMode        bool `json:"json_mode,omitempty"`
	Streaming       bool `json:"streaming,omitempty"`
	APIs            APIs `json:"apis"`
}

// Backend is one routable deployment.
type Backend struct {
	Name  string       `json:"name"`
	Model string       `json:"model"` // model id sent upstream
	Caps  Capabilities `json:"caps"`
	// Prices in USD per million tokens.
	InputPrice  float64 `json:"input_price,omitempty"`
	OutputPrice float64 `json:"output_price,omitempty"`
	// Priority is a tier: lower tiers always come first.
	Priority int `json:"priority,omitempty"`
}

// Objective orders the candidates that qualify.
type Objective uint8

const (
	// Cheapest prefers the lowest estimated cost of this request.
	Cheapest Objective = iota
	// Ordered keeps the route's listed order.
	Ordered
)

// Alias is a model name clients may send that maps to candidate backends.
type Alias struct {
	Name      string    `json:"name"`
	Backends  []string  `json:"backends"` // names, in the route's order
	Objective Objective `json:"objective"`
}

// Table is everything the router needs, built from a policy. It is plain
// data (JSON-encodable) so the wasm plugin can receive it over xDS.
type Table struct {
	Backends []Backend `json:"backends"`
	Aliases  []Alias   `json:"aliases"`
	// OutputReserve is the answer room, in tokens, assumed when a request
	// sets no max_tokens.
	OutputReserve int `json:"output_reserve"`
}
