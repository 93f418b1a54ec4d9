package engine

import (
	"fmt"
	"hash/crc32"
	"sort"

	"github.com/drover-io/drover/core/proto"
)

// layerSync makes one layer of each target equal to the source's over a
// list of extents: list both sides' block states window by window, then
// copy every run of blocks whose kind or checksum differs. It copies
// nothing that already matches, so rerunning it after an interruption
// continues rather than restarts.
type layerSync struct {
	e        *Engine
	layer    string // "" is the head
	source   proto.ReplicaID
	targets  []proto.ReplicaID
	extents  []proto.Extent // each at most CopyShape.WindowBlocks
	skipLast bool           // planted bug: drop the final run
	aborted  bool
	next     *listing // the next window's, listed while this one is copied
	// budget paces copies (nil: unpaced); flushEveryBytes > 0 flushes
	// the targets once that many bytes were copied and flushEveryTicks
	// passed since lastFlush, so that a target that restarts keeps what
	// it was given (a rebuild resumes, not restarts).
	budget          *rateBudget
	flushEveryBytes uint64
	flushEveryTicks int64
	lastFlush       int64 // tick
	unflushedBytes  uint64

	// Progress, for reporting: blocks listed, bytes copied, and the
	// window being copied (its blocks, and its differing and copied
	// bytes), so that progress moves while a window is copied.
	blocksScanned     uint64
	bytesCopied       uint64
	windowBlocks      uint64
	windowDiffBytes   uint64
	windowCopiedBytes uint64
}

// blocksDone counts the blocks compared and brought up to date, counting
// the window being copied in proportion to its bytes copied.
func (s *layerSync) blocksDone() uint64 {
	done := s.blocksScanned - s.windowBlocks
	if s.windowDiffBytes > 0 {
		done += s.windowBlocks * min(s.windowCopiedBytes, s.windowDiffBytes) / s.windowDiffBytes
	}
	return done
}

// listing is one window's block states, listed on the source and every
// target (each sorted by block, at most one state per block).
type listing struct {
	x      proto.Extent
	states map[proto.ReplicaID][]proto.BlockState
	left   int    // replies still to come
	failed string // the first listing that failed
	then   func() // runs once every reply is in, if set by then
}

// list asks the source and every target for their states in x.
func (s *layerSync) list(x proto.Extent) *listing {
	ls := &listing{x: x, states: map[proto.ReplicaID][]proto.BlockState{}, left: 1 + len(s.targets)}
	for _, id := range append([]proto.ReplicaID{s.source}, s.targets...) {
		req := proto.Request{Op: proto.OpLayerBlocks, Name: s.layer, BlockIndex: x.BlockIndex, BlockCount: uint32(x.BlockCount)}
		s.e.send(id, req, func(rep proto.Reply) {
			if s.aborted {
				return
			}
			ls.left--
			if rep.Status != proto.StatusOK {
				ls.failed = fmt.Sprintf("list blocks of %s layer %q: %v %s", id, s.layer, rep.Status, rep.Err)
			} else {
				ls.states[id] = sortedStates(rep.Blocks)
			}
			if ls.left == 0 && ls.then != nil {
				then := ls.then
				ls.then = nil
				then()
			}
		})
	}
	return ls
}

// run syncs the remaining windows one after another. While a window's
// runs are copied, the next window is listed already, so the copies do
// not stall at each window for a listing (the layers synced do not change
// meanwhile but for the sync's own writes, which stay in their window: a
// rebuild's are frozen snapshots, an open's resync runs before any IO).
func (s *layerSync) run(done func(err string)) {
	if s.aborted {
		return
	}
	s.windowBlocks, s.windowDiffBytes, s.windowCopiedBytes = 0, 0, 0
	ls := s.next
	s.next = nil
	if ls == nil {
		if len(s.extents) == 0 || len(s.targets) == 0 {
			done("")
			return
		}
		ls = s.list(s.extents[0])
		s.extents = s.extents[1:]
	}
	proceed := func() {
		if ls.failed != "" {
			done(ls.failed)
			return
		}
		if len(s.extents) > 0 {
			s.next = s.list(s.extents[0])
			s.extents = s.extents[1:]
		}
		s.blocksScanned += ls.x.BlockCount
		s.windowBlocks = ls.x.BlockCount
		s.copyDiffs(ls.x, ls.states, 0, done)
	}
	if ls.left > 0 {
		ls.then = proceed
		return
	}
	proceed()
}

