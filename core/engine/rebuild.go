package engine

import (
	"fmt"

	"github.com/drover-io/drover/core/proto"
)

// rebuildTask brings one replica up to date:
//
//  1. fence it at the engine's epoch and grow it to the volume's size;
//  2. record it as WO: from then on every write reaches it;
//  3. hold IO, let it drain, and snapshot every replica: what the target
//     may lack now sits in frozen layers, everything newer in its head;
//  4. give it the source's chain of snapshot names, then sync each layer
//     by checksum (layerSync), copying only runs that differ;
//  5. flush it and record it as RW.
//
// Interrupted at any step, the next attempt redoes the cheap steps and the
// checksum comparison, and copies only what is still missing.
type rebuildTask struct {
	e       *Engine
	target  proto.ReplicaID
	source  proto.ReplicaID
	admin   *adminTask
	stage   string
	holding bool
	aborted bool

	chain       []string
	layer       int
	sync        *layerSync
	blocksTotal uint64
	scanned     uint64
	copied      uint64
}

func (rb *rebuildTask) abort(why string) {
	if rb.aborted {
		return
	}
	rb.aborted = true
	if rb.sync != nil {
		rb.sync.aborted = true
	}
	e := rb.e
	if e.rebuild == rb {
		e.rebuild = nil
	}
	if m := e.members[rb.target]; m != nil {
		e.replicaFailed(rb.target, "rebuild: "+why) // no-op if already ERR
		m.errSince = e.now
	}
	if rb.admin != nil {
		e.finishAdmin(rb.admin, nil, fmt.Errorf("%w: rebuild of %s: %s", ErrIO, rb.target, why))
	}
}

func (e *Engine) maybeAutoRebuild() {
	if e.rebuild != nil || e.change != nil || e.cfg.RebuildAfterTicks < 0 {
		return
	}
	for _, m := range e.sortedMembers() {
		due := m.mode == ModeWO || (m.mode == ModeERR && e.now-m.errSince >= e.cfg.RebuildAfterTicks)
		if due {
			e.startRebuild(m.id, nil)
			return
		}
	}
}

func (e *Engine) adminAddReplica(t *adminTask) {
	id := t.req.Replica
	if id == "" {
		e.finishAdmin(t, nil, fmt.Errorf("%w: no replica named", ErrInvalid))
		return
	}
	if m := e.members[id]; m != nil && m.mode == ModeRW {
		e.finishAdmin(t, nil, fmt.Errorf("%w: replica %s is already RW", ErrExists, id))
		return
	}
	if e.rebuild != nil {
		if e.rebuild.target == id && e.rebuild.admin == nil {
			e.rebuild.admin = t // join the automatic rebuild already running
			return
		}
		e.finishAdmin(t, nil, fmt.Errorf("%w: a rebuild of %s is in progress", ErrBusy, e.rebuild.target))
		return
	}
	if e.members[id] == nil {
		e.members[id] = &member{id: id, mode: ModeERR, errSince: e.now}
	}
	e.startRebuild(id, t)
}

func (e *Engine) startRebuild(id proto.ReplicaID, admin *adminTask) {
	src := e.readable()
	if len(src) == 0 {
		if admin != nil {
			e.finishAdmin(admin, nil, fmt.Errorf("%w: no RW replica to rebuild from", ErrIO))
		}
		return
	}
	rb := &rebuildTask{e: e, target: id, source: src[0], admin: admin, stage: "open"}
	e.rebuild = rb
	e.send(id, proto.Request{Op: proto.OpOpen}, func(rep proto.Reply) {
		if rb.aborted {
			return
		}
		if rep.Status != proto.StatusOK || rep.Info == nil {
			rb.abort(fmt.Sprintf("open: %v %s", rep.Status, rep.Err))
			return
		}
		// A target larger than the volume took an expansion that never
		// completed; OpSetChain cuts it back (sim seed 355).
		if rep.Info.SizeBytes < e.sizeBytes {
			rb.expand()
			return
		}
		rb.join()
	})
}

func (rb *rebuildTask) expand() {
	e := rb.e
	rb.stage = "expand"
	e.send(rb.target, proto.Request{Op: proto.OpExpand, SizeBytes: e.sizeBytes}, func(rep proto.Reply) {
		if rb.aborted {
			return
		}
		if rep.Status != proto.StatusOK {
			rb.abort(fmt.Sprintf("expand: %v %s", rep.Status, rep.Err))
			return
		}
		rb.join()
	})
}

