package sim

import (
	"bytes"
	"fmt"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
)

const (
	livenessGraceUs = 3_000_000  // after healing, time to reopen and rebuild
	livenessBoundUs = 5_000_000  // then every request completes within this
	convergeBoundUs = 60_000_000 // and replicas converge within this of healing
	watchdogUs      = 50_000
)

// every runs fn at random gaps around meanUs while faults are on.
func (s *Sim) every(meanUs int64, fn func()) {
	if meanUs <= 0 {
		return
	}
	s.after(s.uniform(meanUs/2, meanUs*3/2), func() {
		if s.healed || s.stopped {
			return
		}
		fn()
		s.every(meanUs, fn)
	})
}

func (s *Sim) scheduleFaults() {
	k := s.knobs
	s.every(k.PartitionEveryUs, s.partition)
	s.every(k.ReplicaCrashEveryUs, func() {
		n := s.replicas[s.rng.IntN(len(s.replicas))]
		if s.faultsHeld() || !n.up {
			// A replica already down belongs to whoever stopped it (an
			// idle window restarts its victim at its end: sim swarm seed
			// 362 restarted it early, and the window's check failed).
			return
		}
		n.crash()
		s.after(k.RestartAfterUs, func() {
			if !n.up {
				n.start()
			}
		})
	})
	s.every(k.EngineCrashEveryUs, func() {
		s.current().kill()
		s.count("engine-crash")
	})
	s.every(k.TakeoverEveryUs, s.takeover)
	s.every(k.CrashAllEveryUs, s.crashAll)
	s.every(k.BitRotEveryUs, s.bitRot)
	s.every(k.SnapshotEveryUs, s.snapshot)
	s.every(k.ExpandEveryUs, s.expand)
	s.every(k.RevertEveryUs, s.revert)
	s.every(k.LoseEveryUs, s.lose)
	s.every(k.IdleEveryUs, s.idle)
	s.every(k.WipeEveryUs, s.wipe)
	s.every(k.DamageEveryUs, s.damage)
	s.every(k.StaleEveryUs/3, s.keepCopy)
	s.every(k.StaleEveryUs, s.restoreStale)
	s.watchdog()
}

func (s *Sim) partition() {
	en := s.current()
	n := s.replicas[s.rng.IntN(len(s.replicas))]
	l := en.links[n.idx]
	if l.partitioned || s.faultsHeld() {
		return
	}
	l.partitioned = true
	s.count("partition")
	s.note("partition", en.inc, uint64(n.idx))
	s.after(s.uniform(s.knobs.PartitionLenUs/2, s.knobs.PartitionLenUs*3/2), func() {
		l.partitioned = false
		s.note("heal", en.inc, uint64(n.idx))
	})
}

// takeover starts a new engine while the old one still runs and serves
// some clients: the old one must be fenced, never acknowledging a write
// the new one cannot see. When a replica restarted since the last era
// (unflushed data may be gone), the old engine is killed first instead.
func (s *Sim) takeover() {
	old := s.current()
	if s.hist.pausing || s.amnesiaPending() {
		return
	}
	if s.hist.lastCrashAt >= s.hist.boundaryOpenedAt {
		old.kill()
	}
	s.count("takeover")
	en := s.startEngine()
	// Often the new engine cannot reach some replicas while it opens: it
	// must then not serve from a minority while the old one goes on.
	// Not while a lost replica is still a member (faultsHeld): a long
	// partition of another may get it replaced, and with the lost one
	// and rot on the third, that is one fault more than three copies
	// survive.
	held := s.faultsHeld()
	for _, n := range s.replicas {
		if s.rng.IntN(3) == 0 && !held {
			l := en.links[n.idx]
			l.partitioned = true
			s.after(s.uniform(s.knobs.PartitionLenUs/2, s.knobs.PartitionLenUs*3/2), func() { l.partitioned = false })
		}
	}
	s.after(s.uniform(100_000, 1_000_000), old.kill)
}