// sortedStates returns bs sorted by block with one state per block (the
// last one listed): as it is when a replica lists them.
func sortedStates(bs []proto.BlockState) []proto.BlockState {
	sorted := true
	for i := 1; i < len(bs); i++ {
		if bs[i].BlockIndex <= bs[i-1].BlockIndex {
			sorted = false
			break
		}
	}
	if sorted {
		return bs
	}
	out := append([]proto.BlockState(nil), bs...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].BlockIndex < out[j].BlockIndex })
	n := 0
	for i := range out {
		if n > 0 && out[n-1].BlockIndex == out[i].BlockIndex {
			n--
		}
		out[n] = out[i]
		n++
	}
	return out[:n]
}

// diffRuns returns the runs of blocks in x where dst differs from src
// (both sorted, one state per block; a block listed on one side only
// differs), each at most runBlocks long.
func diffRuns(x proto.Extent, src, dst []proto.BlockState, runBlocks uint64) []proto.Extent {
	var runs []proto.Extent
	i, j := 0, 0
	for i < len(src) || j < len(dst) {
		var b uint64
		same := false
		switch {
		case j == len(dst) || (i < len(src) && src[i].BlockIndex < dst[j].BlockIndex):
			b = src[i].BlockIndex
			i++
		case i == len(src) || dst[j].BlockIndex < src[i].BlockIndex:
			b = dst[j].BlockIndex
			j++
		default:
			b, same = src[i].BlockIndex, src[i] == dst[j]
			i++
			j++
		}
		if same || b < x.BlockIndex || b >= x.BlockIndex+x.BlockCount {
			continue
		}
		if n := len(runs); n > 0 && runs[n-1].BlockIndex+runs[n-1].BlockCount == b && runs[n-1].BlockCount < runBlocks {
			runs[n-1].BlockCount++
			continue
		}
		runs = append(runs, proto.Extent{BlockIndex: b, BlockCount: 1})
	}
	return runs
}

// copyDiffs copies the differing runs to target i, then to the next.
func (s *layerSync) copyDiffs(x proto.Extent, states map[proto.ReplicaID][]proto.BlockState, i int, done func(string)) {
	if i == len(s.targets) {
		s.run(done)
		return
	}
	id := s.targets[i]
	runs := diffRuns(x, states[s.source], states[id], s.e.cfg.CopyShape.RunBlocks)
	if s.skipLast && len(s.extents) == 0 && len(runs) > 0 {
		runs = runs[:len(runs)-1]
	}
	s.copyRuns(id, runs, func(err string) {
		if err != "" {
			done(err)
			return
		}
		s.copyDiffs(x, states, i+1, done)
	})
}

func (s *layerSync) copyRuns(target proto.ReplicaID, runs []proto.Extent, done func(string)) {
	if s.aborted {
		return
	}
	s.windowCopiedBytes = 0
	s.windowDiffBytes = 0
	for _, r := range runs {
		s.windowDiffBytes += r.BlockCount * proto.BlockSize
	}
	c := &runCopier{s: s, target: target, runs: runs, done: done}
	c.pump()
}

// runCopier copies a window's runs to one target with up to
// CopyShape.RunsInFlight copies outstanding, as the budget allows, flushing
// the target every flushEveryBytes. done is called once: with the first
// error, or when every copy (and flush) has completed.
type runCopier struct {
	s        *layerSync
	target   proto.ReplicaID
	runs     []proto.Extent
	next     int
	inflight int
	finished bool
	done     func(string)
}

func (c *runCopier) pump() {
	s := c.s
	if s.aborted || c.finished {
		return
	}
	for c.next < len(c.runs) && c.inflight < c.s.e.cfg.CopyShape.RunsInFlight {
		run := c.runs[c.next]
		if !s.budget.take(run.BlockCount * proto.BlockSize) {
			s.budget.waiting = c.pump
			break
		}
		c.next++
		c.inflight++
		s.copyRunFrom(c.target, run, s.source, map[proto.ReplicaID]bool{}, func(err string) {
			c.inflight--
			if err == "" {
				n := run.BlockCount * proto.BlockSize
				s.bytesCopied += n
				s.windowCopiedBytes += n
				s.unflushedBytes += n
				c.maybeFlush()
			}
			c.complete(err)
		})
	}
	c.complete("")
}

// complete ends the copier on an error, or when nothing is left;
// otherwise it starts more copies.
func (c *runCopier) complete(err string) {
	if c.finished || c.s.aborted {
		return
	}
	if err != "" {
		c.finished = true
		c.done(err)
		return
	}
	if c.next == len(c.runs) && c.inflight == 0 {
		c.finished = true
		c.done("")
		return
	}
	if c.next < len(c.runs) && c.inflight < c.s.e.cfg.CopyShape.RunsInFlight && (c.s.budget == nil || c.s.budget.waiting == nil) {
		c.pump()
	}
}

