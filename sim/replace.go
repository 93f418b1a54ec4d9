package sim

import (
	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
)

// replaceAfterTicks is how long a member stays ERR before an engine
// replaces it with a spare, in runs that have spares: long enough that a
// crash and restart is usually rebuilt in place, short enough that a lost
// replica is replaced while faults still run.
const replaceAfterTicks = 250

// node returns the replica node named id, or nil.
func (s *Sim) node(id proto.ReplicaID) *replicaNode {
	for _, n := range s.replicas {
		if n.id == id {
			return n
		}
	}
	return nil
}

func isMember(info engine.VolumeInfo, id proto.ReplicaID) bool {
	for _, r := range info.Replicas {
		if r.ID == id {
			return true
		}
	}
	return false
}

// lose destroys one member for good (its disk is gone), the way a dead
// host or a failed drive does: it never comes back, and the volume heals
// only by replacing it with a spare under a new ID (automatically after
// ReplaceAfterTicks, or by the manager's command here, half the time).
// It strikes only while every member is RW, a spare is free, no other
// lost replica is still a member, and the rest form a quorum (a
// 2-replica volume does not survive losing its first replica: see the
// quorum rule), so a good copy of every block always remains.
func (s *Sim) lose() {
	en := s.current()
	if !en.alive || !en.e.Serving() || s.hist.pausing || s.idling != nil || s.amnesiaPending() {
		return
	}
	info := en.e.Info()
	if len(info.Spares) == 0 || info.Rebuild != nil || len(info.Replicas) < 2 {
		return
	}
	var rw []proto.Member
	for _, r := range info.Replicas {
		if n := s.node(r.ID); r.Mode != engine.ModeRW || n == nil || n.lost || !n.up {
			return
		}
		rw = append(rw, proto.Member{ID: r.ID, Mode: proto.ModeRW})
	}
	// With three RW members or fewer, only the highest-named may go: had
	// the engine dropped another member that was only down for a while
	// before noticing the loss (a dropped message, a slow reply), the
	// lost one would otherwise be the lowest-named of a two-member
	// membership, which no quorum can do without (sim swarm seed 178).
	// With more, any but the lowest-named.
	victim := rw[len(rw)-1].ID
	if len(rw) > 3 {
		victim = rw[1+s.rng.IntN(len(rw)-1)].ID
	}
	if !s.survivable(victim) {
		return
	}
	n := s.node(victim)
	n.crash()
	n.lost = true
	s.breakLink(en, n) // its host is gone: the connection resets
	s.count("replica-lost")
	s.note("replica-lost", uint64(n.idx))
	if s.rng.IntN(2) == 0 {
		s.after(s.uniform(10_000, 100_000), func() { s.replaceByCommand(n) })
	}
}

// survivable reports whether the replicas other than victim and those
// already lost form a quorum of every membership any replica recorded and
// of its predecessor. An engine opening must fence a quorum of both (the
// newest may never have been committed), so losing a replica right after a
// membership change, before the next change is recorded, can leave no
// engine able to open even with a majority alive: the quorum rule's
// availability cost, which the simulator steers around rather than hits.
func (s *Sim) survivable(victim proto.ReplicaID) bool {
	if s.holdsLastGoodCopy(victim) {
		return false
	}
	rest := map[proto.ReplicaID]bool{}
	for _, n := range s.replicas {
		rest[n.id] = n.id != victim && !n.lost
	}
	for _, n := range s.replicas {
		if !n.up || !n.r.Loaded() {
			continue
		}
		m := n.r.Info().Membership
		if m == nil {
			continue
		}
		if !engine.IsQuorum(m, rest) || len(m.Prev) > 0 && !engine.IsQuorum(&proto.Membership{Members: m.Prev}, rest) {
			return false
		}
	}
	return true
}

// faultsHeld reports whether crashes and partitions of other replicas
// must wait: a lost replica is still a member, or a replica that lost
// what it knew is not yet rebuilt (disk.go).
func (s *Sim) faultsHeld() bool {
	return s.lostMemberPending() || s.amnesiaPending()
}

// lostMemberPending reports whether a lost replica is still a member of
// the current engine's volume. Crashes and partitions of other replicas
// wait meanwhile: had the engine dropped a replica that is only down for
// a while and kept the lost one, the membership it recorded could need
// the lost one for every quorum from then on (the quorum rule's
// availability cost, see survivable).
func (s *Sim) lostMemberPending() bool {
	if s.knobs.LoseEveryUs == 0 {
		return false
	}
	info := s.current().e.Info()
	for _, n := range s.replicas {
		if n.lost && isMember(info, n.id) {
			return true
		}
	}
	return false
}

// replaceByCommand plays an operator: add a free spare (AdminAddReplica
// rebuilds it in), then remove the lost replica.
func (s *Sim) replaceByCommand(lost *replicaNode) {
	en := s.current()
	if !en.alive || !en.e.Serving() {
		return
	}
	info := en.e.Info()
	if !isMember(info, lost.id) || len(info.Spares) == 0 {
		return
	}
	en.admin(engine.AdminRequest{Op: engine.AdminAddReplica, Replica: info.Spares[0]}, func(r engine.AdminReply) {
		s.countResult("replace-add", r.Err)
		if r.Err != nil || !en.alive {
			return
		}
		en.admin(engine.AdminRequest{Op: engine.AdminRemoveReplica, Replica: lost.id}, func(r engine.AdminReply) {
			s.countResult("replace-remove", r.Err)
		})
	})
}

// removeLostMembers plays the manager once faults have healed: a lost
// replica still in the volume with no spare left to replace it (spares
// went to replicas that only failed for a while) is removed by request,
// so the volume can converge on the replicas it has.
func (s *Sim) removeLostMembers() {
	en := s.current()
	if !s.healed || s.removing || !en.alive || !en.e.Serving() {
		return
	}
	info := en.e.Info()
	if len(info.Spares) > 0 || info.Rebuild != nil {
		return
	}
	for _, r := range info.Replicas {
		if n := s.node(r.ID); n != nil && n.lost {
			s.removing = true
			en.admin(engine.AdminRequest{Op: engine.AdminRemoveReplica, Replica: r.ID}, func(rep engine.AdminReply) {
				s.removing = false
				s.countResult("manager-remove", rep.Err)
				if rep.Err == nil {
					s.managerRemoved++
				}
			})
			return
		}
	}
}

// membersRW reports whether the volume has converged on its members: no
// rebuild running, every member RW and none lost, and no fewer members
// than it started with (less those the manager removed).
func (s *Sim) membersRW(info engine.VolumeInfo) bool {
	if info.Rebuild != nil || len(info.Replicas) < s.knobs.Replicas-s.managerRemoved {
		return false
	}
	for _, r := range info.Replicas {
		if n := s.node(r.ID); r.Mode != engine.ModeRW || n == nil || n.lost {
			return false
		}
	}
	return true
}

// memberNodes are the nodes of the current engine's members.
func (s *Sim) memberNodes() []*replicaNode {
	info := s.current().e.Info()
	var out []*replicaNode
	for _, n := range s.replicas {
		if isMember(info, n.id) {
			out = append(out, n)
		}
	}
	return out
}
