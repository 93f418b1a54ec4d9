package blockset

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"pgregory.net/rapid"
)

// genBlock draws block indexes that cluster around chunk boundaries and
// inside a few chunks, so chunks fill, empty and change form.
func genBlock(t *rapid.T, label string) uint64 {
	chunk := rapid.Uint64Range(0, 3).Draw(t, label+"Chunk")
	switch rapid.IntRange(0, 2).Draw(t, label+"Where") {
	case 0: // near the start of the chunk
		return chunk<<chunkShift + rapid.Uint64Range(0, 8).Draw(t, label+"Off")
	case 1: // near the end of the chunk
		return chunk<<chunkShift + chunkBlocks - 1 - rapid.Uint64Range(0, 8).Draw(t, label+"Off")
	default:
		return chunk<<chunkShift + rapid.Uint64Range(0, chunkMask).Draw(t, label+"Off")
	}
}

func genCount(t *rapid.T) uint64 {
	switch rapid.IntRange(0, 7).Draw(t, "countKind") {
	case 0:
		return chunkBlocks // a whole chunk (or two halves when unaligned)
	case 1:
		return rapid.Uint64Range(arrayMax-4, arrayMax+4).Draw(t, "count")
	case 2:
		return rapid.Uint64Range(chunkBlocks-8, 2*chunkBlocks+8).Draw(t, "count")
	}
	return rapid.Uint64Range(0, 40).Draw(t, "count")
}

// refExtents computes the runs of ref in [from, to) the slow way.
func refExtents(ref map[uint64]bool, from, to uint64) [][2]uint64 {
	keys := make([]uint64, 0, len(ref))
	for b := range ref {
		if b >= from && b < to {
			keys = append(keys, b)
		}
	}
	slices.Sort(keys)
	var out [][2]uint64
	for _, b := range keys {
		if n := len(out); n > 0 && out[n-1][0]+out[n-1][1] == b {
			out[n-1][1]++
			continue
		}
		out = append(out, [2]uint64{b, 1})
	}
	return out
}

func extents(s *Set, from, to uint64) [][2]uint64 {
	var out [][2]uint64
	s.Extents(from, to, func(b, n uint64) bool {
		out = append(out, [2]uint64{b, n})
		return true
	})
	return out
}

// checkChunks asserts the representation invariants of every chunk.
func checkChunks(t *rapid.T, s *Set) {
	var total uint64
	for key, c := range s.chunks {
		var n uint32
		switch {
		case c.full:
			n = chunkBlocks
			if c.array != nil || c.bitmap != nil {
				t.Fatalf("chunk %d: full with storage", key)
			}
		case c.bitmap != nil:
			if len(c.bitmap) != bitmapWords || c.array != nil {
				t.Fatalf("chunk %d: bitmap of %d words, array %d", key, len(c.bitmap), len(c.array))
			}
			for _, w := range c.bitmap {
				n += uint32(popcount(w))
			}
		default:
			if !slices.IsSorted(c.array) || len(slices.Compact(slices.Clone(c.array))) != len(c.array) {
				t.Fatalf("chunk %d: array not sorted and unique", key)
			}
			if len(c.array) > arrayMax {
				t.Fatalf("chunk %d: array of %d > %d", key, len(c.array), arrayMax)
			}
			n = uint32(len(c.array))
		}
		if n != c.count || n == 0 {
			t.Fatalf("chunk %d: count %d, holds %d", key, c.count, n)
		}
		total += uint64(n)
	}
	if total != s.count {
		t.Fatalf("set count %d, chunks hold %d", s.count, total)
	}
}

func popcount(w uint64) int {
	n := 0
	for ; w != 0; w &= w - 1 {
		n++
	}
	return n
}

