package engine

import (
	"fmt"
	"strings"

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
	startTick   int64
	budget      *rateBudget // nil: unpaced
}

// rateBudget paces a rebuild: perTickBytes are added at every tick, up to
// burstBytes (at least one run, so any run can start), and a copy starts
// only when the budget covers it. A pure stand-in for a token bucket: the
// driver's ticks are the clock.
type rateBudget struct {
	perTickBytes uint64
	burstBytes   uint64
	availBytes   uint64
	waiting      func() // the copier to resume when budget arrives
}

func newRateBudget(perTickBytes, runBlocks uint64) *rateBudget {
	if perTickBytes == 0 {
		return nil
	}
	burst := max(perTickBytes, runBlocks*proto.BlockSize)
	return &rateBudget{perTickBytes: perTickBytes, burstBytes: burst, availBytes: burst}
}

// take spends n bytes if the budget holds them; a nil budget always does.
func (b *rateBudget) take(n uint64) bool {
	if b == nil {
		return true
	}
	if b.availBytes < n {
		return false
	}
	b.availBytes -= n
	return true
}

func (b *rateBudget) tick() {
	b.availBytes = min(b.availBytes+b.perTickBytes, b.burstBytes)
	if w := b.waiting; w != nil {
		b.waiting = nil
		w()
	}
}

// tick refills the rebuild's budget and resumes a copier waiting for it.
func (rb *rebuildTask) tick() {
	if rb.budget != nil && !rb.aborted {
		rb.budget.tick()
	}
}

// progress reports how far the rebuild is.
func (rb *rebuildTask) progress() RebuildProgress {
	p := RebuildProgress{Target: rb.target, Source: rb.source, Stage: rb.stage, BlocksTotal: rb.blocksTotal,
		BlocksScanned: rb.scanned, BlocksDone: rb.scanned, BytesCopied: rb.copied,
		ElapsedTicks: rb.e.now - rb.startTick}
	if rb.budget != nil {
		p.RateBytesPerTick = rb.budget.perTickBytes
	}
	if s := rb.sync; s != nil {
		p.BlocksScanned += s.blocksScanned
		p.BlocksDone += s.blocksDone()
		p.BytesCopied += s.bytesCopied
	}
	return p
}

// ended records the rebuild's outcome for Info.
func (rb *rebuildTask) ended(outcome string) {
	p := rb.progress()
	p.Stage = outcome
	rb.e.lastRebuild = &p
	ev := Event{Kind: EventRebuildDone, Replica: rb.target, Why: fmt.Sprintf("from %s, %d bytes copied in %d ticks", rb.source, p.BytesCopied, p.ElapsedTicks)}
	if outcome != "done" {
		ev.Kind, ev.Why = EventRebuildFailed, outcome
	}
	rb.e.event(ev)
}

func (rb *rebuildTask) abort(why string) {
	if rb.aborted {
		return
	}
	rb.ended("failed: " + why)
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
		m.unreachable = rb.stage == "open"
		m.rebuildFails++
	}
	if rb.admin != nil {
		e.finishAdmin(rb.admin, nil, fmt.Errorf("%w: rebuild of %s: %s", ErrIO, rb.target, why))
	}
}

func (e *Engine) maybeAutoRebuild() {
	e.dropRebuildSnapshots()
	if e.rebuild != nil || e.change != nil || e.chainOpInFlight() || e.internalDeleteQueued() {
		return // a merge of rebuild snapshots goes first (a rebuild would abort it)
	}
	if e.maybeReplace() || e.cfg.RebuildAfterTicks < 0 {
		return
	}
	for _, m := range e.sortedMembers() {
		wait := e.cfg.RebuildAfterTicks << min(m.rebuildFails, maxRebuildBackoffShift)
		due := m.mode == ModeWO || (m.mode == ModeERR && e.now-m.errSince >= wait)
		if due {
			e.startRebuild(m.id, nil, 0)
			return
		}
	}
}

// chainOpInFlight reports whether a started admin task is changing the
// replicas' chains or size. A rebuild must not start meanwhile: its
// snapshot would enter the engine's chain before the task's, while the
// replicas that already took the task hold them the other way round; a
// later revert or delete then changes the replicas' chains and the
// engine's differently, and merges of what the engine still lists fail.
func (e *Engine) chainOpInFlight() bool {
	if len(e.admin) == 0 || !e.admin[0].started {
		return false
	}
	switch e.admin[0].req.Op {
	case AdminSnapshot, AdminDeleteSnapshot, AdminRevert, AdminShrink:
		return true
	}
	return false
}

