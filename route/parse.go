package route

import (
	"strconv"
	"unicode/utf8"
)

// ParseRequest reads the OpenAI-style request body of the given kind into
// req, which it resets first. It scans the body once and keeps only spans
// and counts, so with a reused req the only allocation is the Model
// string, and not even that when the model is the one req held before.
//
// Unknown fields are skipped (but validated), keys may come in any order,
// and a duplicated key takes its last value, as in encoding/json. null
// means absent for every field. For KindUnknown the kind is inferred from
// the body: messages → chat, else prompt → completion, else input →
// embedding.
//
// Errors are *ParseError with a message fit for the client, and leave req
// reset, with one exception: when the only problem is a missing model
// ("model is required"), req is otherwise complete, so a caller that
// applies a default model can ignore that error and use RewriteModel.
func ParseRequest(kind Kind, body []byte, req *Request) error {
	prevModel := req.Model
	req.Reset()
	p := parser{req: req, kind: kind}
	p.s.buf = body
	if err := p.parse(); err != nil {
		req.Reset()
		return err
	}
	return p.finish(prevModel)
}

// section is what one occurrence of messages, prompt or input held. They
// are kept apart so that a later duplicate key replaces an earlier one
// and so the kind can be inferred after the scan.
type section struct {
	present bool
	// texts is the range of req.Texts this section appended.
	texts     [2]int
	items     int // chat messages
	images    int
	callBytes int // assistant tool_calls / function_call
	tokenIDs  int
}

type parser struct {
	s    scanner
	req  *Request
	kind Kind

	model        Span // zero if absent; covers null for "model": null
	modelPresent bool
	modelEsc     bool

	stream                  bool
	temperatureZero         bool
	maxTokens, maxCompleted int
	hasMax, hasMaxCompleted bool

	toolBytes, funcBytes int
	tools, funcs         bool // non-empty
	jsonMode             bool

	chat, prompt, input section
}

// field returns key if the parser reads that top-level field for its
// kind, else nil: another endpoint's field, such as prompt in a chat body,
// is skipped like any unknown parameter. While the kind is unknown every
// field is read, to infer it.
func (p *parser) field(key []byte) []byte {
	var k Kind
	switch string(key) {
	case "messages", "tools", "functions", "response_format":
		k = KindChat
	case "prompt":
		k = KindCompletion
	case "input":
		k = KindEmbedding
	default:
		return key
	}
	if p.kind == KindUnknown || p.kind == k {
		return key
	}
	return nil
}

func (p *parser) parse() error {
	s := &p.s
	switch s.peek() {
	case '{':
	case 0:
		if s.pos >= len(s.buf) {
			return &ParseError{Offset: 0, Msg: "request body is empty"}
		}
		return s.syntaxErr(s.pos, "expected a value")
	default:
		// Distinguish "not JSON" from "JSON but not an object".
		if err := s.skipValue(); err != nil {
			return err
		}
		return &ParseError{Offset: 0, Msg: "request body must be a JSON object"}
	}
	if err := s.enter(); err != nil {
		return err
	}
	for first := true; ; first = false {
		key, more, err := s.nextKey(first)
		if err != nil {
			return err
		}
		if !more {
			break
		}
		switch string(p.field(key)) {
		case "model":
			err = p.parseModel()
		case "messages":
			err = p.parseMessages()
		case "prompt":
			err = p.parseInputs(&p.prompt, "prompt")
		case "input":
			err = p.parseInputs(&p.input, "input")
		case "stream":
			err = p.parseBool(&p.stream, "stream")
		case "temperature":
			err = p.parseTemperature()
		case "max_tokens":
			err = p.parseCount(&p.maxTokens, &p.hasMax, "max_tokens")
		case "max_completion_tokens":
			err = p.parseCount(&p.maxCompleted, &p.hasMaxCompleted, "max_completion_tokens")
		case "tools":
			err = p.parseTools(&p.toolBytes, &p.tools, "tools")
		case "functions":
			err = p.parseTools(&p.funcBytes, &p.funcs, "functions")
		case "response_format":
			err = p.parseResponseFormat()
		default:
			err = s.skipValue()
		}
		if err != nil {
			return err
		}
	}
	if s.peek(); s.pos < len(s.buf) {
		return s.syntaxErr(s.pos, "unexpected data after the top-level object")
	}
	return nil
}

