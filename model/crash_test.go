package model

import (
	"bytes"
	"crypto/sha256"
	"testing"

	"pgregory.net/rapid"
)

func TestCrashOutcomesListFlushedThenLaterWrites(t *testing.T) {
	dev := NewDevice(4 * BlockSize)
	mustDo(t, "write a", dev.Write(0, fill('a', 1)))
	dev.Flush()
	if got := dev.CrashOutcomes(0); len(got) != 1 || !bytes.Equal(got[0].Data, fill('a', 1)) {
		t.Fatalf("CrashOutcomes after flush = %d outcomes, want only the flushed value", len(got))
	}
	mustDo(t, "write b", dev.Write(0, fill('b', 1)))
	mustDo(t, "write c", dev.Write(0, fill('c', 1)))
	mustDo(t, "write b again", dev.Write(0, fill('b', 1)))
	mustDo(t, "trim", dev.Trim(0, 1))
	mustDo(t, "write d", dev.Write(0, fill('d', 1)))

	outcomes := dev.CrashOutcomes(0)
	wantOrder := []byte{'a', 'b', 'c', 0, 'd'}
	if len(outcomes) != len(wantOrder) {
		t.Fatalf("CrashOutcomes = %d outcomes, want %d (deduplicated)", len(outcomes), len(wantOrder))
	}
	for i, b := range wantOrder {
		if outcomes[i].Digest != sha256.Sum256(fill(b, 1)) {
			t.Errorf("outcome %d is not the block filled with %q", i, b)
		}
	}
	if !bytes.Equal(outcomes[0].Data, fill('a', 1)) || !bytes.Equal(outcomes[4].Data, fill('d', 1)) {
		t.Errorf("flushed and current outcomes must carry their data")
	}
	if outcomes[1].Data != nil {
		t.Errorf("intermediate outcomes must keep only a digest")
	}
	for i, outcome := range outcomes {
		if outcome.Current != (i == 4) {
			t.Errorf("outcome %d: Current = %v, want %v", i, outcome.Current, i == 4)
		}
	}
	for _, b := range wantOrder {
		if err := dev.CheckAfterCrash(0, fill(b, 1)); err != nil {
			t.Errorf("CheckAfterCrash(%q): %v", b, err)
		}
	}
	if err := dev.CheckAfterCrash(0, fill('x', 1)); err == nil {
		t.Errorf("CheckAfterCrash accepted content never written")
	}
	if err := dev.CheckAfterCrash(1, fill('a', 1)); err == nil {
		t.Errorf("CheckAfterCrash accepted block 0's content in untouched block 1")
	}
	if err := dev.CheckAfterCrash(1, fill(0, 1)); err != nil {
		t.Errorf("CheckAfterCrash(untouched block, zeros): %v", err)
	}
}

func TestSnapshotAndRevertCountAsFlushes(t *testing.T) {
	dev := NewDevice(2 * BlockSize)
	mustDo(t, "write a", dev.Write(0, fill('a', 1)))
	mustDo(t, "snapshot", dev.Snapshot("s"))
	if got := dev.UnflushedBlocks(); len(got) != 0 {
		t.Errorf("UnflushedBlocks after snapshot = %v, want none", got)
	}
	mustDo(t, "write b", dev.Write(0, fill('b', 1)))
	mustDo(t, "revert", dev.Revert("s"))
	if got := dev.UnflushedBlocks(); len(got) != 0 {
		t.Errorf("UnflushedBlocks after revert = %v, want none", got)
	}
	if err := dev.CheckAfterCrash(0, fill('b', 1)); err == nil {
		t.Errorf("a write discarded by revert must not survive a crash")
	}
}

func TestCrashRejectsDisallowedContentAndChangesNothing(t *testing.T) {
	dev := NewDevice(2 * BlockSize)
	mustDo(t, "write a", dev.Write(0, fill('a', 1)))
	mustDo(t, "write b", dev.Write(1, fill('b', 1)))
	err := dev.Crash(func(blockIndex uint64, _ []CrashOutcome) []byte {
		if blockIndex == 1 {
			return fill('x', 1)
		}
		return fill(0, 1)
	})
	if err == nil {
		t.Fatalf("Crash accepted garbage in block 1")
	}
	if got := dev.UnflushedBlocks(); len(got) != 2 {
		t.Errorf("a rejected Crash must leave the device unchanged; unflushed = %v", got)
	}
	if got := readBlock(t, dev, 0); !bytes.Equal(got, fill('a', 1)) {
		t.Errorf("a rejected Crash must leave the device unchanged; block 0 = %q...", got[:4])
	}
}

// TestCrashSettlesToChosenOutcome writes, flushes and crashes at random and
// checks that each crash settles every block to one allowed value, which
// then counts as flushed.
func TestCrashSettlesToChosenOutcome(t *testing.T) {
	const sizeBlocks = 4
	rapid.Check(t, func(t *rapid.T) {
		dev := NewDevice(sizeBlocks * BlockSize)
		flushed := make([]byte, sizeBlocks*BlockSize)
		current := make([]byte, sizeBlocks*BlockSize)
		t.Repeat(map[string]func(*rapid.T){
			"write": func(t *rapid.T) {
				blockIndex := rapid.Uint64Range(0, sizeBlocks-1).Draw(t, "blockIndex")
				data := fill(rapid.Byte().Draw(t, "fill"), 1)
				if err := dev.Write(blockIndex, data); err != nil {
					t.Fatalf("Write: %v", err)
				}
				copy(current[blockIndex*BlockSize:], data)
			},
			"flush": func(t *rapid.T) {
				dev.Flush()
				copy(flushed, current)
			},
			"crash": func(t *rapid.T) {
				keepNew := rapid.Bool().Draw(t, "keepNew")
				err := dev.Crash(func(_ uint64, outcomes []CrashOutcome) []byte {
					if !keepNew {
						return outcomes[0].Data
					}
					for _, outcome := range outcomes {
						if outcome.Current {
							return outcome.Data
						}
					}
					t.Fatalf("no outcome is marked Current")
					return nil
				})
				if err != nil {
					t.Fatalf("Crash: %v", err)
				}
				if keepNew {
					copy(flushed, current)
				} else {
					copy(current, flushed)
				}
				if got := dev.UnflushedBlocks(); len(got) != 0 {
					t.Fatalf("UnflushedBlocks after Crash = %v, want none", got)
				}
			},
			"": func(t *rapid.T) {
				got, err := dev.Read(0, sizeBlocks)
				if err != nil {
					t.Fatalf("Read: %v", err)
				}
				if !bytes.Equal(got, current) {
					t.Fatalf("device differs from the reference")
				}
				for b := range uint64(sizeBlocks) {
					block := flushed[b*BlockSize : (b+1)*BlockSize]
					if err := dev.CheckAfterCrash(b, block); err != nil {
						t.Fatalf("the flushed value must always survive: %v", err)
					}
				}
			},
		})
	})
}
