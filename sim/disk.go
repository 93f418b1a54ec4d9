package sim

import (
	"bytes"
	"fmt"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/memstore"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
)

// Faults that real disks and operators bring, beyond crashes and rot:
//
//   - wipe: a replica's disk comes back empty (a replaced drive, a mount
//     missing at boot, rm -rf), under its old name or a new one;
//   - damage: its metadata blob or one layer's index is damaged (zeroed,
//     truncated, an entry cleared), found when the replica next reads it;
//   - stale: its disk is restored from an old copy of itself;
//   - lost writes: a data write the disk acknowledged never reaches the
//     medium (the block keeps its old bytes).
//
// The first three take away what the replica knew, so each strikes only
// while every member is RW and the others form a quorum of every
// membership recorded (as lose does), and other crashes, partitions and
// takeovers wait until the struck replica is rebuilt (amnesiaPending): a
// replica restored from an old copy still votes with its old membership,
// and only the replicas that went on can outvote it. Half of the time the
// engine is down meanwhile, so the next open must tell the struck replica
// from the current ones; otherwise the running engine meets it.

// amnesiaPending reports whether a replica struck by a wipe, damage or a
// stale restore has not yet been rebuilt under a newer membership.
func (s *Sim) amnesiaPending() bool {
	for _, n := range s.replicas {
		if n.damaged {
			// Damage found only when the replica reads it: until then it
			// serves, maybe as the only current copy, and everything
			// that could take the others out waits (sim swarm seed 2148:
			// r3's backing index page damaged while it ran; ENOSPC then
			// took the other four out of the set, and a rebuild from r3
			// found the damage with no other copy left).
			return true
		}
		if n.amnesiaGen == 0 {
			continue
		}
		en := s.current()
		if !en.alive || !en.e.Serving() {
			return true
		}
		info := en.e.Info()
		rw := false
		for _, r := range info.Replicas {
			rw = rw || r.ID == n.id && r.Mode == engine.ModeRW
		}
		if !rw || info.MembershipGen <= n.amnesiaGen || info.Rebuild != nil {
			return true
		}
		n.amnesiaGen = 0
	}
	return false
}

// amnesiaVictim picks a member that may lose what it knows, or nil.
func (s *Sim) amnesiaVictim() *replicaNode {
	en := s.current()
	if !en.alive || !en.e.Serving() || s.hist.pausing || s.idling != nil || s.revertTask != nil ||
		s.amnesiaPending() || s.lostMemberPending() {
		return nil
	}
	info := en.e.Info()
	if info.Rebuild != nil || len(info.Replicas) < 2 || !s.membersRW(info) {
		return nil
	}
	for _, r := range info.Replicas {
		if n := s.node(r.ID); !n.up || !n.r.Loaded() {
			return nil
		}
	}
	// Any member, the lowest-named too (the open's first current replica
	// is the source of its resync: trusting a wiped one there spreads
	// its zeros). But where the network may make the engine drop
	// another member meanwhile, as lose does and for the same reason
	// (sim swarm seed 264: r1 wiped while r2 was partitioned; the engine
	// then dropped r2, and the membership it recorded needed r1's vote,
	// which a wiped replica no longer has): with three members or fewer
	// only the highest-named, with more any but the lowest-named.
	victim := info.Replicas[s.rng.IntN(len(info.Replicas))].ID
	if s.networkMayDrop(en) {
		if len(info.Replicas) < 3 {
			// Of two members, the one not struck may be dropped
			// meanwhile, leaving no good copy (sim swarm seed 1526: r2's
			// index damaged while r1 was partitioned; the engine dropped
			// r1, then found r2 damaged).
			return nil
		}
		victim = info.Replicas[len(info.Replicas)-1].ID
		if len(info.Replicas) > 3 {
			victim = info.Replicas[1+s.rng.IntN(len(info.Replicas)-1)].ID
		}
	}
	n := s.node(victim)
	if !s.survivable(n.id) {
		return nil
	}
	n.amnesiaGen = max(info.MembershipGen, 1)
	return n
}

// networkMayDrop reports whether network faults may take a member out of
// the engine's set: messages dropped, partitions or takeovers on, or a
// partition in effect.
func (s *Sim) networkMayDrop(en *engineNode) bool {
	k := s.knobs
	if k.DropPerMillion > 0 || k.PartitionEveryUs > 0 || k.TakeoverEveryUs > 0 || k.SpikePerMillion > 0 || k.SlowReplica >= 0 {
		return true
	}
	for _, l := range en.links {
		if l.partitioned {
			return true
		}
	}
	return false
}

