package nbd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/drover-io/drover/transports/device"
)

// DefaultReconnectTimeout is how long a Redialer's requests wait for a
// lost connection to come back before they fail.
const DefaultReconnectTimeout = 2 * time.Minute

// RedialConfig configures a Redialer. Zero values take the defaults.
type RedialConfig struct {
	// URI is the export (nbd://host:port/name or nbd+unix).
	URI string
	// ReconnectTimeout bounds how long requests wait, counted from the
	// moment the connection was lost; then they fail with device.ErrIO
	// (and so do new ones until a connection is back). Default
	// DefaultReconnectTimeout.
	ReconnectTimeout time.Duration
	// MaxRetainedBytes bounds the write data kept for replay (below);
	// a write that takes it past the bound flushes before it returns.
	// Default DefaultMaxRetainedBytes.
	MaxRetainedBytes int64
	// Logger receives connection events; default slog.Default().
	Logger *slog.Logger
}

// DefaultMaxRetainedBytes is RedialConfig.MaxRetainedBytes's default.
const DefaultMaxRetainedBytes = 32 << 20

// retained is a write-like request kept for replay: from when it is
// sent until a flush sent after its acknowledgement succeeds.
type retained struct {
	seq    uint64
	typ    uint16
	flags  uint16
	off    uint64
	length uint32
	data   []byte // a write's data (a copy: the caller's buffer is not kept)
	acked  bool
}

// Redialer is a device.Device backed by a remote NBD export that
// survives the export's server going away for a while: when the
// connection is lost it dials the same URI again (backing off up to 2 s
// between attempts), and every request the old connection took with it
// unanswered is sent again on the new one. Its users see IO pause, not
// fail. Resending is sound because every NBD command is idempotent (a
// write, trim or write-zeroes of the same range with the same data, a
// flush), and requests in flight at once are unordered by the protocol.
//
// A server may acknowledge a write before it is durable and lose it in
// a crash (Drover's replicas acknowledge small overwrites before writing
// them, until the next flush); its direct client would see the
// connection fail, but the Redialer hides the crash, and a flush on the
// next connection would then succeed over a lost write. So it keeps
// every write-like request (with a copy of its data) from when it is
// sent until a flush sent after its acknowledgement succeeds, and
// replays them all, in the order they were sent, on a new connection
// before anything else goes there. MaxRetainedBytes bounds what is kept:
// a write that passes it flushes before it returns. The server must not
// serve IO from two places at once (Drover's engines are fenced by
// epoch).
//
// It is what `drover nbd-relay` serves: the CSI node service's nbdfuse
// talks to it, so an agent restart (a new engine process on the same
// port) pauses the workload's IO instead of breaking its filesystem.
type Redialer struct {
	cfg        RedialConfig
	log        *slog.Logger
	sizeBytes  atomic.Uint64
	minBytes   uint32
	prefBytes  uint32
	reconnects atomic.Uint64

	mu        sync.Mutex
	cur       *Client
	downSince time.Time
	// kept holds the write-like requests sent and not yet covered by a
	// flush, by sequence; logBytes their data bytes.
	kept     map[uint64]*retained
	nextSeq  uint64
	logBytes int64
	changed  chan struct{} // closed and replaced whenever cur changes
	closed   bool
	wake     chan struct{}
	loopDone chan struct{}
}

var _ device.Device = (*Redialer)(nil)

// NewRedialer connects to cfg.URI (a first connection must succeed) and
// starts the goroutine that reconnects.
func NewRedialer(ctx context.Context, cfg RedialConfig) (*Redialer, error) {
	if cfg.ReconnectTimeout <= 0 {
		cfg.ReconnectTimeout = DefaultReconnectTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxRetainedBytes <= 0 {
		cfg.MaxRetainedBytes = DefaultMaxRetainedBytes
	}
	c, err := DialClient(ctx, cfg.URI)
	if err != nil {
		return nil, err
	}
	r := &Redialer{cfg: cfg, log: cfg.Logger, minBytes: c.minBytes, prefBytes: c.prefBytes,
		changed: make(chan struct{}), wake: make(chan struct{}, 1), loopDone: make(chan struct{}), kept: map[uint64]*retained{}}
	r.sizeBytes.Store(c.SizeBytes())
	r.setCurrent(c)
	go r.redialLoop()
	return r, nil
}

func (r *Redialer) setCurrent(c *Client) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		_ = c.Close()
		return
	}
	r.cur = c
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
	go func() {
		<-c.Done()
		r.lost(c)
	}()
}

