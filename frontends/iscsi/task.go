package iscsi

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
)

// task is one SCSI command in flight.
type task struct {
	itt       uint32
	lunField  [8]byte
	cdb       []byte
	edtl      uint32
	read      bool
	write     bool
	immediate bool
	ctx       context.Context
	cancel    context.CancelFunc
	done      chan struct{}
	aborted   bool // guarded by conn.mu

	mu     sync.Mutex
	buf    []byte
	got    uint32
	seq    *dataSeq
	r2tSN  uint32
	failed bool   // a Data-Out sequence error: the command ends with sense
	dataSN uint32 // Data-In PDUs sent

	// chargeBytes is what the task holds of the connection's budget,
	// given back by release.
	chargeBytes atomic.Int64
}

// dataSeq is the Data-Out sequence a task expects next: unsolicited data
// (ttt reservedTag) or the answer to one R2T.
type dataSeq struct {
	ttt         uint32
	end         uint32
	dataSN      uint32
	unsolicited bool
	done        chan struct{}
}

// errProtocol marks an initiator's protocol violation; it drops the
// connection.
func errProtocol(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

func (c *conn) scsiCommand(p *PDU) error {
	if c.sess.discovery {
		return c.reject(p, 0x04)
	}
	flags := p.BHS[1]
	t := &task{
		itt:       p.ITT(),
		lunField:  p.lunField(),
		edtl:      p.u32(20),
		read:      flags&0x40 != 0,
		write:     flags&0x20 != 0,
		immediate: p.Immediate(),
		done:      make(chan struct{}),
	}
	cdb, err := commandCDB(p)
	if err != nil {
		return err
	}
	t.cdb = cdb
	if len(p.Data) > 0 && (!t.write || !c.p.immediateData || uint32(len(p.Data)) > min(c.p.firstBurstBytes, t.edtl)) {
		return errProtocol("immediate data of %d bytes not allowed (write %v, ImmediateData %v, EDTL %d)",
			len(p.Data), t.write, c.p.immediateData, t.edtl)
	}
	if !p.Final() && (!t.write || c.p.initialR2T) {
		return errProtocol("unsolicited Data-Out announced with InitialR2T=%v write=%v", c.p.initialR2T, t.write)
	}
	if !c.acceptCmdSN(p, !t.immediate) {
		return nil
	}
	c.mu.Lock()
	dup := c.tasks[t.itt] != nil
	busy := len(c.tasks) >= maxTasks
	c.mu.Unlock()
	if dup {
		return errProtocol("initiator task tag %#x already in use", t.itt)
	}
	charge := c.taskBytes(t)
	full := !busy && !(t.write && t.edtl > maxDataOutBytes) && !c.share.TryAcquire(charge)
	if busy || full || (t.write && t.edtl > maxDataOutBytes) {
		st, sense := byte(statusBusy), []byte(nil)
		switch {
		case full:
			// The budget is spent: the initiator retries, and one that
			// reads no responses soon stops being answered at all.
			st = statusTaskSetFull
		case !busy:
			st, sense = statusCheckCondition, senseInvalidFieldInCDB
		}
		c.mu.Lock()
		if !t.immediate {
			c.inflight--
		}
		c.mu.Unlock()
		return c.sendResponse(t, st, sense, 0, false)
	}
	t.chargeBytes.Store(charge)
	if t.write && p.Final() && uint32(len(p.Data)) >= t.edtl {
		t.buf = p.Data[:t.edtl] // all of it came as immediate data
		t.got = t.edtl
	} else if t.write {
		t.buf = make([]byte, t.edtl)
		t.got = uint32(copy(t.buf, p.Data))
		if !p.Final() {
			end := min(t.edtl, c.p.firstBurstBytes)
			if end <= t.got {
				return errProtocol("unsolicited Data-Out announced but immediate data fills the first burst")
			}
			t.seq = &dataSeq{ttt: reservedTag, end: end, unsolicited: true, done: make(chan struct{})}
		}
	}
	t.ctx, t.cancel = context.WithCancel(c.ctx)
	c.mu.Lock()
	c.tasks[t.itt] = t
	c.mu.Unlock()
	if !c.startAsync(t) {
		c.dispatch(t)
	}
	return nil
}

// dispatch runs t on an idle worker of the connection, or on a new one
// when all are busy (tasks never wait for each other). Workers live until
// the connection ends, so a task runs on a stack already grown by the
// ones before it instead of growing a fresh goroutine's stack through the
// device's call path each time.
func (c *conn) dispatch(t *task) {
	select {
	case c.work <- t:
	default:
		c.wg.Add(1)
		go c.worker(t)
	}
}

// worker runs t, then the tasks handed to it while idle, until the
// connection ends.
func (c *conn) worker(t *task) {
	defer c.wg.Done()
	for {
		c.runTask(t)
		select {
		case t = <-c.work:
		case <-c.ctx.Done():
			return
		}
	}
}

// commandCDB returns the CDB, extended by an Extended CDB AHS if present.
func commandCDB(p *PDU) ([]byte, error) {
	cdb := append([]byte(nil), p.BHS[32:48]...)
	ahs := p.AHS
	for len(ahs) > 0 {
		if len(ahs) < 4 {
			return nil, errProtocol("AHS of %d bytes", len(ahs))
		}
		n := int(binary.BigEndian.Uint16(ahs))
		total := 3 + n + pad4(3+n)
		if n == 0 || total > len(ahs) {
			return nil, errProtocol("AHS length %d exceeds %d", n, len(ahs))
		}
		if ahs[2] == 1 { // extended CDB
			cdb = append(cdb, ahs[4:3+n]...)
		}
		ahs = ahs[total:]
	}
	return cdb, nil
}

// dataOut delivers a Data-Out PDU to its task. Data-Out for an unknown
// task is dropped: it may follow a response sent before all unsolicited
// data arrived.
func (c *conn) dataOut(p *PDU) error {
	c.mu.Lock()
	t := c.tasks[p.ITT()]
	c.mu.Unlock()
	if t == nil {
		c.log.Debug("Data-Out for unknown task dropped", "itt", p.ITT())
		return nil
	}
	return t.deliver(p)
}

func (t *task) deliver(p *PDU) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.seq
	if s == nil && t.failed {
		return nil // the rest of a sequence that already failed the command
	}
	if s == nil {
		return errProtocol("Data-Out for task %#x with no outstanding R2T", t.itt)
	}
	if ttt := p.u32(20); ttt != s.ttt {
		return errProtocol("Data-Out TTT %#x, expected %#x", ttt, s.ttt)
	}
	off, n := p.u32(40), uint32(len(p.Data))
	if sn := p.u32(36); sn != s.dataSN || off != t.got {
		// A sequence error fails the command, not the connection.
		t.failed = true
		t.seq = nil
		close(s.done)
		return nil
	}
	if n > s.end-t.got {
		return errProtocol("Data-Out at offset %d length %d beyond %d", off, n, s.end)
	}
	copy(t.buf[off:], p.Data)
	t.got += n
	s.dataSN++
	if !p.Final() {
		return nil
	}
	if t.got != s.end && !s.unsolicited {
		return errProtocol("Data-Out sequence ended at %d, R2T asked up to %d", t.got, s.end)
	}
	t.seq = nil
	close(s.done)
	return nil
}

