package probe

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/detourhq/detour/policy"
)

// Prober sends probe rounds to backends. Its methods are safe for
// concurrent use; it starts no goroutines.
type Prober struct {
	pol     *policy.Policy
	now     func() time.Time
	image   string
	rules   map[string]rule // by prompt name
	clients map[string][]*http.Client
	owned   []*http.Transport // TLS transports made here, closed by Close

	mu   sync.Mutex
	next map[string]int // the endpoint each backend's next round goes to
}

// Option configures a Prober.
type Option func(*Prober)

// WithClock sets the clock probes are timed with. Default time.Now.
func WithClock(now func() time.Time) Option { return func(p *Prober) { p.now = now } }

// New makes a Prober for a defaulted, valid policy. client sends every
// probe (nil: a new http.Client); its Timeout should be 0, since each probe
// is bounded by probes.timeout. For TLS endpoints its transport is cloned
// with each endpoint's SNI and CA bundle, read here.
func New(pol *policy.Policy, client *http.Client, opts ...Option) (*Prober, error) {
	if client == nil {
		client = &http.Client{}
	}
	p := &Prober{pol: pol, now: time.Now, rules: map[string]rule{}, clients: map[string][]*http.Client{}, next: map[string]int{}}
	for _, o := range opts {
		o(p)
	}
	img, err := testImage()
	if err != nil {
		return nil, err
	}
	p.image = img
	for _, q := range pol.Probes.Prompts {
		r, err := compileRule(q)
		if err != nil {
			return nil, err
		}
		p.rules[q.Name] = r
	}
	for i := range pol.Backends {
		b := &pol.Backends[i]
		for _, ep := range b.Endpoints {
			c, err := p.clientFor(client, ep)
			if err != nil {
				p.Close()
				return nil, fmt.Errorf("backend %s endpoint %s: %w", b.Name, ep.Address, err)
			}
			p.clients[b.Name] = append(p.clients[b.Name], c)
		}
	}
	return p, nil
}

// clientFor is base for a plain endpoint, or a copy of it with the
// endpoint's TLS settings.
func (p *Prober) clientFor(base *http.Client, ep policy.Endpoint) (*http.Client, error) {
	if ep.TLS == nil {
		return base, nil
	}
	var tr *http.Transport
	switch t := base.Transport.(type) {
	case nil:
		tr = http.DefaultTransport.(*http.Transport).Clone()
	case *http.Transport:
		tr = t.Clone()
	default:
		return nil, fmt.Errorf("the probe client's transport %T cannot take TLS settings", t)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName(ep)}
	if ep.TLS.CAFile != "" {
		pem, err := os.ReadFile(ep.TLS.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s holds no PEM certificate", ep.TLS.CAFile)
		}
		cfg.RootCAs = pool
	}
	tr.TLSClientConfig = cfg
	p.owned = append(p.owned, tr)
	c := *base
	c.Transport = tr
	return &c, nil
}

// serverName is the SNI of a TLS endpoint: its own, else its host.
func serverName(ep policy.Endpoint) string {
	if ep.TLS != nil && ep.TLS.SNI != "" {
		return ep.TLS.SNI
	}
	host, _, err := net.SplitHostPort(ep.Address)
	if err != nil {
		return ep.Address
	}
	return host
}

// Close drops the idle connections of the TLS transports New made.
func (p *Prober) Close() {
	for _, tr := range p.owned {
		tr.CloseIdleConnections()
	}
}

// Requests is how many requests Probe sends to backend per round.
func (p *Prober) Requests(backend string) int {
	b := p.backend(backend)
	if b == nil {
		return 0
	}
	return p.pol.ProbeRequests(b)
}

func (p *Prober) backend(name string) *policy.Backend {
	for i := range p.pol.Backends {
		if p.pol.Backends[i].Name == name {
			return &p.pol.Backends[i]
		}
	}
	return nil
}

// target is where one round goes.
type target struct {
	b      *policy.Backend
	addr   string
	url    string
	host   string // Host header; empty: the address
	client *http.Client
	key    string
	keyErr error
}

// Probe sends one round to backend: each applicable prompt, then the auth
// and error checks, one after the other (a round is a few small requests;
// sending them at once would only add load), to one endpoint, the next one
// each round. It returns a Result per request, or nil for an unknown
// backend or when probing is disabled. When ctx ends, the round stops and
// the request it cut short is left out: it says nothing of the backend.
func (p *Prober) Probe(ctx context.Context, backend string) []Result {
	b := p.backend(backend)
	if b == nil || p.pol.Probes.Disabled || len(b.Endpoints) == 0 {
		return nil
	}
	t := p.pick(b)
	t.key, t.keyErr = readKey(b.Credentials)
	var out []Result
	add := func(r Result) bool {
		if ctx.Err() != nil {
			return false
		}
		r.Reason = redact(r.Reason, t.key, p.pol.Probes.Prompts)
		out = append(out, r)
		return true
	}
	for _, q := range p.pol.ProbePromptsFor(b) {
		if !add(p.prompt(ctx, t, q)) {
			return out
		}
	}
	if p.pol.ProbeChecksAuth(b) && !add(p.authCheck(ctx, t)) {
		return out
	}
	if p.pol.ProbeChecksErrors(b) {
		add(p.errorCheck(ctx, t))
	}
	return out
}

