package replica_test

import (
	"bytes"
	"testing"

	"github.com/drover-io/drover/core/drive"
	"github.com/drover-io/drover/core/memstore"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/core/store"
	"pgregory.net/rapid"
)

func newDriver(sizeBlocks uint64) *drive.ReplicaDriver {
	return drive.New(replica.Config{ID: "r1", CreateSizeBytes: sizeBlocks * proto.BlockSize}, memstore.New(), nil)
}

func block(b byte) []byte { return bytes.Repeat([]byte{b}, proto.BlockSize) }

func mustOK(t *testing.T, what string, rep proto.Reply) proto.Reply {
	t.Helper()
	if rep.Status != proto.StatusOK {
		t.Fatalf("%s: %v %s", what, rep.Status, rep.Err)
	}
	return rep
}

// TestStaleEpochIsRefused: once fenced at a newer epoch, requests from an
// older one are answered StatusStaleEpoch (not silently dropped), a
// request from an epoch never opened does not wedge the current one, and
// the fence survives a restart.
func TestStaleEpochIsRefused(t *testing.T) {
	d := newDriver(8)
	mustOK(t, "open 1", d.Do(proto.Request{ID: 1, Epoch: 1, Op: proto.OpOpen}))
	mustOK(t, "write", d.Do(proto.Request{ID: 2, Epoch: 1, Op: proto.OpWrite, BlockCount: 1, Data: block(1)}))
	mustOK(t, "open 2", d.Do(proto.Request{ID: 1, Epoch: 2, Op: proto.OpOpen}))
	for _, op := range []proto.Op{proto.OpWrite, proto.OpRead, proto.OpFlush, proto.OpSnapshot} {
		req := proto.Request{ID: 10 + uint64(op), Epoch: 1, Op: op, BlockCount: 1, Name: "x"}
		if op == proto.OpWrite {
			req.Data = block(9)
		}
		if rep := d.Do(req); rep.Status != proto.StatusStaleEpoch {
			t.Fatalf("%v at epoch 1 after open 2: %v %s, want stale epoch", op, rep.Status, rep.Err)
		}
	}
	if rep := d.Do(proto.Request{ID: 5, Epoch: 7, Op: proto.OpWrite, BlockCount: 1, Data: block(7)}); rep.Status != proto.StatusInvalid {
		t.Fatalf("write at unopened epoch 7: %v %s, want invalid", rep.Status, rep.Err)
	}
	rep := mustOK(t, "read at epoch 2", d.Do(proto.Request{ID: 2, Epoch: 2, Op: proto.OpRead, BlockCount: 1}))
	if !bytes.Equal(rep.Data, block(1)) {
		t.Fatal("a stale write changed the data")
	}
	d.Crash(func(store.LayerID, uint64, bool) bool { return false })
	if rep := d.Do(proto.Request{ID: 100, Epoch: 1, Op: proto.OpWrite, BlockCount: 1, Data: block(9)}); rep.Status != proto.StatusStaleEpoch {
		t.Fatalf("epoch 1 after restart: %v %s, want stale epoch", rep.Status, rep.Err)
	}
	if got := d.Replica.Info().Epoch; got != 2 {
		t.Fatalf("fence after restart: epoch %d, want 2", got)
	}
}

// TestDuplicateRequestIsDropped: a resent request (same epoch and id) is
// not executed twice.
func TestDuplicateRequestIsDropped(t *testing.T) {
	d := newDriver(8)
	mustOK(t, "open", d.Do(proto.Request{ID: 1, Epoch: 1, Op: proto.OpOpen}))
	mustOK(t, "write", d.Do(proto.Request{ID: 2, Epoch: 1, Op: proto.OpWrite, BlockCount: 1, Data: block(1)}))
	mustOK(t, "write", d.Do(proto.Request{ID: 3, Epoch: 1, Op: proto.OpWrite, BlockCount: 1, Data: block(2)}))
	if rep := d.Do(proto.Request{ID: 2, Epoch: 1, Op: proto.OpWrite, BlockCount: 1, Data: block(1)}); rep.Err != "no reply" {
		t.Fatalf("duplicate answered: %v %s", rep.Status, rep.Err)
	}
	rep := mustOK(t, "read", d.Do(proto.Request{ID: 4, Epoch: 1, Op: proto.OpRead, BlockCount: 1}))
	if !bytes.Equal(rep.Data, block(2)) {
		t.Fatal("duplicate write executed")
	}
}

