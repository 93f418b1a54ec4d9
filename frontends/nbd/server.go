// Package nbd serves devices over the Network Block Device protocol: fixed
// newstyle negotiation (NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_LIST,
// NBD_OPT_EXPORT_NAME, NBD_OPT_ABORT, and NBD_OPT_STARTTLS with
// Config.TLS) and a pipelined transmission phase with READ, WRITE, FLUSH,
// TRIM, WRITE_ZEROES, FUA and DISC, over TCP or unix sockets.
//
// Transmission follows the data-path budget in DESIGN.md: the goroutine
// that reads a request also executes it and writes its reply, so no
// request is handed from one goroutine to another; a connection grows up
// to Config.MaxRequestsInFlight such goroutines while the client keeps
// requests queued, and replies go through one buffered writer that is
// flushed only when no other reply is about to be written.
package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/drover-io/drover/transports/device"
)

// Defaults for Config's zero values.
const (
	DefaultMaxRequestsInFlight   = 128
	DefaultMaxBytesInFlight      = 64 << 20
	DefaultMaxBytesInFlightTotal = 256 << 20
	DefaultFloorBytesInFlight    = 2 << 20
	DefaultMaxConnections        = 256
	DefaultMaxBlockBytes         = 32 << 20
	DefaultHandshakeTimeout      = 30 * time.Second
)

// ErrServerClosed is what Serve returns after Shutdown or Close.
var ErrServerClosed = errors.New("nbd: server closed")

// ErrTooManyConnections is what ServeConn returns for a connection over
// Config.MaxConnections, which it closes at once.
var ErrTooManyConnections = errors.New("too many connections")

// Export is one named device the server offers.
type Export struct {
	// Name is what clients ask for (NBD_OPT_GO, nbd://host/Name). The
	// empty name is the default export.
	Name string
	// Description is shown to clients that ask for NBD_INFO_DESCRIPTION.
	Description string
	// Device serves the IO. Every connection to the export shares it.
	Device device.Device
	// ReadOnly advertises NBD_FLAG_READ_ONLY and fails writes with EPERM.
	ReadOnly bool
}

// TrimZeroer is implemented by devices whose Trim leaves the range
// reading as zeros. For them a WRITE_ZEROES without NBD_CMD_FLAG_NO_HOLE
// becomes a Trim (the client allowed a hole); for other devices it is
// always a WriteZeroes.
type TrimZeroer interface {
	TrimZeroes() bool
}

// Config configures a Server. Zero values take the documented defaults.
type Config struct {
	// Exports lists the devices served; names must be unique.
	Exports []Export
	// Logger receives connection and error events; default slog.Default().
	Logger *slog.Logger
	// MaxRequestsInFlight bounds the requests one connection executes at
	// once (and so its goroutines); default DefaultMaxRequestsInFlight.
	MaxRequestsInFlight int
	// MaxBytesInFlight bounds the READ and WRITE buffer bytes one
	// connection holds, from reading a request until its reply is
	// written; a request larger than what is left waits for earlier ones,
	// and the connection reads nothing meanwhile. Default
	// DefaultMaxBytesInFlight: two requests of the largest size.
	MaxBytesInFlight int
	// MaxBytesInFlightTotal bounds those bytes across all connections; a
	// negative value removes the bound. Default
	// DefaultMaxBytesInFlightTotal (256 MiB): four connections at their
	// maximum, and a ceiling on what clients that never read replies can
	// pin.
	MaxBytesInFlightTotal int64
	// FloorBytesInFlight is what every connection may hold even when the
	// total is spent, so that a client whose requests fit in it is
	// served while others pin the total. Default
	// DefaultFloorBytesInFlight (2 MiB): above the largest request
	// Linux's block layer sends by default (1280 KiB).
	FloorBytesInFlight int64
	// MaxConnections bounds the connections served at once; further
	// ones are closed on accept. Default DefaultMaxConnections. With
	// the limits above a server's buffers stay within
	// MaxBytesInFlightTotal + MaxConnections × (FloorBytesInFlight +
	// 512 KiB of socket buffering).
	MaxConnections int
	// MaxBlockBytes is the largest READ or WRITE accepted and advertised
	// in NBD_INFO_BLOCK_SIZE; default (and upper limit) 32 MiB.
	MaxBlockBytes uint32
	// HandshakeTimeout bounds option negotiation; default 30s.
	HandshakeTimeout time.Duration
	// TLS, when set, offers NBD_OPT_STARTTLS (x509): the connection is
	// upgraded to TLS 1.3 with this server configuration, which also
	// says whether clients must present a certificate (ClientAuth,
	// ClientCAs). Nil refuses STARTTLS (NBD_REP_ERR_POLICY).
	TLS *tls.Config
	// TLSRequired makes TCP connections start TLS before anything else:
	// every other option but NBD_OPT_ABORT gets NBD_REP_ERR_TLS_REQD
	// (NBD_OPT_EXPORT_NAME, which cannot be refused, closes the
	// connection). Unix socket connections need not: file permissions
	// already decide who reaches them. Needs TLS.
	TLSRequired bool
	// Accept, when set, is asked about every connection before anything
	// is sent on it; an error closes it (logged). drover uses it to serve
	// only its own user on loopback and unix sockets without TLS.
	Accept func(net.Conn) error
}

