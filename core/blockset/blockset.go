// Package blockset holds Set, a compressed set of block indexes used as the
// per-layer index of which blocks a layer holds.
//
// The set is split into chunks of 65,536 blocks (256 MiB of 4 KiB blocks),
// each stored in the cheapest of three forms, as in Roaring bitmaps:
//
//   - full: every block of the chunk is in the set (no storage);
//   - array: a sorted []uint16 of members while there are at most 4,096;
//   - bitmap: 1,024 uint64 words (8 KiB) otherwise.
//
// A sequentially written TiB is 4,096 full chunks (a few hundred KiB of map
// overhead); the worst case, a half-filled random pattern, is 8 KiB per
// chunk, 32 MiB per TiB, the theoretical one bit per block.
package blockset

import (
	"math/bits"
	"sort"
)

const (
	chunkShift  = 16
	chunkBlocks = 1 << chunkShift
	chunkMask   = chunkBlocks - 1
	arrayMax    = 4096 // members above which an array becomes a bitmap
	bitmapWords = chunkBlocks / 64
)

type chunk struct {
	count  uint32 // members in this chunk
	full   bool
	array  []uint16 // sorted, when !full && bitmap == nil
	bitmap []uint64 // when !full && len(bitmap) == bitmapWords
}

// Set is a set of block indexes. The zero value is an empty set.
type Set struct {
	chunks map[uint64]*chunk
	count  uint64
}

// Len returns the number of blocks in the set.
func (s *Set) Len() uint64 { return s.count }

// Contains reports whether blockIndex is in the set.
func (s *Set) Contains(blockIndex uint64) bool {
	c := s.chunks[blockIndex>>chunkShift]
	if c == nil {
		return false
	}
	return c.contains(uint16(blockIndex & chunkMask))
}

// Add puts blockIndex in the set.
func (s *Set) Add(blockIndex uint64) {
	if s.chunks == nil {
		s.chunks = make(map[uint64]*chunk)
	}
	key := blockIndex >> chunkShift
	c := s.chunks[key]
	if c == nil {
		c = &chunk{}
		s.chunks[key] = c
	}
	if c.add(uint16(blockIndex & chunkMask)) {
		s.count++
	}
}

// Remove takes blockIndex out of the set.
func (s *Set) Remove(blockIndex uint64) {
	key := blockIndex >> chunkShift
	c := s.chunks[key]
	if c == nil {
		return
	}
	if c.remove(uint16(blockIndex & chunkMask)) {
		s.count--
		if c.count == 0 {
			delete(s.chunks, key)
		}
	}
}

// AddRange puts [blockIndex, blockIndex+blockCount) in the set.
func (s *Set) AddRange(blockIndex, blockCount uint64) {
	for blockCount > 0 {
		off := blockIndex & chunkMask
		n := min(blockCount, chunkBlocks-off)
		if off == 0 && n == chunkBlocks {
			s.fillChunk(blockIndex >> chunkShift)
		} else {
			for i := uint64(0); i < n; i++ {
				s.Add(blockIndex + i)
			}
		}
		blockIndex += n
		blockCount -= n
	}
}

// RemoveRange takes [blockIndex, blockIndex+blockCount) out of the set.
func (s *Set) RemoveRange(blockIndex, blockCount uint64) {
	for blockCount > 0 {
		off := blockIndex & chunkMask
		n := min(blockCount, chunkBlocks-off)
		key := blockIndex >> chunkShift
		if c := s.chunks[key]; c != nil {
			if off == 0 && n == chunkBlocks {
				s.count -= uint64(c.count)
				delete(s.chunks, key)
			} else {
				for i := uint64(0); i < n; i++ {
					s.Remove(blockIndex + i)
				}
			}
		}
		blockIndex += n
		blockCount -= n
	}
}

func (s *Set) fillChunk(key uint64) {
	if s.chunks == nil {
		s.chunks = make(map[uint64]*chunk)
	}
	if c := s.chunks[key]; c != nil {
		s.count -= uint64(c.count)
	}
	s.chunks[key] = &chunk{count: chunkBlocks, full: true}
	s.count += chunkBlocks
}