// TestSetMatchesMap drives a Set and a map[uint64]bool with the same
// operations and requires Contains, Len, Extents and Clone to agree.
func TestSetMatchesMap(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		var s Set
		ref := map[uint64]bool{}
		var clone *Set
		var cloneRef map[uint64]bool
		for step := rapid.IntRange(1, 40).Draw(t, "steps"); step > 0; step-- {
			switch rapid.IntRange(0, 6).Draw(t, "op") {
			case 0:
				b := genBlock(t, "add")
				s.Add(b)
				ref[b] = true
			case 1:
				b := genBlock(t, "remove")
				s.Remove(b)
				delete(ref, b)
			case 2:
				b, n := genBlock(t, "addRange"), genCount(t)
				s.AddRange(b, n)
				for i := b; i < b+n; i++ {
					ref[i] = true
				}
			case 3:
				b, n := genBlock(t, "removeRange"), genCount(t)
				s.RemoveRange(b, n)
				for i := b; i < b+n; i++ {
					delete(ref, i)
				}
			case 4:
				b := genBlock(t, "contains")
				if s.Contains(b) != ref[b] {
					t.Fatalf("Contains(%d) = %v, want %v", b, s.Contains(b), ref[b])
				}
			case 5:
				from := genBlock(t, "from")
				to := from + rapid.Uint64Range(0, 3*chunkBlocks).Draw(t, "span")
				if got, want := extents(&s, from, to), refExtents(ref, from, to); !slices.Equal(got, want) {
					t.Fatalf("Extents(%d, %d) = %v, want %v", from, to, got, want)
				}
			case 6:
				clone, cloneRef = s.Clone(), maps.Clone(ref)
			}
			if s.Len() != uint64(len(ref)) {
				t.Fatalf("Len = %d, want %d", s.Len(), len(ref))
			}
			checkChunks(t, &s)
		}
		if got, want := extents(&s, 0, 1<<40), refExtents(ref, 0, 1<<40); !slices.Equal(got, want) {
			t.Fatalf("final extents %v, want %v", got, want)
		}
		if clone != nil {
			checkChunks(t, clone)
			if got, want := extents(clone, 0, 1<<40), refExtents(cloneRef, 0, 1<<40); !slices.Equal(got, want) {
				t.Fatalf("clone changed with the original: %v, want %v", got, want)
			}
		}
	})
}

func TestExtentsStopsEarly(t *testing.T) {
	var s Set
	s.AddRange(0, 10)
	s.AddRange(20, 10)
	s.AddRange(chunkBlocks, chunkBlocks)
	calls := 0
	s.Extents(0, 1<<30, func(b, n uint64) bool { calls++; return false })
	if calls != 1 {
		t.Fatalf("fn called %d times after returning false, want 1", calls)
	}
	if got := extents(&s, 0, 1<<30); len(got) != 3 || got[2] != [2]uint64{chunkBlocks, chunkBlocks} {
		t.Fatalf("extents %v", got)
	}
}

const (
	tibBlocks = 1 << 28 // 4 KiB blocks in a TiB
	// benchBlocks is the scaled-down volume the index benchmarks fill:
	// 1/16 TiB; figures are multiplied by tibBlocks/benchBlocks.
	benchBlocks = 1 << 24
	mib         = 1 << 20
)

func perTiB(sizeBytes uint64) float64 {
	return float64(sizeBytes) * float64(tibBlocks/benchBlocks) / mib
}

// BenchmarkIndexBytesPerTiB reports the memory one layer's index takes
// for a fully written volume, measured on 1/16 TiB and scaled to a TiB.
// Goals: <= 1 MiB/TiB sequential, <= 32 MiB/TiB random (32 MiB is one bit
// per block, the floor for a half-full random set).
func BenchmarkIndexBytesPerTiB(b *testing.B) {
	b.Run("sequential", func(b *testing.B) {
		var size uint64
		for b.Loop() {
			var s Set
			for i := uint64(0); i < benchBlocks; i += 256 { // 1 MiB writes
				s.AddRange(i, 256)
			}
			size = s.SizeBytes()
		}
		b.ReportMetric(perTiB(size), "MiB/TiB-final")
	})
	b.Run("random4KiB", func(b *testing.B) {
		perm := rand.New(rand.NewPCG(1, 2)).Perm(benchBlocks)
		var peak, final uint64
		for b.Loop() {
			var s Set
			peak = 0
			for i, blk := range perm {
				s.Add(uint64(blk))
				if i%(1<<18) == 0 {
					peak = max(peak, s.SizeBytes())
				}
			}
			final = s.SizeBytes()
			peak = max(peak, final)
		}
		b.ReportMetric(perTiB(peak), "MiB/TiB-peak")
		b.ReportMetric(perTiB(final), "MiB/TiB-final")
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/benchBlocks, "ns/add")
	})
}

// BenchmarkSetOps measures Add and Contains on a half-full random chunk
// set (bitmaps), a sparse one (arrays) and a full one.
func BenchmarkSetOps(b *testing.B) {
	for _, fill := range []struct {
		name  string
		every int
	}{{"sparse", 64}, {"half", 2}, {"full", 1}} {
		rng := rand.New(rand.NewPCG(3, 4))
		var s Set
		const span = 16 * chunkBlocks
		for i := 0; i < span; i++ {
			if rng.IntN(fill.every) == 0 {
				s.Add(uint64(i))
			}
		}
		idx := make([]uint64, 4096)
		for i := range idx {
			idx[i] = uint64(rng.IntN(span))
		}
		b.Run("Contains/"+fill.name, func(b *testing.B) {
			n := 0
			for i := 0; b.Loop(); i++ {
				if s.Contains(idx[i&4095]) {
					n++
				}
			}
			_ = fmt.Sprint(n)
		})
		b.Run("Add/"+fill.name, func(b *testing.B) {
			c := s.Clone()
			for i := 0; b.Loop(); i++ {
				c.Add(idx[i&4095])
			}
		})
	}
}