// Server serves Config.Exports to any number of connections.
type Server struct {
	cfg     Config
	log     *slog.Logger
	exports map[string]*Export
	order   []*Export
	bufs    bufferPool
	budget  *device.Budget

	// ctx is handed to device calls; cancel aborts them on Close.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	draining  bool
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	nextID    uint64
	connsDone sync.WaitGroup
}

// NewServer checks cfg and returns a Server that serves nothing until
// Serve or ServeConn is called.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxRequestsInFlight <= 0 {
		cfg.MaxRequestsInFlight = DefaultMaxRequestsInFlight
	}
	if cfg.MaxBytesInFlight <= 0 {
		cfg.MaxBytesInFlight = DefaultMaxBytesInFlight
	}
	if cfg.MaxBytesInFlightTotal == 0 {
		cfg.MaxBytesInFlightTotal = DefaultMaxBytesInFlightTotal
	}
	if cfg.FloorBytesInFlight <= 0 {
		cfg.FloorBytesInFlight = DefaultFloorBytesInFlight
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	if cfg.MaxBlockBytes == 0 || cfg.MaxBlockBytes > DefaultMaxBlockBytes {
		cfg.MaxBlockBytes = DefaultMaxBlockBytes
	}
	if cfg.TLSRequired && cfg.TLS == nil {
		return nil, errors.New("nbd: TLSRequired without a TLS configuration")
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		exports:   make(map[string]*Export),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]struct{}),
		budget:    device.NewBudget(cfg.MaxBytesInFlightTotal, cfg.FloorBytesInFlight),
	}
	for i := range cfg.Exports {
		e := &cfg.Exports[i]
		if err := checkExport(e, cfg.MaxBlockBytes); err != nil {
			return nil, fmt.Errorf("nbd: export %q: %w", e.Name, err)
		}
		if _, dup := s.exports[e.Name]; dup {
			return nil, fmt.Errorf("nbd: export %q listed twice", e.Name)
		}
		s.exports[e.Name] = e
		s.order = append(s.order, e)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

func checkExport(e *Export, maxBlockBytes uint32) error {
	if e.Device == nil {
		return errors.New("no device")
	}
	if len(e.Name) > 4096 || len(e.Description) > 4096 {
		return errors.New("name or description longer than 4096 bytes")
	}
	minBytes, prefBytes := e.Device.MinBlockBytes(), e.Device.PreferredBlockBytes()
	pow2 := func(v uint32) bool { return v != 0 && v&(v-1) == 0 }
	if !pow2(minBytes) || minBytes > 64<<10 || !pow2(prefBytes) || prefBytes < minBytes ||
		maxBlockBytes%prefBytes != 0 {
		return fmt.Errorf("block sizes min %d preferred %d max %d are not powers of two that divide each other",
			minBytes, prefBytes, maxBlockBytes)
	}
	return nil
}

// Serve accepts connections on l and serves each on its own goroutine
// until Shutdown or Close, when it returns ErrServerClosed. Use a "tcp"
// listener (Go sets TCP_NODELAY) or a "unix" one.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			draining := s.draining
			s.mu.Unlock()
			if draining {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("nbd: accept on %s: %w", l.Addr(), err)
		}
		go func() {
			// ServeConn logs how each connection ended.
			_ = s.ServeConn(nc)
		}()
	}
}

