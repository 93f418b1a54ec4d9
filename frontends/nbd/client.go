package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"
)

// ErrConnLost is what a Client call returns when its connection ended
// before the reply came: the request may or may not have taken effect.
var ErrConnLost = errors.New("nbd: connection lost")

// maxClientInFlight bounds the requests one Client has outstanding; a
// call beyond it waits for a slot.
const maxClientInFlight = 128

// Client is a minimal NBD client: fixed newstyle, NBD_OPT_GO, simple
// replies, pipelined requests matched by cookie. Its calls may run
// concurrently. It is the relay's upstream (NewRedialer), not a
// general-purpose library: no TLS, no structured replies, no block
// status.
type Client struct {
	nc        net.Conn
	sizeBytes uint64
	flags     uint16
	minBytes  uint32 // NBD_INFO_BLOCK_SIZE's (512 and 4096 when not sent)
	prefBytes uint32
	slots     chan struct{}

	wmu sync.Mutex // serializes request writes
	w   *bufio.Writer

	mu      sync.Mutex
	pending map[uint64]*clientCall
	next    uint64
	err     error // set once the connection is gone
	done    chan struct{}
}

type clientCall struct {
	buf      []byte // read destination
	errno    uint32
	answered bool // the reply came (set before done is closed)
	done     chan struct{}
}

// DialClient connects to an NBD URI (nbd://host:port/name, or
// nbd+unix:///name?socket=PATH) and negotiates its export.
func DialClient(ctx context.Context, uri string) (*Client, error) {
	network, addr, name, err := parseURI(uri)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s: %w", uri, err)
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	c, err := NewClient(ctx, nc, name)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("nbd: %s: %w", uri, err)
	}
	return c, nil
}

// parseURI splits an NBD URI into a network, an address and an export.
func parseURI(uri string) (network, addr, name string, err error) {
	u, err := url.Parse(uri)
	if err != nil {
		return "", "", "", fmt.Errorf("nbd: URI %q: %w", uri, err)
	}
	name = strings.TrimPrefix(u.Path, "/")
	switch u.Scheme {
	case "nbd":
		if u.Port() == "" {
			return "tcp", net.JoinHostPort(u.Hostname(), "10809"), name, nil
		}
		return "tcp", u.Host, name, nil
	case "nbd+unix":
		if s := u.Query().Get("socket"); s != "" {
			return "unix", s, name, nil
		}
		return "", "", "", fmt.Errorf("nbd: URI %q: nbd+unix without ?socket=", uri)
	}
	return "", "", "", fmt.Errorf("nbd: URI %q: scheme %q is not nbd or nbd+unix", uri, u.Scheme)
}

// NewClient negotiates export name on nc (fixed newstyle, NBD_OPT_GO)
// and starts reading replies. ctx bounds the negotiation.
func NewClient(ctx context.Context, nc net.Conn, name string) (*Client, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	r := bufio.NewReader(nc)
	info, err := clientHandshake(r, nc, name)
	stop()
	if err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	_ = nc.SetDeadline(time.Time{})
	c := &Client{nc: nc, sizeBytes: info.size, flags: info.flags, minBytes: info.min, prefBytes: info.pref,
		w:     bufio.NewWriterSize(nc, 256<<10),
		slots: make(chan struct{}, maxClientInFlight), pending: map[uint64]*clientCall{}, done: make(chan struct{})}
	go c.readReplies(r)
	return c, nil
}

// exportInfo is what NBD_OPT_GO told about an export.
type exportInfo struct {
	size      uint64
	flags     uint16
	min, pref uint32
}

func clientHandshake(r *bufio.Reader, w io.Writer, name string) (exportInfo, error) {
	info := exportInfo{min: 512, pref: 4096}
	var b [18]byte
	if _, err := io.ReadFull(r, b[:18]); err != nil {
		return info, fmt.Errorf("read greeting: %w", err)
	}
	if binary.BigEndian.Uint64(b[0:8]) != magicInit || binary.BigEndian.Uint64(b[8:16]) != magicOption {
		return info, fmt.Errorf("greeting: not a fixed newstyle NBD server: %w", ErrMalformed)
	}
	hs := binary.BigEndian.Uint16(b[16:18])
	if hs&handshakeFixedNewstyle == 0 {
		return info, fmt.Errorf("server is not fixed newstyle: %w", ErrMalformed)
	}
	cflags := uint32(clientFixedNewstyle)
	if hs&handshakeNoZeroes != 0 {
		cflags |= clientNoZeroes
	}
	msg := binary.BigEndian.AppendUint32(nil, cflags)
	msg = binary.BigEndian.AppendUint64(msg, magicOption)
	msg = binary.BigEndian.AppendUint32(msg, optGo)
	msg = binary.BigEndian.AppendUint32(msg, uint32(4+len(name)+4))
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(name)))
	msg = append(msg, name...)
	msg = binary.BigEndian.AppendUint16(msg, 1)
	msg = binary.BigEndian.AppendUint16(msg, infoBlockSize)
	if _, err := w.Write(msg); err != nil {
		return info, fmt.Errorf("send NBD_OPT_GO: %w", err)
	}
	gotInfo := false
	for {
		var h [20]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return info, fmt.Errorf("read option reply: %w", err)
		}
		if binary.BigEndian.Uint64(h[0:8]) != magicRepOpt || binary.BigEndian.Uint32(h[8:12]) != optGo {
			return info, fmt.Errorf("option reply header: %w", ErrMalformed)
		}
		typ, n := binary.BigEndian.Uint32(h[12:16]), binary.BigEndian.Uint32(h[16:20])
		if n > maxOptionBytes {
			return info, fmt.Errorf("option reply of %d bytes: %w", n, ErrMalformed)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(r, data); err != nil {
			return info, fmt.Errorf("read option reply: %w", err)
		}
		switch {
		case typ == repAck:
			if !gotInfo {
				return info, fmt.Errorf("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT: %w", ErrMalformed)
			}
			return info, nil
		case typ == repInfo && len(data) >= 12 && binary.BigEndian.Uint16(data[0:2]) == infoExport:
			info.size, info.flags, gotInfo = binary.BigEndian.Uint64(data[2:10]), binary.BigEndian.Uint16(data[10:12]), true
		case typ == repInfo && len(data) >= 14 && binary.BigEndian.Uint16(data[0:2]) == infoBlockSize:
			info.min, info.pref = binary.BigEndian.Uint32(data[2:6]), binary.BigEndian.Uint32(data[6:10])
		case typ == repInfo:
		case typ&(1<<31) != 0:
			return info, fmt.Errorf("export %q refused (reply type %#x): %s", name, typ, data)
		default:
			return info, fmt.Errorf("unexpected option reply type %#x: %w", typ, ErrMalformed)
		}
	}
}

