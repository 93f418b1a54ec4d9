package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/bits"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"github.com/drover-io/drover/transports/device"
)

// ioBufferBytes sizes a connection's buffered reader and writer: large
// enough for a queue of 4 KiB writes per read syscall and a burst of
// replies per write syscall.
const ioBufferBytes = 256 << 10

// conn is one client connection.
type conn struct {
	s   *Server
	nc  net.Conn
	log *slog.Logger
	exp *Export

	// r is read only by the goroutine holding the read role (readMu),
	// or during negotiation.
	r        *bufio.Reader
	readMu   sync.Mutex
	hdr      [requestHeaderBytes]byte
	stop     bool  // no more requests are read; under readMu
	readErr  error // why reading stopped, nil after DISC; under readMu
	workers  int   // goroutines serving requests; under readMu
	queued   atomic.Int32
	noZeroes bool
	// tlsStarted: NBD_OPT_STARTTLS succeeded and r and w run over TLS.
	tlsStarted bool

	// w is written only under writeMu (or during negotiation).
	writeMu  sync.Mutex
	w        *bufio.Writer
	wbuf     []byte
	writeErr error // first reply write error; under writeMu
	replying atomic.Int32

	// Async replies (async.go), under qMu: the queue of completed
	// requests' replies, whether the reader holds a batch it has not run,
	// and whether a goroutine is writing the queue.
	qMu        sync.Mutex
	queue      []queuedReply
	spareQueue []queuedReply
	batching   bool
	writing    bool

	// Async transmission (async.go): the request window, the requests
	// started and not completed, and what to do before any wait.
	sem        chan struct{}
	pending    sync.WaitGroup
	beforeWait func()

	// share is the connection's part of the server's buffer budget.
	share        *device.Share
	transmitting bool // under s.mu
	done         sync.WaitGroup
}

func newConn(s *Server, nc net.Conn, id uint64) *conn {
	c := &conn{
		s:   s,
		nc:  nc,
		log: s.log.With("conn", id, "remote", nc.RemoteAddr().String()),
		r:   bufio.NewReaderSize(nc, ioBufferBytes),
		w:   bufio.NewWriterSize(nc, ioBufferBytes),

		share: s.budget.NewShare(int64(s.cfg.MaxBytesInFlight)),
	}
	return c
}

// serve negotiates, then runs transmission until it ends.
func (c *conn) serve() error {
	exp, err := c.negotiate()
	if errors.Is(err, errAborted) {
		return nil
	}
	if errors.Is(err, os.ErrDeadlineExceeded) && c.s.isDraining() {
		return nil
	}
	if err != nil {
		return fmt.Errorf("negotiate: %w", err)
	}
	if !c.s.enterTransmission(c) {
		return nil
	}
	c.exp = exp
	c.log = c.log.With("export", exp.Name)
	c.log.Debug("nbd: transmission started")
	if dev, ok := exp.Device.(device.Async); ok {
		c.serveAsync(dev)
		return c.transmissionErr()
	}
	c.workers = 1
	c.done.Add(1)
	c.worker()
	c.done.Wait()
	// Every worker has written its reply; the last one flushed.
	return c.transmissionErr()
}

// transmissionErr is why transmission ended: nil after a clean
// disconnect.
func (c *conn) transmissionErr() error {
	if c.readErr != nil {
		return c.readErr
	}
	if c.writeErr != nil {
		return fmt.Errorf("write replies: %w", c.writeErr)
	}
	return nil
}

// worker takes the read role, reads one request, gives the role up and
// executes the request and replies, until reading stops.
func (c *conn) worker() {
	defer c.done.Done()
	for {
		c.queued.Add(1)
		c.readMu.Lock()
		c.queued.Add(-1)
		if c.stop {
			c.readMu.Unlock()
			return
		}
		req, buf, err := c.readRequest()
		if err != nil {
			c.stop = true
			if !errors.Is(err, errStopReading) {
				c.readErr = err
			}
			c.readMu.Unlock()
			return
		}
		if req.Type == cmdDisc {
			c.stop = true
			c.readMu.Unlock()
			c.log.Debug("nbd: client disconnected")
			return
		}
		// Grow only while requests queue up behind this one and no
		// goroutine is already waiting to read them.
		if c.queued.Load() == 0 && c.r.Buffered() > 0 && c.workers < c.s.cfg.MaxRequestsInFlight {
			c.workers++
			c.done.Add(1)
			go c.worker()
		}
		c.readMu.Unlock()
		errno := c.execute(req, buf)
		c.reply(req, errno, buf)
		c.release(buf)
	}
}