func (s *Sim) crashAll() {
	if s.amnesiaPending() {
		return
	}
	for _, en := range s.engines {
		en.kill()
	}
	for _, n := range s.replicas {
		n.crash()
	}
	s.count("crash-all")
	s.after(s.knobs.RestartAfterUs, func() {
		for _, n := range s.replicas {
			if !n.up {
				n.start()
			}
		}
	})
}

// bitRot flips a bit of a block one replica serves from its disk.
//
// Rot must leave a good copy somewhere for the promise to hold, so it
// only strikes while at least three replicas are RW and every other
// member holds the same bytes durably: the engine's view lags (a member
// that missed writes is RW until the engine notices), so its modes alone
// would let rot strike the only copy of an acknowledged write; a copy
// only in a page cache is gone at the next crash; and with one copy
// elsewhere, an unacknowledged write overwriting it leaves the rotted
// one the only copy of the current content (no rebuild can then get
// past it: there is no bad-block list yet).
func (s *Sim) bitRot() {
	en := s.current()
	if !en.alive {
		return
	}
	info := en.e.Info()
	if len(info.Replicas) < 3 || !s.membersRW(info) {
		return
	}
	n := s.replicas[s.rng.IntN(len(s.replicas))]
	if !n.up || !n.r.Loaded() || !isMember(info, n.id) {
		return
	}
	b := uint64(s.rng.IntN(int(s.knobs.HotBlocks)))
	if s.rotted[b] {
		return // one rot per block and run: other copies stay good
	}
	layer, kind := n.r.Resolve(b)
	if kind != proto.BlockData || !s.copyElsewhere(n, info, layer, b) {
		return
	}
	good := bytes.Clone(n.st.Block(layer, b))
	if n.st.CorruptBlock(layer, b, uint(s.rng.IntN(proto.BlockSize*8))) {
		s.rotted[b] = true
		s.rots = append(s.rots, rotRecord{n: n, layer: layer, block: b, good: good, bad: bytes.Clone(n.st.Block(layer, b))})
		s.count("bitrot")
		s.note("bitrot", uint64(n.idx), b)
	}
}

func (s *Sim) snapshot() {
	en := s.current()
	if !en.alive || !en.e.Serving() {
		return
	}
	info := en.e.Info()
	if len(info.Chain) >= 3 && s.rng.IntN(2) == 0 {
		name := info.Chain[s.rng.IntN(len(info.Chain))]
		en.admin(engine.AdminRequest{Op: engine.AdminDeleteSnapshot, Name: name}, func(r engine.AdminReply) {
			s.countResult("snapshot-delete", r.Err)
		})
		return
	}
	name := fmt.Sprintf("s%d", s.steps)
	en.admin(engine.AdminRequest{Op: engine.AdminSnapshot, Name: name}, func(r engine.AdminReply) {
		s.countResult("snapshot", r.Err)
	})
}

func (s *Sim) expand() {
	en := s.current()
	if !en.alive || !en.e.Serving() {
		return
	}
	size := en.e.SizeBytes() + 64*proto.BlockSize
	en.admin(engine.AdminRequest{Op: engine.AdminExpand, SizeBytes: size}, func(r engine.AdminReply) {
		s.countResult("expand", r.Err)
	})
}

func (s *Sim) countResult(what string, err error) {
	if err == nil {
		s.count(what)
	} else {
		s.count(what + "-failed")
	}
}

