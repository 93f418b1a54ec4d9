package engine

import (
	"fmt"

	"github.com/drover-io/drover/core/proto"
)

// fop is a frontend request in the engine. Fops are reused (newFop,
// reuse): one goes back to the engine's free list only once it is
// finished (out of running) and no call in e.calls names it (calls), so
// a late reply to a replica marked ERR, say, never reaches a reused fop.
// A fop dropped by failAll is never reused.
type fop struct {
	req      Request
	lo, hi   uint64
	write    bool
	replied  bool
	parked   bool              // write: acknowledgement waits for a membership commit
	pending  replicaSet        // replicas yet to acknowledge
	targets  int               // replicas the write went to
	refused  []proto.ReplicaID // replicas that refused it (full, invalid)
	err      error
	tried    replicaSet        // reads: replicas tried
	repair   []proto.ReplicaID // reads: replicas that returned corrupt data
	inRepair int               // reads: repair writes outstanding
	calls    int               // calls in e.calls naming this fop
	dataHeld bool              // a call ended unanswered (Reply.DataHeld)
	done     bool              // finished: out of running
	free     bool              // on the free list
	own      bool              // the engine's own flush (maybeFlush): no reply
}

// newFop returns a fop for req, reused when one is free.
func (e *Engine) newFop(req Request) *fop {
	var f *fop
	if n := len(e.freeFops); n > 0 {
		f = e.freeFops[n-1]
		e.freeFops[n-1] = nil
		e.freeFops = e.freeFops[:n-1]
		refused, repair := f.refused[:0], f.repair[:0]
		*f = fop{refused: refused, repair: repair}
	} else {
		f = &fop{}
	}
	f.req, f.lo, f.hi = req, req.BlockIndex, req.BlockIndex+uint64(req.BlockCount)
	return f
}

// reuse puts f on the free list if it is finished and no call names it.
func (e *Engine) reuse(f *fop) {
	if !f.done || f.calls > 0 || f.free {
		return
	}
	if f.calls < 0 {
		panic(fmt.Sprintf("engine: request %d has %d calls", f.req.ID, f.calls))
	}
	f.free = true
	f.req = Request{} // drop the frontend's data
	clear(f.refused)
	clear(f.repair)
	if len(e.freeFops) < maxWaiting {
		e.freeFops = append(e.freeFops, f)
	}
}

// replicaSet is a small set of replica ids: a volume has a handful of
// replicas, so a slice (inline for up to 4) beats a map and allocates
// nothing in the common case.
type replicaSet struct {
	inline [4]proto.ReplicaID
	ids    []proto.ReplicaID
}

func (s *replicaSet) len() int { return len(s.ids) }

func (s *replicaSet) has(id proto.ReplicaID) bool {
	for _, x := range s.ids {
		if x == id {
			return true
		}
	}
	return false
}

func (s *replicaSet) add(id proto.ReplicaID) {
	if s.has(id) {
		return
	}
	if s.ids == nil {
		s.ids = s.inline[:0]
	}
	s.ids = append(s.ids, id)
}

// remove deletes id and reports whether it was there.
func (s *replicaSet) remove(id proto.ReplicaID) bool {
	for i, x := range s.ids {
		if x == id {
			last := len(s.ids) - 1
			s.ids[i] = s.ids[last]
			s.ids[last] = ""
			s.ids = s.ids[:last]
			return true
		}
	}
	return false
}

func (s *replicaSet) clear() {
	clear(s.ids)
	s.ids = s.ids[:0]
}

func (f *fop) conflicts(x *fop) bool {
	return (f.write || x.write) && f.lo < x.hi && x.lo < f.hi
}

// Submit takes a frontend request. Its reply comes through Ready.
func (e *Engine) Submit(req Request) {
	if err := e.checkRequest(req); err != nil {
		e.replyFrontend(req.ID, err, nil)
		return
	}
	f := e.newFop(req)
	f.write = req.Op == proto.OpWrite || req.Op == proto.OpTrim || req.Op == proto.OpWriteZeroes
	if req.Op == proto.OpFlush {
		f.lo, f.hi = 0, 0
	}
	e.waiting = append(e.waiting, f)
	e.schedule()
}

func (e *Engine) checkRequest(req Request) error {
	switch e.phase {
	case PhaseOpening:
		return ErrNotOpen
	case PhaseFaulted:
		return fmt.Errorf("%w: %s", ErrFaulted, e.why)
	case PhaseFenced:
		return fmt.Errorf("%w: %s", ErrFenced, e.why)
	}
	if !e.attached {
		return ErrDetached
	}
	if len(e.waiting) >= maxWaiting {
		return fmt.Errorf("%w: %d requests waiting", ErrBusy, len(e.waiting))
	}
	switch req.Op {
	case proto.OpFlush:
		return nil
	case proto.OpRead, proto.OpWrite, proto.OpTrim, proto.OpWriteZeroes:
	default:
		return fmt.Errorf("%w: operation %v is not a frontend operation", ErrInvalid, req.Op)
	}
	size := e.sizeBytes / proto.BlockSize
	if req.BlockCount == 0 || req.BlockCount > maxBlocksPerIO {
		return fmt.Errorf("%w: block count %d not in 1..%d", ErrInvalid, req.BlockCount, maxBlocksPerIO)
	}
	if req.BlockIndex >= size || uint64(req.BlockCount) > size-req.BlockIndex {
		return fmt.Errorf("%w: blocks [%d, +%d) beyond the volume's %d blocks", ErrInvalid, req.BlockIndex, req.BlockCount, size)
	}
	if req.Op == proto.OpWrite && uint64(len(req.Data)) != uint64(req.BlockCount)*proto.BlockSize {
		return fmt.Errorf("%w: %d data bytes for %d blocks", ErrInvalid, len(req.Data), req.BlockCount)
	}
	return nil
}

