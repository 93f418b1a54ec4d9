// Package tcp carries the engine ↔ replica data path over TCP in the
// binary format of core/proto (wire.go): a Server in front of a Replica
// (transports/replicarun's Runner in production), and a Dialer giving
// engines a link.Link to it.
//
// Both ends pipeline: many requests are in flight on one connection, and
// frames queue in a buffer that goes out in one write when nothing more is
// waiting (many frames per syscall). TCP_NODELAY is always set. The server
// runs each request on the goroutine that read it (decode → replica →
// pwrite → reply) with no handoff.
package tcp

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"sync"
	"time"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/bufpool"
)

const (
	// readBufferBytes is each connection's read buffer: a burst of
	// pipelined 4 KiB frames is read with one syscall.
	readBufferBytes = 256 << 10
	// flushBytes forces a write once that much output is buffered, so a
	// long burst does not hold every reply back.
	flushBytes = 1 << 20
	// pooledBodyBytes is the size of pooled frame bodies; larger frames
	// get a buffer of their own.
	pooledBodyBytes = 64 << 10
)

var bodyPool = sync.Pool{New: func() any { b := make([]byte, pooledBodyBytes); return &b }}

// Replica is what a Server serves: one replica's request handler. The
// server only decodes frames, hands each request over and encodes the
// reply, so it needs nothing more of the replica than this; the wire stays
// a layer below the replica driver that implements it (replicarun.Runner
// does, structurally), and a test can serve anything that answers.
type Replica interface {
	// ID names the replica in the handshake and in log lines.
	ID() proto.ReplicaID
	// Handle steps req into the replica and calls reply once with its
	// answer, on this goroutine or another; req.Data stays untouched until
	// then. A duplicate of a request already answered may get no reply.
	Handle(req proto.Request, reply func(proto.Reply))
}

// Server serves one Replica to engines.
type Server struct {
	runner Replica
	logf   func(format string, args ...any)
	tls    *tls.Config
	accept func(net.Conn) error

	mu     sync.Mutex
	closed bool
	lns    map[net.Listener]struct{}
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// NewServer returns a server for r. logf receives one line per closed
// connection and why (nil: the standard logger).
func NewServer(r Replica, logf func(format string, args ...any)) *Server {
	if logf == nil {
		logf = log.Printf
	}
	return &Server{runner: r, logf: logf, lns: map[net.Listener]struct{}{}, conns: map[net.Conn]struct{}{}}
}

// RequireTLS makes the server accept engines only over TLS with cfg
// (certs.Files.ServerConfig: a client certificate from the cluster's CA
// is required, so an engine of another cluster, or none at all, is
// refused). Call it before Serve.
func (s *Server) RequireTLS(cfg *tls.Config) { s.tls = cfg }

// AcceptOnly makes the server ask fn about every connection before
// anything is read from it; an error closes it (logged). drover replica
// uses it to serve only its own user on loopback without TLS. Call it
// before Serve.
func (s *Server) AcceptOnly(fn func(net.Conn) error) { s.accept = fn }

// tlsHandshakeTimeout bounds a connecting engine's TLS handshake.
const tlsHandshakeTimeout = 10 * time.Second

// Serve accepts connections on ln until ln fails or the server closes;
// after Close it returns nil.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.lns[ln] = struct{}{}
	s.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			delete(s.lns, ln)
			s.mu.Unlock()
			if closed {
				return nil
			}
			return fmt.Errorf("replica %s: accept: %w", s.runner.ID(), err)
		}
		if !s.track(c) {
			c.Close()
			return nil
		}
		go s.serveConn(c)
	}
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

// Connections is how many engine connections the server serves now.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Close stops every listener and connection and waits for the
// connections' goroutines to end. The Runner stays open.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for ln := range s.lns {
		ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// serverConn is one engine connection.
type serverConn struct {
	s    *Server
	conn net.Conn
	br   *bufio.Reader

	mu  sync.Mutex
	out frameQueue // reply frames not yet written
	// written are the pooled data slices out sends from in place (large
	// reads): they go back to bufpool once written.
	written  [][]byte
	batching bool // the reader has more requests queued: it flushes
	dead     bool
}

func (s *Server) serveConn(nc net.Conn) {
	defer s.wg.Done()
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	var conn net.Conn
	var err error
	if s.accept != nil {
		err = s.accept(nc)
	}
	if err == nil {
		conn, err = s.serverTLS(nc)
	}
	if err == nil {
		c := &serverConn{s: s, conn: conn, br: bufio.NewReaderSize(conn, readBufferBytes)}
		err = c.serve()
		c.mu.Lock()
		c.dead = true
		c.mu.Unlock()
	}
	nc.Close()
	s.mu.Lock()
	delete(s.conns, nc)
	closing := s.closed
	s.mu.Unlock()
	if !closing && !errors.Is(err, io.EOF) {
		s.logf("replica %s: closing connection from %s: %v", s.runner.ID(), nc.RemoteAddr(), err)
	}
}