// readRequest reads a request header and a WRITE's payload. A malformed
// request or a failed read ends the connection; a request the server
// can refuse is executed as an error reply instead.
func (c *conn) readRequest() (Request, []byte, error) {
	if _, err := io.ReadFull(c.r, c.hdr[:]); err != nil {
		return Request{}, nil, c.readFailure("read request header", err)
	}
	req, err := ParseRequest(c.hdr[:])
	if err != nil {
		return Request{}, nil, fmt.Errorf("read request: %w", err)
	}
	switch {
	case req.Type == cmdWrite && req.Length > c.s.cfg.MaxBlockBytes:
		// Its payload cannot be held and skipping it is no better than
		// closing: the client broke the advertised maximum.
		return req, nil, fmt.Errorf("write of %d bytes exceeds the maximum %d: %w",
			req.Length, c.s.cfg.MaxBlockBytes, ErrMalformed)
	case req.Type == cmdWrite:
		buf, ok := c.acquire(req.Length)
		if !ok {
			return req, nil, errStopReading
		}
		if _, err := io.ReadFull(c.r, buf); err != nil {
			c.release(buf)
			return req, nil, c.readFailure("read write payload", err)
		}
		return req, buf, nil
	case req.Type == cmdRead && c.precheck(req) == 0:
		buf, ok := c.acquire(req.Length)
		if !ok {
			return req, nil, errStopReading
		}
		return req, buf, nil
	}
	return req, nil, nil
}

// errStopReading ends reading without an error: a shutdown, or a client
// that hung up between requests.
var errStopReading = errors.New("stop reading")

// readFailure explains why reading stopped: errStopReading for a
// shutdown or a hang-up between requests, else the error.
func (c *conn) readFailure(what string, err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) && c.s.isDraining() {
		c.log.Debug("nbd: stopped reading for shutdown")
		return errStopReading
	}
	if errors.Is(err, io.EOF) {
		c.log.Debug("nbd: client hung up without NBD_CMD_DISC")
		return errStopReading
	}
	return fmt.Errorf("%s: %w", what, err)
}

// execute runs req on the export's device and returns the reply's
// error value; for a READ, buf holds the data on success.
func (c *conn) execute(req Request, buf []byte) uint32 {
	dev := c.exp.Device
	ctx := c.s.ctx
	if errno := c.precheck(req); errno != 0 {
		return errno
	}
	fua := req.Flags&cmdFlagFUA != 0
	var err error
	switch req.Type {
	case cmdRead:
		err = dev.ReadAt(ctx, buf, req.Offset)
	case cmdWrite:
		err = dev.WriteAt(ctx, buf, req.Offset, fua)
	case cmdFlush:
		err = dev.Flush(ctx)
	case cmdTrim:
		err = dev.Trim(ctx, req.Offset, uint64(req.Length), fua)
	case cmdWriteZeroes:
		if tz, ok := dev.(TrimZeroer); ok && tz.TrimZeroes() && req.Flags&cmdFlagNoHole == 0 {
			err = dev.Trim(ctx, req.Offset, uint64(req.Length), fua)
		} else {
			err = dev.WriteZeroes(ctx, req.Offset, uint64(req.Length), fua)
		}
	}
	if err == nil {
		return 0
	}
	errno := errnoFor(ctx, err)
	c.log.Warn("nbd: request failed", "cmd", req.Type, "offset", req.Offset,
		"length", req.Length, "errno", errno, "err", err)
	return errno
}

