package sim

import (
	"errors"
	"fmt"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
)

// revertTask exercises revert under faults: pause the clients, take a
// snapshot and read what it holds, let clients run, pause again, detach,
// revert, attach. A revert that succeeded starts a new era whose initial
// values are the snapshot's (durable: a revert is a metadata write on
// every replica). One that failed, or whose outcome is unknown, starts an
// era from what the volume reads, which must be the snapshot's content or
// what the old era allowed.
type revertTask struct {
	s      *Sim
	en     *engineNode
	name   string
	values map[uint64]uint64 // the snapshot's content per hot block
	done   bool
	// partial: the revert failed and its outcome is being read.
	partial bool
}

func (s *Sim) revert() {
	h := s.hist
	if h.pausing || s.revertTask != nil || s.idling != nil || !s.current().alive || !s.current().e.Serving() {
		return
	}
	t := &revertTask{s: s, en: s.current(), name: fmt.Sprintf("rv%d", s.steps)}
	s.reverting, s.revertTask = t, t // one task at a time, start to finish
	t.whenIdle(20, t.snapshot)
}

func (t *revertTask) finish(why string) {
	if t.done {
		return
	}
	t.done = true
	if t.partial {
		t.s.hist.lastCrashAt = t.s.now // see revertDetached
	}
	t.s.reverting, t.s.revertTask = nil, nil
	t.en.e.SetAttached(true)
	t.s.count("revert-" + why)
}

// whenIdle runs fn once no client request is in flight (and the engine
// still serves), polling every millisecond up to tries times.
func (t *revertTask) whenIdle(tries int, fn func()) {
	s := t.s
	if t.done {
		return
	}
	if !t.en.alive || s.hist.pausing {
		t.finish("aborted")
		return
	}
	if s.hist.inflight > 0 || !t.en.e.Serving() {
		if tries == 0 {
			t.finish("aborted")
			return
		}
		s.after(1000, func() { t.whenIdle(tries-1, fn) })
		return
	}
	fn()
}

func (t *revertTask) snapshot() {
	attrs := &proto.SnapshotAttrs{CreatedUnixNano: t.s.now, Labels: []proto.Label{{Key: "task", Value: t.name}}}
	t.en.admin(engine.AdminRequest{Op: engine.AdminSnapshot, Name: t.name, Attrs: attrs}, func(r engine.AdminReply) {
		if r.Err != nil {
			t.finish("snapshot-failed")
			return
		}
		t.checkListed(attrs)
		t.s.note("revert-snapshot " + t.name)
		t.readAll(func(values map[uint64]uint64) {
			t.values = values
			t.s.note("revert-snapshot-read "+t.name, values[4], values[5])
			t.s.reverting = nil // clients go on; the revert comes later
			t.s.after(t.s.uniform(20_000, 100_000), func() {
				if t.s.reverting != nil || t.s.hist.pausing {
					t.finish("aborted")
					return
				}
				t.s.reverting = t
				t.whenIdle(50, t.revert)
			})
		})
	})
}

// revert detaches the volume, often shrinks it first (to no less than the
// hot blocks clients use, so the shrink is allowed unless faults get in
// the way; it changes no block they read), reverts, and attaches again.
func (t *revertTask) revert() {
	s := t.s
	t.en.e.SetAttached(false)
	size := t.en.e.SizeBytes() / proto.BlockSize
	if s.rng.IntN(2) == 0 || size <= s.knobs.HotBlocks {
		t.revertDetached()
		return
	}
	target := s.knobs.HotBlocks + uint64(s.rng.Uint64N(size-s.knobs.HotBlocks))
	t.en.admin(engine.AdminRequest{Op: engine.AdminShrink, SizeBytes: target * proto.BlockSize}, func(r engine.AdminReply) {
		s.countResult("shrink", r.Err)
		if !t.en.alive || errors.Is(r.Err, engine.ErrFenced) {
			t.finish("aborted") // no revert was sent (sim swarm seed 867)
			return
		}
		t.revertDetached()
	})
}

