package engine

import (
	"reflect"
	"testing"

	"github.com/drover-io/drover/core/proto"
	"pgregory.net/rapid"
)

// TestDiffRunsMatchesBlockByBlock: diffRuns over two listings (in any
// order, a block listed more than once keeping its last state) equals a
// block-by-block comparison of the window: a block differs when one side
// lists it and the other does not, or both do with different states; runs
// join consecutive differing blocks up to the run length.
func TestDiffRunsMatchesBlockByBlock(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		const blocks = 700 // more than two runs' worth
		// Sparse listings crowd into a few blocks, so both sides list
		// the same blocks often.
		state := rapid.Custom(func(rt *rapid.T) proto.BlockState {
			return proto.BlockState{BlockIndex: rapid.Uint64Range(0, 40).Draw(rt, "block"),
				Kind: proto.BlockKind(rapid.IntRange(0, 2).Draw(rt, "kind")), CRC: rapid.Uint32Range(0, 2).Draw(rt, "crc")}
		})
		src := rapid.SliceOf(state).Draw(rt, "src")
		dst := rapid.SliceOf(state).Draw(rt, "dst")
		if rapid.Bool().Draw(rt, "dense") { // long equal and differing stretches
			src, dst = nil, nil
			for b := uint64(0); b < blocks; b++ {
				s := proto.BlockState{BlockIndex: b, Kind: proto.BlockData, CRC: uint32(b / 100)}
				src = append(src, s)
				if b%150 < 120 {
					s.CRC++
				}
				dst = append(dst, s)
			}
		}
		lo := rapid.Uint64Range(0, 20).Draw(rt, "lo")
		x := proto.Extent{BlockIndex: lo, BlockCount: rapid.Uint64Range(1, blocks-lo).Draw(rt, "count")}
		runBlocks := rapid.SampledFrom([]uint64{1, 3, rebuildRunBlocks}).Draw(rt, "run blocks")

		bySrc, byDst := map[uint64]proto.BlockState{}, map[uint64]proto.BlockState{}
		for _, s := range src {
			bySrc[s.BlockIndex] = s
		}
		for _, s := range dst {
			byDst[s.BlockIndex] = s
		}
		var want []proto.Extent
		for b := x.BlockIndex; b < x.BlockIndex+x.BlockCount; b++ {
			s, inSrc := bySrc[b]
			d, inDst := byDst[b]
			if inSrc == inDst && s == d {
				continue
			}
			if n := len(want); n > 0 && want[n-1].BlockIndex+want[n-1].BlockCount == b && want[n-1].BlockCount < runBlocks {
				want[n-1].BlockCount++
				continue
			}
			want = append(want, proto.Extent{BlockIndex: b, BlockCount: 1})
		}
		got := diffRuns(x, sortedStates(src), sortedStates(dst), runBlocks)
		if !reflect.DeepEqual(got, want) {
			rt.Fatalf("runs in %+v:\n got %v\nwant %v", x, got, want)
		}
	})
}