// maybeFlush flushes the target once flushEveryBytes were copied and
// flushEveryTicks passed since the last flush: the replica orders the
// flush after the writes before it.
func (c *runCopier) maybeFlush() {
	s := c.s
	if s.flushEveryBytes == 0 || s.unflushedBytes < s.flushEveryBytes || s.e.now-s.lastFlush < s.flushEveryTicks {
		return
	}
	s.unflushedBytes, s.lastFlush = 0, s.e.now
	c.inflight++
	s.e.send(c.target, proto.Request{Op: proto.OpFlush, Seq: s.e.writeSeq}, func(rep proto.Reply) {
		c.inflight--
		err := ""
		if rep.Status != proto.StatusOK {
			err = fmt.Sprintf("flush %s: %v %s", c.target, rep.Status, rep.Err)
		}
		c.complete(err)
	})
}

// otherSource returns an RW replica that is neither target nor tried, or
// "".
func (s *layerSync) otherSource(target proto.ReplicaID, tried map[proto.ReplicaID]bool) proto.ReplicaID {
	for _, id := range s.e.readable() {
		if id != target && !tried[id] {
			return id
		}
	}
	return ""
}

// copyRunFrom copies run from src to target. When src holds a corrupt
// block in that run (the target refuses it: its checksum does not match),
// another RW replica that is neither the target nor tried yet serves it
// instead (its copy is checked the same way).
func (s *layerSync) copyRunFrom(target proto.ReplicaID, run proto.Extent, src proto.ReplicaID, tried map[proto.ReplicaID]bool, done func(string)) {
	tried[src] = true
	req := proto.Request{Op: proto.OpLayerRead, Name: s.layer, BlockIndex: run.BlockIndex, BlockCount: uint32(run.BlockCount)}
	s.e.send(src, req, func(rep proto.Reply) {
		if s.aborted {
			return
		}
		if rep.Status == proto.StatusCorrupt {
			if next := s.otherSource(target, tried); next != "" {
				s.copyRunFrom(target, run, next, tried, done)
				return
			}
		}
		if rep.Status != proto.StatusOK {
			done(fmt.Sprintf("read layer %q of %s: %v %s", s.layer, src, rep.Status, rep.Err))
			return
		}
		w := proto.Request{Op: proto.OpLayerWrite, Name: s.layer, BlockIndex: run.BlockIndex,
			BlockCount: uint32(run.BlockCount), Data: rep.Data, Blocks: rep.Blocks}
		s.e.send(target, w, func(rep proto.Reply) {
			if s.aborted {
				return
			}
			// The target refuses a block that does not match the checksum
			// the source's index gave (the source's layer reads do not
			// checksum): read the run from another replica.
			if rep.Status == proto.StatusCorrupt {
				if next := s.otherSource(target, tried); next != "" {
					s.copyRunFrom(target, run, next, tried, done)
					return
				}
				why := fmt.Sprintf("write layer %q of %s: %v %s", s.layer, target, rep.Status, rep.Err)
				s.spliceFromAny(target, w, rep.BlockIndex, s.spliceCandidates(src), why, done)
				return
			}
			if rep.Status != proto.StatusOK {
				done(fmt.Sprintf("write layer %q of %s: %v %s", s.layer, target, rep.Status, rep.Err))
				return
			}
			if src != s.source && target != s.source {
				s.repairSource(w, done)
				return
			}
			// Acknowledged: the target received all of the data and the
			// engine holds it nowhere else. (On any other outcome the
			// transport may still be sending it: it is left to the GC.)
			if w.Data != nil {
				s.e.ready.Free = append(s.e.ready.Free, w.Data)
			}
			done("")
		})
	})
}