// lost retires c if it is still the current connection and wakes the
// reconnecting goroutine.
func (r *Redialer) lost(c *Client) {
	_ = c.Close()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur != c {
		return
	}
	r.cur = nil
	r.downSince = time.Now()
	close(r.changed)
	r.changed = make(chan struct{})
	r.log.Warn("nbd relay: connection lost; reconnecting", "uri", r.cfg.URI)
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *Redialer) redialLoop() {
	defer close(r.loopDone)
	for range r.wake {
		backoff := 100 * time.Millisecond
		for {
			r.mu.Lock()
			closed, up := r.closed, r.cur != nil
			r.mu.Unlock()
			if closed {
				return
			}
			if up {
				break
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			c, err := DialClient(ctx, r.cfg.URI)
			cancel()
			if err == nil {
				err = r.replay(c)
			}
			if err == nil {
				r.sizeBytes.Store(max(r.sizeBytes.Load(), c.SizeBytes()))
				r.reconnects.Add(1)
				r.log.Info("nbd relay: reconnected", "uri", r.cfg.URI, "down", time.Since(r.downSinceTime()).Round(time.Millisecond))
				r.setCurrent(c)
				break
			}
			r.log.Debug("nbd relay: dial", "uri", r.cfg.URI, "err", err)
			time.Sleep(backoff)
			backoff = min(2*backoff, 2*time.Second)
		}
	}
}

// replay sends the retained requests on c, one at a time in the order
// they were first sent (overlapping writes must land in that order),
// before c serves anything else. A request the server now refuses is
// logged and dropped (its data cannot be restored from here).
func (r *Redialer) replay(c *Client) error {
	r.mu.Lock()
	entries := make([]*retained, 0, len(r.kept))
	for _, e := range r.kept {
		entries = append(entries, e)
	}
	r.mu.Unlock()
	slices.SortFunc(entries, func(a, b *retained) int { return cmp.Compare(a.seq, b.seq) })
	for _, e := range entries {
		errno, err := c.Do(context.Background(), e.typ, e.flags, e.off, e.length, e.data)
		if err == nil && errno == errShutdown {
			err = ErrConnLost
		}
		if err != nil {
			_ = c.Close()
			return fmt.Errorf("replay: %w", err)
		}
		if errno != 0 {
			r.log.Error("nbd relay: a write acknowledged before the connection was lost is refused on the new one; its data may be lost",
				"cmd", e.typ, "offset", e.off, "length", e.length, "errno", errno)
			r.forget(e.seq)
		}
	}
	if len(entries) > 0 {
		r.log.Info("nbd relay: replayed unflushed writes", "requests", len(entries))
	}
	return nil
}

// retain records a write-like request as sent.
func (r *Redialer) retain(typ, flags uint16, off uint64, length uint32, data []byte) *retained {
	e := &retained{typ: typ, flags: flags, off: off, length: length}
	if typ == cmdWrite {
		e.data = slices.Clone(data)
	}
	r.mu.Lock()
	r.nextSeq++
	e.seq = r.nextSeq
	r.kept[e.seq] = e
	r.logBytes += int64(len(e.data))
	r.mu.Unlock()
	return e
}

func (r *Redialer) forget(seq uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.kept[seq]; e != nil {
		delete(r.kept, seq)
		r.logBytes -= int64(len(e.data))
	}
}

// RetainedBytes is the write data kept for replay now.
func (r *Redialer) RetainedBytes() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.logBytes
}

func (r *Redialer) downSinceTime() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.downSince
}

// Reconnects counts the connections made after the first.
func (r *Redialer) Reconnects() uint64 { return r.reconnects.Load() }

// Close ends the connection and the reconnecting; requests waiting fail.
func (r *Redialer) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	c := r.cur
	r.cur = nil
	close(r.changed)
	r.changed = make(chan struct{})
	close(r.wake)
	r.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
	<-r.loopDone
	return nil
}

