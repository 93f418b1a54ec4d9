package model

import (
	"bytes"
	"errors"
	"maps"
	"slices"
	"testing"

	"pgregory.net/rapid"
)

// fill returns blockCount blocks, each filled with b.
func fill(b byte, blockCount int) []byte {
	return bytes.Repeat([]byte{b}, blockCount*BlockSize)
}

// flatDevice is the trivially correct reference: the whole device as one
// byte slice. Only for small devices.
type flatDevice struct {
	data []byte
}

func (f *flatDevice) sizeBlocks() uint64 { return uint64(len(f.data) / BlockSize) }

// genRange draws a block range that may reach past the end of the device.
func genRange(t *rapid.T, sizeBlocks uint64) (uint64, uint32) {
	blockIndex := rapid.Uint64Range(0, sizeBlocks+1).Draw(t, "blockIndex")
	blockCount := rapid.Uint32Range(0, 4).Draw(t, "blockCount")
	return blockIndex, blockCount
}

func inRange(blockIndex uint64, blockCount uint32, sizeBlocks uint64) bool {
	return blockCount > 0 && blockIndex+uint64(blockCount) <= sizeBlocks
}

// wantRangeErr checks err against what a flat device would say about the
// range: nil in range, ErrBadLength for zero blocks, else ErrOutOfRange.
func wantRangeErr(t *rapid.T, op string, err error, blockIndex uint64, blockCount uint32, sizeBlocks uint64) {
	switch {
	case inRange(blockIndex, blockCount, sizeBlocks):
		if err != nil {
			t.Fatalf("%s(%d, %d) on %d blocks: %v", op, blockIndex, blockCount, sizeBlocks, err)
		}
	case blockCount == 0:
		if !errors.Is(err, ErrBadLength) {
			t.Fatalf("%s(%d, 0): got %v, want ErrBadLength", op, blockIndex, err)
		}
	default:
		if !errors.Is(err, ErrOutOfRange) {
			t.Fatalf("%s(%d, %d) on %d blocks: got %v, want ErrOutOfRange", op, blockIndex, blockCount, sizeBlocks, err)
		}
	}
}

