package engine

import (
	"fmt"

	"github.com/drover-io/drover/core/proto"
)

// Quorum rule. A membership change is committed once it is recorded by a
// quorum of the RW replicas of the last committed membership, and an
// engine opens only after fencing such a quorum. Any two quorums of the
// same membership intersect, so a stale engine cannot commit a change (and
// so cannot acknowledge a write without a replica) once a newer engine has
// fenced a quorum, and a newer engine always finds the latest committed
// membership. A quorum is a strict majority, or exactly half when that
// half includes the lowest-named RW replica (so a 2-replica volume
// survives the loss of its second replica, though not of its first).

// IsQuorum reports whether acks (replica IDs) form a quorum of m's RW
// replicas.
func IsQuorum(m *proto.Membership, acks map[proto.ReplicaID]bool) bool {
	return quorumWhere(m, func(id proto.ReplicaID) bool { return acks[id] })
}

// quorumWhere reports whether the RW replicas of m for which acked holds
// form a quorum (IsQuorum without building a set).
func quorumWhere(m *proto.Membership, acked func(proto.ReplicaID) bool) bool {
	rw, n := 0, 0
	var lowest proto.ReplicaID
	lowestAcked := false
	for _, x := range m.Members {
		if x.Mode != proto.ModeRW {
			continue
		}
		ok := acked(x.ID)
		if rw == 0 || x.ID < lowest {
			lowest, lowestAcked = x.ID, ok
		}
		rw++
		if ok {
			n++
		}
	}
	return rw > 0 && (2*n > rw || (2*n == rw && lowestAcked))
}

// memberChange is a membership being recorded.
type memberChange struct {
	next    *proto.Membership
	acks    map[proto.ReplicaID]bool
	left    int
	again   bool // another change is needed after this one
	onDone  []func(ok bool)
	aborted bool
}

// replicaFailed moves a replica to ERR: no request waits for it any more,
// and a membership without it is proposed.
func (e *Engine) replicaFailed(id proto.ReplicaID, why string) {
	touched, ok := e.markERR(id, why)
	if !ok {
		return
	}
	if e.phase == PhaseServing {
		e.proposeMembership(nil)
	}
	for _, f := range touched {
		e.maybeDone(f)
	}
}

// markERR moves a replica to ERR: requests stop waiting for it and a
// rebuild to or from it stops. It returns the requests that were waiting
// for it, and false if it was not in the set.
func (e *Engine) markERR(id proto.ReplicaID, why string) ([]*fop, bool) {
	m := e.members[id]
	if m == nil || m.mode == ModeERR || m.mode == ModeNone {
		return nil, false
	}
	m.mode, m.why, m.errSince = ModeERR, why, e.now
	m.setDown(e.now)
	e.event(Event{Kind: EventReplicaFailed, Replica: id, Why: why})
	var touched []*fop
	for _, f := range e.running {
		if f.pending.remove(id) {
			touched = append(touched, f)
		}
	}
	if e.rebuild != nil && (e.rebuild.target == id || e.rebuild.source == id) {
		e.rebuild.abort(fmt.Sprintf("replica %s failed: %s", id, why))
	}
	return touched, true
}

// desiredMembership is the membership the engine's view implies.
//
// Its Prev is the newest membership known to be committed: the one this
// replaces, or, while that one was adopted at open and may never have
// reached a quorum of its own predecessor (committedPrev), that
// predecessor. An engine that later finds the new one must then fence a
// quorum of the committed one too. (With the adopted one as Prev, sim
// swarm seed 1088: gen 26 dropped r1 but reached only r2; an engine
// adopted it, fencing r1 and r2, and recorded gen 27 on r2 alone with
// Prev gen 26; the next engine opened gen 27 from r2 alone, then another
// opened gen 25 from r1 alone — the lowest-named half of {r1, r2} — and
// acknowledged writes the first then lost.)
func (e *Engine) desiredMembership() *proto.Membership {
	prev := e.committed.Members
	if e.committedPrev != nil {
		prev = e.committedPrev.Members
	}
	next := &proto.Membership{Gen: e.committed.Gen + 1, Epoch: e.epoch, Prev: append([]proto.Member(nil), prev...)}
	for _, m := range e.sortedMembers() {
		created := e.createdOf(m)
		switch m.mode {
		case ModeRW:
			next.Members = append(next.Members, proto.Member{ID: m.id, Mode: proto.ModeRW, Created: created})
		case ModeWO:
			next.Members = append(next.Members, proto.Member{ID: m.id, Mode: proto.ModeWO, Created: created})
		case ModeERR:
			next.Members = append(next.Members, proto.Member{ID: m.id, Mode: proto.ModeFailed, Created: created})
		}
	}
	for _, id := range e.removed {
		if e.members[id] != nil {
			invariant("replica %s is both a member and tombstoned", id)
		}
		next.Members = append(next.Members, proto.Member{ID: id, Mode: proto.ModeRemoved})
	}
	return next
}

