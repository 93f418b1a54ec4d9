package engine_test

import (
	"encoding/binary"
	"testing"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
)

// TestResyncRepairsARottedSource: an engine dies with a two-block write
// on r2 and r3 but not r1, whose copy of the first block then rots. The
// next open's resync takes r1 (the first current replica) as its source;
// the targets refuse its run (the rotted block fails its checksum) and
// take the run from another replica. The source must take that version
// too: otherwise r1 would keep its old, valid second block, and reads of
// it would alternate between the two versions.
func TestResyncRepairsARottedSource(t *testing.T) {
	c := newCluster(t, 3, 64*proto.BlockSize, engine.Config{Volume: "v"})
	old := append(block(1), block(1)...)
	if r := c.submit(engine.Request{Op: proto.OpWrite, BlockIndex: 0, BlockCount: 2, Data: old}); r.Err != nil {
		t.Fatal(r.Err)
	}
	if r := c.submit(engine.Request{Op: proto.OpFlush}); r.Err != nil {
		t.Fatal(r.Err)
	}
	h := c.Host()
	c.SetCut(h, "r1", true) // the new write reaches r2 and r3 only
	c.Submit(engine.Request{Op: proto.OpWrite, BlockIndex: 0, BlockCount: 2, Data: append(block(2), block(2)...)})
	for i := 0; i < 200 && c.Step(); i++ {
	}
	c.Kill(h) // before it notices r1 is gone: r1 stays RW in the membership
	if !c.CorruptBlock("r1", 0, 77) {
		t.Fatal("r1 holds no data for block 0")
	}
	c.SetCut(h, "r1", false)
	if !c.RestartEngine().Engine.Serving() {
		ph, why := c.Engine().Phase()
		t.Fatalf("engine not serving after the reopen: %s %s", ph, why)
	}
	seen := map[uint64]bool{}
	for i := 0; i < 9; i++ { // round robin over every replica, repeatedly
		r := c.submit(engine.Request{Op: proto.OpRead, BlockIndex: 1, BlockCount: 1})
		if r.Err != nil {
			t.Fatalf("read block 1: %v", r.Err)
		}
		seen[binary.LittleEndian.Uint64(r.Data)] = true
	}
	if len(seen) != 1 {
		t.Fatalf("block 1 reads as %v: the replicas disagree after the resync", seen)
	}
}