// typeErr reports that the value at pos has the wrong type for field. If
// the value is not even valid JSON, that syntax error is reported instead
// as the more precise one.
func (p *parser) typeErr(field, want string) error {
	off := p.s.pos
	if err := p.s.skipValue(); err != nil {
		return err
	}
	return &ParseError{Offset: off, Msg: field + " must be " + want}
}

// isNull consumes a null at pos, if there is one.
func (p *parser) isNull() (bool, error) {
	if p.s.buf[p.s.pos] != 'n' {
		return false, nil
	}
	return true, p.s.scanLiteral()
}

func (p *parser) parseModel() error {
	s := &p.s
	start := s.pos
	if null, err := p.isNull(); null || err != nil {
		// Keep the span so RewriteModel replaces the null rather than
		// adding a second model key that the null would override.
		p.model, p.modelPresent = Span{start, s.pos}, false
		return err
	}
	if s.buf[s.pos] != '"' {
		return p.typeErr("model", "a string")
	}
	sp, esc, err := s.scanString()
	p.model, p.modelPresent, p.modelEsc = sp, true, esc
	return err
}

func (p *parser) parseBool(dst *bool, field string) error {
	s := &p.s
	switch s.buf[s.pos] {
	case 't', 'f':
		*dst = s.buf[s.pos] == 't'
		return s.scanLiteral()
	case 'n':
		*dst = false
		return s.scanLiteral()
	}
	return p.typeErr(field, "a boolean")
}

// parseTemperature notes whether the temperature is a number equal to 0
// (0, 0.0, -0, 0e3...). Anything else is skipped as before: routing does
// not judge it.
func (p *parser) parseTemperature() error {
	s := &p.s
	start := s.pos
	if err := s.skipValue(); err != nil {
		return err
	}
	p.temperatureZero = isZeroNumber(s.buf[start:s.pos])
	return nil
}

// isZeroNumber reports whether lit is a JSON number whose value is 0.
func isZeroNumber(lit []byte) bool {
	if len(lit) > 0 && lit[0] == '-' {
		lit = lit[1:]
	}
	if len(lit) == 0 || lit[0] != '0' {
		return false
	}
	for _, c := range lit {
		switch {
		case c == 'e' || c == 'E':
			return true // 0, 0.0 with any exponent
		case c == '0' || c == '.':
		default:
			return false
		}
	}
	return true
}

// parseCount reads a token limit: a non-negative integer or null.
func (p *parser) parseCount(dst *int, set *bool, field string) error {
	s := &p.s
	if null, err := p.isNull(); null || err != nil {
		*dst, *set = 0, false
		return err
	}
	start := s.pos
	if c := s.buf[start]; c < '0' || c > '9' {
		return p.typeErr(field, "a non-negative integer")
	}
	natural, err := s.scanNumber()
	if err != nil {
		return err
	}
	if !natural {
		return &ParseError{Offset: start, Msg: field + " must be a non-negative integer"}
	}
	n, ok := atoi(s.buf[start:s.pos])
	if !ok {
		return &ParseError{Offset: start, Msg: field + " is too large"}
	}
	*dst, *set = n, true
	return nil
}

// atoi parses plain decimal digits, reporting false on overflow.
func atoi(b []byte) (int, bool) {
	const cutoff = int(^uint(0)>>1) / 10
	n := 0
	for _, c := range b {
		if n > cutoff {
			return 0, false
		}
		n = n*10 + int(c-'0')
		if n < 0 {
			return 0, false
		}
	}
	return n, true
}