// TestFlushedSeqSurvivesSnapshotAndRestart: the flushed sequence reported
// after a restart is not lowered by a snapshot having started a new head.
func TestFlushedSeqSurvivesSnapshotAndRestart(t *testing.T) {
	d := newDriver(8)
	mustOK(t, "open", d.Do(proto.Request{ID: 1, Epoch: 1, Op: proto.OpOpen}))
	mustOK(t, "write", d.Do(proto.Request{ID: 2, Epoch: 1, Op: proto.OpWrite, BlockCount: 1, Data: block(1), Seq: 5}))
	mustOK(t, "flush", d.Do(proto.Request{ID: 3, Epoch: 1, Op: proto.OpFlush, Seq: 5}))
	mustOK(t, "snapshot", d.Do(proto.Request{ID: 4, Epoch: 1, Op: proto.OpSnapshot, Name: "a", Seq: 5}))
	if got := d.Replica.Info().FlushedSeq; got != 5 {
		t.Fatalf("flushed seq %d before restart, want 5", got)
	}
	d.Crash(func(store.LayerID, uint64, bool) bool { return false })
	if got := d.Replica.Info().FlushedSeq; got != 5 {
		t.Fatalf("flushed seq %d after restart, want 5", got)
	}
}

// TestCorruptBlockIsReported flips one bit of one stored block; a read
// covering it returns StatusCorrupt naming that block and no data, and a
// read not covering it succeeds.
func TestCorruptBlockIsReported(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		const size = 64
		d := newDriver(size)
		id := uint64(0)
		do := func(r proto.Request) proto.Reply {
			id++
			r.ID, r.Epoch = id, 1
			return d.Do(r)
		}
		do(proto.Request{Op: proto.OpOpen})
		written := map[uint64]bool{}
		for n := rapid.IntRange(1, 8).Draw(t, "writes"); n > 0; n-- {
			b := rapid.Uint64Range(0, size-4).Draw(t, "block")
			c := rapid.Uint32Range(1, 4).Draw(t, "count")
			data := make([]byte, int(c)*proto.BlockSize)
			for i := range data {
				data[i] = byte(i/7) ^ byte(b)
			}
			if rep := do(proto.Request{Op: proto.OpWrite, BlockIndex: b, BlockCount: c, Data: data}); rep.Status != proto.StatusOK {
				t.Fatalf("write: %v", rep.Status)
			}
			for i := b; i < b+uint64(c); i++ {
				written[i] = true
			}
		}
		if rapid.Bool().Draw(t, "flush") {
			do(proto.Request{Op: proto.OpFlush})
		}
		if rapid.Bool().Draw(t, "snapshot") {
			do(proto.Request{Op: proto.OpSnapshot, Name: "a"}) // layer 1 becomes a snapshot
		}
		bad := rapid.SampledFrom(d.Store.DataBlocks(1)).Draw(t, "bad")
		if !d.Store.CorruptBlock(1, bad, rapid.UintRange(0, proto.BlockSize*8-1).Draw(t, "bit")) {
			t.Fatalf("block %d held no data", bad)
		}
		lo := rapid.Uint64Range(max(bad, 3)-3, bad).Draw(t, "lo")
		n := uint32(rapid.Uint64Range(bad-lo+1, min(size-lo, bad-lo+4)).Draw(t, "n"))
		rep := do(proto.Request{Op: proto.OpRead, BlockIndex: lo, BlockCount: n})
		if rep.Status != proto.StatusCorrupt || rep.BlockIndex != bad || rep.Data != nil {
			t.Fatalf("read [%d,+%d) over corrupt block %d: %v block %d, %d bytes", lo, n, bad, rep.Status, rep.BlockIndex, len(rep.Data))
		}
		if bad+1 < size {
			if rep := do(proto.Request{Op: proto.OpRead, BlockIndex: bad + 1, BlockCount: uint32(min(4, size-bad-1))}); rep.Status != proto.StatusOK {
				t.Fatalf("read past the corrupt block: %v %s", rep.Status, rep.Err)
			}
		}
	})
}

// faulty fails the IOs fail picks (without executing them) and runs the
// rest on the memstore.
type faulty struct {
	st   *memstore.Store
	fail func(io store.IO) store.Err
}

func (f *faulty) Execute(io store.IO) store.Completion {
	if e := f.fail(io); e != store.OK {
		return store.Completion{ID: io.ID, Err: e, Detail: "injected"}
	}
	return f.st.Execute(io)
}