// TestDeviceMatchesFlatReference drives Device and flatDevice with the same
// writes, trims, zeroes, flushes and expansions and requires every read, the
// touched set and the unflushed set to agree.
func TestDeviceMatchesFlatReference(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		sizeBlocks := rapid.Uint64Range(1, 8).Draw(t, "sizeBlocks")
		dev := NewDevice(sizeBlocks * BlockSize)
		ref := &flatDevice{data: make([]byte, sizeBlocks*BlockSize)}
		touched := map[uint64]struct{}{}
		unflushed := map[uint64]struct{}{}
		zeroOp := func(t *rapid.T, name string, op func(uint64, uint32) error) {
			blockIndex, blockCount := genRange(t, ref.sizeBlocks())
			err := op(blockIndex, blockCount)
			wantRangeErr(t, name, err, blockIndex, blockCount, ref.sizeBlocks())
			if err == nil {
				clear(ref.data[blockIndex*BlockSize : (blockIndex+uint64(blockCount))*BlockSize])
				for i := range uint64(blockCount) {
					touched[blockIndex+i] = struct{}{}
					unflushed[blockIndex+i] = struct{}{}
				}
			}
		}
		t.Repeat(map[string]func(*rapid.T){
			"write": func(t *rapid.T) {
				blockIndex, blockCount := genRange(t, ref.sizeBlocks())
				data := fill(rapid.Byte().Draw(t, "fill"), int(blockCount))
				err := dev.Write(blockIndex, data)
				wantRangeErr(t, "Write", err, blockIndex, blockCount, ref.sizeBlocks())
				if err == nil {
					copy(ref.data[blockIndex*BlockSize:], data)
					for i := range uint64(blockCount) {
						touched[blockIndex+i] = struct{}{}
						unflushed[blockIndex+i] = struct{}{}
					}
				}
			},
			"trim":        func(t *rapid.T) { zeroOp(t, "Trim", dev.Trim) },
			"writeZeroes": func(t *rapid.T) { zeroOp(t, "WriteZeroes", dev.WriteZeroes) },
			"flush": func(t *rapid.T) {
				dev.Flush()
				clear(unflushed)
			},
			"expand": func(t *rapid.T) {
				newBlocks := rapid.Uint64Range(0, 12).Draw(t, "newSizeBlocks")
				err := dev.Expand(newBlocks * BlockSize)
				if newBlocks < ref.sizeBlocks() {
					if !errors.Is(err, ErrShrink) {
						t.Fatalf("Expand(%d blocks) from %d: got %v, want ErrShrink", newBlocks, ref.sizeBlocks(), err)
					}
					return
				}
				if err != nil {
					t.Fatalf("Expand(%d blocks): %v", newBlocks, err)
				}
				ref.data = append(ref.data, make([]byte, (newBlocks-ref.sizeBlocks())*BlockSize)...)
			},
			"read": func(t *rapid.T) {
				blockIndex, blockCount := genRange(t, ref.sizeBlocks())
				got, err := dev.Read(blockIndex, blockCount)
				wantRangeErr(t, "Read", err, blockIndex, blockCount, ref.sizeBlocks())
				if err == nil {
					want := ref.data[blockIndex*BlockSize : (blockIndex+uint64(blockCount))*BlockSize]
					if !bytes.Equal(got, want) {
						t.Fatalf("Read(%d, %d) differs from the flat reference", blockIndex, blockCount)
					}
				}
			},
			"": func(t *rapid.T) {
				if dev.SizeBytes() != uint64(len(ref.data)) {
					t.Fatalf("SizeBytes() = %d, want %d", dev.SizeBytes(), len(ref.data))
				}
				changed, err := dev.ChangedBlocks("", "")
				if err != nil {
					t.Fatalf("ChangedBlocks: %v", err)
				}
				if want := slices.Sorted(maps.Keys(touched)); !slices.Equal(changed, want) {
					t.Fatalf("ChangedBlocks(\"\", \"\") = %v, want %v", changed, want)
				}
				if got, want := dev.UnflushedBlocks(), slices.Sorted(maps.Keys(unflushed)); !slices.Equal(got, want) {
					t.Fatalf("UnflushedBlocks() = %v, want %v", got, want)
				}
			},
		})
	})
}

