package engine_test

import (
	"bytes"
	"testing"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
)

// TestEngineWriteDataHeld checks Reply.DataHeld, which tells a driver
// whether it may reuse a write's buffer: not while a replica that left
// the set may still be reading it.
func TestEngineWriteDataHeld(t *testing.T) {
	c := newCluster(t, 3, 64*proto.BlockSize, engine.Config{Volume: "v", RebuildAfterTicks: -1})
	r := c.submit(engine.Request{Op: proto.OpWrite, BlockIndex: 1, BlockCount: 1, Data: block(1)})
	if r.Err != nil || r.DataHeld {
		t.Fatalf("write answered by every replica: err %v, DataHeld %v", r.Err, r.DataHeld)
	}
	c.SetDown("r2", true)
	r = c.submit(engine.Request{Op: proto.OpWrite, BlockIndex: 2, BlockCount: 1, Data: block(2)})
	if r.Err != nil || !r.DataHeld {
		t.Fatalf("write r2 never answered: err %v, DataHeld %v, want held", r.Err, r.DataHeld)
	}
	// r2 is out of the set now: later writes do not go to it.
	r = c.submit(engine.Request{Op: proto.OpWrite, BlockIndex: 3, BlockCount: 1, Data: block(3)})
	if r.Err != nil || r.DataHeld {
		t.Fatalf("write to the two left: err %v, DataHeld %v", r.Err, r.DataHeld)
	}
	for i := range 4 { // reused requests keep nothing of the old ones
		c.expect(uint64(1+i%3), uint64(1+i%3))
	}
}

// TestEngineReadRepairOwnsItsData checks that a read repair writes a copy
// of the good data: the read's reply Data is the caller's, who may reuse
// it (scribble on it here) while the repair is still in flight.
func TestEngineReadRepairOwnsItsData(t *testing.T) {
	c := newCluster(t, 3, 64*proto.BlockSize, engine.Config{Volume: "v"})
	c.write(5, 5)
	c.submit(engine.Request{Op: proto.OpFlush})
	for _, id := range []proto.ReplicaID{"r1", "r2"} {
		if !c.CorruptBlock(id, 5, 77) {
			t.Fatalf("%s holds no block 5", id)
		}
	}
	// Reads go round robin: the first that is not repaired by an earlier
	// one finds a corrupt copy, reads the good one, and repairs.
	for range 3 {
		r := c.submit(engine.Request{Op: proto.OpRead, BlockIndex: 5, BlockCount: 1})
		if r.Err != nil || !bytes.Equal(r.Data, block(5)) {
			t.Fatalf("read: err %v, data ok %v", r.Err, bytes.Equal(r.Data, block(5)))
		}
		for i := range r.Data {
			r.Data[i] = 0xee
		}
	}
	c.settle()
	for _, id := range []proto.ReplicaID{"r1", "r2", "r3"} {
		rep := c.Direct(id, proto.Request{Op: proto.OpRead, BlockIndex: 5, BlockCount: 1})
		if rep.Status != proto.StatusOK || !bytes.Equal(rep.Data, block(5)) {
			t.Fatalf("%s after repair: %v %s, data ok %v", id, rep.Status, rep.Err, bytes.Equal(rep.Data, block(5)))
		}
	}
	// Operators see it: both corrupt copies were counted, and both repairs.
	if got := c.Engine().Info().Counters; got.CorruptBlocks != 2 || got.RepairedBlocks != 2 || got.ReplicaFailed != 0 {
		t.Fatalf("counters after two repaired blocks: %+v", got)
	}
}