// pick chooses the endpoint of b's round, round-robin.
func (p *Prober) pick(b *policy.Backend) *target {
	p.mu.Lock()
	i := p.next[b.Name] % len(b.Endpoints)
	p.next[b.Name] = i + 1
	p.mu.Unlock()
	ep := b.Endpoints[i]
	scheme := "http"
	t := &target{b: b, addr: ep.Address, client: p.clients[b.Name][i]}
	if ep.TLS != nil {
		scheme = "https"
		if ep.TLS.SNI != "" {
			t.host = ep.TLS.SNI
		}
	}
	t.url = scheme + "://" + ep.Address + "/v1/chat/completions"
	return t
}

// send posts body to t, with the key when withKey.
func (p *Prober) send(ctx context.Context, t *target, body []byte, withKey bool) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if t.host != "" {
		req.Host = t.host
	}
	if withKey && t.b.Credentials != nil {
		h := t.b.Credentials.Header
		if h == "" || strings.EqualFold(h, policy.DefaultCredentialHeader) {
			req.Header.Set("Authorization", "Bearer "+t.key)
		} else {
			req.Header.Set(h, t.key)
		}
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	return resp, nil
}

// prompt sends one prompt and judges its answer.
func (p *Prober) prompt(ctx context.Context, t *target, q policy.ProbePrompt) Result {
	r := Result{Backend: t.b.Name, Endpoint: t.addr, Probe: q.Name, Kind: q.Kind, OK: true, At: p.now()}
	if t.keyErr != nil {
		r.fail(t.keyErr.Error())
		return r
	}
	body, err := buildBody(p.pol, t.b, q, p.image)
	if err != nil {
		r.fail(err.Error())
		return r
	}
	timeout := p.pol.Probes.Timeout.D()
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := p.now()
	r.At = start
	resp, err := p.send(rctx, t, body, true)
	if err != nil {
		r.Total = p.now().Sub(start)
		r.fail(transportReason(rctx, err, timeout, "no answer"))
		return r
	}
	defer func() { _ = resp.Body.Close() }()
	r.Status = resp.StatusCode
	if resp.StatusCode != q.Expect.Status {
		r.fail(statusReason(resp, q.Expect.Status))
		r.Total = p.now().Sub(start)
		return r
	}
	if resp.StatusCode != http.StatusOK {
		r.Total = p.now().Sub(start)
		return r // the status was the whole expectation
	}
	var a answer
	streamed := isEventStream(resp)
	if streamed {
		err = readStream(resp.Body, p.now, &a)
	} else {
		err = readWhole(resp.Body, p.now, &a)
	}
	end := p.now()
	r.Total = end.Sub(start)
	if streamed {
		if a.chunks > 0 {
			r.TTFT = a.first.Sub(start)
		}
		r.TokensPerSecond = a.rate()
	} else if a.usage > 0 && r.Total > 0 {
		// No first token to time: the rate over the whole answer.
		r.TokensPerSecond = float64(a.usage) / r.Total.Seconds()
	}
	switch {
	case err != nil:
		what := fmt.Sprintf("after %d chunks with tokens", a.chunks)
		if a.chunks == 0 {
			what = "before the first token"
		}
		if errors.Is(rctx.Err(), context.DeadlineExceeded) {
			r.fail(fmt.Sprintf("timed out after %s: %s", timeout, what))
		} else {
			r.fail(fmt.Sprintf("the answer broke off %s: %v", what, err))
		}
	case a.streamErr != "":
		r.fail("error in the answer: " + a.streamErr)
	case !a.finished:
		r.fail(fmt.Sprintf("the answer ended before it finished (%d chunks with tokens)", a.chunks))
	default:
		if why := p.rules[q.Name].check(&a); why != "" {
			r.fail(why)
		}
	}
	r.judgeSpeed(p.pol.Health)
	return r
}