// TestSnapshotsMatchFullCopies keeps a full copy of the device per snapshot
// and checks reads after snapshot, delete and revert, and that ChangedBlocks
// between two live snapshots covers every block whose content differs.
func TestSnapshotsMatchFullCopies(t *testing.T) {
	const sizeBlocks = 6
	rapid.Check(t, func(t *rapid.T) {
		dev := NewDevice(sizeBlocks * BlockSize)
		ref := make([]byte, sizeBlocks*BlockSize)
		type snap struct {
			name string
			data []byte
		}
		var snaps []snap
		nextName := 0
		pickSnap := func(t *rapid.T) int {
			return rapid.IntRange(0, len(snaps)-1).Draw(t, "snapshot")
		}
		t.Repeat(map[string]func(*rapid.T){
			"write": func(t *rapid.T) {
				blockIndex := rapid.Uint64Range(0, sizeBlocks-1).Draw(t, "blockIndex")
				data := fill(rapid.Byte().Draw(t, "fill"), 1)
				if err := dev.Write(blockIndex, data); err != nil {
					t.Fatalf("Write: %v", err)
				}
				copy(ref[blockIndex*BlockSize:], data)
			},
			"trim": func(t *rapid.T) {
				blockIndex := rapid.Uint64Range(0, sizeBlocks-1).Draw(t, "blockIndex")
				if err := dev.Trim(blockIndex, 1); err != nil {
					t.Fatalf("Trim: %v", err)
				}
				clear(ref[blockIndex*BlockSize : (blockIndex+1)*BlockSize])
			},
			"snapshot": func(t *rapid.T) {
				name := string(rune('a' + nextName%26))
				nextName++
				err := dev.Snapshot(name)
				if slices.ContainsFunc(snaps, func(s snap) bool { return s.name == name }) {
					if !errors.Is(err, ErrExists) {
						t.Fatalf("Snapshot(%q) of a live name: got %v, want ErrExists", name, err)
					}
					return
				}
				if err != nil {
					t.Fatalf("Snapshot(%q): %v", name, err)
				}
				snaps = append(snaps, snap{name, slices.Clone(ref)})
			},
			"delete": func(t *rapid.T) {
				if len(snaps) == 0 {
					t.Skip("no snapshots")
				}
				i := pickSnap(t)
				if err := dev.DeleteSnapshot(snaps[i].name); err != nil {
					t.Fatalf("DeleteSnapshot(%q): %v", snaps[i].name, err)
				}
				snaps = slices.Delete(snaps, i, i+1)
			},
			"revert": func(t *rapid.T) {
				if len(snaps) == 0 {
					t.Skip("no snapshots")
				}
				i := pickSnap(t)
				if err := dev.Revert(snaps[i].name); err != nil {
					t.Fatalf("Revert(%q): %v", snaps[i].name, err)
				}
				ref = slices.Clone(snaps[i].data)
				snaps = snaps[:i+1]
			},
			"changed": func(t *rapid.T) {
				if len(snaps) < 2 {
					t.Skip("need two snapshots")
				}
				from, to := pickSnap(t), pickSnap(t)
				from, to = min(from, to), max(from, to)
				changed, err := dev.ChangedBlocks(snaps[from].name, snaps[to].name)
				if err != nil {
					t.Fatalf("ChangedBlocks: %v", err)
				}
				for b := range uint64(sizeBlocks) {
					lo, hi := b*BlockSize, (b+1)*BlockSize
					if !bytes.Equal(snaps[from].data[lo:hi], snaps[to].data[lo:hi]) && !slices.Contains(changed, b) {
						t.Fatalf("ChangedBlocks(%q, %q) = %v misses block %d", snaps[from].name, snaps[to].name, changed, b)
					}
				}
			},
			"": func(t *rapid.T) {
				got, err := dev.Read(0, sizeBlocks)
				if err != nil {
					t.Fatalf("Read: %v", err)
				}
				if !bytes.Equal(got, ref) {
					t.Fatalf("device differs from the reference")
				}
				names := make([]string, 0, len(snaps))
				for _, s := range snaps {
					names = append(names, s.name)
				}
				if got := dev.Snapshots(); !slices.Equal(got, names) {
					t.Fatalf("Snapshots() = %v, want %v", got, names)
				}
			},
		})
	})
}

// readBlock reads one block and fails the test on error.
func readBlock(t *testing.T, dev *Device, blockIndex uint64) []byte {
	t.Helper()
	got, err := dev.Read(blockIndex, 1)
	if err != nil {
		t.Fatalf("Read(%d): %v", blockIndex, err)
	}
	return got
}