// watchdog plays the manager: it restarts stopped replica processes and
// a dead, faulted or fenced engine, and heals faults once the safety
// phase is over.
func (s *Sim) watchdog() {
	s.after(watchdogUs, func() {
		if s.stopped {
			return
		}
		if !s.healed && (s.hist.clientOps >= uint64(s.opt.Ops)*7/10 || s.now >= s.knobs.FaultsUs) {
			s.heal()
		}
		for _, n := range s.replicas {
			if n.up && (n.failed || n.r.Err() != "") {
				n.crash()
				if n.damaged {
					s.count("disk-damage-found")
					s.newDisk(n)
				}
				n.start()
			}
		}
		cur := s.current()
		phase, _ := cur.e.Phase()
		// A faulted engine reopens by itself (ReopenAfterTicks); only one
		// that stays faulted is replaced.
		if phase != engine.PhaseFaulted {
			cur.faultedSince = -1
		} else if cur.faultedSince < 0 {
			cur.faultedSince = s.now
		}
		stuck := phase == engine.PhaseFaulted && s.now-cur.faultedSince > 500_000
		if !cur.alive || stuck || phase == engine.PhaseFenced {
			allUp := true
			for _, n := range s.replicas {
				allUp = allUp && (n.up || n.lost)
			}
			if allUp || !s.healed {
				cur.kill()
				s.count("engine-restart")
				s.startEngine()
			}
		}
		s.removeLostMembers()
		s.watchdog()
	})
}

func (s *Sim) heal() {
	s.healed, s.healAt = true, s.now
	s.hist.livenessFrom = s.now + livenessGraceUs
	s.note("heal-all")
	for _, en := range s.engines[:len(s.engines)-1] {
		en.kill()
	}
	for _, en := range s.engines {
		for _, l := range en.links {
			l.partitioned = false
		}
	}
	for _, n := range s.replicas {
		if !n.up {
			n.start()
		}
	}
}

// clientDone starts the final phase once every client has finished: wait
// until every replica is RW, scrub, then check convergence.
func (s *Sim) clientDone() {
	for _, c := range s.clients {
		if !c.done {
			return
		}
	}
	if !s.healed {
		s.heal()
	}
	s.awaitConverged()
}

func (s *Sim) awaitConverged() {
	if s.now-s.healAt > convergeBoundUs {
		info := s.current().e.Info()
		s.fail("liveness: replicas did not converge within %ds of healing: %s%s", convergeBoundUs/1_000_000, describeInfo(info)+describeTasks(info), s.describeRebuildSnapshots(s.current()))
		s.stopped = true
		return
	}
	en := s.current()
	if !en.alive || !en.e.Serving() || s.hist.pausing || !s.membersRW(en.e.Info()) || len(s.rebuildSnapshotsLeft(en)) > 0 {
		s.after(10_000, s.awaitConverged)
		return
	}
	s.scrub(en, 0, 0)
}

func describeEngine(e *engine.Engine) string {
	running, waiting, calls := e.Backlog()
	info := e.Info()
	return fmt.Sprintf("%s running=%d waiting=%d calls=%d%s", describeInfo(info), running, waiting, calls, describeTasks(info))
}

func describeInfo(info engine.VolumeInfo) string {
	out := fmt.Sprintf("phase %s (%s) epoch %d gen %d", info.Phase, info.Why, info.Epoch, info.MembershipGen)
	for _, r := range info.Replicas {
		out += fmt.Sprintf(" %s=%v(%s)", r.ID, r.Mode, r.Why)
	}
	if info.Rebuild != nil {
		out += fmt.Sprintf(" rebuilding %s stage %s", info.Rebuild.Target, info.Rebuild.Stage)
	}
	return out
}

// describeTasks lists the engine's tasks for a failure report.
func describeTasks(info engine.VolumeInfo) string {
	out := ""
	for _, t := range info.Tasks {
		out += "; task " + t.String()
	}
	return out
}

// scrub reads every block of the volume once per replica (reads go round
// robin, and a corrupt copy is repaired from a good one), then checks.
// scrubShift starts scrub pass pass after enough one-block reads that
// the engine's round robin serves each range of this pass from the
// replica after the one that served it in the pass before: with as many
// passes as members, every range is read from every replica, so a copy
// one replica holds corrupt (a lost write nobody read since) is found
// and repaired before convergence compares the raw blocks. (Without
// them, a pass of a multiple of the member count of reads served every
// range from the same replica each pass: sim swarm seed 297.)
func (s *Sim) scrubShift(en *engineNode, size uint64, pass int) {
	members := len(s.memberNodes())
	perPass := int((size + 63) / 64)
	extra := ((1-perPass)%members + members) % members
	var step func(left int)
	step = func(left int) {
		if left == 0 {
			s.scrub(en, 0, pass)
			return
		}
		en.submit(engine.Request{Op: proto.OpRead, BlockIndex: 0, BlockCount: 1}, func(engine.Reply) { step(left - 1) })
	}
	step(extra)
}