// precheck refuses what the device must not see: unknown commands and
// flags, out-of-range requests, writes to a read-only export.
func (c *conn) precheck(req Request) uint32 {
	switch req.Type {
	case cmdRead, cmdWrite, cmdFlush, cmdTrim, cmdWriteZeroes:
	case cmdCache, cmdBlockStatus, cmdResize:
		return errNotSup
	default:
		return errInval
	}
	allowed := uint16(cmdFlagFUA)
	if req.Type == cmdWriteZeroes {
		allowed |= cmdFlagNoHole
	}
	if req.Flags&^allowed != 0 {
		if req.Flags&cmdFlagFastZero != 0 {
			return errNotSup
		}
		return errInval
	}
	if req.Type == cmdRead && req.Length > c.s.cfg.MaxBlockBytes {
		return errInval
	}
	write := req.Type != cmdRead && req.Type != cmdFlush
	if write && c.exp.ReadOnly {
		return errPerm
	}
	if req.Type == cmdFlush {
		return 0
	}
	size := c.exp.Device.SizeBytes()
	if req.Offset > size || uint64(req.Length) > size-req.Offset {
		if req.Type == cmdWrite || req.Type == cmdWriteZeroes {
			return errNoSpc
		}
		return errInval
	}
	return 0
}

// errnoFor maps a Device error to the NBD error value.
func errnoFor(ctx context.Context, err error) uint32 {
	switch {
	case errors.Is(err, device.ErrInvalid):
		return errInval
	case errors.Is(err, device.ErrNoSpace):
		return errNoSpc
	case errors.Is(err, device.ErrReadOnly):
		return errPerm
	case errors.Is(err, errors.ErrUnsupported):
		return errNotSup
	case ctx.Err() != nil, errors.Is(err, context.Canceled):
		return errShutdown
	default:
		return errIO
	}
}

// reply writes a simple reply (and a successful READ's data) into the
// buffered writer, and flushes it unless another reply is on its way:
// whoever brings replying back to zero flushes.
func (c *conn) reply(req Request, errno uint32, buf []byte) {
	c.replying.Add(1)
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	c.writeReplyLocked(req, errno, buf)
	if c.replying.Add(-1) == 0 && c.writeErr == nil {
		c.writeErr = c.w.Flush()
	}
	if c.writeErr != nil {
		// The client can no longer hear us; stop reading from it too.
		c.nc.Close()
	}
}

// writeReplyLocked puts a simple reply (and a successful READ's data) into
// the buffered writer, unless writing already failed. Under writeMu.
func (c *conn) writeReplyLocked(req Request, errno uint32, buf []byte) {
	if c.writeErr != nil {
		return
	}
	c.wbuf = appendReply(c.wbuf[:0], errno, req.Cookie)
	_, err := c.w.Write(c.wbuf)
	if err == nil && req.Type == cmdRead && errno == 0 {
		_, err = c.w.Write(buf)
	}
	c.writeErr = err
}

// acquire takes a buffer of n bytes within the connection's and the
// server's byte budget, waiting for earlier requests (of this connection
// or others) to release theirs if needed; meanwhile the connection reads
// nothing more. It reports false when the connection is closing.
func (c *conn) acquire(n uint32) ([]byte, bool) {
	// Never wait holding work only this goroutine would do.
	if !c.share.Acquire(int64(n), c.beforeWait) {
		return nil, false
	}
	return c.s.bufs.get(n), true
}

func (c *conn) release(buf []byte) {
	if buf == nil {
		return
	}
	c.share.Release(int64(len(buf)))
	c.s.bufs.put(buf)
}

// bufferPool recycles request buffers in power-of-two size classes from
// 4 KiB to 32 MiB, so steady traffic allocates nothing.
type bufferPool struct {
	classes [14]sync.Pool
}

const minBufferShift = 12

func bufferClass(n uint32) int {
	if n <= 1<<minBufferShift {
		return 0
	}
	return bits.Len32(n-1) - minBufferShift
}

func (p *bufferPool) get(n uint32) []byte {
	class := bufferClass(n)
	if class >= len(p.classes) {
		return make([]byte, n)
	}
	if b, ok := p.classes[class].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, 1<<(class+minBufferShift))
}

func (p *bufferPool) put(b []byte) {
	class := bufferClass(uint32(cap(b)))
	if class >= len(p.classes) || cap(b) != 1<<(class+minBufferShift) {
		return
	}
	p.classes[class].Put(&b)
}