// maxRebuildBackoffShift caps the doubling of the wait between failed
// automatic rebuilds of one member (member.rebuildFails): 64 times
// RebuildAfterTicks.
const maxRebuildBackoffShift = 6

// rebuildSnapshotPrefix names the snapshots rebuilds take; users may not.
const rebuildSnapshotPrefix = "rebuild-"

// dropRebuildSnapshots queues the merge of every rebuild snapshot into its
// child once every member is RW and no rebuild runs, so chains do not grow
// with each rebuild (a rebuild snapshot left behind holds a full copy of
// the volume). While a member is not RW but two are, all but the newest
// are merged: a resumed rebuild finds the newest on its target, and the
// older ones, each left by an attempt that failed, would otherwise pile
// up for as long as the member keeps failing. With one RW replica left,
// nothing is merged: a rotted block the merge meets there has no other
// copy to repair it from, and the merge would fail the last RW replica.
//
// It is level-triggered: the end of a rebuild calls it, and so does every
// tick while serving, so whatever else leaves a snapshot behind is found
// — an engine that died before the merge ran (the next one has no rebuild
// to end), a member that left by request rather than by a rebuild, an
// internal delete that failed. A snapshot whose delete is queued is not
// queued twice, and after a failed one the next try waits RetryTicks.
func (e *Engine) dropRebuildSnapshots() {
	if e.rebuild != nil || e.now < e.dropRetryAt {
		return
	}
	keepNewest := false
	for _, m := range e.members {
		keepNewest = keepNewest || m.mode != ModeRW
	}
	if keepNewest && e.rwCount() < 2 {
		return
	}
	newest := -1
	if keepNewest {
		for i, n := range e.chain {
			if strings.HasPrefix(n, rebuildSnapshotPrefix) {
				newest = i
			}
		}
	}
	for i, n := range e.chain {
		if i != newest && strings.HasPrefix(n, rebuildSnapshotPrefix) && !e.deleteQueued(n) {
			e.admin = append(e.admin, &adminTask{internal: true,
				req: AdminRequest{Op: AdminDeleteSnapshot, Name: n}})
		}
	}
}

// internalDeleteQueued reports whether a merge of a rebuild snapshot is
// queued or running.
func (e *Engine) internalDeleteQueued() bool {
	for _, t := range e.admin {
		if t.internal && t.req.Op == AdminDeleteSnapshot {
			return true
		}
	}
	return false
}

// deleteQueued reports whether an internal delete of name is queued or
// running.
func (e *Engine) deleteQueued(name string) bool {
	for _, t := range e.admin {
		if t.internal && t.req.Op == AdminDeleteSnapshot && t.req.Name == name {
			return true
		}
	}
	return false
}

// internalFailed notes that a task the engine queued itself failed; for a
// rebuild snapshot's delete, the next try waits RetryTicks (the snapshot
// stays in the chain, so dropRebuildSnapshots finds it again).
func (e *Engine) internalFailed(t *adminTask) {
	if t.req.Op == AdminDeleteSnapshot {
		e.dropRetryAt = e.now + e.cfg.RetryTicks
	}
}

// maybeReplace replaces the first member that has not been RW for
// ReplaceAfterTicks and did not answer the last attempt to rebuild it
// with the first spare that is not a member: the failed member leaves the
// volume (a tombstone keeps it out) and the spare is rebuilt in under its
// own ID. A member that answers is rebuilt in place however long it has
// been down (a rebuild interrupted midway resumes), since that copies
// only what it lacks. The core cannot create replicas; the driver offers
// them (Config.Spares).
func (e *Engine) maybeReplace() bool {
	if e.cfg.ReplaceAfterTicks < 0 {
		return false
	}
	spare := e.freeSpare()
	if spare == "" {
		return false
	}
	for _, m := range e.sortedMembers() {
		if m.mode != ModeERR || !m.down || !m.unreachable || e.now-m.downSince < e.cfg.ReplaceAfterTicks {
			continue
		}
		delete(e.members, m.id)
		e.tombstone(m.id)
		e.members[spare] = &member{id: spare, mode: ModeERR, errSince: e.now, down: true, downSince: e.now}
		e.replaced++
		e.startRebuild(spare, nil, 0)
		return true
	}
	return false
}