// serverTLS runs the TLS handshake when the server requires TLS.
func (s *Server) serverTLS(nc net.Conn) (net.Conn, error) {
	if s.tls == nil {
		return nc, nil
	}
	tc := newTLSConn(nc, s.tls, true)
	ctx, cancel := context.WithTimeout(context.Background(), tlsHandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS handshake (engines need a certificate from this cluster's CA): %w", err)
	}
	return tc, nil
}

// serve runs the connection until it fails; it always returns why.
func (c *serverConn) serve() error {
	if err := c.handshake(); err != nil {
		return err
	}
	startBatchingReads(c.conn)
	fr := &frameReader{br: c.br, conn: c.conn}
	for {
		bp := bodyPool.Get().(*[]byte)
		// Large block-checked data (a rebuild's layer write) is read into
		// a pooled buffer of its own, returned once the replica answered.
		head, data, err := proto.ReadFrameSplit(fr, *bp, bufpool.Get)
		if err != nil {
			bodyPool.Put(bp)
			return err
		}
		req, err := proto.DecodeRequestSplit(head, data)
		if err != nil {
			bodyPool.Put(bp)
			bufpool.Put(data)
			return err
		}
		more := c.moreQueued()
		c.mu.Lock()
		c.batching = more
		c.mu.Unlock()
		// ReadFrameSplit used the pooled buffer unless the head was larger.
		pooled := len(head) <= pooledBodyBytes
		if !pooled {
			bodyPool.Put(bp)
		}
		pr := pendingPool.Get().(*pending)
		pr.c = c
		pr.data = data
		if pooled {
			pr.bp = bp
		}
		c.s.runner.Handle(req, pr.fn)
		if !more {
			c.mu.Lock()
			c.batching = false
			c.flushLocked()
			c.mu.Unlock()
		}
	}
}

// pending is one request's reply callback: its connection and the pooled
// body its data lives in. They are pooled with their callback bound once,
// so handing the runner a callback allocates nothing per request. A
// pending whose callback is never called (the caller of a duplicate the
// replica drops) is left to the garbage collector.
type pending struct {
	c    *serverConn
	bp   *[]byte // returned to bodyPool once the replica is done with req.Data
	data []byte  // req.Data when read apart from bp (bufpool), likewise
	fn   func(proto.Reply)
}

var pendingPool sync.Pool

func init() {
	pendingPool.New = func() any {
		p := new(pending)
		p.fn = p.done
		return p
	}
}

func (p *pending) done(rep proto.Reply) {
	// A reply's data (a read's) is the replica's store buffer, handed
	// over with the reply: reply puts it back once it is encoded or
	// written.
	p.c.reply(&rep)
	if p.bp != nil {
		bodyPool.Put(p.bp)
	}
	bufpool.Put(p.data)
	p.c, p.bp, p.data = nil, nil, nil
	pendingPool.Put(p)
}

// handshake reads the engine's hello and answers with the replica's. A
// version mismatch is answered (so the engine learns ours) and refused.
func (c *serverConn) handshake() error {
	id := c.s.runner.ID()
	h, err := proto.ReadHello(c.br)
	var ve *proto.VersionError
	if err != nil && !errors.As(err, &ve) {
		return fmt.Errorf("handshake: %w", err)
	}
	if _, werr := c.conn.Write(proto.AppendHello(nil, proto.Hello{Version: proto.WireVersion, Role: proto.RoleReplica, ReplicaID: id})); werr != nil {
		return fmt.Errorf("handshake: %w", werr)
	}
	if err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	if h.Role != proto.RoleEngine {
		return fmt.Errorf("handshake: peer is a %v, want an engine", h.Role)
	}
	if h.ReplicaID != "" && h.ReplicaID != id {
		return fmt.Errorf("handshake: engine expects replica %q, this is %q", h.ReplicaID, id)
	}
	return nil
}

// moreQueued reports whether a whole further frame is already buffered.
func (c *serverConn) moreQueued() bool {
	n := c.br.Buffered()
	if n < proto.FrameHeaderBytes {
		return false
	}
	hdr, err := c.br.Peek(proto.FrameHeaderBytes)
	if err != nil {
		return false
	}
	return n >= proto.FrameHeaderBytes+int(binary.LittleEndian.Uint32(hdr))
}

// reply queues rep; it is written now unless the reader is in a burst of
// queued requests and will flush at its end. It takes rep.Data (a store
// buffer from bufpool) and puts it back once encoded or, when large
// enough to be written in place, written.
func (c *serverConn) reply(rep *proto.Reply) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		bufpool.Put(rep.Data)
		return
	}
	n := len(c.out.splits)
	c.out.appendReply(rep)
	if len(c.out.splits) > n {
		c.written = append(c.written, rep.Data)
	} else {
		bufpool.Put(rep.Data)
	}
	if !c.batching || c.out.bytes() >= flushBytes {
		c.flushLocked()
	}
}

func (c *serverConn) flushLocked() {
	if c.out.empty() || c.dead {
		return
	}
	err := c.out.writeTo(c.conn)
	c.out = c.out.reset()
	if cap(c.out.buf) > 4*flushBytes {
		c.out.buf = nil // do not keep a huge buffer after a burst of big reads
	}
	for i, b := range c.written {
		bufpool.Put(b)
		c.written[i] = nil
	}
	c.written = c.written[:0]
	if err != nil {
		// The reader sees the broken connection and logs it.
		c.dead = true
		c.conn.Close()
	}
}