func mustDo(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func TestSnapshotLifecycle(t *testing.T) {
	dev := NewDevice(4 * BlockSize)
	mustDo(t, "write a", dev.Write(0, fill('a', 2)))
	mustDo(t, "snapshot s1", dev.Snapshot("s1"))
	mustDo(t, "write b", dev.Write(1, fill('b', 1)))
	mustDo(t, "snapshot s2", dev.Snapshot("s2"))
	mustDo(t, "write c", dev.Write(2, fill('c', 1)))
	mustDo(t, "trim 0", dev.Trim(0, 1))

	tests := []struct {
		name string
		err  error
		want error
	}{
		{"duplicate snapshot", dev.Snapshot("s1"), ErrExists},
		{"empty snapshot name", dev.Snapshot(""), ErrBadLength},
		{"delete missing", dev.DeleteSnapshot("nope"), ErrNotFound},
		{"revert missing", dev.Revert("nope"), ErrNotFound},
		{"write past end", dev.Write(4, fill('x', 1)), ErrOutOfRange},
		{"write straddling end", dev.Write(3, fill('x', 2)), ErrOutOfRange},
		{"short write", dev.Write(0, make([]byte, 100)), ErrBadLength},
		{"shrink", dev.Expand(BlockSize), ErrShrink},
		{"unaligned expand", dev.Expand(5*BlockSize + 1), ErrBadLength},
	}
	for _, tt := range tests {
		if !errors.Is(tt.err, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, tt.err, tt.want)
		}
	}
	if got := dev.Snapshots(); !slices.Equal(got, []string{"s1", "s2"}) {
		t.Fatalf("Snapshots() = %v", got)
	}

	// Deleting s1 merges it into s2: the view and s2's content are unchanged.
	mustDo(t, "delete s1", dev.DeleteSnapshot("s1"))
	if got := readBlock(t, dev, 0); !bytes.Equal(got, fill(0, 1)) {
		t.Errorf("block 0 after delete s1 = %q..., want zeros", got[:4])
	}
	mustDo(t, "revert s2", dev.Revert("s2"))
	for blockIndex, want := range [][]byte{fill('a', 1), fill('b', 1), fill(0, 1), fill(0, 1)} {
		if got := readBlock(t, dev, uint64(blockIndex)); !bytes.Equal(got, want) {
			t.Errorf("block %d after revert s2 = %q..., want %q...", blockIndex, got[:4], want[:4])
		}
	}
	// A name is free again once its snapshot is gone.
	mustDo(t, "reuse s1", dev.Snapshot("s1"))
	if got := dev.Snapshots(); !slices.Equal(got, []string{"s2", "s1"}) {
		t.Errorf("Snapshots() = %v, want [s2 s1]", got)
	}
}

func TestRevertDiscardsNewerSnapshotsAndKeepsSize(t *testing.T) {
	dev := NewDevice(2 * BlockSize)
	mustDo(t, "write", dev.Write(0, fill('a', 1)))
	mustDo(t, "snapshot old", dev.Snapshot("old"))
	mustDo(t, "expand", dev.Expand(4*BlockSize))
	mustDo(t, "write", dev.Write(3, fill('z', 1)))
	mustDo(t, "snapshot new", dev.Snapshot("new"))
	mustDo(t, "revert old", dev.Revert("old"))
	if got := dev.Snapshots(); !slices.Equal(got, []string{"old"}) {
		t.Errorf("Snapshots() = %v, want [old]", got)
	}
	if dev.SizeBytes() != 4*BlockSize {
		t.Errorf("SizeBytes() = %d, want %d: revert must not shrink", dev.SizeBytes(), 4*BlockSize)
	}
	if got := readBlock(t, dev, 3); !bytes.Equal(got, fill(0, 1)) {
		t.Errorf("block 3 after revert = %q..., want zeros", got[:4])
	}
	if err := dev.Revert("new"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Revert(new) after it was discarded: got %v, want ErrNotFound", err)
	}
}

