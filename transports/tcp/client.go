package tcp

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/bufpool"
	"github.com/drover-io/drover/transports/link"
)

// DialConfig sets up a Dialer.
type DialConfig struct {
	// ReplicaID, when set, is the replica the engine expects; a server
	// serving another replica refuses the connection.
	ReplicaID proto.ReplicaID
	// Timeout bounds connecting and the handshake (default 5s).
	Timeout time.Duration
	// TLS, when set, runs the link over TLS with this client
	// configuration (certs.Files.ClientConfig: mutual TLS under the
	// cluster's CA). ServerName, when empty, is the dialed host.
	TLS *tls.Config
}

// NewDialer returns a link.Dialer opening TCP links with cfg.
func NewDialer(cfg DialConfig) link.Dialer {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	return func(addr string, h link.Handler) (link.Link, error) { return dial(addr, h, cfg) }
}

// Dial is a link.Dialer with the default DialConfig.
func Dial(addr string, h link.Handler) (link.Link, error) {
	return NewDialer(DialConfig{})(addr, h)
}

// clientLink is a link.Link over one TCP connection.
type clientLink struct {
	conn net.Conn
	h    link.Handler

	mu       sync.Mutex
	out      frameQueue // request frames not yet written
	spare    frameQueue
	writing  bool // a Send is writing: others only queue
	closed   bool // Close was called: no OnDown
	down     bool
	readDone chan struct{}
}

func dial(addr string, h link.Handler, cfg DialConfig) (link.Link, error) {
	conn, err := net.DialTimeout("tcp", addr, cfg.Timeout)
	if err != nil {
		return nil, fmt.Errorf("dial replica at %s: %w", addr, err)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	if cfg.TLS != nil {
		if conn, err = clientTLS(conn, addr, cfg); err != nil {
			return nil, fmt.Errorf("replica at %s: %w", addr, err)
		}
	}
	br := bufio.NewReaderSize(conn, readBufferBytes)
	if err := clientHandshake(conn, br, cfg); err != nil {
		conn.Close()
		return nil, fmt.Errorf("replica at %s: %w", addr, err)
	}
	startBatchingReads(conn)
	l := &clientLink{conn: conn, h: h, readDone: make(chan struct{})}
	go l.readLoop(&frameReader{br: br, conn: conn})
	return l, nil
}

// clientTLS runs the TLS handshake on conn (closing it on failure).
func clientTLS(conn net.Conn, addr string, cfg DialConfig) (net.Conn, error) {
	tcfg := cfg.TLS
	if tcfg.ServerName == "" {
		tcfg = tcfg.Clone()
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		tcfg.ServerName = host
	}
	tc := newTLSConn(conn, tcfg, false)
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return tc, nil
}

func clientHandshake(conn net.Conn, br *bufio.Reader, cfg DialConfig) error {
	conn.SetDeadline(time.Now().Add(cfg.Timeout))
	defer conn.SetDeadline(time.Time{})
	hello := proto.AppendHello(nil, proto.Hello{Version: proto.WireVersion, Role: proto.RoleEngine, ReplicaID: cfg.ReplicaID})
	if _, err := conn.Write(hello); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	h, err := proto.ReadHello(br)
	if err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	if h.Role != proto.RoleReplica {
		return fmt.Errorf("handshake: peer is a %v, want a replica", h.Role)
	}
	if cfg.ReplicaID != "" && h.ReplicaID != cfg.ReplicaID {
		return fmt.Errorf("handshake: expected replica %q, found %q", cfg.ReplicaID, h.ReplicaID)
	}
	return nil
}

// Send implements link.Link. Frames are appended to a buffer; the first
// sender finding no write in progress writes the buffer, again and again
// until it is empty, so concurrent senders share syscalls. Data of
// proto.SplitDataBytes or more (a rebuild's layer writes) is not copied
// into the buffer but written from the request's own slice (writev): the
// caller keeps it unchanged until the request is answered, or for good
// once its call ended unanswered (DataHeld), which is what the engine's
// owners do anyway (docs/ARCHITECTURE.md, "The production shell").
func (l *clientLink) Send(reqs ...proto.Request) {
	l.mu.Lock()
	if l.down || l.closed {
		l.mu.Unlock()
		return
	}
	for i := range reqs {
		l.out.appendRequest(&reqs[i])
	}
	if l.writing {
		l.mu.Unlock()
		return
	}
	l.writing = true
	for !l.out.empty() && !l.down && !l.closed {
		q := l.out
		l.out = l.spare.reset()
		l.mu.Unlock()
		err := q.writeTo(l.conn)
		l.mu.Lock()
		l.spare = q
		if err != nil {
			// The read loop sees the broken connection and reports it.
			l.conn.Close()
			break
		}
	}
	l.writing = false
	l.mu.Unlock()
}

// Close implements link.Link.
func (l *clientLink) Close() error {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	err := l.conn.Close()
	<-l.readDone
	return err
}

func (l *clientLink) readLoop(br *frameReader) {
	defer close(l.readDone)
	err := l.read(br)
	l.mu.Lock()
	report := !l.closed && !l.down
	l.down = true
	l.mu.Unlock()
	l.conn.Close()
	if report && l.h.OnDown != nil {
		l.h.OnDown(fmt.Errorf("link to replica at %s: %w", l.conn.RemoteAddr(), err))
	}
}

func (l *clientLink) read(br *frameReader) error {
	var buf []byte
	for {
		// Every frame is read into the same buffer, except large
		// block-checked data (a layer read's), which ReadFrameSplit reads
		// straight into a pooled buffer. Other reply data aliases the
		// frame buffer, so it is copied into a pooled buffer. Either goes
		// to the engine with the reply (the engine's caller owns it then,
		// and may put it back: enginerun's Volume does once it copied it
		// out).
		head, data, err := proto.ReadFrameSplit(br, buf, bufpool.Get)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("connection closed: %w", err)
			}
			return err
		}
		rep, err := proto.DecodeReplySplit(head, data)
		if err != nil {
			return err
		}
		if rep.Data != nil && data == nil {
			data := bufpool.Get(len(rep.Data))
			copy(data, rep.Data)
			rep.Data = data
		}
		buf = head[:0]
		if l.h.OnReply != nil {
			l.h.OnReply(rep)
		}
		if l.h.OnBatch != nil && br.br.Buffered() == 0 {
			l.h.OnBatch()
		}
	}
}