// authCheck sends the short prompt without credentials: it must be
// refused with 401 or 403.
func (p *Prober) authCheck(ctx context.Context, t *target) Result {
	r := Result{Backend: t.b.Name, Endpoint: t.addr, Probe: KindAuth, Kind: KindAuth, OK: true}
	q := policy.ProbePrompt{Name: KindAuth, Kind: policy.ProbeShort, Prompt: "Reply with the single word: pong"}
	body, err := buildBody(p.pol, t.b, q, p.image)
	if err != nil {
		r.fail(err.Error())
		return r
	}
	timeout := p.pol.Probes.Timeout.D()
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel() // also ends an answer the backend should not have given
	start := p.now()
	r.At = start
	resp, err := p.send(rctx, t, body, false)
	r.Total = p.now().Sub(start)
	if err != nil {
		r.fail(transportReason(rctx, err, timeout, "no answer"))
		return r
	}
	defer func() { _ = resp.Body.Close() }()
	r.Status = resp.StatusCode
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		r.fail(fmt.Sprintf("backend accepted a request without credentials (status %d)", resp.StatusCode))
	default:
		r.fail(statusReason(resp, 0) + " without credentials, want 401 or 403")
	}
	return r
}

// errorCheck sends a malformed request: it must get a 4xx in OpenAI's
// error shape.
func (p *Prober) errorCheck(ctx context.Context, t *target) Result {
	r := Result{Backend: t.b.Name, Endpoint: t.addr, Probe: KindError, Kind: KindError, OK: true, At: p.now()}
	if t.keyErr != nil {
		// Without the key the refusal would be the auth error, which
		// says nothing of the error path.
		r.fail(t.keyErr.Error())
		return r
	}
	timeout := p.pol.Probes.Timeout.D()
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := p.now()
	r.At = start
	resp, err := p.send(rctx, t, malformedBody(t.b), true)
	if err != nil {
		r.Total = p.now().Sub(start)
		r.fail(transportReason(rctx, err, timeout, "no answer"))
		return r
	}
	defer func() { _ = resp.Body.Close() }()
	r.Status = resp.StatusCode
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxLine))
	r.Total = p.now().Sub(start)
	switch {
	case resp.StatusCode < 400:
		r.fail(fmt.Sprintf("backend accepted a malformed request (status %d)", resp.StatusCode))
	case resp.StatusCode >= 500:
		r.fail(fmt.Sprintf("status %d for a malformed request, want a 4xx", resp.StatusCode))
	case err != nil:
		r.fail(fmt.Sprintf("status %d, but its body could not be read: %v", resp.StatusCode, err))
	default:
		if _, err := errorShape(body); err != nil {
			r.fail(fmt.Sprintf("status %d, but %v", resp.StatusCode, err))
		}
	}
	return r
}

func isEventStream(resp *http.Response) bool {
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	return mt == "text/event-stream"
}

// statusReason describes an unexpected status, with the error the body
// carries when it has OpenAI's shape. want 0 leaves out the wanted status.
func statusReason(resp *http.Response, want int) string {
	s := fmt.Sprintf("status %d", resp.StatusCode)
	if want != 0 {
		s += fmt.Sprintf(", want %d", want)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if desc, err := errorShape(body); err == nil && desc != "" {
		s += " (" + desc + ")"
	}
	return s
}

// transportReason describes a failed exchange: the probe's own timeout,
// or the error.
func transportReason(rctx context.Context, err error, timeout time.Duration, what string) string {
	if errors.Is(rctx.Err(), context.DeadlineExceeded) {
		return fmt.Sprintf("timed out after %s: %s", timeout, what)
	}
	return err.Error()
}

// readKey reads a backend's API key where its credentials say, at each
// round, so a rotated key is picked up. No credentials: no key.
func readKey(c *policy.Credentials) (string, error) {
	if c == nil {
		return "", nil
	}
	var key string
	switch {
	case c.APIKeyFile != "":
		b, err := os.ReadFile(c.APIKeyFile)
		if err != nil {
			return "", fmt.Errorf("credentials: read api_key_file: %w", err)
		}
		key = strings.TrimSpace(string(b))
	case c.APIKeyEnv != "":
		key = strings.TrimSpace(os.Getenv(c.APIKeyEnv))
		if key == "" {
			return "", fmt.Errorf("credentials: environment variable %s is unset or empty", c.APIKeyEnv)
		}
	}
	if key == "" {
		return "", errors.New("credentials: the API key is empty")
	}
	return key, nil
}

// redact removes the key and any prompt text a provider's error message
// might have echoed.
func redact(s, key string, prompts []policy.ProbePrompt) string {
	if s == "" {
		return s
	}
	if len(key) >= 4 {
		s = strings.ReplaceAll(s, key, "[key]")
	}
	for _, q := range prompts {
		if len(q.Prompt) >= 8 {
			s = strings.ReplaceAll(s, q.Prompt, "[prompt]")
		}
	}
	return s
}
