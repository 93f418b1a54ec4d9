package replica_test

import (
	"testing"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"pgregory.net/rapid"
)

// TestSnapReadMatchesModel interleaves writes, trims, snapshots, deletes,
// reverts and expansions with OpSnapRead of random snapshots (and of the
// head), several in flight beside writes with IOs completed in random
// order: every snap-read must return what model.ReadSnapshot showed when it
// was sent, and a missing snapshot must be StatusNotFound.
func TestSnapReadMatchesModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		sizeBlocks := rapid.Uint64Range(16, 200).Draw(t, "sizeBlocks")
		h := newHarness(t, sizeBlocks, replica.Config{ID: "r1", MaxActiveRegions: 64}, rapid.Uint64().Draw(t, "seed"))
		for step := rapid.IntRange(1, 30).Draw(t, "steps"); step > 0; step-- {
			if rapid.IntRange(0, 2).Draw(t, "kind") == 0 {
				control(t, h)
				continue
			}
			snapBatch(t, h)
		}
		for _, name := range append([]string{""}, names...) {
			checkWholeSnapshot(t, h, name)
		}
	})
}

// snapBatch sends writes, trims and snap-reads together, then runs them.
func snapBatch(t *rapid.T, h *harness) {
	for n := rapid.IntRange(1, 6).Draw(t, "batch"); n > 0; n-- {
		b, c := genRange(t, h)
		switch rapid.IntRange(0, 4).Draw(t, "op") {
		case 0, 1:
			h.send(proto.Request{Op: proto.OpWrite, BlockIndex: b, BlockCount: c, Data: h.data(b, c)})
		case 2:
			h.send(proto.Request{Op: proto.OpTrim, BlockIndex: b, BlockCount: c})
		default:
			name := rapid.SampledFrom(append([]string{""}, names...)).Draw(t, "snap")
			want, err := h.m.ReadSnapshot(name, b, c)
			if err != nil {
				rep := h.do(proto.Request{Op: proto.OpSnapRead, Name: name, BlockIndex: b, BlockCount: c})
				if rep.Status != proto.StatusNotFound {
					t.Fatalf("snap-read of missing %q: %v %s, want not found", name, rep.Status, rep.Err)
				}
				continue
			}
			r := h.req(proto.Request{Op: proto.OpSnapRead, Name: name, BlockIndex: b, BlockCount: c})
			h.sent[r.ID] = &sentOp{req: r, want: want}
			h.d.Send(r)
		}
	}
	h.d.Run()
	h.settle()
}

// checkWholeSnapshot reads a whole snapshot (when it exists) in one go.
func checkWholeSnapshot(t *rapid.T, h *harness, name string) {
	size := uint32(h.sizeBlocks())
	want, err := h.m.ReadSnapshot(name, 0, size)
	rep := h.do(proto.Request{Op: proto.OpSnapRead, Name: name, BlockIndex: 0, BlockCount: size})
	if err != nil {
		if rep.Status != proto.StatusNotFound {
			t.Fatalf("snap-read of missing %q: %v", name, rep.Status)
		}
		return
	}
	if rep.Status != proto.StatusOK {
		t.Fatalf("snap-read %q: %v %s", name, rep.Status, rep.Err)
	}
	h.checkRead(0, rep.Data, want)
}

// TestSnapReadBadRange: ranges beyond the volume or too long are invalid.
func TestSnapReadBadRange(t *testing.T) {
	h := newHarness(t, 64, replica.Config{ID: "r1", MaxActiveRegions: 64}, 1)
	if rep := h.do(proto.Request{Op: proto.OpSnapshot, Name: "s"}); rep.Status != proto.StatusOK {
		t.Fatalf("snapshot: %v", rep.Status)
	}
	for _, r := range []proto.Request{{BlockIndex: 60, BlockCount: 8}, {BlockIndex: 0, BlockCount: 0}, {BlockIndex: 64, BlockCount: 1}} {
		r.Op, r.Name = proto.OpSnapRead, "s"
		if rep := h.do(r); rep.Status != proto.StatusInvalid {
			t.Fatalf("snap-read [%d,+%d): %v, want invalid", r.BlockIndex, r.BlockCount, rep.Status)
		}
	}
}