// schedule starts waiting frontend requests that conflict with nothing
// running or waiting before them, and runs admin tasks whose turn it is.
func (e *Engine) schedule() {
	if e.phase != PhaseServing {
		return
	}
	if e.rebuild != nil && e.rebuild.holding {
		e.rebuild.drained()
	} else {
		e.runAdmin()
	}
	if e.phase != PhaseServing || e.holding() {
		return
	}
	if e.now < e.quietUntil {
		return
	}
	lease := 0 // 0 unknown, 1 valid, -1 not: computed at the first read
	readable := func() bool {
		if lease == 0 {
			lease = -1
			if e.leaseValid() {
				lease = 1
			}
		}
		return lease == 1
	}
	for i := 0; i < len(e.waiting); {
		f := e.waiting[i]
		if e.fopBlocked(f, i) || (f.req.Op == proto.OpRead && !readable()) {
			i++
			continue
		}
		e.waiting = append(e.waiting[:i], e.waiting[i+1:]...)
		e.running = append(e.running, f)
		e.startFop(f)
		if e.phase != PhaseServing {
			return
		}
	}
}

func (e *Engine) fopBlocked(f *fop, i int) bool {
	for _, x := range e.running {
		if f.conflicts(x) {
			return true
		}
	}
	for _, x := range e.waiting[:i] {
		if f.conflicts(x) {
			return true
		}
	}
	return false
}

func (e *Engine) startFop(f *fop) {
	if f.req.Op == proto.OpRead {
		e.readFrom(f)
		return
	}
	if e.rwCount() < e.cfg.MinHealthy {
		e.fault(fmt.Sprintf("%d healthy replicas, %d needed", e.rwCount(), e.cfg.MinHealthy))
		return
	}
	req := proto.Request{Op: f.req.Op, BlockIndex: f.req.BlockIndex, BlockCount: f.req.BlockCount,
		Data: f.req.Data, FUA: f.req.FUA}
	if f.write {
		e.writeSeq++
	}
	req.Seq = e.writeSeq
	if f.req.Op == proto.OpFlush {
		e.flushedUpTo, e.flushedAt = e.writeSeq, e.now
	}
	f.pending.clear()
	targets := e.appendWriteTargets(e.targetBuf[:0])
	e.targetBuf = targets
	f.targets = len(targets)
	for _, id := range targets {
		f.pending.add(id)
	}
	for _, id := range targets {
		e.sendFop(id, req, callWrite, f)
	}
}

func (e *Engine) onWriteReply(f *fop, id proto.ReplicaID, rep proto.Reply) {
	switch rep.Status {
	case proto.StatusOK:
		f.pending.remove(id)
	case proto.StatusNoSpace, proto.StatusInvalid:
		// The replica refused without changing anything. If every
		// replica refused, the request fails and they all still agree;
		// if some applied it, the refusing ones missed it (maybeDone).
		f.pending.remove(id)
		f.refused = append(f.refused, id)
		kind := ErrNoSpace
		if rep.Status == proto.StatusInvalid {
			kind = ErrInvalid
		}
		f.err = fmt.Errorf("%w: replica %s: %s", kind, id, rep.Err)
	default:
		// The replica may be ERR already (a rebuild abort, say): this
		// request must stop waiting for it either way.
		f.pending.remove(id)
		e.replicaFailed(id, fmt.Sprintf("%v: %v %s", f.req.Op, rep.Status, rep.Err))
	}
	e.maybeDone(f)
}

// maybeDone acknowledges a write-like request once every target answered,
// and only once no membership change is pending.
func (e *Engine) maybeDone(f *fop) {
	if f.replied {
		return
	}
	if e.cfg.Bugs.AckAfterFirst && f.write && f.pending.len() < len(e.writeTargets()) && f.err == nil {
		f.pending.clear()
	}
	if f.pending.len() > 0 || f.parked {
		return
	}
	if len(f.refused) > 0 && len(f.refused) < f.targets {
		// Some replicas applied the write and some refused it: the
		// refusing ones now lack it and leave the set (sim seed 109: a
		// write failed with ENOSPC on one replica, the other kept it, and
		// reads alternated between the two).
		f.err = nil
		refused := f.refused
		f.refused = nil
		for _, id := range refused {
			e.replicaFailed(id, "refused a write the others applied")
		}
	}
	if e.change != nil {
		f.parked = true
		e.parked = append(e.parked, f)
		return
	}
	e.finishWrite(f)
}

