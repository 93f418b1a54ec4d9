package engine_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/drover-io/drover/core/engine"
	"pgregory.net/rapid"
)

// TestReadSnapshotMatchesModel runs frontend IO batches and admin changes
// on 1–5 replicas and, beside each batch, AdminReadSnapshot of random
// snapshots (and the head) submitted while the batch's writes are in
// flight: each must return what model.ReadSnapshot showed when it was
// submitted. The last batch corrupts a block on one replica first: a read
// covering it must fail over to another (with one replica, fail ErrIO).
func TestReadSnapshotMatchesModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		h := newMH(t, 1, engine.Config{Volume: "v"})
		for step := rapid.IntRange(1, 20).Draw(t, "steps"); step > 0; step-- {
			if rapid.IntRange(0, 3).Draw(t, "kind") == 0 {
				h.genAdmin()
				continue
			}
			h.snapReadBatch(false)
		}
		// Last, with a block corrupt on one replica (nothing runs after
		// it, so later steps need not care about the damage).
		h.snapReadBatch(true)
	})
}

type snapPend struct {
	id       uint64
	name     string
	b        uint64
	n        uint32
	want     []byte
	corrupt  bool // a block of the range is corrupt on one replica
	notFound bool
}

func (h *mh) snapReadBatch(corrupt bool) {
	corruptAt := -1
	if corrupt {
		corruptAt = rapid.IntRange(0, int(h.sizeBlocks())-1).Draw(h.t, "corruptBlock")
		victim := rapid.SampledFrom(h.c.Order).Draw(h.t, "victim")
		if !h.c.CorruptBlock(victim, uint64(corruptAt), uint(rapid.IntRange(0, 4095*8).Draw(h.t, "bit"))) {
			corruptAt = -1 // no layer holds data there
		}
	}
	var sps []*snapPend
	for i := rapid.IntRange(1, 3).Draw(h.t, "reads"); i > 0; i-- {
		names := append([]string{"missing"}, h.m.Snapshots()...)
		sp := &snapPend{name: rapid.SampledFrom(names).Draw(h.t, "snap")}
		sp.b, sp.n = h.genRange()
		want, err := h.m.ReadSnapshot(sp.name, sp.b, sp.n)
		sp.want, sp.notFound = want, err != nil
		sp.corrupt = corruptAt >= 0 && uint64(corruptAt) >= sp.b && uint64(corruptAt) < sp.b+uint64(sp.n)
		sp.id = h.c.SubmitAdmin(engine.AdminRequest{Op: engine.AdminReadSnapshot, Name: sp.name, BlockIndex: sp.b, BlockCount: sp.n})
		sps = append(sps, sp)
	}
	ps := h.genBatch()
	h.waitAll(ps)
	host := h.c.Host()
	if !h.c.RunUntil(func() bool {
		for _, sp := range sps {
			if _, ok := host.AdminReplies[sp.id]; !ok {
				return false
			}
		}
		return true
	}, maxTicks) {
		h.t.Fatalf("snapshot reads not answered")
	}
	var allow func(error) bool
	if corrupt && h.n == 1 {
		allow = func(err error) bool { return errors.Is(err, engine.ErrIO) }
	}
	h.check(ps, allow)
	for _, sp := range sps {
		r := host.AdminReplies[sp.id]
		switch {
		case sp.notFound:
			if !errors.Is(r.Err, engine.ErrNotFound) {
				h.t.Fatalf("read of missing snapshot %q: %v", sp.name, r.Err)
			}
		case r.Err != nil:
			// Only a corrupt block on the sole replica may fail it.
			if !sp.corrupt || h.n > 1 || !errors.Is(r.Err, engine.ErrIO) {
				h.t.Fatalf("read snapshot %q [%d,+%d): %v", sp.name, sp.b, sp.n, r.Err)
			}
		case !bytes.Equal(r.Data, sp.want):
			h.t.Fatalf("read snapshot %q [%d,+%d): %s", sp.name, sp.b, sp.n, diffBlocks(sp.b, r.Data, sp.want))
		}
	}
}

// TestReadSnapshotBadRequests: bad ranges are ErrInvalid.
func TestReadSnapshotBadRequests(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		h := newMH(t, 1, engine.Config{Volume: "v"})
		if rep := h.admin(engine.AdminRequest{Op: engine.AdminSnapshot, Name: "s"}); rep.Err != nil {
			t.Fatalf("snapshot: %v", rep.Err)
		}
		size := h.sizeBlocks()
		for _, r := range []engine.AdminRequest{{BlockIndex: 0, BlockCount: 0}, {BlockIndex: size, BlockCount: 1},
			{BlockIndex: 0, BlockCount: 1025}, {Name: "", BlockIndex: 0, BlockCount: 1}} {
			if r.BlockCount != 1 || r.BlockIndex != 0 {
				r.Name = "s"
			}
			r.Op = engine.AdminReadSnapshot
			if rep := h.admin(r); !errors.Is(rep.Err, engine.ErrInvalid) {
				t.Fatalf("read snapshot [%d,+%d): %v, want ErrInvalid", r.BlockIndex, r.BlockCount, rep.Err)
			}
		}
	})
}
