package model

import (
	"crypto/sha256"
	"slices"
	"testing"

	"pgregory.net/rapid"
)

// TestFlushToMatchesHistory checks Mark/FlushTo/FlushBlocksTo against a
// brute-force reading of the write history: after a crash a block may
// hold its value as of its newest durable point, or any value written to
// it after that point.
func TestFlushToMatchesHistory(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		const sizeBlocks = 6
		d := NewDevice(sizeBlocks * BlockSize)
		type write struct {
			seq   uint64
			value byte // 0: zeros
		}
		history := map[uint64][]write{}       // per block, in order
		durable := make([]uint64, sizeBlocks) // newest durable seq per block
		var seq uint64
		var marks []FlushPoint
		var markSeqs []uint64
		valueAt := func(b, s uint64) byte {
			v := byte(0)
			for _, w := range history[b] {
				if w.seq <= s {
					v = w.value
				}
			}
			return v
		}
		for step := rapid.IntRange(1, 40).Draw(t, "steps"); step > 0; step-- {
			switch rapid.IntRange(0, 4).Draw(t, "op") {
			case 0, 1:
				b := rapid.Uint64Range(0, sizeBlocks-1).Draw(t, "block")
				v := byte(rapid.IntRange(0, 3).Draw(t, "value"))
				var err error
				if v == 0 {
					err = d.Trim(b, 1)
				} else {
					err = d.Write(b, fill(v, 1))
				}
				if err != nil {
					t.Fatal(err)
				}
				seq++
				history[b] = append(history[b], write{seq, v})
			case 2:
				marks = append(marks, d.Mark())
				markSeqs = append(markSeqs, seq)
			case 3:
				if len(marks) == 0 {
					continue
				}
				i := rapid.IntRange(0, len(marks)-1).Draw(t, "mark")
				lo := rapid.Uint64Range(0, sizeBlocks-1).Draw(t, "lo")
				n := rapid.Uint64Range(1, sizeBlocks-lo).Draw(t, "n")
				if rapid.Bool().Draw(t, "all") {
					lo, n = 0, sizeBlocks
					d.FlushTo(marks[i])
				} else {
					d.FlushBlocksTo(marks[i], lo, n)
				}
				for b := lo; b < lo+n; b++ {
					durable[b] = max(durable[b], markSeqs[i])
				}
			case 4:
				d.Flush()
				for b := range durable {
					durable[b] = seq
				}
			}
			for b := uint64(0); b < sizeBlocks; b++ {
				want := map[[sha256.Size]byte]bool{digestOf(fill(valueAt(b, durable[b]), 1)): true}
				for _, w := range history[b] {
					if w.seq > durable[b] {
						want[digestOf(fill(w.value, 1))] = true
					}
				}
				outcomes := d.CrashOutcomes(b)
				got := map[[sha256.Size]byte]bool{}
				for _, o := range outcomes {
					got[o.Digest] = true
				}
				if len(got) != len(want) || len(outcomes) != len(got) {
					t.Fatalf("block %d: %d outcomes (%d distinct), want %d", b, len(outcomes), len(got), len(want))
				}
				for dg := range want {
					if !got[dg] {
						t.Fatalf("block %d: outcome %x missing", b, dg[:4])
					}
				}
				if outcomes[0].Data == nil || digestOf(outcomes[0].Data) != digestOf(fill(valueAt(b, durable[b]), 1)) {
					t.Fatalf("block %d: first outcome is not the durable value", b)
				}
				cur, _ := d.Read(b, 1)
				if !slices.ContainsFunc(outcomes, func(o CrashOutcome) bool { return o.Current && o.Digest == digestOf(cur) }) {
					t.Fatalf("block %d: current value not marked", b)
				}
			}
		}
	})
}

func TestReadSnapshot(t *testing.T) {
	d := NewDevice(4 * BlockSize)
	mustDo(t, "write", d.Write(1, fill(1, 2)))
	mustDo(t, "snapshot", d.Snapshot("a"))
	mustDo(t, "write", d.Write(2, fill(2, 1)))
	got, err := d.ReadSnapshot("a", 0, 4)
	mustDo(t, "read a", err)
	want := slices.Concat(fill(0, 1), fill(1, 2), fill(0, 1))
	if !slices.Equal(got, want) {
		t.Fatal("snapshot a view wrong")
	}
	got, err = d.ReadSnapshot("", 2, 1)
	mustDo(t, "read head", err)
	if !slices.Equal(got, fill(2, 1)) {
		t.Fatal("head view wrong")
	}
	if _, err := d.ReadSnapshot("b", 0, 1); err == nil {
		t.Fatal("missing snapshot read")
	}
}
