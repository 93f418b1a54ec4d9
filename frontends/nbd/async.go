package nbd

import (
	"encoding/binary"
	"errors"
	"sync"

	"github.com/drover-io/drover/transports/device"
)

// Transmission on an Async device (a Drover volume): one goroutine per
// connection reads every request the client has queued, starts each on
// the device, then calls Run once, which does the whole batch's work on
// this goroutine — engine, in-process replicas, their IOs — and completes
// the requests. A completion never touches the socket: it runs where the
// device does its work (inside the engine's driver, for a volume), and a
// client that reads no replies would stall it, and with it every other
// connection of the volume. So completions queue their replies, and the
// reader writes the queue after Run and flushes once per batch, when it
// has nothing more to read. Replies completed while the reader is not in
// a batch (a remote replica answered later, another goroutine drove the
// engine) are written by a goroutine started for them, which lives while
// the queue is not empty.
//
// The reader never blocks (on the socket, on the byte budget, on the
// request window) while it holds started requests it has not Run, or
// queued replies: before any wait it runs and writes them (idle). A read's
// buffer and window slot are released once its reply is written, so a
// client that reads no replies soon stops being read.

// asyncReq is one NBD request started on an Async device.
type asyncReq struct {
	dev device.Request
	c   *conn
	req Request
	buf []byte
}

var asyncReqPool = sync.Pool{New: func() any { return new(asyncReq) }}

// queuedReply is a completed request whose reply is not yet written.
type queuedReply struct {
	req   Request
	errno uint32
	buf   []byte // a read's data, or nil
	slot  bool   // holds a window slot and a pending count
}

// serveAsync runs transmission on dev until the client disconnects or
// reading fails, then waits for every started request to complete.
func (c *conn) serveAsync(dev device.Async) {
	c.sem = make(chan struct{}, c.s.cfg.MaxRequestsInFlight)
	c.beforeWait = func() { c.idle(dev) }
	defer func() {
		c.idle(dev)
		c.pending.Wait()
		c.beforeWait = nil
	}()
	for {
		if c.busy() && !c.nextBuffered() {
			c.idle(dev)
		}
		req, buf, err := c.readRequest()
		if err != nil {
			if !errors.Is(err, errStopReading) {
				c.readErr = err
			}
			return
		}
		if req.Type == cmdDisc {
			c.log.Debug("nbd: client disconnected")
			return
		}
		c.setBusy()
		c.startAsync(dev, req, buf)
	}
}

// nextBuffered reports whether the next request, with a WRITE's payload,
// is already in the read buffer, so reading it cannot block.
func (c *conn) nextBuffered() bool {
	n := c.r.Buffered()
	if n < requestHeaderBytes {
		return false
	}
	hdr, err := c.r.Peek(requestHeaderBytes)
	if err != nil {
		return false
	}
	if binary.BigEndian.Uint16(hdr[6:8]) == cmdWrite {
		return n >= requestHeaderBytes+int(binary.BigEndian.Uint32(hdr[24:28]))
	}
	return true
}

// busy reports whether the reader holds a batch it has not yet run.
func (c *conn) busy() bool {
	c.qMu.Lock()
	defer c.qMu.Unlock()
	return c.batching
}

func (c *conn) setBusy() {
	c.qMu.Lock()
	c.batching = true
	c.qMu.Unlock()
}

// idle runs the started requests and writes and flushes the replies
// queued so far; from then on completions have their replies written by
// a goroutine of their own until the next batch.
func (c *conn) idle(dev device.Async) {
	dev.Run()
	c.qMu.Lock()
	c.batching = false
	if c.writing || len(c.queue) == 0 {
		c.qMu.Unlock()
		return
	}
	c.writing = true
	c.qMu.Unlock()
	c.writeQueue()
}

// queueReply queues a reply; it starts a goroutine to write it when the
// reader will not (not in a batch) and no other is writing.
func (c *conn) queueReply(q queuedReply) {
	c.qMu.Lock()
	c.queue = append(c.queue, q)
	start := !c.batching && !c.writing
	if start {
		c.writing = true
	}
	c.qMu.Unlock()
	if start {
		go c.writeQueue()
	}
}

