package replica_test

import (
	"slices"
	"testing"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
)

// mergeScenario builds a chain whose snapshot "a" holds 600 blocks (more
// than one merge batch), with a child that overwrote some of them and, on
// even seeds, a snapshot "b" between "a" and the head. The head has
// unflushed writes and trims when the test starts.
func mergeScenario(t *testing.T, seed uint64) *harness {
	h := newHarness(t, 700, replica.Config{ID: "r1", MaxActiveRegions: 2}, seed)
	for b := uint64(0); b < 600; b += 4 {
		h.send(proto.Request{Op: proto.OpWrite, BlockIndex: b, BlockCount: 4, Data: h.data(b, 4)})
	}
	h.d.Run()
	h.settle()
	mustOK(t, "snapshot a", h.do(proto.Request{Op: proto.OpSnapshot, Name: "a"}))
	mustDo(t, h.m.Snapshot("a"))
	layers := 1
	if seed%2 == 0 {
		layers = 2
	}
	for l := 0; l < layers; l++ {
		for i := 0; i < 40; i++ {
			b, n := h.rng.Uint64N(690), uint32(1+h.rng.IntN(4))
			r := proto.Request{Op: proto.OpWrite, BlockIndex: b, BlockCount: n, Data: h.data(b, n)}
			if i%7 == 0 {
				r = proto.Request{Op: proto.OpTrim, BlockIndex: b, BlockCount: n}
			}
			h.send(r)
		}
		h.d.Run()
		h.settle()
		if l == 0 && layers == 2 {
			mustOK(t, "snapshot b", h.do(proto.Request{Op: proto.OpSnapshot, Name: "b"}))
			mustDo(t, h.m.Snapshot("b"))
		}
	}
	return h
}

func mustDo(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestDeleteSnapshotCrashAtEveryStep crashes a snapshot delete after every
// prefix of its IOs (a few seeds, random completion order and random
// survival of unsynced changes): after reopening, the chain still has
// the snapshot or has lost it, the data is what the crash oracle allows,
// and finishing the delete leaves data, chain and changed extents equal
// to the model's.
func TestDeleteSnapshotCrashAtEveryStep(t *testing.T) {
	for seed := uint64(1); seed <= 4; seed++ {
		for k := 0; ; k++ {
			h := mergeScenario(t, seed)
			del := h.req(proto.Request{Op: proto.OpDeleteSnapshot, Name: "a"})
			h.d.Send(del)
			for i := 0; i < k && h.d.Step(); i++ {
			}
			finished := h.d.Pending() == 0
			for _, rep := range h.d.Replies() {
				if rep.ID != del.ID || rep.Status != proto.StatusOK {
					t.Fatalf("seed %d step %d: reply %d %v %s", seed, k, rep.ID, rep.Status, rep.Err)
				}
			}
			h.crash()
			if slices.Contains(h.d.Replica.Info().Chain, "a") {
				if finished {
					t.Fatalf("seed %d: delete acknowledged, snapshot back after crash", seed)
				}
				mustOK(t, "delete again", h.do(proto.Request{Op: proto.OpDeleteSnapshot, Name: "a"}))
			}
			mustDo(t, h.m.DeleteSnapshot("a"))
			if got, want := h.d.Replica.Info().Chain, h.m.Snapshots(); !slices.Equal(got, want) {
				t.Fatalf("seed %d step %d: chain %q, model %q", seed, k, got, want)
			}
			h.verify()
			checkChanged(t, h, seed, k)
			if slices.Contains(h.m.Snapshots(), "b") {
				mustOK(t, "revert b", h.do(proto.Request{Op: proto.OpRevert, Name: "b"}))
				mustDo(t, h.m.Revert("b"))
				h.verify()
			}
			if finished {
				t.Logf("seed %d: delete takes %d IOs; crashed after each prefix", seed, k)
				break
			}
		}
	}
}

// checkChanged compares changed extents of every pair of chain points
// with the model; with no crash-lost writes here they must be equal
// except blocks that read the same at both ends.
func checkChanged(t *testing.T, h *harness, seed uint64, k int) {
	chain := append([]string{""}, h.m.Snapshots()...)
	for i, from := range chain {
		for _, to := range chain[i+1:] {
			rep := mustOK(t, "changed extents", h.do(proto.Request{Op: proto.OpChangedExtents, Name: from, Name2: to}))
			want, _ := h.m.ChangedBlocks(from, to)
			got := map[uint64]bool{}
			for _, e := range rep.Extents {
				for b := e.BlockIndex; b < e.BlockIndex+e.BlockCount; b++ {
					got[b] = true
				}
			}
			for _, b := range want {
				if !got[b] {
					before := make([]byte, proto.BlockSize)
					if from != "" {
						before, _ = h.m.ReadSnapshot(from, b, 1)
					}
					after, _ := h.m.ReadSnapshot(to, b, 1)
					if string(before) != string(after) {
						t.Fatalf("seed %d step %d: %q..%q misses changed block %d", seed, k, from, to, b)
					}
				}
				delete(got, b)
			}
			if len(got) > 0 {
				t.Fatalf("seed %d step %d: %q..%q reports %d blocks the model never touched", seed, k, from, to, len(got))
			}
		}
	}
}