func TestChangedBlocks(t *testing.T) {
	// Layers: s1 touched {0,1}, s2 touched {1,5}, s3 touched {}, head {2 (trim), 7}.
	build := func(t *testing.T) *Device {
		dev := NewDevice(8 * BlockSize)
		mustDo(t, "w0", dev.Write(0, fill(1, 2)))
		mustDo(t, "s1", dev.Snapshot("s1"))
		mustDo(t, "w1", dev.Write(1, fill(2, 1)))
		mustDo(t, "w5", dev.WriteZeroes(5, 1))
		mustDo(t, "s2", dev.Snapshot("s2"))
		mustDo(t, "s3", dev.Snapshot("s3"))
		mustDo(t, "t2", dev.Trim(2, 1))
		mustDo(t, "w7", dev.Write(7, fill(3, 1)))
		return dev
	}
	tests := []struct {
		name     string
		deleted  string
		from, to string
		want     []uint64
		wantErr  error
	}{
		{name: "everything", want: []uint64{0, 1, 2, 5, 7}},
		{name: "up to s1", to: "s1", want: []uint64{0, 1}},
		{name: "s1 to s2", from: "s1", to: "s2", want: []uint64{1, 5}},
		{name: "s2 to s3 is empty", from: "s2", to: "s3", want: []uint64{}},
		{name: "s3 to head", from: "s3", want: []uint64{2, 7}},
		{name: "same snapshot", from: "s2", to: "s2", want: []uint64{}},
		{name: "reversed", from: "s2", to: "s1", wantErr: ErrSnapshotOrder},
		{name: "missing from", from: "x", wantErr: ErrNotFound},
		{name: "missing to", to: "x", wantErr: ErrNotFound},
		{name: "delete s1 merges into s2", deleted: "s1", to: "s2", want: []uint64{0, 1, 5}},
		{name: "delete s2 merges into s3", deleted: "s2", from: "s1", to: "s3", want: []uint64{1, 5}},
		{name: "delete s3 merges into head", deleted: "s3", from: "s2", want: []uint64{2, 7}},
		{name: "delete s2, s1 to head", deleted: "s2", from: "s1", want: []uint64{1, 2, 5, 7}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := build(t)
			if tt.deleted != "" {
				mustDo(t, "delete "+tt.deleted, dev.DeleteSnapshot(tt.deleted))
			}
			got, err := dev.ChangedBlocks(tt.from, tt.to)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("ChangedBlocks(%q, %q): got %v, want %v", tt.from, tt.to, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ChangedBlocks(%q, %q): %v", tt.from, tt.to, err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("ChangedBlocks(%q, %q) = %v, want %v", tt.from, tt.to, got, tt.want)
			}
		})
	}
}

func TestHugeDeviceIsSparse(t *testing.T) {
	dev := NewDevice(1 << 50) // 1 PiB: allocating it would fail the test.
	last := uint64(1<<50)/BlockSize - 1
	mustDo(t, "write last block", dev.Write(last, fill('q', 1)))
	if got := readBlock(t, dev, last); !bytes.Equal(got, fill('q', 1)) {
		t.Errorf("last block = %q...", got[:4])
	}
	if err := dev.Trim(last, 2); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("Trim past the end: got %v, want ErrOutOfRange", err)
	}
	if _, err := dev.Read(^uint64(0), 2); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("Read at max uint64: got %v, want ErrOutOfRange", err)
	}
}

func TestShrink(t *testing.T) {
	d := NewDevice(8 * BlockSize)
	blk := make([]byte, BlockSize)
	blk[0] = 1
	if err := d.Write(5, blk); err != nil {
		t.Fatal(err)
	}
	if err := d.Snapshot("s"); err != nil {
		t.Fatal(err)
	}
	if err := d.Trim(5, 1); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteZeroes(7, 1); err != nil {
		t.Fatal(err)
	}
	// The snapshot still holds block 5: nothing at or below it can go.
	for _, size := range []uint64{3, 5} {
		if err := d.Shrink(size * BlockSize); !errors.Is(err, ErrInUse) {
			t.Fatalf("shrink to %d blocks: %v, want ErrInUse", size, err)
		}
	}
	if err := d.Shrink(6*BlockSize + 1); !errors.Is(err, ErrBadLength) {
		t.Fatalf("unaligned shrink: %v", err)
	}
	if err := d.Shrink(9 * BlockSize); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("shrink to a larger size: %v", err)
	}
	if err := d.Shrink(7 * BlockSize); err != nil { // block 7 holds zeros only
		t.Fatal(err)
	}
	if err := d.DeleteSnapshot("s"); err != nil {
		t.Fatal(err)
	}
	if err := d.Shrink(5 * BlockSize); err != nil { // the trim hid the snapshot's block 5
		t.Fatal(err)
	}
	if err := d.Expand(8 * BlockSize); err != nil {
		t.Fatal(err)
	}
	got, _ := d.Read(0, 8)
	if !isZero(got) {
		t.Fatal("space regained by an expand after a shrink is not zeros")
	}
	if bs, _ := d.ChangedBlocks("", ""); len(bs) != 0 {
		t.Fatalf("touched after shrink and expand: %v", bs)
	}
}
