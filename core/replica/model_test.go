package replica_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/model"
	"pgregory.net/rapid"
)

// TestReplicaMatchesModel runs random sequences of data and control
// requests, several data requests in flight at once with IOs completed in
// random order, and requires every reply to match model.Device.
func TestReplicaMatchesModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) { runSequence(t, false) })
}

// TestReplicaCrashMatchesOracle is TestReplicaMatchesModel with crashes
// after a random prefix of IO completions, each keeping a random part of
// the unsynced changes: every block must then read as the crash oracle
// allows, never as a checksum error or garbage.
func TestReplicaCrashMatchesOracle(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) { runSequence(t, true) })
}

func runSequence(t *rapid.T, crashes bool) {
	sizeBlocks := rapid.Uint64Range(16, 300).Draw(t, "sizeBlocks")
	if rapid.IntRange(0, 9).Draw(t, "big") == 0 {
		sizeBlocks = rapid.Uint64Range(replica.RegionBlocks*2-8, replica.RegionBlocks*2+60).Draw(t, "bigSizeBlocks")
	}
	cfg := replica.Config{ID: "r1", MaxActiveRegions: rapid.SampledFrom([]int{1, 2, 64}).Draw(t, "maxActive")}
	h := newHarness(t, sizeBlocks, cfg, rapid.Uint64().Draw(t, "seed"))
	for step := rapid.IntRange(1, 25).Draw(t, "steps"); step > 0; step-- {
		switch k := rapid.IntRange(0, 9).Draw(t, "action"); {
		case k < 5:
			batch(t, h, crashes)
		case k < 9:
			control(t, h)
			if !crashes {
				checkList(t, h)
			}
		default:
			h.verify()
		}
	}
	h.verify()
}

// genRange draws a small range, sometimes straddling a region boundary.
func genRange(t *rapid.T, h *harness) (uint64, uint32) {
	size := h.sizeBlocks()
	n := rapid.Uint32Range(1, uint32(min(8, size))).Draw(t, "blockCount")
	b := rapid.Uint64Range(0, size-uint64(n)).Draw(t, "blockIndex")
	if size > replica.RegionBlocks+8 && rapid.IntRange(0, 3).Draw(t, "nearRegionEdge") == 0 {
		b = replica.RegionBlocks - uint64(rapid.Uint32Range(0, n).Draw(t, "edgeOff"))
	}
	return b, n
}

// batch sends 1..5 data requests before completing any IO, then either
// runs them all or crashes after a random number of IO completions. Some
// batches also merge windows of a snapshot (as an engine's delete does,
// beside client IO); the snapshot is then deleted, as the engine would.
func batch(t *rapid.T, h *harness, crashes bool) {
	merged := ""
	defer func() {
		if merged != "" {
			rep := h.do(proto.Request{Op: proto.OpDeleteSnapshot, Name: merged})
			expectStatus(t, "delete after merge windows", rep, h.m.DeleteSnapshot(merged))
		}
	}()
	for n := rapid.IntRange(1, 5).Draw(t, "batch"); n > 0; n-- {
		b, c := genRange(t, h)
		r := proto.Request{BlockIndex: b, BlockCount: c, FUA: rapid.IntRange(0, 4).Draw(t, "fua") == 0}
		if chain := h.m.Snapshots(); len(chain) > 0 && rapid.IntRange(0, 9).Draw(t, "merge") == 0 {
			// A merge window runs beside data requests and changes no view.
			b, c := genRange(t, h)
			if merged == "" {
				merged = rapid.SampledFrom(chain).Draw(t, "mergeName")
			}
			h.send(proto.Request{Op: proto.OpMergeSnapshot, Name: merged, BlockIndex: b, BlockCount: c})
			continue
		}
		switch rapid.IntRange(0, 9).Draw(t, "op") {
		case 0, 1, 2, 3:
			r.Op, r.Data = proto.OpWrite, h.data(b, c)
		case 4, 5:
			r.Op, r.FUA = proto.OpRead, false
		case 6:
			r.Op = proto.OpTrim
		case 7:
			r.Op = proto.OpWriteZeroes
		default:
			r = proto.Request{Op: proto.OpFlush}
		}
		h.send(r)
	}
	if !crashes || rapid.IntRange(0, 2).Draw(t, "crash") != 0 {
		h.d.Run()
		h.settle()
		return
	}
	for k := rapid.IntRange(0, 40).Draw(t, "stepsBeforeCrash"); k > 0 && h.d.Step(); k-- {
	}
	h.crash()
}

var names = []string{"s0", "s1", "s2", "s3"}