func (s *Sim) scrub(en *engineNode, b uint64, pass int) {
	size := en.e.SizeBytes() / proto.BlockSize
	if pass == len(s.memberNodes()) {
		if !en.alive || !s.membersRW(en.e.Info()) {
			// The scrub found damage a replica did not know of (sim
			// damage seed 177): wait for its rebuild, then scrub again.
			s.awaitConverged()
			return
		}
		s.checkConvergence()
		s.stopped = true
		return
	}
	if b >= size {
		s.scrubShift(en, size, pass+1)
		return
	}
	n := uint32(min(64, size-b))
	en.submit(engine.Request{Op: proto.OpRead, BlockIndex: b, BlockCount: n}, func(rep engine.Reply) {
		if rep.Err != nil {
			s.fail("liveness: scrub read of blocks [%d,+%d) after healing: %v", b, n, rep.Err)
			s.stopped = true
			return
		}
		for i := uint64(0); i < uint64(n); i++ {
			if _, ok := unstamp(rep.Data[i*proto.BlockSize:(i+1)*proto.BlockSize], b+i); !ok {
				s.fail("integrity: garbage in block %d at the final scrub", b+i)
			}
		}
		s.scrub(en, b+uint64(n), pass)
	})
}

// copyElsewhere reports whether every other member serves block b with
// the bytes n's layer holds, durably: rot is then the only fault on the
// block. (With one other copy only, a member that missed the block is a
// fault already, and an unacknowledged write later overwriting the other
// copy leaves the rotted one the only copy of the current content.)
func (s *Sim) copyElsewhere(n *replicaNode, info engine.VolumeInfo, layer store.LayerID, b uint64) bool {
	mine := n.st.Block(layer, b)
	if mine == nil {
		return false
	}
	others := 0
	for _, m := range s.replicas {
		if m == n || !isMember(info, m.id) {
			continue
		}
		if !m.up || !m.r.Loaded() {
			return false
		}
		l, kind := m.r.Resolve(b)
		if kind != proto.BlockData || !bytes.Equal(m.st.Block(l, b), mine) || !bytes.Equal(m.st.DurableBlock(l, b), mine) {
			return false
		}
		others++
	}
	return others > 0
}

// rotRecord is a block the simulator damaged on one replica (bit rot, a
// lost write): its good bytes and the bytes the replica holds instead.
type rotRecord struct {
	n         *replicaNode
	layer     store.LayerID
	block     uint64
	good, bad []byte
}

// holdsLastGoodCopy reports whether victim is the only replica but the
// damaged one holding the good bytes of a block still damaged: losing
// it, or what it knew, would leave no good copy, which no system can
// survive (two faults on one block). A damaged copy that was rewritten
// or whose layer is gone no longer counts.
func (s *Sim) holdsLastGoodCopy(victim proto.ReplicaID) bool {
	for _, r := range s.rots {
		if r.n.id == victim || r.n.lost || !bytes.Equal(r.n.st.Block(r.layer, r.block), r.bad) {
			continue
		}
		victimHas, otherHas := false, false
		for _, m := range s.replicas {
			if m == r.n || m.lost || !m.holds(r.block, r.good) {
				continue
			}
			if m.id == victim {
				victimHas = true
			} else {
				otherHas = true
			}
		}
		if victimHas && !otherHas {
			return true
		}
	}
	return false
}

// holds reports whether any layer of n's store holds data for block b.
func (n *replicaNode) holds(b uint64, data []byte) bool {
	for _, id := range n.st.LayerIDs() {
		if bytes.Equal(n.st.Block(id, b), data) {
			return true
		}
	}
	return false
}