// parseTools reads a tools or functions array: it only needs its size and
// whether it is empty.
func (p *parser) parseTools(bytes *int, nonEmpty *bool, field string) error {
	s := &p.s
	start := s.pos
	if null, err := p.isNull(); null || err != nil {
		*bytes, *nonEmpty = 0, false
		return err
	}
	if s.buf[start] != '[' {
		return p.typeErr(field, "an array")
	}
	if err := s.skipValue(); err != nil {
		return err
	}
	// An empty array defines no tools and adds nothing to the prompt.
	*bytes, *nonEmpty = 0, false
	for _, c := range s.buf[start+1 : s.pos-1] {
		if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			*bytes, *nonEmpty = s.pos-start, true
			break
		}
	}
	return nil
}

func (p *parser) parseResponseFormat() error {
	s := &p.s
	p.jsonMode = false
	if null, err := p.isNull(); null || err != nil {
		return err
	}
	if s.buf[s.pos] != '{' {
		return p.typeErr("response_format", "an object")
	}
	if err := s.enter(); err != nil {
		return err
	}
	for first := true; ; first = false {
		key, more, err := s.nextKey(first)
		if err != nil || !more {
			return err
		}
		if string(key) != "type" {
			if err := s.skipValue(); err != nil {
				return err
			}
			continue
		}
		if null, err := p.isNull(); null || err != nil {
			p.jsonMode = false
			if err != nil {
				return err
			}
			continue
		}
		if s.buf[s.pos] != '"' {
			return p.typeErr("response_format.type", "a string")
		}
		sp, esc, err := s.scanString()
		if err != nil {
			return err
		}
		switch string(s.text(sp, esc)) {
		case "json_object", "json_schema":
			p.jsonMode = true
		default:
			p.jsonMode = false
		}
	}
}

// addText records the string literal at sp as prompt text.
func (p *parser) addText(sp Span) {
	p.req.Texts = append(p.req.Texts, sp)
}

func (p *parser) parseMessages() error {
	s := &p.s
	if null, err := p.isNull(); null || err != nil {
		p.chat = section{}
		return err
	}
	if s.buf[s.pos] != '[' {
		return p.typeErr("messages", "an array")
	}
	sec := section{present: true}
	sec.texts[0] = len(p.req.Texts)
	if err := s.enter(); err != nil {
		return err
	}
	for first := true; ; first = false {
		more, err := s.nextElem(first)
		if err != nil {
			return err
		}
		if !more {
			break
		}
		if s.buf[s.pos] != '{' {
			return p.typeErr(index("messages", sec.items), "an object")
		}
		if err := p.parseMessage(&sec); err != nil {
			return err
		}
		sec.items++
	}
	sec.texts[1] = len(p.req.Texts)
	p.chat = sec
	return nil
}

// parseMessage reads message number sec.items into sec. Its text content
// counts as prompt, and so do earlier tool calls the model made, whose
// arguments can be large.
func (p *parser) parseMessage(sec *section) error {
	s := &p.s
	if err := s.enter(); err != nil {
		return err
	}
	var (
		contentSet           bool
		contentTexts         int // len(req.Texts) before the content
		contentImages        int
		toolCalls, funcCalls int
	)
	for first := true; ; first = false {
		key, more, err := s.nextKey(first)
		if err != nil {
			return err
		}
		if !more {
			break
		}
		switch string(key) {
		case "content":
			if contentSet { // duplicate key: the last one wins
				p.req.Texts = p.req.Texts[:contentTexts]
				sec.images -= contentImages
			}
			contentSet = true
			contentTexts = len(p.req.Texts)
			before := sec.images
			err = p.parseContent(sec)
			contentImages = sec.images - before
		case "tool_calls":
			start := s.pos
			err = s.skipValue()
			toolCalls = s.pos - start
		case "function_call":
			start := s.pos
			err = s.skipValue()
			funcCalls = s.pos - start
		default:
			err = s.skipValue()
		}
		if err != nil {
			return err
		}
	}
	sec.callBytes += toolCalls + funcCalls
	return nil
}

