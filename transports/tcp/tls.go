package tcp

import (
	"crypto/tls"
	"net"
	"sync"
	"time"
)

// A tls.Conn writes each TLS record (at most 16 KiB) with its own write
// syscall, so a batch of pipelined frames that plain TCP sends in one
// write would take one per record. tlsConn gathers the records of one
// Write in recordBuffer and sends them together.

// recordBuffer sits under a tls.Conn and, while batching, holds what TLS
// writes.
type recordBuffer struct {
	net.Conn

	mu       sync.Mutex // TLS may write from its reader too (alerts, key updates)
	batching bool
	buf      []byte
}

func (b *recordBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.batching {
		return b.Conn.Write(p)
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}

func (b *recordBuffer) begin() {
	b.mu.Lock()
	b.batching = true
	b.mu.Unlock()
}

// end writes what the batch gathered.
func (b *recordBuffer) end() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batching = false
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.Conn.Write(b.buf)
	if cap(b.buf) > maxRecordBufferBytes {
		b.buf = nil // one large batch does not pin its buffer for good
	} else {
		b.buf = b.buf[:0]
	}
	return err
}

// maxRecordBufferBytes is the largest gathering buffer kept between
// batches.
const maxRecordBufferBytes = 2 * flushBytes

// tlsConn is a tls.Conn whose every Write leaves in one syscall.
type tlsConn struct {
	*tls.Conn
	rb *recordBuffer
	// batchReads turns on Read's gathering of records; set once the
	// link's own handshake (which reads under a deadline) is done.
	batchReads bool
}

// startBatchingReads turns on tlsConn's read batching when c is one.
func startBatchingReads(c net.Conn) {
	if tc, ok := c.(*tlsConn); ok {
		tc.batchReads = true
	}
}

func newTLSConn(raw net.Conn, cfg *tls.Config, server bool) *tlsConn {
	rb := &recordBuffer{Conn: raw}
	if server {
		return &tlsConn{Conn: tls.Server(rb, cfg), rb: rb}
	}
	return &tlsConn{Conn: tls.Client(rb, cfg), rb: rb}
}

func (c *tlsConn) Write(p []byte) (int, error) {
	c.rb.begin()
	n, err := c.Conn.Write(p)
	if ferr := c.rb.end(); err == nil {
		err = ferr
	}
	return n, err
}

// Read fills p with as many TLS records as have arrived. A tls.Conn
// returns one record (at most 16 KiB) per Read, so a burst of pipelined
// frames that plain TCP hands the bufio.Reader in one read would come a
// record at a time, and the reader would find "nothing more queued" (and
// flush its replies, or end its batch) every few frames. After the first
// record, further reads run with the deadline in the past: records
// already received are returned, and a read that would wait on the socket
// fails at once (tls.Conn keeps a partial record for the next Read).
// Only the connection's single reader calls Read, and once batchReads is
// set nothing else sets its read deadline.
func (c *tlsConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil || n == 0 || n == len(p) || !c.batchReads {
		return n, err
	}
	if err := c.rb.Conn.SetReadDeadline(pastDeadline); err != nil {
		return n, nil
	}
	for n < len(p) {
		m, err := c.Conn.Read(p[n:])
		n += m
		if err != nil || m == 0 {
			break
		}
	}
	if err := c.rb.Conn.SetReadDeadline(time.Time{}); err != nil {
		return n, err
	}
	return n, nil
}

// pastDeadline is a read deadline that has passed.
var pastDeadline = time.Unix(1, 0)