// setDown records when a member stopped being RW, once.
func (m *member) setDown(now int64) {
	if !m.down {
		m.down, m.downSince = true, now
	}
}

// setRW makes a member RW.
func (m *member) setRW() {
	m.mode, m.why, m.down, m.unreachable, m.silent = ModeRW, "", false, false, false
}

// tombstone records that id was removed or replaced: no engine may
// rebuild it back in. The oldest tombstones are dropped beyond
// maxTombstones (a replica removed that long ago is gone for good).
func (e *Engine) tombstone(id proto.ReplicaID) {
	e.untombstone(id)
	e.removed = append(e.removed, id)
	if len(e.removed) > maxTombstones {
		e.removed = e.removed[len(e.removed)-maxTombstones:]
	}
}

// untombstone lets id be added again (by request).
func (e *Engine) untombstone(id proto.ReplicaID) {
	for i, r := range e.removed {
		if r == id {
			e.removed = append(e.removed[:i:i], e.removed[i+1:]...)
			return
		}
	}
}

func (e *Engine) isTombstoned(id proto.ReplicaID) bool {
	for _, r := range e.removed {
		if r == id {
			return true
		}
	}
	return false
}

// adoptMembers makes the engine's member set follow a recorded
// membership: tombstoned replicas leave it (even configured ones), and
// members the engine was not configured with join it (a replacement
// made by an earlier engine). It reports whether any joined: they were
// not asked at this open.
func (e *Engine) adoptMembers(best *proto.Membership) bool {
	joined := false
	for _, x := range best.Members {
		switch x.Mode {
		case proto.ModeRemoved:
			if best.Mode(x.ID) != proto.ModeRemoved {
				continue // listed as a member too (recorded by an engine before this was an invariant): the member wins
			}
			if !e.isTombstoned(x.ID) {
				e.removed = append(e.removed, x.ID)
			}
			delete(e.members, x.ID)
		case proto.ModeRW, proto.ModeWO, proto.ModeFailed:
			// A tombstone this engine adopted from an older record (an
			// earlier attempt at this open) does not outlive the newer
			// record that added the replica back: the replica would be
			// both a member and tombstoned, and the next record would
			// list it twice.
			e.untombstone(x.ID)
			if e.members[x.ID] == nil {
				e.members[x.ID] = &member{id: x.ID, mode: ModeERR, errSince: e.now}
				joined = true
			}
		}
	}
	if len(e.removed) > maxTombstones {
		e.removed = e.removed[len(e.removed)-maxTombstones:]
	}
	return joined
}

// proposeMembership records the desired membership on every replica in
// it; when a quorum of the committed membership's RW replicas has it, it
// becomes committed and parked acknowledgements are released. then (if
// not nil) learns whether it committed.
func (e *Engine) proposeMembership(then func(ok bool)) {
	if e.change != nil {
		e.change.again = true
		if then != nil {
			e.change.onDone = append(e.change.onDone, then)
		}
		return
	}
	next := e.desiredMembership()
	hasRW := false
	for _, m := range next.Members {
		hasRW = hasRW || m.Mode == proto.ModeRW
	}
	if !hasRW {
		// Never record a membership without an RW replica: no engine
		// could ever open from it (sim seed 190: every later open failed).
		e.fault("no healthy replica left")
		return
	}
	ch := &memberChange{next: next, acks: map[proto.ReplicaID]bool{}}
	if then != nil {
		ch.onDone = append(ch.onDone, then)
	}
	e.change = ch
	targets := e.writeTargets()
	ch.left = len(targets)
	for _, id := range targets {
		e.send(id, proto.Request{Op: proto.OpSetMembership, Membership: next.Clone()}, func(rep proto.Reply) {
			if ch.aborted {
				return
			}
			ch.left--
			if rep.Status == proto.StatusOK {
				ch.acks[id] = true
			} else {
				e.replicaFailedDuringChange(id, rep)
			}
			e.maybeCommit(ch)
		})
	}
}