// finishWrite acknowledges a write-like request. replied is set only when
// the reply goes out: a parked reply that a fault or fence drops must
// still be answered by failAll.
func (e *Engine) finishWrite(f *fop) {
	if f.replied || f.done {
		invariant("request %d (%v) acknowledged twice", f.req.ID, f.req.Op)
	}
	if f.pending.len() != 0 {
		invariant("request %d (%v) acknowledged with %d replicas yet to answer", f.req.ID, f.req.Op, f.pending.len())
	}
	f.replied, f.parked = true, false
	err := f.err
	if err == nil && e.rwCount() < e.cfg.MinHealthy {
		err = fmt.Errorf("%w: %d healthy replicas, %d needed", ErrFaulted, e.rwCount(), e.cfg.MinHealthy)
	}
	if f.own {
		e.flushOwn = false
	} else {
		e.ready.Replies = append(e.ready.Replies, Reply{ID: f.req.ID, Err: err, DataHeld: f.dataHeld || f.calls > 0})
	}
	e.finishFop(f)
}

// finishFop takes f out of running; it is reused once no call names it.
// A fop failAll dropped is not in running, and is never reused.
func (e *Engine) finishFop(f *fop) {
	for i, x := range e.running {
		if x == f {
			e.running = append(e.running[:i], e.running[i+1:]...)
			f.done = true
			e.reuse(f)
			return
		}
	}
}

// readFrom sends a read to the next readable replica not yet tried.
func (e *Engine) readFrom(f *fop) {
	cands := e.appendReadable(e.targetBuf[:0])
	e.targetBuf = cands
	var pick proto.ReplicaID
	for i := range cands {
		id := cands[(e.roundRobin+i)%len(cands)]
		if !f.tried.has(id) {
			pick = id
			break
		}
	}
	e.roundRobin++
	if pick == "" {
		f.replied = true
		e.replyFrontend(f.req.ID, fmt.Errorf("%w: no healthy replica could serve blocks [%d, +%d)", ErrIO, f.lo, f.req.BlockCount), nil)
		e.finishFop(f)
		return
	}
	f.tried.add(pick)
	req := proto.Request{Op: proto.OpRead, BlockIndex: f.req.BlockIndex, BlockCount: f.req.BlockCount}
	e.sendFop(pick, req, callRead, f)
}

func (e *Engine) onReadReply(f *fop, id proto.ReplicaID, rep proto.Reply) {
	switch rep.Status {
	case proto.StatusOK:
		if uint64(len(rep.Data)) != uint64(f.req.BlockCount)*proto.BlockSize {
			e.replicaFailed(id, fmt.Sprintf("read returned %d bytes for %d blocks", len(rep.Data), f.req.BlockCount))
			e.readFrom(f)
			return
		}
		if f.replied {
			invariant("read %d answered twice", f.req.ID)
		}
		f.replied = true
		e.replyFrontend(f.req.ID, nil, rep.Data)
		e.repairFrom(f, rep.Data)
	case proto.StatusCorrupt:
		e.event(Event{Kind: EventCorrupt, Replica: id, Block: rep.BlockIndex, Why: rep.Err})
		f.repair = append(f.repair, id)
		e.readFrom(f)
	case proto.StatusInvalid:
		f.replied = true
		e.replyFrontend(f.req.ID, fmt.Errorf("%w: replica %s: %s", ErrInvalid, id, rep.Err), nil)
		e.finishFop(f)
	default:
		e.replicaFailed(id, fmt.Sprintf("read: %v %s", rep.Status, rep.Err))
		e.readFrom(f)
	}
}

// repairFrom writes good data over the replicas that returned a corrupt
// block. The read keeps its range until the repairs finish, so no client
// write can slip between the good read and the repair. The repairs write
// a copy of data: the reply's Data is the frontend's once replied (a
// driver may recycle it as soon as it has read it).
func (e *Engine) repairFrom(f *fop, data []byte) {
	var targets []proto.ReplicaID
	for _, id := range f.repair {
		if m := e.members[id]; m != nil && (m.mode == ModeRW || m.mode == ModeWO) {
			targets = append(targets, id)
		}
	}
	if len(targets) == 0 {
		e.finishFop(f)
		return
	}
	f.inRepair = len(targets)
	if !e.cfg.Bugs.RepairWritesReply {
		data = append([]byte(nil), data...)
	}
	req := proto.Request{Op: proto.OpWrite, BlockIndex: f.req.BlockIndex, BlockCount: f.req.BlockCount,
		Data: data, Seq: e.writeSeq}
	for _, id := range targets {
		e.sendFop(id, req, callRepair, f)
	}
}

func (e *Engine) onRepairReply(f *fop, id proto.ReplicaID, rep proto.Reply) {
	if rep.Status != proto.StatusOK {
		e.replicaFailed(id, fmt.Sprintf("read repair: %v %s", rep.Status, rep.Err))
	} else {
		e.event(Event{Kind: EventRepaired, Replica: id, Block: f.req.BlockIndex})
	}
	f.inRepair--
	if f.inRepair == 0 {
		e.finishFop(f)
	}
}
