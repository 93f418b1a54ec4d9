package memstore

import (
	"bytes"
	"testing"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
	"pgregory.net/rapid"
)

// TestCrashKeepsSyncedAndChosen checks the store contract against a
// per-block reference: synced data and index entries survive a crash,
// an unsynced change survives exactly when keep says so, and reads
// always return the current state.
func TestCrashKeepsSyncedAndChosen(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		const blocks = 6
		s := New()
		s.Execute(store.IO{Kind: store.CreateLayer, Layer: 1})
		var cur, dur [blocks]byte                  // data: fill byte, 0 = hole
		var curIdx, durIdx [blocks]proto.BlockKind // index kind
		var dirtyD, dirtyI [blocks]bool
		for step := rapid.IntRange(1, 40).Draw(t, "steps"); step > 0; step-- {
			b := rapid.Uint64Range(0, blocks-1).Draw(t, "block")
			switch rapid.IntRange(0, 6).Draw(t, "op") {
			case 0:
				v := rapid.ByteRange(1, 255).Draw(t, "v")
				s.Execute(store.IO{Kind: store.WriteData, Layer: 1, BlockIndex: b, Data: bytes.Repeat([]byte{v}, proto.BlockSize)})
				cur[b], dirtyD[b] = v, true
			case 1:
				s.Execute(store.IO{Kind: store.PunchHole, Layer: 1, BlockIndex: b, BlockCount: 1})
				cur[b], dirtyD[b] = 0, true
			case 2:
				s.Execute(store.IO{Kind: store.SyncData, Layer: 1})
				dur, dirtyD = cur, [blocks]bool{}
			case 3:
				k := proto.BlockKind(rapid.IntRange(0, 2).Draw(t, "kind"))
				s.Execute(store.IO{Kind: store.WriteIndex, Layer: 1, Entries: []proto.BlockState{{BlockIndex: b, Kind: k}}})
				curIdx[b], dirtyI[b] = k, true
			case 4:
				s.Execute(store.IO{Kind: store.SyncIndex, Layer: 1})
				durIdx, dirtyI = curIdx, [blocks]bool{}
			case 5:
				keepD := rapid.SliceOfN(rapid.Bool(), blocks, blocks).Draw(t, "keepData")
				keepI := rapid.SliceOfN(rapid.Bool(), blocks, blocks).Draw(t, "keepIndex")
				s.Crash(func(l store.LayerID, blk uint64, isIndex bool) bool {
					if blk >= blocks {
						return false
					}
					if isIndex {
						return keepI[blk]
					}
					return keepD[blk]
				})
				for i := range blocks {
					if dirtyD[i] && keepD[i] {
						dur[i] = cur[i]
					}
					if dirtyI[i] && keepI[i] {
						durIdx[i] = curIdx[i]
					}
				}
				cur, curIdx, dirtyD, dirtyI = dur, durIdx, [blocks]bool{}, [blocks]bool{}
			case 6:
				if c := s.Execute(store.IO{Kind: store.WriteMeta, Meta: []byte{byte(b)}}); c.Err != store.OK {
					t.Fatalf("write meta: %v", c.Err)
				}
			}
			c := s.Execute(store.IO{Kind: store.ReadData, Layer: 1, BlockCount: blocks})
			for i := range blocks {
				if got := c.Data[i*proto.BlockSize]; got != cur[i] || c.Entries[i].Kind != curIdx[i] {
					t.Fatalf("block %d: data %d kind %d, want %d kind %d", i, got, c.Entries[i].Kind, cur[i], curIdx[i])
				}
			}
			ri := s.Execute(store.IO{Kind: store.ReadIndex, Layer: 1, BlockCount: blocks})
			n := 0
			for i := range blocks {
				if curIdx[i] != proto.BlockAbsent {
					n++
				}
			}
			if len(ri.Entries) != n {
				t.Fatalf("read index: %d entries, want %d", len(ri.Entries), n)
			}
		}
	})
}

func TestMissingLayerAndMeta(t *testing.T) {
	s := New()
	if c := s.Execute(store.IO{Kind: store.ReadMeta}); c.Err != store.OK || c.Meta != nil {
		t.Fatalf("fresh meta: %v %v", c.Err, c.Meta)
	}
	s.Execute(store.IO{Kind: store.WriteMeta, Meta: []byte("x")})
	s.Crash(func(store.LayerID, uint64, bool) bool { return false })
	if c := s.Execute(store.IO{Kind: store.ReadMeta}); string(c.Meta) != "x" {
		t.Fatal("meta lost in a crash")
	}
	if c := s.Execute(store.IO{Kind: store.ReadData, Layer: 9, BlockCount: 1}); c.Err != store.ErrMissing {
		t.Fatalf("missing layer: %v", c.Err)
	}
}
