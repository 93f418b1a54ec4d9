package engine

import (
	"fmt"
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
	extents  []proto.Extent // each at most rebuildWindow blocks
	skipLast bool           // planted bug: drop the final run
	aborted  bool

	// Progress, for reporting.
	blocksScanned uint64
	bytesCopied   uint64
}

func (s *layerSync) run(done func(err string)) {
	if s.aborted {
		return
	}
	if len(s.extents) == 0 || len(s.targets) == 0 {
		done("")
		return
	}
	x := s.extents[0]
	s.extents = s.extents[1:]
	states := map[proto.ReplicaID]map[uint64]proto.BlockState{}
	left := 1 + len(s.targets)
	failed := ""
	for _, id := range append([]proto.ReplicaID{s.source}, s.targets...) {
		req := proto.Request{Op: proto.OpLayerBlocks, Name: s.layer, BlockIndex: x.BlockIndex, BlockCount: uint32(x.BlockCount)}
		s.e.send(id, req, func(rep proto.Reply) {
			if s.aborted {
				return
			}
			left--
			if rep.Status != proto.StatusOK {
				failed = fmt.Sprintf("list blocks of %s layer %q: %v %s", id, s.layer, rep.Status, rep.Err)
			} else {
				m := map[uint64]proto.BlockState{}
				for _, b := range rep.Blocks {
					m[b.BlockIndex] = b
				}
				states[id] = m
			}
			if left > 0 {
				return
			}
			if failed != "" {
				done(failed)
				return
			}
			s.blocksScanned += x.BlockCount
			s.copyDiffs(x, states, 0, done)
		})
	}
}

// diffRuns returns the runs of blocks in x where target differs from src.
func diffRuns(x proto.Extent, src, dst map[uint64]proto.BlockState) []proto.Extent {
	var runs []proto.Extent
	check := func(b uint64) {
		if src[b] == dst[b] {
			return
		}
		if n := len(runs); n > 0 && runs[n-1].BlockIndex+runs[n-1].BlockCount == b && runs[n-1].BlockCount < rebuildRunBlocks {
			runs[n-1].BlockCount++
			return
		}
		runs = append(runs, proto.Extent{BlockIndex: b, BlockCount: 1})
	}
	seen := map[uint64]bool{}
	var blocks []uint64
	for b := range src {
		seen[b] = true
		blocks = append(blocks, b)
	}
	for b := range dst {
		if !seen[b] {
			blocks = append(blocks, b)
		}
	}
	sortU64(blocks)
	for _, b := range blocks {
		if b >= x.BlockIndex && b < x.BlockIndex+x.BlockCount {
			check(b)
		}
	}
	return runs
}

func sortU64(a []uint64) { sort.Slice(a, func(i, j int) bool { return a[i] < a[j] }) }

// copyDiffs copies the differing runs to target i, then to the next.
func (s *layerSync) copyDiffs(x proto.Extent, states map[proto.ReplicaID]map[uint64]proto.BlockState, i int, done func(string)) {
	if i == len(s.targets) {
		s.run(done)
		return
	}
	id := s.targets[i]
	runs := diffRuns(x, states[s.source], states[id])
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
	if len(runs) == 0 {
		done("")
		return
	}
	s.copyRunFrom(target, runs, s.source, map[proto.ReplicaID]bool{}, done)
}

// copyRunFrom copies runs[0] from src to target. When src holds a corrupt
// block in that run, another RW replica that is neither the target nor
// tried yet serves it instead (its copy is checked the same way).
func (s *layerSync) copyRunFrom(target proto.ReplicaID, runs []proto.Extent, src proto.ReplicaID, tried map[proto.ReplicaID]bool, done func(string)) {
	run := runs[0]
	tried[src] = true
	req := proto.Request{Op: proto.OpLayerRead, Name: s.layer, BlockIndex: run.BlockIndex, BlockCount: uint32(run.BlockCount)}
	s.e.send(src, req, func(rep proto.Reply) {
		if s.aborted {
			return
		}
		if rep.Status == proto.StatusCorrupt {
			for _, id := range s.e.readable() {
				if id != target && !tried[id] {
					s.copyRunFrom(target, runs, id, tried, done)
					return
				}
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
			if rep.Status != proto.StatusOK {
				done(fmt.Sprintf("write layer %q of %s: %v %s", s.layer, target, rep.Status, rep.Err))
				return
			}
			s.bytesCopied += run.BlockCount * proto.BlockSize
			s.copyRuns(target, runs[1:], done)
		})
	})
}