// TestNoSpaceChangesNothing: ENOSPC on a data write answers StatusNoSpace,
// the old content still reads back, and the replica keeps serving.
func TestNoSpaceChangesNothing(t *testing.T) {
	d := newDriver(16)
	full := false
	d.Exec = &faulty{st: d.Store, fail: func(io store.IO) store.Err {
		if full && io.Kind == store.WriteData {
			return store.ErrNoSpace
		}
		return store.OK
	}}
	mustOK(t, "open", d.Do(proto.Request{ID: 1, Epoch: 1, Op: proto.OpOpen}))
	mustOK(t, "write", d.Do(proto.Request{ID: 2, Epoch: 1, Op: proto.OpWrite, BlockIndex: 3, BlockCount: 2, Data: bytes.Repeat([]byte{1}, 2*proto.BlockSize)}))
	full = true
	for i, fua := range []bool{false, true} {
		rep := d.Do(proto.Request{ID: 3 + uint64(i), Epoch: 1, Op: proto.OpWrite, BlockIndex: 4, BlockCount: 2, FUA: fua, Data: bytes.Repeat([]byte{2}, 2*proto.BlockSize)})
		if rep.Status != proto.StatusNoSpace {
			t.Fatalf("write on a full disk (fua %v): %v %s, want no space", fua, rep.Status, rep.Err)
		}
	}
	rep := mustOK(t, "read", d.Do(proto.Request{ID: 10, Epoch: 1, Op: proto.OpRead, BlockIndex: 3, BlockCount: 3}))
	want := append(bytes.Repeat([]byte{1}, 2*proto.BlockSize), make([]byte, proto.BlockSize)...)
	if !bytes.Equal(rep.Data, want) {
		t.Fatal("a failed write changed the data")
	}
	full = false
	mustOK(t, "flush", d.Do(proto.Request{ID: 11, Epoch: 1, Op: proto.OpFlush}))
	d.Crash(func(store.LayerID, uint64, bool) bool { return false })
	if rep := d.Do(proto.Request{ID: 12, Epoch: 1, Op: proto.OpRead, BlockIndex: 3, BlockCount: 3}); rep.Status != proto.StatusNotReady {
		t.Fatalf("read after restart before open: %v, want not ready", rep.Status)
	}
	mustOK(t, "open after restart", d.Do(proto.Request{ID: 13, Epoch: 1, Op: proto.OpOpen}))
	rep = mustOK(t, "read after restart", d.Do(proto.Request{ID: 14, Epoch: 1, Op: proto.OpRead, BlockIndex: 3, BlockCount: 3}))
	if !bytes.Equal(rep.Data, want) {
		t.Fatal("data after restart differs")
	}
}

// TestSyncErrorFailsStop: EIO on any sync fails the flush and stops the
// replica: every later request gets StatusIOError.
func TestSyncErrorFailsStop(t *testing.T) {
	for _, kind := range []store.Kind{store.SyncData, store.SyncIndex, store.WriteIndex} {
		for _, fua := range []bool{false, true} {
			d := newDriver(16)
			broken := false
			d.Exec = &faulty{st: d.Store, fail: func(io store.IO) store.Err {
				if broken && io.Kind == kind {
					return store.ErrIO
				}
				return store.OK
			}}
			mustOK(t, "open", d.Do(proto.Request{ID: 1, Epoch: 1, Op: proto.OpOpen}))
			mustOK(t, "write", d.Do(proto.Request{ID: 2, Epoch: 1, Op: proto.OpWrite, BlockCount: 1, Data: block(1)}))
			broken = true
			req := proto.Request{ID: 3, Epoch: 1, Op: proto.OpFlush}
			if fua {
				req = proto.Request{ID: 3, Epoch: 1, Op: proto.OpWrite, BlockIndex: 1, BlockCount: 1, Data: block(2), FUA: true}
			}
			if rep := d.Do(req); rep.Status != proto.StatusIOError {
				t.Fatalf("%v with failing %v: %v %s, want io error", req.Op, kind, rep.Status, rep.Err)
			}
			broken = false
			for i, op := range []proto.Op{proto.OpRead, proto.OpWrite, proto.OpFlush, proto.OpSnapshot, proto.OpOpen} {
				r := proto.Request{ID: 10 + uint64(i), Epoch: 1, Op: op, BlockCount: 1, Name: "a"}
				if op == proto.OpWrite {
					r.Data = block(3)
				}
				if rep := d.Do(r); rep.Status != proto.StatusIOError {
					t.Fatalf("%v after failing %v: %v %s, want io error", op, kind, rep.Status, rep.Err)
				}
			}
		}
	}
}

