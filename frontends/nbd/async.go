package nbd

import (
	"encoding/binary"
	"errors"
	"sync"

	"github.com/drover-io/drover/frontends/device"
)

// Transmission on an Async device (a Drover volume): one goroutine per
// connection reads every request the client has queued, starts each on
// the device, then calls Run once, which does the whole batch's work on
// this goroutine — engine, in-process replicas, their IOs — and completes
// the requests, whose replies go into the buffered writer. The writer is
// flushed once per batch, when the reader has nothing more to read.
// Replies completed while the reader is not busy with a batch (a remote
// replica answered later, another goroutine drove the engine) flush
// themselves.
//
// The reader never blocks (on the socket, on the byte budget, on the
// request window) while it holds started requests it has not Run, or
// unflushed replies: before any wait it runs and flushes (idle).

// asyncReq is one NBD request started on an Async device.
type asyncReq struct {
	dev device.Request
	c   *conn
	req Request
	buf []byte
}

var asyncReqPool = sync.Pool{New: func() any { return new(asyncReq) }}

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
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	return c.batching
}

func (c *conn) setBusy() {
	c.writeMu.Lock()
	c.batching = true
	c.writeMu.Unlock()
}

// idle runs the started requests and flushes the replies written so far;
// from then on completions flush their own replies until the next batch.
func (c *conn) idle(dev device.Async) {
	dev.Run()
	c.writeMu.Lock()
	c.batching = false
	if c.writeErr == nil && c.w.Buffered() > 0 {
		c.writeErr = c.w.Flush()
		if c.writeErr != nil {
			c.nc.Close()
		}
	}
	c.writeMu.Unlock()
}

// startAsync starts req on dev, or answers it at once when it is refused.
func (c *conn) startAsync(dev device.Async, req Request, buf []byte) {
	if errno := c.precheck(req); errno != 0 {
		c.replyAsync(req, errno, buf)
		c.release(buf)
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

// asyncDone completes a started request: its reply goes out, its buffer
// and window slot are released.
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
	c.replyAsync(req, errno, buf)
	c.release(buf)
	<-c.sem
	c.pending.Done()
}

// replyAsync writes a reply (and a successful READ's data) into the
// buffered writer; the reader's idle flushes it, or this call does when
// the reader is not in a batch.
func (c *conn) replyAsync(req Request, errno uint32, buf []byte) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	c.writeReplyLocked(req, errno, buf)
	if c.writeErr == nil && !c.batching {
		c.writeErr = c.w.Flush()
	}
	if c.writeErr != nil {
		c.nc.Close()
	}
}