// strike runs fault on victim n, with the engine killed first half of
// the time (the next open meets n) and n restarted after it.
func (s *Sim) strike(n *replicaNode, what string, fault func()) {
	engineDown := s.rng.IntN(2) == 0
	if engineDown {
		s.current().kill()
		what += "-engine-down"
	}
	n.crash()
	fault()
	s.count(what)
	s.note(what, uint64(n.idx))
	if engineDown {
		n.start() // back before the watchdog restarts the engine
		return
	}
	s.after(s.uniform(0, s.knobs.RestartAfterUs), func() {
		if !n.up {
			n.start()
		}
	})
}

// newDisk gives n an empty disk, as an operator replacing a drive does
// (the backing image provisioned again where the replica had one).
func (s *Sim) newDisk(n *replicaNode) {
	n.st = memstore.New()
	n.damaged = false
	if n.backing != nil {
		s.populateBacking(n.st)
	}
}

// wipe empties a member's disk; a third of the time the new replica is
// created under another name at the same address.
func (s *Sim) wipe() {
	n := s.amnesiaVictim()
	if n == nil {
		return
	}
	s.strike(n, "disk-wiped", func() {
		s.newDisk(n)
		if s.rng.IntN(3) == 0 {
			n.metaID = proto.ReplicaID(fmt.Sprintf("%s-new%d", n.id, s.steps))
		}
	})
}

// damage damages a member's metadata or an index page of one of its
// layers, while it is stopped (found when it loads) or while it runs
// (found when it next reads or rewrites the page). A replica that finds
// damage stops; the watchdog, playing the operator, then gives it a new
// disk (never an automatic wipe in production: see replicaNode.damaged).
func (s *Sim) damage() {
	n := s.amnesiaVictim()
	if n == nil {
		return
	}
	hurt := func() bool {
		if s.rng.IntN(3) == 0 {
			return n.st.DamageMeta(memstore.MetaDamage(s.rng.IntN(3)), s.rng.IntN(1<<20))
		}
		ids := n.st.LayerIDs()
		id := ids[s.rng.IntN(len(ids))]
		blocks := n.st.DataBlocks(id)
		if len(blocks) == 0 {
			return false
		}
		b := blocks[s.rng.IntN(len(blocks))]
		return n.st.DamageIndex(id, b, memstore.IndexDamage(s.rng.IntN(3)))
	}
	if s.rng.IntN(2) == 0 {
		s.strike(n, "disk-damaged", func() { n.damaged = hurt() || n.damaged })
		return
	}
	n.damaged = hurt()
	if !n.damaged {
		n.amnesiaGen = 0
		return
	}
	s.count("disk-damaged-running")
	s.note("disk-damaged-running", uint64(n.idx))
}

// keepCopy takes a copy of a member's disk for restoreStale.
func (s *Sim) keepCopy() {
	en := s.current()
	if !en.alive {
		return
	}
	members := s.memberNodes()
	if len(members) == 0 {
		return
	}
	n := members[s.rng.IntN(len(members))]
	if n.up && !n.damaged {
		n.oldCopy = n.st.Clone()
	}
}

// restoreStale brings a member back from the copy of its disk kept
// earlier.
func (s *Sim) restoreStale() {
	n := s.amnesiaVictim()
	if n == nil {
		return
	}
	if n.oldCopy == nil {
		n.amnesiaGen = 0
		return
	}
	s.strike(n, "disk-restored-stale", func() {
		n.st, n.oldCopy = n.oldCopy, nil
	})
}

// loseWrite reports whether a data write on n acknowledged by the disk
// never reaches the medium. Like rot, it strikes only while three members
// are RW, and once per block and run, so a good copy stays elsewhere.
func (s *Sim) loseWrite(n *replicaNode, io store.IO) bool {
	if s.healed || io.Kind != store.WriteData || !s.chance(s.knobs.LostWritePerMillion) {
		return false
	}
	en := s.current()
	if !en.alive {
		return false
	}
	info := en.e.Info()
	if len(info.Replicas) < 3 || !s.membersRW(info) || !isMember(info, n.id) {
		return false
	}
	count := uint64(len(io.Data)) / proto.BlockSize
	for b := io.BlockIndex; b < io.BlockIndex+count; b++ {
		if s.rotted[b] {
			return false
		}
	}
	for b := io.BlockIndex; b < io.BlockIndex+count; b++ {
		s.rotted[b] = true
		off := (b - io.BlockIndex) * proto.BlockSize
		s.rots = append(s.rots, rotRecord{n: n, layer: io.Layer, block: b,
			good: bytes.Clone(io.Data[off : off+proto.BlockSize]), bad: bytes.Clone(n.st.Block(io.Layer, b))})
	}
	s.count("disk-lost-write")
	s.note("lost-write", uint64(n.idx), io.BlockIndex, count)
	return true
}
