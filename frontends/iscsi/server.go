// Package iscsi is Drover's iSCSI target: it serves device.Device logical
// units to iSCSI initiators (RFC 7143) with the SCSI block commands (SBC-4)
// and primary commands (SPC-4) that real initiators use.
//
// One Server listens on one portal address and serves any number of
// targets, one per volume, named IQN(volume). Each connection is one
// session (MaxConnections=1, ErrorRecoveryLevel=0): a protocol violation
// drops that connection, never the process. Commands of a session run
// concurrently, bounded by the CmdSN window the target advertises.
package iscsi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"sync"
	"time"

	"github.com/drover-io/drover/transports/device"
)

// IQNPrefix is the naming authority of every Drover target.
const IQNPrefix = "iqn.2026-11.io.drover:"

// DefaultAddr is the portal a Config without Addr listens on.
const DefaultAddr = "127.0.0.1:3260"

// IQN returns the target name that serves volume.
func IQN(volume string) string { return IQNPrefix + volume }

var volumeNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.\-]{0,199}$`)

// TargetConfig describes one target.
type TargetConfig struct {
	// Volume names the target; its IQN is IQN(Volume). Lower-case letters,
	// digits, '.' and '-' only, as iSCSI names allow.
	Volume string
	// LUNs are the target's logical units: LUNs[i] is LUN i. At least one,
	// at most 256.
	LUNs []device.Device
	// CHAP, when set, requires initiators to authenticate with CHAP.
	CHAP *CHAP
}

// Config configures a Server.
type Config struct {
	// Addr is the portal, host:port; the server listens only there.
	// Default DefaultAddr.
	Addr string
	// Targets are the targets served; their volumes must be unique.
	Targets []TargetConfig
	// DiscoveryCHAP, when set, requires CHAP on discovery sessions.
	DiscoveryCHAP *CHAP
	// Logger receives structured logs. Default slog.Default().
	Logger *slog.Logger
	// AuthFailureDelay slows CHAP guessing: after n failed CHAP logins of
	// one initiator name from one address, its next attempt is checked
	// only AuthFailureDelay·2^(n−1) later, at most AuthFailureDelayMax;
	// every failure is logged with its count. Defaults
	// DefaultAuthFailureDelay and DefaultAuthFailureDelayMax; a negative
	// AuthFailureDelay turns the throttle off.
	AuthFailureDelay, AuthFailureDelayMax time.Duration
	// Accept, when set, is asked about every connection before anything
	// is read from it; an error closes it (logged). drover uses it to
	// serve only its own user on loopback without CHAP.
	Accept func(net.Conn) error
	// MaxConnections bounds concurrent connections; further ones are
	// closed on accept. Default 64.
	MaxConnections int
	// MaxBytesInFlight bounds the data buffer bytes one connection's
	// commands hold, from the command's arrival until its response is
	// written (a write's, until it is executed). A command that would
	// exceed it completes at once with TASK SET FULL, which initiators
	// retry. Default DefaultMaxBytesInFlight: eight commands of the
	// largest transfer (8 MiB).
	MaxBytesInFlight int64
	// MaxBytesInFlightTotal bounds those bytes across all connections; a
	// negative value removes the bound. Default
	// DefaultMaxBytesInFlightTotal, the ceiling on what initiators that
	// never read responses can pin.
	MaxBytesInFlightTotal int64
	// FloorBytesInFlight is what every connection may hold even when the
	// total is spent, so that an initiator whose commands fit in it is
	// served while others pin the total. Default
	// DefaultFloorBytesInFlight. With these limits a server's buffers
	// stay within MaxBytesInFlightTotal + MaxConnections ×
	// (FloorBytesInFlight + about 600 KiB of PDU and socket buffering).
	FloorBytesInFlight int64
}

// Defaults for Config's buffer limits.
const (
	DefaultMaxBytesInFlight      = 64 << 20
	DefaultMaxBytesInFlightTotal = 256 << 20
	DefaultFloorBytesInFlight    = 2 << 20
)

type target struct {
	name string
	luns []*LogicalUnit
	chap *CHAP
}

// Server is an iSCSI target portal. Create it with Listen, run it with
// Serve, stop it with Close.
type Server struct {
	cfg     Config
	log     *slog.Logger
	ln      net.Listener
	targets map[string]*target
	order   []*target
	budget  *device.Budget
	auth    *authThrottle

	mu       sync.Mutex
	conns    map[*conn]struct{}
	sessions map[string]*conn // by I_T nexus, for session reinstatement
	nextTSIH uint16
	closed   bool
	wg       sync.WaitGroup
}

// Listen validates cfg and binds its portal address. The server accepts no
// connection until Serve runs.
func Listen(cfg Config) (*Server, error) {
	if cfg.Addr == "" {
		cfg.Addr = DefaultAddr
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = 64
	}
	s, err := newServer(cfg)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("iscsi: listen on portal %s: %w", cfg.Addr, err)
	}
	s.ln = ln
	return s, nil
}

func newServer(cfg Config) (*Server, error) {
	if cfg.MaxBytesInFlight <= 0 {
		cfg.MaxBytesInFlight = DefaultMaxBytesInFlight
	}
	if cfg.MaxBytesInFlightTotal == 0 {
		cfg.MaxBytesInFlightTotal = DefaultMaxBytesInFlightTotal
	}
	if cfg.FloorBytesInFlight <= 0 {
		cfg.FloorBytesInFlight = DefaultFloorBytesInFlight
	}
	if cfg.AuthFailureDelay == 0 {
		cfg.AuthFailureDelay = DefaultAuthFailureDelay
	}
	if cfg.AuthFailureDelayMax <= 0 {
		cfg.AuthFailureDelayMax = DefaultAuthFailureDelayMax
	}
	s := &Server{
		auth:     newAuthThrottle(cfg.AuthFailureDelay, cfg.AuthFailureDelayMax),
		budget:   device.NewBudget(cfg.MaxBytesInFlightTotal, cfg.FloorBytesInFlight),
		cfg:      cfg,
		log:      cfg.Logger.With("component", "iscsi"),
		targets:  make(map[string]*target),
		conns:    make(map[*conn]struct{}),
		sessions: make(map[string]*conn),
	}
	if cfg.DiscoveryCHAP != nil {
		if err := cfg.DiscoveryCHAP.validate(); err != nil {
			return nil, fmt.Errorf("iscsi: discovery CHAP: %w", err)
		}
	}
	for _, tc := range cfg.Targets {
		if !volumeNameRE.MatchString(tc.Volume) {
			return nil, fmt.Errorf("iscsi: volume name %q is not a valid iSCSI name part", tc.Volume)
		}
		name := IQN(tc.Volume)
		if s.targets[name] != nil {
			return nil, fmt.Errorf("iscsi: volume %q configured twice", tc.Volume)
		}
		if len(tc.LUNs) == 0 || len(tc.LUNs) > 256 {
			return nil, fmt.Errorf("iscsi: volume %q: %d LUNs, want 1 to 256", tc.Volume, len(tc.LUNs))
		}
		if tc.CHAP != nil {
			if err := tc.CHAP.validate(); err != nil {
				return nil, fmt.Errorf("iscsi: volume %q: %w", tc.Volume, err)
			}
		}
		t := &target{name: name, chap: tc.CHAP}
		for i, d := range tc.LUNs {
			lu, err := NewLogicalUnit(d, fmt.Sprintf("%s/%d", tc.Volume, i))
			if err != nil {
				return nil, fmt.Errorf("iscsi: volume %q LUN %d: %w", tc.Volume, i, err)
			}
			t.luns = append(t.luns, lu)
		}
		s.targets[name] = t
		s.order = append(s.order, t)
	}
	return s, nil
}

// BufferedBytes is what the server's connections hold in command data
// buffers now (Config.MaxBytesInFlightTotal bounds it).
func (s *Server) BufferedBytes() int64 { return s.budget.HeldBytes() }

// Connections is how many connections the server serves now.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Addr is the address the portal listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve accepts connections until ctx ends or Close is called, then closes
// every connection and waits for their goroutines. It returns nil after a
// Close or a cancelled ctx.
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	s.log.Info("iSCSI portal listening", "addr", s.ln.Addr().String(), "targets", len(s.order))
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				s.wg.Wait()
				return nil
			}
			return fmt.Errorf("iscsi: accept: %w", err)
		}
		s.mu.Lock()
		full := len(s.conns) >= s.cfg.MaxConnections
		s.mu.Unlock()
		if full {
			s.log.Warn("connection refused: too many connections", "remote", nc.RemoteAddr().String())
			nc.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.ServeConn(ctx, nc)
		}()
	}
}

// Close stops accepting, closes every connection and waits for them. It is
// safe to call more than once.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for c := range s.conns {
		c.nc.Close()
	}
	s.mu.Unlock()
	err := s.ln.Close()
	s.wg.Wait()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("iscsi: close listener: %w", err)
	}
	return nil
}

// ServeConn serves one accepted connection until it ends and closes it.
// Serve calls it for every connection; tests and fuzzers call it directly.
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) {
	if s.cfg.Accept != nil {
		if err := s.cfg.Accept(nc); err != nil {
			s.log.Warn("connection refused", "remote", nc.RemoteAddr().String(), "err", err)
			nc.Close()
			return
		}
	}
	c := newConn(s, nc)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		nc.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		if c.sess != nil && s.sessions[c.sess.nexus] == c {
			delete(s.sessions, c.sess.nexus)
		}
		s.mu.Unlock()
	}()
	c.serve(ctx)
}

// register records a new session, closing an older one of the same I_T
// nexus (session reinstatement, RFC 7143 section 6.3.5), and returns its
// TSIH.
func (s *Server) register(c *conn) uint16 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.sessions[c.sess.nexus]; old != nil && old != c {
		s.log.Info("session reinstated", "nexus", c.sess.nexus)
		old.nc.Close()
	}
	s.sessions[c.sess.nexus] = c
	s.nextTSIH++
	if s.nextTSIH == 0 {
		s.nextTSIH = 1
	}
	return s.nextTSIH
}
