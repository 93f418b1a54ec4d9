package iscsi

import (
	"bufio"

	"github.com/drover-io/drover/transports/device"
)

// Async commands. On a device.Async (a Drover volume) READ and WRITE
// 10/12/16 whose data is all in hand are started by the connection's
// reader goroutine itself, with no worker: the reader reads every PDU the
// initiator has queued, starts each command, and before it would wait for
// the socket runs the devices (which completes the commands and writes
// their responses) and flushes the responses in one write. Every other
// command, and a write still waiting for Data-Out, runs on a worker as
// before.
//
// Responses go through one buffered writer. While the reader is in a
// batch (batching, under sendMu) nothing flushes but the reader's idle;
// outside one every send flushes at once. Since the flag is cleared and
// the buffer flushed under one lock, no response is left behind.
//
// A completion never writes to the socket: it runs where the device does
// its work (inside a volume's engine driver), and an initiator that reads
// no responses would stall it, and with it every connection of the
// volume. Completions queue their responses; the reader writes the queue
// in its idle, after running the devices, and a goroutine started for
// them writes what completes outside a batch.

// startRW starts a READ or WRITE (10/12/16) on an Async device and calls
// done with its result; it reports false, having done nothing, for any
// other command or device, which then runs synchronously.
func (lu *LogicalUnit) startRW(nexus string, cdb, dataOut []byte, done func(Result)) bool {
	dev, ok := lu.dev.(device.Async)
	if !ok || len(cdb) == 0 {
		return false
	}
	write := false
	switch cdb[0] {
	case opRead10, opRead12, opRead16:
	case opWrite10, opWrite12, opWrite16:
		write = true
	default:
		return false
	}
	// What Execute checks before running the command.
	cmd := lookupCommand(cdb)
	if cmd == nil || len(cdb) < cmd.cdbLen {
		return false
	}
	if sense := lu.unitAttention(nexus); sense != nil {
		done(checkCondition(sense))
		return true
	}
	if lu.conflict(nexus, cmd) {
		done(Result{Status: statusReservationConflict})
		return true
	}
	c := decodeRW(cdb)
	if sense := lu.checkRW(c); sense != nil {
		done(checkCondition(sense))
		return true
	}
	r := &device.Request{Offset: c.lba << lu.blockShift}
	if !write {
		r.Op, r.Data = device.OpRead, make([]byte, c.count<<lu.blockShift)
		if len(r.Data) == 0 {
			done(Result{DataIn: r.Data})
			return true
		}
		r.Done = func(r *device.Request, err error) {
			if err != nil {
				done(checkCondition(ioSense(err, false)))
				return
			}
			done(Result{DataIn: r.Data})
		}
		dev.Start(r)
		return true
	}
	// As write does: only the whole blocks received are written.
	want := uint32(c.count << lu.blockShift)
	data := dataOut[:min(uint32(len(dataOut)), want)]
	data = data[:len(data)>>lu.blockShift<<lu.blockShift]
	if len(data) == 0 {
		done(Result{WantOut: want})
		return true
	}
	r.Op, r.Data, r.FUA = device.OpWrite, data, c.flags&0x08 != 0
	r.Done = func(_ *device.Request, err error) {
		if err != nil {
			done(checkCondition(ioSense(err, true)))
			return
		}
		done(Result{WantOut: want})
	}
	dev.Start(r)
	return true
}

// startAsync tries to run t without a worker; it reports whether it did.
func (c *conn) startAsync(t *task) bool {
	if t.seq != nil || (t.write && t.got < t.edtl) {
		return false // Data-Out still to come
	}
	tgt := c.sess.target
	idx, ok := decodeLUN(t.lunField)
	if !ok || idx >= len(tgt.luns) {
		return false
	}
	lu := tgt.luns[idx]
	var data []byte
	if t.write {
		data = t.buf[:t.got]
	}
	if !lu.startRW(c.sess.nexus, t.cdb, data, func(res Result) { c.finishAsync(t, res) }) {
		return false
	}
	if dev := lu.dev.(device.Async); !containsDev(c.asyncDevs, dev) {
		c.asyncDevs = append(c.asyncDevs, dev)
	}
	return true
}

func containsDev(devs []device.Async, d device.Async) bool {
	for _, x := range devs {
		if x == d {
			return true
		}
	}
	return false
}

// queuedResp is a completed async command whose response is not yet
// written.
type queuedResp struct {
	t   *task
	res Result
}

// finishAsync queues the response of a command started by startAsync. It
// never blocks.
func (c *conn) finishAsync(t *task, res Result) {
	if res.DataIn == nil {
		c.release(t) // a write's data is written: only a status is left
	}
	if !c.finish(t) {
		c.release(t)
		return // aborted: no response
	}
	c.qMu.Lock()
	c.queue = append(c.queue, queuedResp{t: t, res: res})
	start := !c.inBatch && !c.writing
	if start {
		c.writing = true
		c.writers.Add(1)
	}
	c.qMu.Unlock()
	if start {
		go func() {
			defer c.writers.Done()
			c.writeQueue()
		}()
	}
}

// writeQueue writes queued responses until the queue stays empty. Its
// caller set c.writing; one goroutine writes at a time.
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
		for i := range batch {
			if err := c.respond(batch[i].t, batch[i].res); err != nil {
				c.log.Debug("response not sent", "err", err)
			}
			c.release(batch[i].t)
			batch[i] = queuedResp{}
		}
		c.qMu.Lock()
		if c.spareQueue == nil {
			c.spareQueue = batch[:0]
		}
		c.qMu.Unlock()
	}
}

// startBatch marks the reader as in a batch: responses wait for idle.
func (c *conn) startBatch() {
	c.qMu.Lock()
	c.inBatch = true
	c.qMu.Unlock()
	c.sendMu.Lock()
	c.batching = true
	c.sendMu.Unlock()
}

// idle runs the devices this batch started commands on (completing what
// can be completed now) and flushes the responses written so far.
func (c *conn) idle() {
	for i, d := range c.asyncDevs {
		d.Run()
		c.asyncDevs[i] = nil
	}
	c.asyncDevs = c.asyncDevs[:0]
	c.qMu.Lock()
	c.inBatch = false
	write := !c.writing && len(c.queue) > 0
	if write {
		c.writing = true
	}
	c.qMu.Unlock()
	if write {
		c.writeQueue()
	}
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	c.batching = false
	if c.bw != nil && c.bw.Buffered() > 0 {
		if err := c.bw.Flush(); err != nil {
			c.nc.Close()
		}
	}
}

// pduBuffered reports whether the next PDU is whole in the read buffer,
// so reading it cannot block.
func pduBuffered(rd *bufio.Reader, headerDigest, dataDigest bool) bool {
	n := rd.Buffered()
	if n < bhsBytes {
		return false
	}
	bhs, err := rd.Peek(bhsBytes)
	if err != nil {
		return false
	}
	dataLen := int(bhs[5])<<16 | int(bhs[6])<<8 | int(bhs[7])
	total := bhsBytes + int(bhs[4])*4 + dataLen + pad4(dataLen)
	if headerDigest {
		total += 4
	}
	if dataDigest && dataLen > 0 {
		total += 4
	}
	return n >= total
}