// freeSpare returns the first configured spare that is neither a member
// nor tombstoned, or "".
func (e *Engine) freeSpare() proto.ReplicaID {
	for _, id := range e.cfg.Spares {
		if e.members[id] == nil && !e.isTombstoned(id) {
			return id
		}
	}
	return ""
}

// freeSpares lists the spares still available.
func (e *Engine) freeSpares() []proto.ReplicaID {
	var out []proto.ReplicaID
	for _, id := range e.cfg.Spares {
		if e.members[id] == nil && !e.isTombstoned(id) {
			out = append(out, id)
		}
	}
	return out
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
	e.untombstone(id) // added again by request
	if e.members[id] == nil {
		e.members[id] = &member{id: id, mode: ModeERR, errSince: e.now, down: true, downSince: e.now}
	}
	e.startRebuild(id, t, t.req.RateBytesPerTick)
}

// startRebuild rebuilds replica id, paced at rateBytesPerTick (0: the
// configured rate, if any).
func (e *Engine) startRebuild(id proto.ReplicaID, admin *adminTask, rateBytesPerTick uint64) {
	src := e.readable()
	if len(src) == 0 {
		if admin != nil {
			e.finishAdmin(admin, nil, fmt.Errorf("%w: no RW replica to rebuild from", ErrIO))
		}
		return
	}
	if rateBytesPerTick == 0 {
		rateBytesPerTick = e.cfg.RebuildBytesPerTick
	}
	if m := e.members[src[0]]; m == nil || m.mode != ModeRW || src[0] == id {
		invariant("rebuild of %s from %s, which is not another RW member", id, src[0])
	}
	rb := &rebuildTask{e: e, target: id, source: src[0], admin: admin, stage: "open", startTick: e.now,
		budget: newRateBudget(rateBytesPerTick, e.cfg.CopyShape.RunBlocks)}
	e.rebuild = rb
	e.event(Event{Kind: EventRebuildStarted, Replica: id, Why: "from " + string(rb.source)})
	e.send(id, proto.Request{Op: proto.OpOpen}, func(rep proto.Reply) {
		if rb.aborted {
			return
		}
		if rep.Status != proto.StatusOK || rep.Info == nil {
			rb.abort(fmt.Sprintf("open: %v %s", rep.Status, rep.Err))
			return
		}
		if why := e.backingMismatch(id, rep.Info, e.backingSHA256); why != "" {
			rb.abort(why) // left unreachable: a spare replaces it
			if m := e.members[id]; m != nil {
				m.why = why
			}
			return
		}
		if m := e.members[id]; m != nil {
			m.unreachable = false
			m.created = rep.Info.Created
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
	// An expand in flight may already have grown the target (it is WO):
	// cutting it back to the old size would leave it smaller than the
	// volume once the expand completes (sim swarm seed 448).
	size := e.sizeBytes
	if t := e.expandInFlight(); t > size {
		size = t
	}
	e.send(rb.target, proto.Request{Op: proto.OpSetChain, Chain: rb.chain, SizeBytes: size}, func(rep proto.Reply) {
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

// expandInFlight returns the size an expand being sent to the replicas
// grows the volume to, or 0.
func (e *Engine) expandInFlight() uint64 {
	if len(e.admin) > 0 && e.admin[0].started && e.admin[0].req.Op == AdminExpand {
		return e.admin[0].req.SizeBytes
	}
	return 0
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
		extents: splitExtents(whole, e.sizeBytes/proto.BlockSize, e.cfg.CopyShape.WindowBlocks), skipLast: e.cfg.Bugs.RebuildSkipLast && rb.layer == len(rb.chain),
		budget: rb.budget, flushEveryBytes: e.cfg.CopyShape.FlushBytes, flushEveryTicks: e.cfg.CopyShape.FlushTicks, lastFlush: e.now}
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
		e.members[rb.target].setRW()
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
			rb.ended("done")
			if m := e.members[rb.target]; m != nil {
				m.rebuildFails = 0
			}
			if rb.admin != nil {
				e.finishAdmin(rb.admin, nil, nil)
			}
			e.dropRebuildSnapshots()
		})
	})
}