// control runs one control request alone and applies it to the model
// when it succeeds.
func control(t *rapid.T, h *harness) {
	name := rapid.SampledFrom(names).Draw(t, "name")
	switch rapid.IntRange(0, 6).Draw(t, "control") {
	case 0, 1:
		rep := h.do(proto.Request{Op: proto.OpSnapshot, Name: name})
		expectStatus(t, "snapshot", rep, h.m.Snapshot(name))
	case 2:
		rep := h.do(proto.Request{Op: proto.OpDeleteSnapshot, Name: name})
		expectStatus(t, "delete", rep, h.m.DeleteSnapshot(name))
	case 3:
		rep := h.do(proto.Request{Op: proto.OpRevert, Name: name})
		expectStatus(t, "revert", rep, h.m.Revert(name))
	case 4:
		size := h.m.SizeBytes() + proto.BlockSize*rapid.Uint64Range(0, 40).Draw(t, "grow")
		rep := h.do(proto.Request{Op: proto.OpExpand, SizeBytes: size})
		expectStatus(t, "expand", rep, h.m.Expand(size))
	case 5:
		cut := rapid.Uint64Range(0, min(40, h.sizeBlocks()-1)).Draw(t, "shrink")
		size := h.m.SizeBytes() - proto.BlockSize*cut
		rep := h.do(proto.Request{Op: proto.OpShrink, SizeBytes: size})
		expectStatus(t, "shrink", rep, h.m.Shrink(size))
	default:
		chain := append([]string{""}, h.m.Snapshots()...)
		from := rapid.SampledFrom(chain).Draw(t, "from")
		to := rapid.SampledFrom(chain).Draw(t, "to")
		changedExtents(t, h, from, to)
	}
	if got, want := h.d.Replica.Info().Chain, h.m.Snapshots(); !slices.Equal(got, want) {
		t.Fatalf("chain %q, model %q", got, want)
	}
}

// checkList compares OpListSnapshots with the model: each layer holds
// exactly the blocks the model's layer touched, as data or zeros, and
// shadows the ones its child touched too. (A crash may lose unflushed
// writes the model counts as touched, so only runs without crashes.)
func checkList(t *rapid.T, h *harness) {
	rep := h.do(proto.Request{Op: proto.OpListSnapshots})
	chain := h.m.Snapshots()
	if rep.Status != proto.StatusOK || len(rep.Snapshots) != len(chain)+1 {
		t.Fatalf("list snapshots: %v %s, %d entries for chain %q", rep.Status, rep.Err, len(rep.Snapshots), chain)
	}
	touched := func(i int) map[uint64]bool {
		from, to := "", ""
		if i > 0 {
			from = chain[i-1]
		}
		if i < len(chain) {
			to = chain[i]
		}
		bs, err := h.m.ChangedBlocks(from, to)
		if err != nil {
			t.Fatalf("model changed blocks %q..%q: %v", from, to, err)
		}
		out := map[uint64]bool{}
		for _, b := range bs {
			out[b] = true
		}
		return out
	}
	for i, s := range rep.Snapshots {
		name := ""
		if i < len(chain) {
			name = chain[i]
		}
		var data, zero, shadowed uint64
		mine := touched(i)
		var child map[uint64]bool
		if i < len(chain) {
			child = touched(i + 1)
		}
		for b := range mine {
			blk, _ := h.m.ReadSnapshot(name, b, 1)
			if string(blk) == string(make([]byte, proto.BlockSize)) {
				zero++
				continue
			}
			data++
			if child[b] {
				shadowed++
			}
		}
		if s.Name != name || s.DataBlocks != data || s.ZeroBlocks != zero || s.ShadowedBlocks != shadowed {
			t.Fatalf("layer %d: replica lists %+v, model has %q data %d zero %d shadowed %d", i, s, name, data, zero, shadowed)
		}
	}
}

func expectStatus(t *rapid.T, what string, rep proto.Reply, err error) {
	want := proto.StatusOK
	switch {
	case errors.Is(err, model.ErrExists):
		want = proto.StatusExists
	case errors.Is(err, model.ErrNotFound):
		want = proto.StatusNotFound
	case err != nil:
		want = proto.StatusInvalid
	}
	if rep.Status != want {
		t.Fatalf("%s: replica says %v (%s), model says %v", what, rep.Status, rep.Err, err)
	}
}

// changedExtents compares the replica's changed extents with the model's
// touched set. The replica may leave out blocks the model counts as
// touched when they read the same at both ends (a trim of a block no
// layer held, or an unacked write a crash lost), never a block that
// changed, and never report one the model did not touch.
func changedExtents(t *rapid.T, h *harness, from, to string) {
	rep := h.do(proto.Request{Op: proto.OpChangedExtents, Name: from, Name2: to})
	want, err := h.m.ChangedBlocks(from, to)
	fromIdx, toIdx := slices.Index(h.m.Snapshots(), from), slices.Index(h.m.Snapshots(), to)
	if to == "" {
		toIdx = len(h.m.Snapshots())
	}
	if err != nil || (from != "" && fromIdx >= toIdx) {
		if rep.Status == proto.StatusOK {
			t.Fatalf("changed extents %q..%q: replica ok, model %v", from, to, err)
		}
		return
	}
	if rep.Status != proto.StatusOK {
		t.Fatalf("changed extents %q..%q: %v %s", from, to, rep.Status, rep.Err)
	}
	got := map[uint64]bool{}
	for _, e := range rep.Extents {
		for b := e.BlockIndex; b < e.BlockIndex+e.BlockCount; b++ {
			got[b] = true
		}
	}
	touched := map[uint64]bool{}
	for _, b := range want {
		touched[b] = true
		if got[b] {
			continue
		}
		var before []byte = make([]byte, proto.BlockSize)
		if from != "" {
			before, _ = h.m.ReadSnapshot(from, b, 1)
		}
		after, _ := h.m.ReadSnapshot(to, b, 1)
		if string(before) != string(after) {
			t.Fatalf("changed extents %q..%q: block %d changed but is not reported", from, to, b)
		}
	}
	for b := range got {
		if !touched[b] {
			t.Fatalf("changed extents %q..%q: block %d reported, model never touched it (%s)", from, to, b, fmt.Sprint(want))
		}
	}
}
