package sim

import "github.com/drover-io/drover/core/engine"

// idleWindow is a stretch with no frontend IO in which a member replica
// dies (Knobs.IdleEveryUs): clients stop sending, and once none of their
// requests is in flight one member is crashed (restarted when the window
// ends) or, when a spare is free, lost for good. Only the engine's
// heartbeats can find the failure then. When nothing else happened in the
// window (no other fault, no engine change, no admin task), the engine
// must by its end have taken a crashed replica out of the set, and have
// replaced a lost one with a spare that is RW.
type idleWindow struct {
	en     *engineNode
	victim *replicaNode
	lost   bool
	// quiet is the fault count once the victim died; any change by the
	// window's end means something besides the heartbeats acted.
	quiet int
	// checkable: the engine could take the victim out without faulting
	// (every member RW, the rest a quorum of every recorded membership,
	// and enough of them for MinHealthy).
	checkable bool
}

// idleFaults are the stats a fault or admin task bumps; a window is
// checked only if none of them moved after its victim died.
var idleFaults = []string{"partition", "net-break", "replica-crash", "replica-lost", "engine-crash",
	"engine-restart", "takeover", "crash-all", "bitrot", "snapshot", "snapshot-failed", "snapshot-delete",
	"snapshot-delete-failed", "expand", "expand-failed", "replace-add", "replace-add-failed"}

func (s *Sim) faultCount() int {
	n := 0
	for _, k := range idleFaults {
		n += s.stats[k]
	}
	return n
}

// idleLenUs is how long a window lasts: a replica timeout to notice the
// failure, the rebuild wait and the replacement wait, then time to rebuild
// a spare.
func (s *Sim) idleLenUs() int64 {
	return (s.knobs.TimeoutTicks+30+replaceAfterTicks)*s.knobs.TickUs + 400_000
}

// idle starts a window: clients stop, and the victim dies once nothing
// they sent is in flight.
func (s *Sim) idle() {
	en := s.current()
	if s.idling != nil || s.hist.pausing || s.revertTask != nil || !en.alive || !en.e.Serving() {
		return
	}
	w := &idleWindow{en: en}
	s.idling = w
	s.count("idle")
	s.whenNoClientIO(w, 50)
}

func (s *Sim) whenNoClientIO(w *idleWindow, tries int) {
	if s.healed || s.stopped || !w.en.alive || s.hist.pausing {
		s.idling = nil
		return
	}
	if s.hist.inflight > 0 || !w.en.e.Serving() {
		if tries == 0 {
			s.idling = nil
			return
		}
		s.after(1000, func() { s.whenNoClientIO(w, tries-1) })
		return
	}
	s.idleKill(w)
	s.after(s.idleLenUs(), func() { s.idleEnd(w) })
}

// idleKill picks the victim: half the time lost for good when lose() would
// allow it (a free spare, every member RW and up), else a crashed member, the
// highest-named one (the quorum rule lets a 2-replica volume go on
// without it, see lose).
func (s *Sim) idleKill(w *idleWindow) {
	info := w.en.e.Info()
	var rw []*replicaNode
	for _, r := range info.Replicas {
		n := s.node(r.ID)
		if n == nil || n.lost || !n.up || r.Mode != engine.ModeRW {
			s.idling = nil
			return
		}
		rw = append(rw, n)
	}
	if len(rw) < 2 || s.faultsHeld() {
		s.idling = nil
		return
	}
	w.victim = rw[len(rw)-1]
	w.checkable = info.Rebuild == nil && len(rw)-1 >= s.knobs.MinHealthy && s.survivable(w.victim.id)
	if len(info.Spares) > 0 && w.checkable && s.rng.IntN(2) == 0 {
		w.lost = true
		w.victim.crash()
		w.victim.lost = true
		s.breakLink(w.en, w.victim)
		s.count("replica-lost")
		s.note("idle-lost", uint64(w.victim.idx))
	} else {
		w.victim.crash()
		s.note("idle-crash", uint64(w.victim.idx))
	}
	w.quiet = s.faultCount()
}

// idleEnd checks what the engine did and lets clients go on.
func (s *Sim) idleEnd(w *idleWindow) {
	if s.idling != w {
		return
	}
	s.idling = nil
	disturbed := s.faultCount() != w.quiet || s.healed || s.stopped || s.current() != w.en || !w.en.alive
	if !disturbed && w.checkable {
		s.checkIdle(w)
	} else {
		s.count("idle-unchecked")
	}
	if !w.lost && !w.victim.up {
		w.victim.start()
	}
}

func (s *Sim) checkIdle(w *idleWindow) {
	info := w.en.e.Info()
	if info.Phase != engine.PhaseServing {
		s.fail("idle: the engine went %s (%s) while idle after %s died", info.Phase, info.Why, w.victim.id)
		return
	}
	for _, r := range info.Replicas {
		if r.ID == w.victim.id && r.Mode == engine.ModeRW {
			s.fail("idle: %s died with no IO flowing and is still RW %dus later: %s", w.victim.id, s.idleLenUs(), describeInfo(info)+describeTasks(info))
			return
		}
	}
	if !w.lost {
		s.count("idle-err")
		return
	}
	if isMember(info, w.victim.id) {
		s.fail("idle: lost replica %s not replaced by a spare within %dus with no IO: %s", w.victim.id, s.idleLenUs(), describeInfo(info)+describeTasks(info))
		return
	}
	for _, r := range info.Replicas {
		if n := s.node(r.ID); n != nil && n.spare && r.Mode != engine.ModeRW {
			s.fail("idle: spare %s replacing %s is %v, not RW, %dus after the loss with no IO: %s", r.ID, w.victim.id, r.Mode, s.idleLenUs(), describeInfo(info)+describeTasks(info))
			return
		}
	}
	s.count("idle-replaced")
}