// writeQueue writes queued replies, flushing whenever the queue runs
// dry, until it stays empty. Its caller set c.writing; only one goroutine
// writes at a time, so replies never interleave.
func (c *conn) writeQueue() {
	for {
		c.qMu.Lock()
		batch := c.queue
		c.queue, c.spareQueue = c.spareQueue[:0], nil
		if len(batch) == 0 {
			c.writing = false
			c.spareQueue = batch
			c.qMu.Unlock()
			return
		}
		c.qMu.Unlock()
		c.writeMu.Lock()
		for i := range batch {
			c.writeReplyLocked(batch[i].req, batch[i].errno, batch[i].buf)
		}
		c.qMu.Lock()
		more := len(c.queue) > 0
		c.qMu.Unlock()
		if !more && c.writeErr == nil {
			c.writeErr = c.w.Flush()
		}
		if c.writeErr != nil {
			c.nc.Close() // the client can no longer hear us; stop reading too
		}
		c.writeMu.Unlock()
		for i := range batch {
			c.finishReply(&batch[i])
		}
		c.qMu.Lock()
		if c.spareQueue == nil {
			c.spareQueue = batch[:0]
		}
		c.qMu.Unlock()
	}
}

// finishReply releases what a written (or unwritable) reply held.
func (c *conn) finishReply(q *queuedReply) {
	c.release(q.buf)
	if q.slot {
		<-c.sem
		c.pending.Done()
	}
	*q = queuedReply{}
}

// startAsync starts req on dev, or answers it at once when it is refused.
func (c *conn) startAsync(dev device.Async, req Request, buf []byte) {
	if errno := c.precheck(req); errno != 0 {
		c.release(buf)
		c.queueReply(queuedReply{req: req, errno: errno})
		return
	}
	a := asyncReqPool.Get().(*asyncReq)
	a.c, a.req, a.buf = c, req, buf
	a.dev = device.Request{Offset: req.Offset, FUA: req.Flags&cmdFlagFUA != 0, Owner: a, Done: asyncDone}
	switch req.Type {
	case cmdRead:
		a.dev.Op, a.dev.Data = device.OpRead, buf
	case cmdWrite:
		a.dev.Op, a.dev.Data = device.OpWrite, buf
	case cmdFlush:
		a.dev.Op = device.OpFlush
	case cmdTrim:
		a.dev.Op, a.dev.Length = device.OpTrim, uint64(req.Length)
	case cmdWriteZeroes:
		a.dev.Op, a.dev.Length = device.OpWriteZeroes, uint64(req.Length)
		if tz, ok := dev.(TrimZeroer); ok && tz.TrimZeroes() && req.Flags&cmdFlagNoHole == 0 {
			a.dev.Op = device.OpTrim
		}
	}
	select {
	case c.sem <- struct{}{}:
	default:
		c.idle(dev) // the window is full: complete what can be, then wait
		c.sem <- struct{}{}
		c.setBusy()
	}
	c.pending.Add(1)
	dev.Start(&a.dev)
}

// asyncDone completes a started request: its reply is queued, a write's
// buffer released at once (a read's goes with its reply). It never
// blocks: it may run inside the device's driver.
func asyncDone(r *device.Request, err error) {
	a := r.Owner.(*asyncReq)
	c, req, buf := a.c, a.req, a.buf
	*a = asyncReq{}
	asyncReqPool.Put(a)
	var errno uint32
	if err != nil {
		errno = errnoFor(c.s.ctx, err)
		c.log.Warn("nbd: request failed", "cmd", req.Type, "offset", req.Offset,
			"length", req.Length, "errno", errno, "err", err)
	}
	if req.Type != cmdRead || errno != 0 {
		c.release(buf)
		buf = nil
	}
	c.queueReply(queuedReply{req: req, errno: errno, buf: buf, slot: true})
}