// client returns the current connection, waiting for one while the
// reconnect timeout allows: from when the connection was lost, and at
// most until notAfter (when not zero).
func (r *Redialer) client(ctx context.Context, notAfter time.Time) (*Client, error) {
	for {
		r.mu.Lock()
		c, closed, changed := r.cur, r.closed, r.changed
		deadline := r.downSince.Add(r.cfg.ReconnectTimeout)
		r.mu.Unlock()
		if !notAfter.IsZero() && notAfter.Before(deadline) {
			deadline = notAfter
		}
		if c != nil && !notAfter.IsZero() && time.Now().After(notAfter) {
			c = nil // this request has been lost with connections for too long
		}
		switch {
		case closed:
			return nil, fmt.Errorf("nbd relay %s: closed: %w", r.cfg.URI, device.ErrIO)
		case c != nil:
			return c, nil
		}
		wait := time.Until(deadline)
		if wait <= 0 {
			return nil, fmt.Errorf("nbd relay %s: no connection for %v: %w", r.cfg.URI, r.cfg.ReconnectTimeout, device.ErrIO)
		}
		t := time.NewTimer(wait)
		select {
		case <-changed:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
		t.Stop()
	}
}

// do sends one request, again on the next connection when one is lost
// under it, for at most the reconnect timeout since the first loss.
// Write-like requests are retained until a flush covers them; a flush
// drops the ones acknowledged before it was sent.
func (r *Redialer) do(ctx context.Context, typ, flags uint16, off uint64, length uint32, buf []byte) error {
	var e *retained
	if typ == cmdWrite || typ == cmdTrim || typ == cmdWriteZeroes {
		e = r.retain(typ, flags, off, length, buf)
	}
	var notAfter time.Time
	for {
		c, err := r.client(ctx, notAfter)
		if err != nil {
			if e != nil {
				r.forget(e.seq)
			}
			return err
		}
		var covered []uint64
		if typ == cmdFlush {
			covered = r.acked()
		}
		errno, err := c.Do(ctx, typ, flags, off, length, buf)
		if errors.Is(err, ErrConnLost) || (err == nil && errno == errShutdown) {
			// The server went away (or is going): this request again,
			// on the next connection.
			r.lost(c)
			if notAfter.IsZero() {
				notAfter = time.Now().Add(r.cfg.ReconnectTimeout)
			}
			continue
		}
		if err == nil && errno == 0 {
			r.done(e, covered)
			if e != nil && r.RetainedBytes() > r.cfg.MaxRetainedBytes {
				return r.Flush(ctx)
			}
			return nil
		}
		if e != nil {
			r.forget(e.seq)
		}
		if err != nil {
			return err
		}
		return errnoErr(errno)
	}
}

// acked lists the retained requests acknowledged so far: what a flush
// sent now covers.
func (r *Redialer) acked() []uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []uint64
	for seq, e := range r.kept {
		if e.acked {
			out = append(out, seq)
		}
	}
	return out
}

// done records a success: a write-like request's acknowledgement, or a
// flush's, which drops the requests it covers.
func (r *Redialer) done(e *retained, covered []uint64) {
	if e != nil {
		r.mu.Lock()
		e.acked = true
		r.mu.Unlock()
	}
	for _, seq := range covered {
		r.forget(seq)
	}
}

// errnoErr maps an NBD reply's error value to the device error.
func errnoErr(errno uint32) error {
	switch errno {
	case 0:
		return nil
	case errPerm:
		return device.ErrReadOnly
	case errInval:
		return device.ErrInvalid
	case errNoSpc:
		return device.ErrNoSpace
	case errNotSup:
		return errors.ErrUnsupported
	}
	return fmt.Errorf("nbd errno %d: %w", errno, device.ErrIO)
}

func (r *Redialer) SizeBytes() uint64           { return r.sizeBytes.Load() }
func (r *Redialer) MinBlockBytes() uint32       { return r.minBytes }
func (r *Redialer) PreferredBlockBytes() uint32 { return r.prefBytes }

func (r *Redialer) ReadAt(ctx context.Context, p []byte, off uint64) error {
	return r.do(ctx, cmdRead, 0, off, uint32(len(p)), p)
}

func fuaFlag(fua bool) uint16 {
	if fua {
		return cmdFlagFUA
	}
	return 0
}

func (r *Redialer) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	return r.do(ctx, cmdWrite, fuaFlag(fua), off, uint32(len(p)), p)
}

func (r *Redialer) Trim(ctx context.Context, off, length uint64, fua bool) error {
	return r.do(ctx, cmdTrim, fuaFlag(fua), off, uint32(length), nil)
}

// WriteZeroes sends NBD_CMD_WRITE_ZEROES (without NO_HOLE: the upstream
// may punch a hole, as the device interface allows).
func (r *Redialer) WriteZeroes(ctx context.Context, off, length uint64, fua bool) error {
	return r.do(ctx, cmdWriteZeroes, fuaFlag(fua), off, uint32(length), nil)
}

func (r *Redialer) Flush(ctx context.Context) error {
	return r.do(ctx, cmdFlush, 0, 0, 0, nil)
}
