package replica_test

import (
	"bytes"
	"testing"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/core/store"
)

// TestSetChainRetiresLayers: a rebuild's chain change keeps the layers it
// takes out of the chain as retired (readable through RetiredName, across
// a restart) until the replica is RW in a recorded membership.
func TestSetChainRetiresLayers(t *testing.T) {
	h := newHarness(t, 16, replica.Config{ID: "r1", MaxActiveRegions: 64}, 1)
	old := h.data(3, 1)
	for _, r := range []proto.Request{
		{Op: proto.OpWrite, BlockIndex: 3, BlockCount: 1, Data: old},
		{Op: proto.OpFlush},
		{Op: proto.OpSnapshot, Name: "old"},
	} {
		if rep := h.do(r); rep.Status != proto.StatusOK {
			t.Fatalf("%v: %v %s", r.Op, rep.Status, rep.Err)
		}
	}
	if rep := h.do(proto.Request{Op: proto.OpSnapRead, Name: proto.RetiredName(0), BlockIndex: 3, BlockCount: 1}); rep.Status != proto.StatusNotFound {
		t.Fatalf("read of a retired layer before any: %v, want not found", rep.Status)
	}
	if rep := h.do(proto.Request{Op: proto.OpSetChain, Chain: []string{"new"}}); rep.Status != proto.StatusOK {
		t.Fatalf("set chain: %v %s", rep.Status, rep.Err)
	}
	if rep := h.do(proto.Request{Op: proto.OpSnapRead, Name: "old", BlockIndex: 3, BlockCount: 1}); rep.Status != proto.StatusNotFound {
		t.Fatalf("snapshot old after the chain change: %v, want not found", rep.Status)
	}
	readRetired := func(when string) {
		t.Helper()
		rep := h.do(proto.Request{Op: proto.OpSnapRead, Name: proto.RetiredName(0), BlockIndex: 3, BlockCount: 1})
		if rep.Status != proto.StatusOK || !bytes.Equal(rep.Data, old) {
			t.Fatalf("%s: retired read: %v %s, data equal %v", when, rep.Status, rep.Err, bytes.Equal(rep.Data, old))
		}
		if rep := h.do(proto.Request{Op: proto.OpSnapRead, Name: proto.RetiredName(0), BlockIndex: 4, BlockCount: 1}); rep.Status != proto.StatusNotFound {
			t.Fatalf("%s: retired read of a block it does not hold: %v, want not found", when, rep.Status)
		}
	}
	readRetired("after the chain change")
	h.d.Crash(func(store.LayerID, uint64, bool) bool { return true })
	if rep := h.do(proto.Request{Op: proto.OpOpen}); rep.Status != proto.StatusOK {
		t.Fatalf("open after restart: %v %s", rep.Status, rep.Err)
	}
	readRetired("after a restart")

	// WO in a membership: still kept. RW: dropped.
	for i, mode := range []proto.MemberMode{proto.ModeWO, proto.ModeRW} {
		ms := &proto.Membership{Gen: uint64(i) + 1, Members: []proto.Member{{ID: "r1", Mode: mode}, {ID: "r2", Mode: proto.ModeRW}}}
		if rep := h.do(proto.Request{Op: proto.OpSetMembership, Membership: ms}); rep.Status != proto.StatusOK {
			t.Fatalf("set membership: %v %s", rep.Status, rep.Err)
		}
		if mode == proto.ModeWO {
			readRetired("WO in a membership")
		}
	}
	if rep := h.do(proto.Request{Op: proto.OpSnapRead, Name: proto.RetiredName(0), BlockIndex: 3, BlockCount: 1}); rep.Status != proto.StatusNotFound {
		t.Fatalf("retired read once RW: %v, want not found", rep.Status)
	}
	if rep := h.do(proto.Request{Op: proto.OpSetChain, Chain: []string{proto.RetiredName(1)}}); rep.Status != proto.StatusInvalid {
		t.Fatalf("set chain naming a retired layer: %v, want invalid", rep.Status)
	}
}