// TestLayerWriteRefusesDamagedData: a layer write whose data block does
// not match its state's CRC (rotted on the source, whose layer reads do
// not checksum, or damaged on the way: the wire leaves a layer write's
// data out of the frame checksum) is refused as corrupt and changes
// nothing.
func TestLayerWriteRefusesDamagedData(t *testing.T) {
	d := newDriver(8)
	mustOK(t, "open", d.Do(proto.Request{ID: 1, Epoch: 1, Op: proto.OpOpen}))
	good := append(block(3), block(4)...)
	states := []proto.BlockState{{BlockIndex: 2, Kind: proto.BlockData, CRC: replica.CRC(block(3))},
		{BlockIndex: 3, Kind: proto.BlockData, CRC: replica.CRC(block(4))}}
	damaged := append([]byte(nil), good...)
	damaged[proto.BlockSize+100] ^= 0x10
	rep := d.Do(proto.Request{ID: 2, Epoch: 1, Op: proto.OpLayerWrite, BlockIndex: 2, BlockCount: 2, Data: damaged, Blocks: states})
	if rep.Status != proto.StatusCorrupt {
		t.Fatalf("damaged layer write: %v %s", rep.Status, rep.Err)
	}
	got := mustOK(t, "read", d.Do(proto.Request{ID: 3, Epoch: 1, Op: proto.OpRead, BlockIndex: 2, BlockCount: 2}))
	if !bytes.Equal(got.Data, make([]byte, 2*proto.BlockSize)) {
		t.Fatal("a refused layer write changed the blocks")
	}
	mustOK(t, "good layer write", d.Do(proto.Request{ID: 4, Epoch: 1, Op: proto.OpLayerWrite, BlockIndex: 2, BlockCount: 2, Data: good, Blocks: states}))
	got = mustOK(t, "read", d.Do(proto.Request{ID: 5, Epoch: 1, Op: proto.OpRead, BlockIndex: 2, BlockCount: 2}))
	if !bytes.Equal(got.Data, good) {
		t.Fatal("layer write not applied")
	}
}

// lostWrites acknowledges the data writes lose picks without executing
// them: a write the disk said it did that never reached the medium.
type lostWrites struct {
	st   *memstore.Store
	lose func(io store.IO) bool
}

func (l *lostWrites) Execute(io store.IO) store.Completion {
	if io.Kind == store.WriteData && l.lose(io) {
		return store.Completion{ID: io.ID}
	}
	return l.st.Execute(io)
}

// TestLostWriteToHoleIsNotATrim: a write to a never-written block is lost
// on its way to the disk, and its flush records the data's checksum over
// the hole. After a crash the settle finds zeros under a data entry; no
// trim recorded an intent for them, so they are a lost write: the block
// reads as corrupt (for the engine to repair from another replica), never
// as zeros. A trim that punched the hole before its entry was flushed is
// settled as zeros.
func TestLostWriteToHoleIsNotATrim(t *testing.T) {
	for _, bug := range []bool{false, true} {
		d := drive.New(replica.Config{ID: "r", CreateSizeBytes: 16 * proto.BlockSize,
			Bugs: replica.Bugs{SettleZerosAsTrims: bug}}, memstore.New(), nil)
		lose := true
		d.Exec = &lostWrites{st: d.Store, lose: func(io store.IO) bool { return lose && io.BlockIndex == 5 }}
		do := func(id uint64, r proto.Request) proto.Reply {
			r.ID, r.Epoch = id, 1
			return d.Do(r)
		}
		mustOK(t, "open", do(1, proto.Request{Op: proto.OpOpen}))
		mustOK(t, "write", do(2, proto.Request{Op: proto.OpWrite, BlockIndex: 5, BlockCount: 1, Data: block(7)}))
		mustOK(t, "flush", do(3, proto.Request{Op: proto.OpFlush, Seq: 1}))
		lose = false
		// Block 9: written and flushed, then trimmed; the punch lands but
		// the trim's zero entry does not (no flush before the crash).
		mustOK(t, "write 9", do(4, proto.Request{Op: proto.OpWrite, BlockIndex: 9, BlockCount: 1, Data: block(8)}))
		mustOK(t, "flush 9", do(5, proto.Request{Op: proto.OpFlush, Seq: 2}))
		mustOK(t, "trim 9", do(6, proto.Request{Op: proto.OpTrim, BlockIndex: 9, BlockCount: 1}))
		d.Crash(func(_ store.LayerID, _ uint64, isIndex bool) bool { return !isIndex })
		mustOK(t, "open after crash", do(7, proto.Request{Op: proto.OpOpen}))
		rep := do(8, proto.Request{Op: proto.OpRead, BlockIndex: 5, BlockCount: 1})
		if !bug && (rep.Status != proto.StatusCorrupt || rep.BlockIndex != 5) {
			t.Fatalf("read of the block whose write was lost: %v %s (block %d), want corrupt block 5", rep.Status, rep.Err, rep.BlockIndex)
		}
		if bug && rep.Status != proto.StatusOK {
			t.Fatalf("with the bug planted the lost write's zeros should read as a trim: %v %s", rep.Status, rep.Err)
		}
		rep = mustOK(t, "read trimmed block", do(9, proto.Request{Op: proto.OpRead, BlockIndex: 9, BlockCount: 1}))
		if !bytes.Equal(rep.Data, make([]byte, proto.BlockSize)) {
			t.Fatal("the trimmed block does not read as zeros")
		}
	}
}
