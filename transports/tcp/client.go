package tcp

import (
	"bufio"
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
	out      []byte // request frames not yet written
	spare    []byte
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
	br := bufio.NewReaderSize(conn, readBufferBytes)
	if err := clientHandshake(conn, br, cfg); err != nil {
		conn.Close()
		return nil, fmt.Errorf("replica at %s: %w", addr, err)
	}
	l := &clientLink{conn: conn, h: h, readDone: make(chan struct{})}
	go l.readLoop(br)
	return l, nil
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
// until it is empty, so concurrent senders share syscalls.
func (l *clientLink) Send(reqs ...proto.Request) {
	l.mu.Lock()
	if l.down || l.closed {
		l.mu.Unlock()
		return
	}
	for i := range reqs {
		l.out = proto.AppendRequestFrame(l.out, &reqs[i])
	}
	if l.writing {
		l.mu.Unlock()
		return
	}
	l.writing = true
	for len(l.out) > 0 && !l.down && !l.closed {
		buf := l.out
		l.out = l.spare[:0]
		l.mu.Unlock()
		_, err := l.conn.Write(buf)
		l.mu.Lock()
		l.spare = buf[:0]
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

func (l *clientLink) readLoop(br *bufio.Reader) {
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

func (l *clientLink) read(br *bufio.Reader) error {
	var buf []byte
	for {
		// Every frame is read into the same buffer. Reply data aliases
		// it, so the data is copied into a pooled buffer that goes to the
		// engine with the reply (the engine's caller owns it then, and may
		// put it back: enginerun's Volume does once it copied it out).
		body, err := proto.ReadFrame(br, buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("connection closed: %w", err)
			}
			return err
		}
		rep, err := proto.DecodeReply(body)
		if err != nil {
			return err
		}
		if rep.Data != nil {
			data := bufpool.Get(len(rep.Data))
			copy(data, rep.Data)
			rep.Data = data
		}
		buf = body[:0]
		if l.h.OnReply != nil {
			l.h.OnReply(rep)
		}
		if l.h.OnBatch != nil && br.Buffered() == 0 {
			l.h.OnBatch()
		}
	}
}
