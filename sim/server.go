package sim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Server is a simulated OpenAI-compatible provider with a serving listener
// and an admin listener. Its methods are safe for concurrent use.
type Server struct {
	cfg Config
	log *slog.Logger

	fault     atomic.Pointer[Fault] // written under mu
	rng       lockedRand
	evenCount atomic.Uint64 // requests drawn for an Even fault
	obs       observer
	ids       atomic.Uint64
	lastModel atomic.Pointer[string]
	inflight  tracker
	working   atomic.Int64 // completions in flight, against cfg.Capacity
	created   int64        // reported as the models' creation time

	baseCtx    context.Context // parent of every request context
	cancelBase context.CancelFunc

	mu        sync.Mutex
	started   bool
	closed    bool
	addr      string        // actual serving address
	bindAddr  string        // configured host + actual port: re-listened on after refuse
	adminAddr string        // actual admin address
	cur       *generation   // current serving generation; nil while refusing
	gens      []*generation // every serving generation, for Close
	admin     *http.Server
	serveWG   sync.WaitGroup // Serve goroutines
}

// generation is one serving listener and its http.Server; refusing ends a
// generation and clearing the fault starts a new one on the same address.
type generation struct {
	srv *http.Server
	ln  net.Listener
}

// New validates cfg and returns a Server that is not yet listening.
func New(cfg Config) (*Server, error) {
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	seed := uint64(cfg.Seed)
	if cfg.Seed == 0 {
		seed = rand.Uint64()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:        cfg,
		log:        cfg.Logger.With("sim", cfg.Name),
		rng:        lockedRand{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))},
		baseCtx:    ctx,
		created:    time.Now().Unix(),
		cancelBase: cancel,
	}
	s.fault.Store(&Fault{})
	return s, nil
}

// Start binds the serving and admin listeners and serves them in the
// background until Close. It returns once both are listening; ctx bounds
// only the binding. A Server starts at most once.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return errors.New("sim: Start after Close")
	case s.started:
		return errors.New("sim: already started")
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("sim: serving listener: %w", err)
	}
	aln, err := lc.Listen(ctx, "tcp", s.cfg.AdminAddr)
	if err != nil {
		_ = ln.Close()
		return fmt.Errorf("sim: admin listener: %w", err)
	}
	s.started = true
	s.addr = ln.Addr().String()
	s.adminAddr = aln.Addr().String()
	host, _, _ := net.SplitHostPort(s.cfg.Addr)
	_, port, _ := net.SplitHostPort(s.addr)
	s.bindAddr = net.JoinHostPort(host, port)

	s.admin = s.newHTTPServer(http.HandlerFunc(s.handleAdmin))
	s.serveWG.Add(1)
	go func() {
		defer s.serveWG.Done()
		s.serve(s.admin, aln, "admin")
	}()
	s.serveLocked(ln)
	s.log.Info("simulator listening", "addr", s.addr, "admin_addr", s.adminAddr)
	return s.syncListenerLocked()
}

func (s *Server) newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 30 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return s.baseCtx },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

func (s *Server) serve(srv *http.Server, ln net.Listener, which string) {
	err := srv.Serve(ln)
	if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		s.log.Error("serve failed", "listener", which, "err", err)
	}
}

// serveLocked starts a serving generation on ln.
func (s *Server) serveLocked(ln net.Listener) {
	g := &generation{srv: s.newHTTPServer(http.HandlerFunc(s.handleAPI)), ln: ln}
	s.cur = g
	s.gens = append(s.gens, g)
	s.serveWG.Add(1)
	go func() {
		defer s.serveWG.Done()
		s.serve(g.srv, ln, "serving")
	}()
}

// syncListenerLocked closes or reopens the serving listener to match the
// current fault's Refuse.
func (s *Server) syncListenerLocked() error {
	if !s.started || s.closed {
		return nil
	}
	refuse := s.fault.Load().Refuse
	switch {
	case refuse && s.cur != nil:
		// Close the listener first so that a dial right after SetFault
		// returns is refused, then idle keep-alive connections, so that
		// pooled clients cannot slip through. In-flight requests finish.
		_ = s.cur.ln.Close()
		s.cur.srv.SetKeepAlivesEnabled(false)
		s.cur = nil
		s.log.Info("refusing connections", "addr", s.addr)
	case !refuse && s.cur == nil:
		var lc net.ListenConfig
		ln, err := lc.Listen(s.baseCtx, "tcp", s.bindAddr)
		if err != nil {
			s.log.Warn("cannot listen again", "addr", s.bindAddr, "err", err)
			return fmt.Errorf("sim: listen again on %s: %w", s.bindAddr, err)
		}
		s.serveLocked(ln)
		s.log.Info("accepting connections again", "addr", s.addr)
	}
	return nil
}