// runTask collects a command's data, executes it and responds.
func (c *conn) runTask(t *task) {
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("SCSI command panicked; dropping connection", "cdb", fmt.Sprintf("%x", t.cdb),
				"panic", r, "stack", string(debug.Stack()))
			c.nc.Close()
			c.finish(t)
		}
		c.release(t)
	}()
	if t.write {
		if err := c.collect(t); err != nil && !errors.Is(err, errSequence) {
			c.finish(t)
			return
		}
	}
	t.mu.Lock()
	failed := t.failed
	t.mu.Unlock()
	var res Result
	if failed {
		res = checkCondition(senseDataPhaseError)
	} else {
		res = c.execute(t)
	}
	if res.DataIn == nil {
		c.release(t) // a write's data is written: only a status is left
	}
	if !c.finish(t) {
		return // aborted: no response
	}
	if err := c.respond(t, res); err != nil {
		c.log.Debug("response not sent", "err", err)
	}
}

// collect waits for unsolicited data and solicits the rest with R2Ts.
func (c *conn) collect(t *task) error {
	t.mu.Lock()
	s := t.seq
	t.mu.Unlock()
	if s != nil {
		select {
		case <-s.done:
		case <-t.ctx.Done():
			return t.ctx.Err()
		}
		if t.hasFailed() {
			return errSequence
		}
	}
	for {
		t.mu.Lock()
		off := t.got
		if off >= uint32(len(t.buf)) {
			t.mu.Unlock()
			return nil
		}
		length := min(c.p.maxBurstBytes, uint32(len(t.buf))-off)
		s := &dataSeq{ttt: c.newTTT(), end: off + length, done: make(chan struct{})}
		t.seq = s
		sn := t.r2tSN
		t.r2tSN++
		t.mu.Unlock()
		r := &PDU{}
		r.BHS[0] = opR2T
		r.BHS[1] = 0x80
		r.setLUNField(t.lunField)
		r.put32(16, t.itt)
		r.put32(20, s.ttt)
		r.put32(36, sn)
		r.put32(40, off)
		r.put32(44, length)
		if err := c.send(r, withStatSN); err != nil {
			return err
		}
		select {
		case <-s.done:
		case <-t.ctx.Done():
			return t.ctx.Err()
		}
		if t.hasFailed() {
			return errSequence
		}
	}
}

// errSequence ends data collection after a Data-Out sequence error.
var errSequence = errors.New("Data-Out sequence error")

func (t *task) hasFailed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