func (p *parser) parseContent(sec *section) error {
	s := &p.s
	switch s.buf[s.pos] {
	case 'n':
		return s.scanLiteral()
	case '"':
		sp, _, err := s.scanString()
		if err == nil {
			p.addText(sp)
		}
		return err
	case '[':
	default:
		return p.typeErr(index("messages", sec.items)+".content", "a string, an array of content parts, or null")
	}
	if err := s.enter(); err != nil {
		return err
	}
	for i, first := 0, true; ; i, first = i+1, false {
		more, err := s.nextElem(first)
		if err != nil {
			return err
		}
		if !more {
			return nil
		}
		if s.buf[s.pos] != '{' {
			return p.typeErr(p.partName(sec, i), "an object")
		}
		if err := p.parsePart(sec, i); err != nil {
			return err
		}
	}
}

func (p *parser) partName(sec *section, i int) string {
	return index(index("messages", sec.items)+".content", i)
}

// parsePart reads content part i of the current message. Its type may
// come after its text, so both are noted and judged at the end.
func (p *parser) parsePart(sec *section, i int) error {
	s := &p.s
	if err := s.enter(); err != nil {
		return err
	}
	var typ, text Span
	var typEsc bool
	for first := true; ; first = false {
		key, more, err := s.nextKey(first)
		if err != nil {
			return err
		}
		if !more {
			break
		}
		var dst *Span
		switch string(key) {
		case "type":
			dst = &typ
		case "text":
			dst = &text
		default:
			if err := s.skipValue(); err != nil {
				return err
			}
			continue
		}
		if null, err := p.isNull(); null || err != nil {
			*dst = Span{}
			if err != nil {
				return err
			}
			continue
		}
		if s.buf[s.pos] != '"' {
			return p.typeErr(p.partName(sec, i)+"."+string(key), "a string")
		}
		sp, esc, err := s.scanString()
		if err != nil {
			return err
		}
		*dst = sp
		if dst == &typ {
			typEsc = esc
		}
	}
	if typ == (Span{}) {
		return nil
	}
	switch string(s.text(typ, typEsc)) {
	case "text", "input_text":
		if text != (Span{}) {
			p.addText(text)
		}
	case "image_url", "input_image":
		sec.images++
	}
	return nil
}

// parseInputs reads a completion prompt or an embedding input: a string,
// or an array of strings, token ids, or arrays of token ids.
func (p *parser) parseInputs(sec *section, field string) error {
	if null, err := p.isNull(); null || err != nil {
		*sec = section{}
		return err
	}
	n := section{present: true}
	n.texts[0] = len(p.req.Texts)
	err := p.parseInputValue(&n, field)
	n.texts[1] = len(p.req.Texts)
	*sec = n
	return err
}

func (p *parser) parseInputValue(n *section, field string) error {
	s := &p.s
	switch s.buf[s.pos] {
	case '"':
		sp, _, err := s.scanString()
		if err == nil {
			p.addText(sp)
		}
		return err
	case '[':
	default:
		return p.typeErr(field, "a string or an array")
	}
	if err := s.enter(); err != nil {
		return err
	}
	for i, first := 0, true; ; i, first = i+1, false {
		more, err := s.nextElem(first)
		if err != nil || !more {
			return err
		}
		switch c := s.buf[s.pos]; {
		case c == '"':
			sp, _, err := s.scanString()
			if err != nil {
				return err
			}
			p.addText(sp)
		case '0' <= c && c <= '9' || c == '-':
			err = p.tokenID(index(field, i))
			n.tokenIDs++
		case c == '[':
			err = p.tokenIDs(n, index(field, i))
		default:
			err = p.typeErr(index(field, i), "a string, a token id or an array of token ids")
		}
		if err != nil {
			return err
		}
	}
}