// Extents returns the runs of consecutive members in [from, to), in order.
// Each run is reported as (start, count).
func (s *Set) Extents(from, to uint64, fn func(blockIndex, blockCount uint64) bool) {
	if s.count == 0 || from >= to {
		return
	}
	keys := s.sortedKeys()
	var runStart, runLen uint64
	flush := func() bool {
		if runLen == 0 {
			return true
		}
		ok := fn(runStart, runLen)
		runLen = 0
		return ok
	}
	for _, key := range keys {
		base := key << chunkShift
		if base+chunkBlocks <= from || base >= to {
			continue
		}
		c := s.chunks[key]
		lo := max(from, base) - base
		hi := min(to, base+chunkBlocks) - base
		for i := lo; i < hi; i++ {
			if c.full {
				// Whole span at once.
				if runLen > 0 && runStart+runLen == base+i {
					runLen += hi - i
				} else {
					if !flush() {
						return
					}
					runStart, runLen = base+i, hi-i
				}
				break
			}
			if !c.contains(uint16(i)) {
				continue
			}
			b := base + i
			if runLen > 0 && runStart+runLen == b {
				runLen++
				continue
			}
			if !flush() {
				return
			}
			runStart, runLen = b, 1
		}
	}
	flush()
}

func (s *Set) sortedKeys() []uint64 {
	keys := make([]uint64, 0, len(s.chunks))
	for k := range s.chunks {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	return keys
}

// Clone returns an independent copy of s.
func (s *Set) Clone() *Set {
	c := &Set{count: s.count}
	if s.chunks != nil {
		c.chunks = make(map[uint64]*chunk, len(s.chunks))
		for k, v := range s.chunks {
			n := &chunk{count: v.count, full: v.full}
			n.array = append([]uint16(nil), v.array...)
			if v.bitmap != nil {
				n.bitmap = append([]uint64(nil), v.bitmap...)
			}
			c.chunks[k] = n
		}
	}
	return c
}

// SizeBytes estimates the memory the set holds: container storage plus a
// fixed per-chunk overhead for the map entry and chunk header.
func (s *Set) SizeBytes() uint64 {
	const perChunk = 8 + 8 + 64 // key, pointer, header + map slot share
	var n uint64 = 48
	for _, c := range s.chunks {
		n += perChunk + uint64(cap(c.array))*2 + uint64(cap(c.bitmap))*8
	}
	return n
}

func (c *chunk) contains(i uint16) bool {
	switch {
	case c.full:
		return true
	case c.bitmap != nil:
		return c.bitmap[i>>6]&(1<<(i&63)) != 0
	default:
		j := sort.Search(len(c.array), func(k int) bool { return c.array[k] >= i })
		return j < len(c.array) && c.array[j] == i
	}
}

// add reports whether i was newly added.
func (c *chunk) add(i uint16) bool {
	switch {
	case c.full:
		return false
	case c.bitmap != nil:
		w, m := i>>6, uint64(1)<<(i&63)
		if c.bitmap[w]&m != 0 {
			return false
		}
		c.bitmap[w] |= m
	default:
		j := sort.Search(len(c.array), func(k int) bool { return c.array[k] >= i })
		if j < len(c.array) && c.array[j] == i {
			return false
		}
		c.array = append(c.array, 0)
		copy(c.array[j+1:], c.array[j:])
		c.array[j] = i
		if len(c.array) > arrayMax {
			c.toBitmap()
		}
	}
	c.count++
	if c.count == chunkBlocks {
		c.full, c.array, c.bitmap = true, nil, nil
	}
	return true
}

// remove reports whether i was present.
func (c *chunk) remove(i uint16) bool {
	if c.full {
		c.full = false
		c.bitmap = make([]uint64, bitmapWords)
		for w := range c.bitmap {
			c.bitmap[w] = ^uint64(0)
		}
	}
	switch {
	case c.bitmap != nil:
		w, m := i>>6, uint64(1)<<(i&63)
		if c.bitmap[w]&m == 0 {
			return false
		}
		c.bitmap[w] &^= m
		c.count--
		if c.count <= arrayMax/2 {
			c.toArray()
		}
	default:
		j := sort.Search(len(c.array), func(k int) bool { return c.array[k] >= i })
		if j >= len(c.array) || c.array[j] != i {
			return false
		}
		c.array = append(c.array[:j], c.array[j+1:]...)
		c.count--
	}
	return true
}

func (c *chunk) toBitmap() {
	c.bitmap = make([]uint64, bitmapWords)
	for _, i := range c.array {
		c.bitmap[i>>6] |= 1 << (i & 63)
	}
	c.array = nil
}

func (c *chunk) toArray() {
	arr := make([]uint16, 0, c.count)
	for w, word := range c.bitmap {
		for word != 0 {
			t := bits.TrailingZeros64(word)
			arr = append(arr, uint16(w*64+t))
			word &= word - 1
		}
	}
	c.array, c.bitmap = arr, nil
}