// repairSource writes a run the target got from another replica (the
// source's copy was corrupt) over the source's copy too. The sync's
// promise is that source and targets end equal: in a frozen layer the
// other replica's copy is the layer's content, and in an open's resync
// of the head the run may hold a write that reached some replicas and
// not others, so the source must take the version the targets took, or
// it would answer reads with another one.
func (s *layerSync) repairSource(w proto.Request, done func(string)) {
	s.e.send(s.source, w, func(rep proto.Reply) {
		if s.aborted {
			return
		}
		if rep.Status != proto.StatusOK {
			done(fmt.Sprintf("repair layer %q of source %s: %v %s", s.layer, s.source, rep.Status, rep.Err))
			return
		}
		if w.Data != nil {
			s.e.ready.Free = append(s.e.ready.Free, w.Data)
		}
		done("")
	})
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// spliceCandidates lists where a block whose copy on src is corrupt may
// still be found: every snapshot layer of every member other than src,
// the layer being synced first, then their heads, then the layers their
// rebuilds retired. A member that missed the snapshot holds the block in
// another layer: one that was ERR when the snapshot was taken kept it in
// its head, which a rebuild then froze under the rebuild snapshot's name.
// A member found stale at an open and rebuilt from src held it in a layer
// src's chain no longer has, which its rebuild retired.
func (s *layerSync) spliceCandidates(src proto.ReplicaID) []spliceSource {
	layers := []string{s.layer}
	for _, name := range s.e.chain {
		if name != s.layer {
			layers = append(layers, name)
		}
	}
	var out []spliceSource
	for _, name := range layers {
		if name == "" {
			continue
		}
		for _, m := range s.e.sortedMembers() {
			if m.id != src {
				out = append(out, spliceSource{m.id, viaSnapshot, name})
			}
		}
	}
	for _, m := range s.e.sortedMembers() {
		if m.id != src {
			out = append(out, spliceSource{m.id, viaHead, ""})
		}
	}
	for i := 0; i < proto.MaxRetiredLayers; i++ {
		for _, m := range s.e.sortedMembers() {
			if m.id != src {
				out = append(out, spliceSource{m.id, viaSnapshot, proto.RetiredName(i)})
			}
		}
	}
	return out
}

// spliceSource is one place spliceFromAny may find a block.
type spliceSource struct {
	id    proto.ReplicaID
	how   spliceHow
	layer string // the snapshot read, for viaSnapshot
}

type spliceHow uint8

const (
	viaSnapshot spliceHow = iota // OpSnapRead of a snapshot layer
	viaHead                      // OpRead: the member's head
)

// spliceFromAny is the last resort when no RW replica but the source
// holds a good copy of block bad of write w's run: the block's right
// content is the one matching the checksum the source's index gave (rot
// changes the data, not the index), so any member serving a copy that
// matches it (a stale or rebuilding one, the target itself) has it. Each
// candidate's copy is read as it serves it and checked here; the target
// checks it again. Without this, a block rotted on the only RW replica
// stopped every rebuild at it for good, though the others held it (sim
// all/297, once write intents kept such rot from being settled as data).
func (s *layerSync) spliceFromAny(target proto.ReplicaID, w proto.Request, bad uint64, cands []spliceSource, why string, done func(string)) {
	if bad < w.BlockIndex || bad >= w.BlockIndex+uint64(w.BlockCount) || len(w.Blocks) != int(w.BlockCount) {
		done(why)
		return
	}
	want := w.Blocks[bad-w.BlockIndex]
	if want.Kind != proto.BlockData || len(cands) == 0 {
		done(why)
		return
	}
	// Each candidate is asked twice: for the block as the layer's
	// snapshot shows it there (a stale copy of the chain may hold it),
	// then as its head shows it. A candidate is listed once per way.
	from, how := cands[0].id, cands[0].how
	req := proto.Request{Op: proto.OpRead, BlockIndex: bad, BlockCount: 1}
	if how == viaSnapshot {
		req.Op, req.Name = proto.OpSnapRead, cands[0].layer
	}
	s.e.send(from, req, func(rep proto.Reply) {
		if s.aborted {
			return
		}
		if rep.Status != proto.StatusOK || len(rep.Data) != proto.BlockSize || crc32.Checksum(rep.Data, castagnoli) != want.CRC {
			s.spliceFromAny(target, w, bad, cands[1:], why, done)
			return
		}
		off := (bad - w.BlockIndex) * proto.BlockSize
		copy(w.Data[off:off+proto.BlockSize], rep.Data)
		s.e.counters.RepairedBlocks++
		s.e.send(target, w, func(rep proto.Reply) {
			if s.aborted {
				return
			}
			switch rep.Status {
			case proto.StatusOK:
				if w.Data != nil {
					s.e.ready.Free = append(s.e.ready.Free, w.Data)
				}
				done("")
			case proto.StatusCorrupt:
				if rep.BlockIndex <= bad {
					done(why) // blocks are checked in order: no progress
					return
				}
				// Another rotted block further in the same run.
				s.spliceFromAny(target, w, rep.BlockIndex, s.spliceCandidates(""), why, done)
			default:
				done(fmt.Sprintf("write layer %q of %s: %v %s", s.layer, target, rep.Status, rep.Err))
			}
		})
	})
}