// replicaFailedDuringChange marks a replica that could not record a
// membership ERR; the change in flight then proposes again without it.
// Requests it held up wait for that next commit (maybeCommit releases
// parked completions only once no change is pending).
func (e *Engine) replicaFailedDuringChange(id proto.ReplicaID, rep proto.Reply) {
	touched, ok := e.markERR(id, fmt.Sprintf("set-membership: %v %s", rep.Status, rep.Err))
	if !ok {
		return
	}
	if e.change != nil {
		e.change.again = true
	}
	for _, f := range touched {
		e.maybeDone(f)
	}
}

func (e *Engine) maybeCommit(ch *memberChange) {
	if e.change != ch {
		return
	}
	if !IsQuorum(e.committed, ch.acks) || (e.committedPrev != nil && !IsQuorum(e.committedPrev, ch.acks)) {
		if ch.left == 0 {
			e.change = nil
			for _, fn := range ch.onDone {
				fn(false)
			}
			e.fault(fmt.Sprintf("membership gen %d reached %d replicas, not a quorum of gen %d", ch.next.Gen, len(ch.acks), e.committed.Gen))
		}
		return
	}
	if ch.left > 0 && !ch.again {
		// Committed already, but let the rest answer first so that a
		// replica that did not record it is noticed (it goes ERR).
		return
	}
	if ch.next.Gen <= e.committed.Gen {
		invariant("committed membership gen %d after gen %d", ch.next.Gen, e.committed.Gen)
	}
	if rwIn(ch.next) == 0 {
		invariant("committed membership gen %d has no RW member", ch.next.Gen)
	}
	e.committed, e.committedPrev = ch.next, nil
	e.change = nil
	for _, fn := range ch.onDone {
		fn(true)
	}
	if ch.again {
		e.proposeMembership(nil)
		if e.change != nil {
			return // parked completions wait for the next commit
		}
	}
	if e.rwCount() < e.cfg.MinHealthy {
		e.fault(fmt.Sprintf("%d healthy replicas, %d needed", e.rwCount(), e.cfg.MinHealthy))
		return
	}
	parked := e.parked
	e.parked = nil
	for _, f := range parked {
		e.finishWrite(f)
	}
	parkedAdmin := e.parkedAdmin
	e.parkedAdmin = nil
	for _, fn := range parkedAdmin {
		fn()
	}
	e.settleMembership()
}

// settleMembership records the committed membership once more when its
// RW replicas differ from its predecessor's, so that the newest recorded
// membership soon has a predecessor with the same RW replicas. An open
// needs a quorum of the newest and of its predecessor (the newest may be
// uncommitted); without this, a replica just rebuilt (WO in the
// predecessor) could not stand in for one lost next: wiping dev-2 right
// after dev-1 was rebuilt left no engine able to open
// (TestProcessDevWipedReplica). The cost is one more metadata write per
// membership change.
func (e *Engine) settleMembership() {
	if e.change != nil || e.phase != PhaseServing || e.committed == nil || sameRW(e.committed.Members, e.committed.Prev) {
		return
	}
	e.proposeMembership(nil)
}

// sameRW reports whether a and b name the same RW replicas.
func sameRW(a, b []proto.Member) bool {
	rw := map[proto.ReplicaID]int{}
	for _, m := range a {
		if m.Mode == proto.ModeRW {
			rw[m.ID]++
		}
	}
	for _, m := range b {
		if m.Mode == proto.ModeRW {
			rw[m.ID]--
		}
	}
	for _, n := range rw {
		if n != 0 {
			return false
		}
	}
	return true
}

// createdOf is the creation epoch of m's store: as it reported it at
// our open or its rebuild's, else as the committed membership recorded
// it (0: unknown, and then it cannot vote without a record of its own).
func (e *Engine) createdOf(m *member) uint64 {
	if m.created != 0 {
		return m.created
	}
	for _, x := range e.committed.Members {
		if x.ID == m.id {
			return x.Created
		}
	}
	return 0
}

// recordedStore reports whether info comes from the very store that
// membership m (or its predecessor) recorded for that replica: its
// creation epoch is known and the same. Such a replica was not wiped or
// replaced since, so having no membership record means it never
// recorded one, and its fence counts toward a quorum.
func recordedStore(m *proto.Membership, info *proto.Info) bool {
	if info.Created == 0 {
		return false
	}
	for _, list := range [][]proto.Member{m.Members, m.Prev} {
		for _, x := range list {
			if x.ID == info.ID && x.Created == info.Created {
				return true
			}
		}
	}
	return false
}

// rwIn counts m's RW members.
func rwIn(m *proto.Membership) int {
	n := 0
	for _, x := range m.Members {
		if x.Mode == proto.ModeRW {
			n++
		}
	}
	return n
}