func (p *parser) tokenIDs(sec *section, field string) error {
	s := &p.s
	if err := s.enter(); err != nil {
		return err
	}
	for i, first := 0, true; ; i, first = i+1, false {
		more, err := s.nextElem(first)
		if err != nil || !more {
			return err
		}
		if err := p.tokenID(index(field, i)); err != nil {
			return err
		}
		sec.tokenIDs++
	}
}

// tokenID consumes a token id, which must be a non-negative integer.
func (p *parser) tokenID(field string) error {
	s := &p.s
	start := s.pos
	if c := s.buf[start]; c == '-' || '0' <= c && c <= '9' {
		natural, err := s.scanNumber()
		if err != nil || natural {
			return err
		}
		return &ParseError{Offset: start, Msg: field + " must be a token id (a non-negative integer)"}
	}
	return p.typeErr(field, "a token id (a non-negative integer)")
}

// index returns "field[i]", for error messages only.
func index(field string, i int) string {
	return field + "[" + strconv.Itoa(i) + "]"
}

// finish checks what the body must have and fills req.
func (p *parser) finish(prevModel string) error {
	req := p.req
	kind := p.kind
	if kind == KindUnknown {
		switch {
		case p.chat.present:
			kind = KindChat
		case p.prompt.present:
			kind = KindCompletion
		case p.input.present:
			kind = KindEmbedding
		default:
			req.Reset()
			return &ParseError{Offset: 0, Msg: "request body has no messages, prompt or input"}
		}
	}
	req.Kind = kind

	var sec *section
	switch kind {
	case KindChat:
		sec = &p.chat
		if !sec.present {
			req.Reset()
			return &ParseError{Offset: 0, Msg: "messages is required"}
		}
		req.Messages = sec.items
		req.Images = sec.images
		req.HasImages = sec.images > 0
		req.HasTools = p.tools || p.funcs
		req.ToolBytes = p.toolBytes + p.funcBytes + sec.callBytes
		req.JSONMode = p.jsonMode
	case KindCompletion:
		sec = &p.prompt
		if !sec.present {
			req.Reset()
			return &ParseError{Offset: 0, Msg: "prompt is required"}
		}
	case KindEmbedding:
		sec = &p.input
		if !sec.present {
			req.Reset()
			return &ParseError{Offset: 0, Msg: "input is required"}
		}
	default:
		req.Reset()
		return &ParseError{Offset: 0, Msg: "unsupported endpoint kind " + strconv.Itoa(int(kind))}
	}

	// Keep only the chosen section's texts; earlier duplicates and, for an
	// inferred kind, the other sections' texts are dropped.
	n := copy(req.Texts, req.Texts[sec.texts[0]:sec.texts[1]])
	req.Texts = req.Texts[:n]
	for _, t := range req.Texts {
		req.TextBytes += t.Len()
	}
	req.TokenIDs = sec.tokenIDs

	req.Stream = p.stream
	req.TemperatureZero = p.temperatureZero
	switch {
	case p.hasMaxCompleted:
		req.MaxOutputTokens = p.maxCompleted
	case p.hasMax:
		req.MaxOutputTokens = p.maxTokens
	}
	req.PromptTokens = EstimateTokens(req, p.s.buf)
	req.PromptTokensExact = false

	req.ModelSpan = p.model
	if !p.modelPresent {
		return &ParseError{Offset: 0, Msg: "model is required"}
	}
	req.Model = p.modelString(prevModel)
	return nil
}

// modelString decodes the model name, reusing prev when it is the same
// name so a Request reused for one model does not allocate at all.
func (p *parser) modelString(prev string) string {
	lit := p.s.buf[p.model.Start:p.model.End]
	raw := lit[1 : len(lit)-1]
	if !p.modelEsc && utf8.Valid(raw) {
		if string(raw) == prev {
			return prev
		}
		return string(raw)
	}
	var buf [64]byte
	dec, err := UnquoteInto(buf[:0], lit)
	if err != nil {
		return "" // unreachable: scanString validated the literal
	}
	if string(dec) == prev {
		return prev
	}
	return string(dec)
}