// SizeBytes is the export's size as negotiated.
func (c *Client) SizeBytes() uint64 { return c.sizeBytes }

// ReadOnly says whether the server advertised the export read-only.
func (c *Client) ReadOnly() bool { return c.flags&flagReadOnly != 0 }

// Done is closed once the connection is gone.
func (c *Client) Done() <-chan struct{} { return c.done }

// Close ends the connection; calls outstanding fail with ErrConnLost.
func (c *Client) Close() error {
	c.fail(ErrConnLost)
	return nil
}

func (c *Client) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return
	}
	c.err = err
	_ = c.nc.Close()
	for cookie, call := range c.pending {
		delete(c.pending, cookie)
		close(call.done)
	}
	close(c.done)
}

func (c *Client) readReplies(r *bufio.Reader) {
	var h [replyHeaderBytes]byte
	for {
		if _, err := io.ReadFull(r, h[:]); err != nil {
			c.fail(fmt.Errorf("%w: %v", ErrConnLost, err))
			return
		}
		if binary.BigEndian.Uint32(h[0:4]) != magicReply {
			c.fail(fmt.Errorf("%w: reply magic %#x (structured replies are not negotiated)", ErrConnLost, binary.BigEndian.Uint32(h[0:4])))
			return
		}
		errno, cookie := binary.BigEndian.Uint32(h[4:8]), binary.BigEndian.Uint64(h[8:16])
		c.mu.Lock()
		call := c.pending[cookie]
		delete(c.pending, cookie)
		c.mu.Unlock()
		if call == nil {
			c.fail(fmt.Errorf("%w: reply to unknown cookie %d", ErrConnLost, cookie))
			return
		}
		if errno == 0 && len(call.buf) > 0 {
			if _, err := io.ReadFull(r, call.buf); err != nil {
				c.fail(fmt.Errorf("%w: read data: %v", ErrConnLost, err))
				close(call.done)
				return
			}
		}
		call.errno, call.answered = errno, true
		close(call.done)
	}
}

// Do sends one request and waits for its reply. For a read, buf
// receives the data (len(buf) is the length); for a write it is the
// data; other commands take length. It returns the reply's errno (0:
// success), or an error wrapping ErrConnLost when the connection ended
// first (the request may or may not have taken effect). ctx bounds only
// the wait for an in-flight slot: once sent, a request waits for its
// reply or for the connection to end (Close ends it).
func (c *Client) Do(ctx context.Context, typ, flags uint16, off uint64, length uint32, buf []byte) (uint32, error) {
	select {
	case c.slots <- struct{}{}:
	case <-c.done:
		return 0, c.connErr()
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	defer func() { <-c.slots }()
	call := &clientCall{done: make(chan struct{})}
	if typ == cmdRead {
		call.buf = buf
	}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return 0, c.connErr()
	}
	c.next++
	cookie := c.next
	c.pending[cookie] = call
	c.mu.Unlock()
	var hdr [requestHeaderBytes]byte
	req := AppendRequest(hdr[:0], Request{Flags: flags, Type: typ, Cookie: cookie, Offset: off, Length: length})
	c.wmu.Lock()
	_, err := c.w.Write(req)
	if err == nil && typ == cmdWrite {
		_, err = c.w.Write(buf)
	}
	if err == nil {
		err = c.w.Flush()
	}
	c.wmu.Unlock()
	if err != nil {
		c.fail(fmt.Errorf("%w: send: %v", ErrConnLost, err))
	}
	// Not ctx: the reply may still write into buf. Close ends the wait.
	<-call.done
	if !call.answered {
		return 0, c.connErr()
	}
	return call.errno, nil
}

func (c *Client) connErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