func (c *conn) newTTT() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nextTTT++
	if c.nextTTT == reservedTag {
		c.nextTTT = 1
	}
	return c.nextTTT
}

// taskBytes is what t's data buffers may take: its expected transfer
// length, or for the read and verify commands the blocks the CDB names
// (within the largest transfer; larger ones are refused before any
// buffer is made).
func (c *conn) taskBytes(t *task) int64 {
	n := int64(min(t.edtl, maxDataOutBytes))
	idx, ok := decodeLUN(t.lunField)
	if !ok || idx >= len(c.sess.target.luns) || len(t.cdb) == 0 {
		return n
	}
	switch t.cdb[0] {
	case opRead6, opRead10, opRead12, opRead16, opVerify10, opVerify12, opVerify16:
	default:
		return n
	}
	if cmd := lookupCommand(t.cdb); cmd == nil || len(t.cdb) < cmd.cdbLen {
		return n
	}
	rw := decodeRW(t.cdb)
	if rw.count > maxTransferBytes {
		return n
	}
	return max(n, int64(min(rw.count<<c.sess.target.luns[idx].blockShift, maxTransferBytes)))
}

// release gives back t's budget bytes, once.
func (c *conn) release(t *task) {
	c.share.Release(t.chargeBytes.Swap(0))
}

// finish removes t from the task set and reports whether its response
// should be sent (false once aborted).
func (c *conn) finish(t *task) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tasks[t.itt] == t {
		delete(c.tasks, t.itt)
		if !t.immediate {
			c.inflight--
		}
	}
	select {
	case <-t.done:
	default:
		close(t.done)
	}
	if t.cancel != nil {
		t.cancel()
	}
	return !t.aborted
}

func (c *conn) execute(t *task) Result {
	tgt := c.sess.target
	if len(t.cdb) > 0 && t.cdb[0] == opReportLUNs {
		return reportLUNs(len(tgt.luns), t.cdb)
	}
	idx, ok := decodeLUN(t.lunField)
	if !ok || idx >= len(tgt.luns) {
		return noSuchLUN(t.cdb)
	}
	t.mu.Lock()
	data := t.buf[:t.got]
	t.mu.Unlock()
	return tgt.luns[idx].Execute(t.ctx, c.sess.nexus, t.cdb, data, t.edtl)
}

// respond sends a command's data and status, computing residuals against
// the initiator's Expected Data Transfer Length.
func (c *conn) respond(t *task, res Result) error {
	if res.Status != statusGood {
		return c.sendResponse(t, res.Status, res.Sense, 0, false)
	}
	want := uint32(len(res.DataIn))
	if want == 0 {
		want = res.WantOut
	}
	var residual uint32
	var over, under bool
	switch {
	case want > t.edtl:
		over, residual = true, want-t.edtl
	case want < t.edtl:
		under, residual = true, t.edtl-want
	}
	data := res.DataIn
	if !t.read {
		data = nil
	} else if uint32(len(data)) > t.edtl {
		data = data[:t.edtl]
	}
	if len(data) == 0 {
		return c.sendResponse(t, statusGood, nil, residual, over)
	}
	chunk := int(c.p.sendDataBytes)
	for off := 0; off < len(data); off += chunk {
		end := min(off+chunk, len(data))
		p := &PDU{Data: data[off:end]}
		p.BHS[0] = opDataIn
		p.setLUNField(t.lunField)
		p.put32(16, t.itt)
		p.put32(20, reservedTag)
		p.put32(36, t.dataSN)
		p.put32(40, uint32(off))
		t.dataSN++
		mode := noStatSN
		if end == len(data) {
			p.BHS[1] = 0x81 // F and S: status rides in the last Data-In
			if over {
				p.BHS[1] |= 0x04
			} else if under {
				p.BHS[1] |= 0x02
			}
			p.BHS[3] = statusGood
			p.put32(44, residual)
			mode = withStatus
		}
		if err := c.send(p, mode); err != nil {
			return err
		}
	}
	return nil
}

// sendResponse sends a SCSI Response PDU. For a GOOD status with a
// residual, overflow says which kind: true overflow, false underflow.
func (c *conn) sendResponse(t *task, status byte, sense []byte, residual uint32, overflow bool) error {
	p := &PDU{}
	p.BHS[0] = opSCSIResp
	p.BHS[1] = 0x80
	if status == statusGood && residual > 0 {
		if overflow {
			p.BHS[1] |= 0x04
		} else {
			p.BHS[1] |= 0x02
		}
		p.put32(44, residual)
	}
	p.BHS[3] = status
	p.put32(16, t.itt)
	p.put32(36, t.dataSN)
	if len(sense) > 0 {
		p.Data = make([]byte, 2+len(sense))
		binary.BigEndian.PutUint16(p.Data, uint16(len(sense)))
		copy(p.Data[2:], sense)
	}
	return c.send(p, withStatus)
}