func (t *revertTask) revertDetached() {
	s := t.s
	t.en.admin(engine.AdminRequest{Op: engine.AdminRevert, Name: t.name}, func(r engine.AdminReply) {
		t.en.e.SetAttached(true)
		t.s.note("revert-done "+t.name+" "+fmt.Sprint(r.Err), uint64(len(t.en.e.Info().Chain)))
		if r.Err == nil {
			s.hist.revertEra(t.values)
			t.finish("ok")
			return
		}
		if !t.en.alive {
			// The engine died with the revert in flight: the replicas may
			// or may not have reverted. The next engine's open starts an
			// era whose values may also be the snapshot's.
			s.hist.pendingRevert = t.values
			s.hist.lastCrashAt = s.now
			t.finish("unknown")
			return
		}
		if errors.Is(r.Err, engine.ErrFenced) {
			// A new engine fenced this one with the revert in flight:
			// replicas that took the revert before the new engine's open
			// may have decided its chain, and that engine may serve
			// already. Start a boundary through the next serving engine;
			// its values may also be the snapshot's (sim swarm seed 784).
			s.hist.pendingRevert = t.values
			s.hist.forceBoundary()
			t.finish("unknown")
			return
		}
		// Refused or partly done: what the volume holds now decides. If
		// the engine dies before that read (a faulted engine the watchdog
		// restarts), some replicas may have reverted and the next engine
		// may open from them: the next boundary allows the snapshot's
		// values, as when the engine died with the revert in flight (sim
		// snap seed 324).
		s.hist.pendingRevert, t.partial = t.values, true
		t.readAll(func(values map[uint64]uint64) {
			s.hist.pendingRevert, t.partial = nil, false
			s.hist.unknownRevertEra(values, t.values)
			t.finish("failed")
		})
	})
}

// readAll reads every hot block once through the task's engine; the task
// is abandoned if the engine dies.
func (t *revertTask) readAll(then func(map[uint64]uint64)) {
	before := func() bool {
		if !t.done && !t.en.alive {
			t.finish("aborted")
		}
		return !t.done
	}
	t.s.readHot(t.en, "around a revert", before, func() bool { return !t.done }, then)
}

// revertEra starts an era whose blocks hold the snapshot's values, durably.
func (h *history) revertEra(values map[uint64]uint64) {
	under := map[uint64]map[uint64]bool{}
	for b, v := range values {
		under[b] = map[uint64]bool{v: true}
	}
	h.startEra(values, under)
}

// unknownRevertEra starts an era after a revert that failed: each block
// must read as what the old era allowed or as the snapshot's value.
func (h *history) unknownRevertEra(read, snap map[uint64]uint64) {
	prev := h.cur()
	under := map[uint64]map[uint64]bool{}
	for b, v := range read {
		allowed := h.allowedAfterCrash(prev, b)
		allowed[snap[b]] = true
		if !allowed[v] {
			h.s.fail("revert: block %d holds write %d after a failed revert, neither the snapshot's nor one the history allows", b, v)
		}
		under[b] = allowed
	}
	h.startEra(read, under)
}

func (h *history) startEra(init map[uint64]uint64, under map[uint64]map[uint64]bool) {
	h.eras = append(h.eras, &era{start: h.s.now, init: init, under: under, writes: map[uint64][]*opRecord{}})
	h.s.count("era")
	h.s.note("era", uint64(len(h.eras)))
}

// checkListed lists the snapshots (which also restores attributes that
// rebuilt replicas lost) and requires the task's snapshot, wherever it is
// listed with attributes, to carry exactly the ones it was taken with.
func (t *revertTask) checkListed(want *proto.SnapshotAttrs) {
	t.en.admin(engine.AdminRequest{Op: engine.AdminListSnapshots}, func(r engine.AdminReply) {
		t.s.countResult("snapshot-list", r.Err)
		for _, l := range r.Snapshots {
			if l.Name != t.name || l.Attrs.CreatedUnixNano == 0 {
				continue
			}
			if l.Attrs.CreatedUnixNano != want.CreatedUnixNano || len(l.Attrs.Labels) != 1 || l.Attrs.Labels[0] != want.Labels[0] {
				t.s.fail("snapshots: %s listed with attributes %+v, taken with %+v", t.name, l.Attrs, *want)
			}
		}
	})
}
