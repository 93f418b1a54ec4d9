package replica

import (
	"reflect"
	"testing"

	"github.com/drover-io/drover/core/proto"
	"pgregory.net/rapid"
)

// TestListedStatesMatchesBlockByBlock: listedStates equals, block by
// block over [lo, hi), the index's last entry for the block with the
// unflushed (dirty) one over it, absent blocks left out.
func TestListedStatesMatchesBlockByBlock(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		state := func(label string) *rapid.Generator[proto.BlockState] {
			return rapid.Custom(func(rt *rapid.T) proto.BlockState {
				return proto.BlockState{BlockIndex: rapid.Uint64Range(0, 30).Draw(rt, label+" block"),
					Kind: proto.BlockKind(rapid.IntRange(0, 2).Draw(rt, label+" kind")), CRC: rapid.Uint32Range(0, 3).Draw(rt, label+" crc")}
			})
		}
		entries := rapid.SliceOf(state("entry")).Draw(rt, "entries")
		if rapid.Bool().Draw(rt, "in order") { // as a store lists them
			entries = nil
			for b := uint64(0); b < 30; b++ {
				if rapid.Bool().Draw(rt, "listed") {
					entries = append(entries, proto.BlockState{BlockIndex: b, Kind: proto.BlockKind(rapid.IntRange(0, 2).Draw(rt, "kind")), CRC: uint32(b)})
				}
			}
		}
		dirty := map[uint64]proto.BlockState{}
		for _, e := range rapid.SliceOf(state("dirty")).Draw(rt, "dirty") {
			dirty[e.BlockIndex] = e
		}
		lo := rapid.Uint64Range(0, 30).Draw(rt, "lo")
		hi := rapid.Uint64Range(lo, 31).Draw(rt, "hi")

		last := map[uint64]proto.BlockState{}
		for _, e := range entries {
			last[e.BlockIndex] = e
		}
		var want []proto.BlockState
		for b := lo; b < hi; b++ {
			e, ok := last[b]
			if d, isDirty := dirty[b]; isDirty {
				e, ok = d, true
			}
			if ok && e.Kind != proto.BlockAbsent {
				want = append(want, e)
			}
		}
		got := listedStates(entries, dirty, lo, hi)
		if len(got) == 0 && len(want) == 0 {
			return
		}
		if !reflect.DeepEqual(got, want) {
			rt.Fatalf("[%d,%d):\n got %v\nwant %v", lo, hi, got, want)
		}
	})
}
