package engine

import (
	"fmt"

	"github.com/drover-io/drover/core/proto"
)

// fop is a frontend request in the engine.
type fop struct {
	req      Request
	lo, hi   uint64
	write    bool
	replied  bool
	parked   bool                     // write: acknowledgement waits for a membership commit
	pending  map[proto.ReplicaID]bool // replicas yet to acknowledge
	targets  int                      // replicas the write went to
	refused  []proto.ReplicaID        // replicas that refused it (full, invalid)
	err      error
	tried    map[proto.ReplicaID]bool // reads: replicas tried
	repair   []proto.ReplicaID        // reads: replicas that returned corrupt data
	inRepair int                      // reads: repair writes outstanding
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
	f := &fop{req: req, lo: req.BlockIndex, hi: req.BlockIndex + uint64(req.BlockCount)}
	f.write = req.Op == proto.OpWrite || req.Op == proto.OpTrim || req.Op == proto.OpWriteZeroes
	if req.Op == proto.OpFlush {
		f.lo, f.hi = 0, 0
	}
	e.waiting = append(e.waiting, f)
	e.schedule()
}

func (e *Engine) checkRequest(req Request) error {
	switch e.phase {
	case phaseOpening:
		return ErrNotOpen
	case phaseFaulted:
		return fmt.Errorf("%w: %s", ErrFaulted, e.why)
	case phaseFenced:
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
	if e.phase != phaseServing {
		return
	}
	if e.rebuild != nil && e.rebuild.holding {
		e.rebuild.drained()
	} else {
		e.runAdmin()
	}
	if e.phase != phaseServing || e.holding() {
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
		if e.phase != phaseServing {
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
		f.tried = map[proto.ReplicaID]bool{}
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
	f.pending = map[proto.ReplicaID]bool{}
	targets := e.writeTargets()
	f.targets = len(targets)
	for _, id := range targets {
		f.pending[id] = true
	}
	for _, id := range targets {
		e.send(id, req, func(rep proto.Reply) { e.onWriteReply(f, id, rep) })
	}
}

func (e *Engine) onWriteReply(f *fop, id proto.ReplicaID, rep proto.Reply) {
	switch rep.Status {
	case proto.StatusOK:
		delete(f.pending, id)
	case proto.StatusNoSpace, proto.StatusInvalid:
		// The replica refused without changing anything. If every
		// replica refused, the request fails and they all still agree;
		// if some applied it, the refusing ones missed it (maybeDone).
		delete(f.pending, id)
		f.refused = append(f.refused, id)
		kind := ErrNoSpace
		if rep.Status == proto.StatusInvalid {
			kind = ErrInvalid
		}
		f.err = fmt.Errorf("%w: replica %s: %s", kind, id, rep.Err)
	default:
		// The replica may be ERR already (a rebuild abort, say): this
		// request must stop waiting for it either way.
		delete(f.pending, id)
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
	if e.cfg.Bugs.AckAfterFirst && f.write && len(f.pending) < len(e.writeTargets()) && f.err == nil {
		f.pending = map[proto.ReplicaID]bool{}
	}
	if len(f.pending) > 0 || f.parked {
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
	// replied is set only when the reply goes out: a parked reply that a
	// fault or fence drops must still be answered by failAll.
	finish := func() {
		f.replied, f.parked = true, false
		err := f.err
		if err == nil && e.rwCount() < e.cfg.MinHealthy {
			err = fmt.Errorf("%w: %d healthy replicas, %d needed", ErrFaulted, e.rwCount(), e.cfg.MinHealthy)
		}
		e.replyFrontend(f.req.ID, err, nil)
		e.finishFop(f)
	}
	if e.change != nil {
		f.parked = true
		e.parked = append(e.parked, finish)
		return
	}
	finish()
}

func (e *Engine) finishFop(f *fop) {
	for i, x := range e.running {
		if x == f {
			e.running = append(e.running[:i], e.running[i+1:]...)
			return
		}
	}
}

// readFrom sends a read to the next readable replica not yet tried.
func (e *Engine) readFrom(f *fop) {
	cands := e.readable()
	var pick proto.ReplicaID
	for i := range cands {
		id := cands[(e.roundRobin+i)%len(cands)]
		if !f.tried[id] {
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
	f.tried[pick] = true
	req := proto.Request{Op: proto.OpRead, BlockIndex: f.req.BlockIndex, BlockCount: f.req.BlockCount}
	e.send(pick, req, func(rep proto.Reply) { e.onReadReply(f, pick, rep) })
}

func (e *Engine) onReadReply(f *fop, id proto.ReplicaID, rep proto.Reply) {
	switch rep.Status {
	case proto.StatusOK:
		if uint64(len(rep.Data)) != uint64(f.req.BlockCount)*proto.BlockSize {
			e.replicaFailed(id, fmt.Sprintf("read returned %d bytes for %d blocks", len(rep.Data), f.req.BlockCount))
			e.readFrom(f)
			return
		}
		f.replied = true
		e.replyFrontend(f.req.ID, nil, rep.Data)
		e.repairFrom(f, rep.Data)
	case proto.StatusCorrupt:
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
// write can slip between the good read and the repair.
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
	req := proto.Request{Op: proto.OpWrite, BlockIndex: f.req.BlockIndex, BlockCount: f.req.BlockCount, Data: data, Seq: e.writeSeq}
	for _, id := range targets {
		e.send(id, req, func(rep proto.Reply) {
			if rep.Status != proto.StatusOK {
				e.replicaFailed(id, fmt.Sprintf("read repair: %v %s", rep.Status, rep.Err))
			}
			f.inRepair--
			if f.inRepair == 0 {
				e.finishFop(f)
			}
		})
	}
}