// Addr returns the serving address, with the actual port once started.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.addr == "" {
		return s.cfg.Addr
	}
	return s.addr
}

// AdminAddr returns the admin address, with the actual port once started.
func (s *Server) AdminAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.adminAddr == "" {
		return s.cfg.AdminAddr
	}
	return s.adminAddr
}

// Name returns Config.Name (after defaults).
func (s *Server) Name() string { return s.cfg.Name }

// SetFault replaces the global fault. Out-of-range values are clamped (an
// invalid Status turns the status effect off); use Fault.Validate to reject
// them instead. A Refuse fault closes the serving listener before SetFault
// returns; replacing it listens again on the same address.
func (s *Server) SetFault(f Fault) {
	_ = s.setFault(f)
}

func (s *Server) setFault(f Fault) error {
	if err := f.Validate(); err != nil {
		s.log.Warn("fault out of range, clamped", "err", err)
	}
	f = f.sanitize()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault.Store(&f)
	s.log.Info("fault set", "fault", f)
	return s.syncListenerLocked()
}

// ClearFault removes the global fault (and ends a Refuse).
func (s *Server) ClearFault() {
	_ = s.setFault(Fault{})
}

// Fault returns the global fault in force, with Rate defaulted.
func (s *Server) Fault() Fault { return *s.fault.Load() }

// Stats returns the serving listener's counters.
func (s *Server) Stats() Stats { return s.obs.stats() }

// Requests returns the last limit request records (at most 256), oldest
// first; limit ≤ 0 returns all held. A request is recorded when its handler
// finishes, before the client reads the end of the response body.
func (s *Server) Requests(limit int) []RequestRecord { return s.obs.recent(limit) }

// ResetStats zeroes the counters and empties the request ring.
func (s *Server) ResetStats() { s.obs.reset() }

// Close stops both listeners, lets in-flight requests finish and waits for
// their handlers. When ctx ends first, it cancels the remaining requests,
// closes their connections, waits for the handlers to return and reports
// ctx's error. Close is idempotent.
func (s *Server) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	var srvs []*http.Server
	for _, g := range s.gens {
		srvs = append(srvs, g.srv)
	}
	if s.admin != nil {
		srvs = append(srvs, s.admin)
	}
	s.cur = nil
	s.mu.Unlock()

	var wg sync.WaitGroup
	for _, srv := range srvs {
		wg.Go(func() { _ = srv.Shutdown(ctx) })
	}
	wg.Wait()
	// Shutdown has waited for every connection it tracks; hijacked ones
	// (resets) are counted by inflight only.
	err := ctx.Err()
	if err == nil {
		err = s.inflight.wait(ctx)
	}
	if err != nil {
		s.cancelBase()
		for _, srv := range srvs {
			_ = srv.Close()
		}
		force, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if werr := s.inflight.wait(force); werr != nil {
			err = errors.Join(err, errors.New("sim: handlers still running after forced close"))
		}
	}
	s.cancelBase()
	s.serveWG.Wait()
	s.log.Info("simulator closed")
	if err != nil {
		return fmt.Errorf("sim: close: %w", err)
	}
	return nil
}

// tracker counts running handlers so Close can wait for them.
type tracker struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to 0; nil when nobody waits
}

func (t *tracker) add() {
	t.mu.Lock()
	t.n++
	t.mu.Unlock()
}

func (t *tracker) done() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.n--
	if t.n == 0 && t.idle != nil {
		close(t.idle)
		t.idle = nil
	}
}

func (t *tracker) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n
}

func (t *tracker) wait(ctx context.Context) error {
	t.mu.Lock()
	if t.n == 0 {
		t.mu.Unlock()
		return nil
	}
	if t.idle == nil {
		t.idle = make(chan struct{})
	}
	idle := t.idle
	t.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// lockedRand is a seeded generator shared by concurrent requests.
type lockedRand struct {
	mu sync.Mutex
	r  *rand.Rand
}

func (l *lockedRand) Float64() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Float64()
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