// ServeConn serves one connection until the client disconnects, the
// connection fails or the server shuts down, and closes it. It returns
// nil on a clean end (NBD_CMD_DISC, NBD_OPT_ABORT, shutdown).
func (s *Server) ServeConn(nc net.Conn) error {
	if s.cfg.Accept != nil {
		if err := s.cfg.Accept(nc); err != nil {
			nc.Close()
			s.log.Warn("nbd: connection refused", "remote", nc.RemoteAddr().String(), "err", err)
			return fmt.Errorf("nbd: connection refused: %w", err)
		}
	}
	c, err := s.track(nc)
	if err != nil {
		nc.Close()
		if errors.Is(err, ErrTooManyConnections) {
			s.log.Warn("nbd: connection refused", "remote", nc.RemoteAddr().String(), "err", err)
		}
		return err
	}
	defer s.untrack(c)
	err = c.serve()
	nc.Close()
	if err != nil {
		c.log.Warn("nbd: connection closed on error", "err", err)
	} else {
		c.log.Debug("nbd: connection closed")
	}
	return err
}

func (s *Server) track(nc net.Conn) (*conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return nil, ErrServerClosed
	}
	if len(s.conns) >= s.cfg.MaxConnections {
		return nil, fmt.Errorf("nbd: %d connections already served: %w", len(s.conns), ErrTooManyConnections)
	}
	s.nextID++
	c := newConn(s, nc, s.nextID)
	s.conns[c] = struct{}{}
	s.connsDone.Add(1)
	// The handshake deadline is set under s.mu so that Shutdown's
	// deadline, set under s.mu too, is never overwritten.
	nc.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	return c, nil
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.connsDone.Done()
}

// enterTransmission clears the handshake deadline unless the server is
// draining, in which case the connection must not start transmission.
func (s *Server) enterTransmission(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return false
	}
	c.nc.SetDeadline(time.Time{})
	c.transmitting = true
	return true
}

// Shutdown stops accepting connections and reading requests, lets the
// requests already read finish and their replies go out, then closes
// every connection. If ctx ends first it closes everything at once and
// returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	for l := range s.listeners {
		l.Close()
	}
	past := time.Unix(1, 0)
	for c := range s.conns {
		// Unblocks the goroutine reading requests, also when it waits
		// for buffer bytes; the ones executing requests carry on and
		// reply.
		c.nc.SetReadDeadline(past)
		c.share.Cancel()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.connsDone.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.Close()
		<-done
		return fmt.Errorf("nbd: shutdown: %w", ctx.Err())
	}
}

// Close closes listeners and connections at once; device calls in
// flight see a canceled context and their requests fail with ESHUTDOWN.
func (s *Server) Close() error {
	s.mu.Lock()
	s.draining = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.nc.Close()
		c.share.Cancel()
	}
	s.mu.Unlock()
	s.cancel()
	return nil
}

func (s *Server) isDraining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.draining
}

// BufferedBytes is what the server's connections hold in request and
// reply buffers now (Config.MaxBytesInFlightTotal bounds it).
func (s *Server) BufferedBytes() int64 { return s.budget.HeldBytes() }

// Connections is how many connections the server serves now.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// TCPURI is the NBD URI of export name on a TCP address host:port.
func TCPURI(addr, name string) string {
	u := url.URL{Scheme: "nbd", Host: addr, Path: "/" + name}
	return u.String()
}

// UnixURI is the NBD URI of export name on the unix socket at path.
func UnixURI(path, name string) string {
	// Slashes stay literal: libnbd and qemu take the socket path as is.
	socket := strings.ReplaceAll(url.QueryEscape(path), "%2F", "/")
	return "nbd+unix:///" + url.PathEscape(name) + "?socket=" + socket
}
