// Package route is detour's routing core: it reads an OpenAI-style request
// body, derives what the request needs from a model, and picks the backend
// that serves it (filter → score → pick).
//
// It imports the standard library only, because the proxy-wasm plugin
// compiles it for GOOS=wasip1 as well as the ext_proc service natively.
package route

// Kind is the API endpoint a request was sent to.
type Kind uint8

const (
	// KindUnknown means the endpoint is not known; ParseRequest infers it
	// from the body's shape (messages → chat, prompt → completion,
	// input → embedding).
	KindUnknown Kind = iota
	// KindChat is POST /v1/chat/completions.
	KindChat
	// KindCompletion is POST /v1/completions.
	KindCompletion
	// KindEmbedding is POST /v1/embeddings.
	KindEmbedding
)

// String returns the endpoint's short name, used in metrics and errors.
func (k Kind) String() string {
	switch k {
	case KindChat:
		return "chat"
	case KindCompletion:
		return "completion"
	case KindEmbedding:
		return "embedding"
	default:
		return "unknown"
	}
}

// KindFromPath maps a request path (query string allowed) to its Kind.
func KindFromPath(path string) Kind {
	for i := 0; i < len(path); i++ {
		if path[i] == '?' {
			path = path[:i]
			break
		}
	}
	switch path {
	case "/v1/chat/completions", "/chat/completions":
		return KindChat
	case "/v1/completions", "/completions":
		return KindCompletion
	case "/v1/embeddings", "/embeddings":
		return KindEmbedding
	}
	return KindUnknown
}

// Span is a half-open byte range [Start, End) of a request body.
type Span struct {
	Start, End int
}

// Len is the span's length in bytes.
func (s Span) Len() int { return s.End - s.Start }

// Request is what the routing core needs to know about one request body.
// It is filled by ParseRequest and designed to be reused across requests
// (Reset keeps the Texts backing array) so the hot path does not allocate.
type Request struct {
	Kind Kind

	// Model is the value of the body's "model" field, unescaped.
	Model string
	// ModelSpan is where the model value sits in the body, including its
	// quotes, so the body can be rewritten without re-encoding it.
	// Zero when the body has no model field.
	ModelSpan Span

	Stream bool
	// TemperatureZero: the body's temperature is the number 0 (the
	// response cache reuses such answers).
	TemperatureZero bool
	// MaxOutputTokens is max_completion_tokens, else max_tokens; 0 when the
	// client did not ask for a limit.
	MaxOutputTokens int

	HasImages bool // chat: a content part of type image_url / input_image
	HasTools  bool // chat: a non-empty tools or functions array
	JSONMode  bool // response_format type json_object or json_schema

	// Messages counts chat messages, Images the image parts in them.
	Messages int
	Images   int

	// Texts are the spans of prompt text in the body: chat message text
	// content, completion prompts, embedding inputs. The spans cover the
	// JSON string literals including quotes and escapes; UnquoteInto decodes
	// them for an exact tokenizer.
	Texts []Span
	// TextBytes is the total encoded length of Texts; ToolBytes the encoded
	// length of the tools / functions definitions, which count as prompt too.
	TextBytes int
	ToolBytes int
	// TokenIDs counts prompt tokens sent as token ids (a completion prompt
	// or embedding input may be integer arrays); they need no tokenizer.
	TokenIDs int

	// PromptTokens is the prompt size in tokens. ParseRequest sets a
	// conservative estimate (EstimateTokens); a caller with an exact
	// tokenizer may overwrite it before calling Decide.
	PromptTokens int
	// PromptTokensExact records that PromptTokens came from a tokenizer.
	PromptTokensExact bool
}

// Reset clears r for reuse, keeping the Texts backing array.
func (r *Request) Reset() {
	texts := r.Texts[:0]
	*r = Request{Texts: texts}
}