// join records the target as WO; writes reach it from then on.
func (rb *rebuildTask) join() {
	e := rb.e
	rb.stage = "join"
	m := e.members[rb.target]
	m.mode, m.why = ModeWO, ""
	e.proposeMembership(func(ok bool) {
		if rb.aborted {
			return
		}
		if !ok {
			rb.abort("membership change failed")
			return
		}
		rb.stage, rb.holding = "snapshot", true
		e.schedule()
	})
}

// drained is called by schedule while holding: once IO has drained, take
// the rebuild snapshot everywhere.
func (rb *rebuildTask) drained() {
	e := rb.e
	if rb.stage != "snapshot" || len(e.running) > 0 || e.change != nil {
		return
	}
	rb.stage = "snapshotting"
	name := fmt.Sprintf("%s%d-%d", rebuildSnapshotPrefix, e.epoch, e.nextID)
	targets := e.writeTargets()
	left, okCount := len(targets), 0
	for _, id := range targets {
		e.send(id, proto.Request{Op: proto.OpSnapshot, Name: name, Seq: e.writeSeq}, func(rep proto.Reply) {
			left--
			if rep.Status == proto.StatusOK {
				okCount++
			} else if !rb.aborted {
				e.replicaFailed(id, fmt.Sprintf("rebuild snapshot: %v %s", rep.Status, rep.Err))
			}
			if left > 0 {
				return
			}
			// Replicas that took the snapshot hold it even if the
			// rebuild stopped meanwhile: the chain follows them.
			if okCount > 0 {
				e.chain = append(e.chain, name)
			}
			if rb.aborted {
				return
			}
			rb.holding = false
			rb.sourceChain()
			e.schedule()
		})
	}
}

// sourceChain asks the source for its chain: the target must end up with
// exactly the source's layers, whatever the engine believes.
func (rb *rebuildTask) sourceChain() {
	e := rb.e
	rb.stage = "chain"
	e.send(rb.source, proto.Request{Op: proto.OpInfo}, func(rep proto.Reply) {
		if rb.aborted {
			return
		}
		if rep.Status != proto.StatusOK || rep.Info == nil {
			rb.abort(fmt.Sprintf("source info: %v %s", rep.Status, rep.Err))
			return
		}
		rb.setChain(rep.Info.Chain)
	})
}

func (rb *rebuildTask) setChain(chain []string) {
	e := rb.e
	rb.chain = append([]string(nil), chain...)
	e.send(rb.target, proto.Request{Op: proto.OpSetChain, Chain: rb.chain, SizeBytes: e.sizeBytes}, func(rep proto.Reply) {
		if rb.aborted {
			return
		}
		if rep.Status != proto.StatusOK {
			rb.abort(fmt.Sprintf("set chain: %v %s", rep.Status, rep.Err))
			return
		}
		rb.stage = "copy"
		rb.blocksTotal = uint64(len(rb.chain)) * (e.sizeBytes / proto.BlockSize)
		rb.syncLayer()
	})
}

func (rb *rebuildTask) syncLayer() {
	e := rb.e
	if rb.sync != nil {
		rb.scanned += rb.sync.blocksScanned
		rb.copied += rb.sync.bytesCopied
		rb.sync = nil
	}
	if rb.layer == len(rb.chain) {
		rb.finish()
		return
	}
	name := rb.chain[rb.layer]
	rb.layer++
	whole := []proto.Extent{{BlockIndex: 0, BlockCount: e.sizeBytes / proto.BlockSize}}
	rb.sync = &layerSync{e: e, layer: name, source: rb.source, targets: []proto.ReplicaID{rb.target},
		extents: splitExtents(whole, e.sizeBytes/proto.BlockSize), skipLast: e.cfg.Bugs.RebuildSkipLast && rb.layer == len(rb.chain)}
	rb.sync.run(func(err string) {
		if rb.aborted {
			return
		}
		if err != "" {
			rb.abort(err)
			return
		}
		rb.syncLayer()
	})
}

func (rb *rebuildTask) finish() {
	e := rb.e
	rb.stage = "flush"
	e.send(rb.target, proto.Request{Op: proto.OpFlush, Seq: e.writeSeq}, func(rep proto.Reply) {
		if rb.aborted {
			return
		}
		if rep.Status != proto.StatusOK {
			rb.abort(fmt.Sprintf("flush: %v %s", rep.Status, rep.Err))
			return
		}
		rb.stage = "promote"
		e.members[rb.target].mode = ModeRW
		e.proposeMembership(func(ok bool) {
			if rb.aborted {
				return
			}
			if e.rebuild == rb {
				e.rebuild = nil
			}
			if !ok {
				rb.abort("promotion did not reach a quorum")
				return
			}
			if rb.admin != nil {
				e.finishAdmin(rb.admin, nil, nil)
			}
			e.dropRebuildSnapshots()
		})
	})
}
