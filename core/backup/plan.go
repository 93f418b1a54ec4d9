package backup

import (
	"fmt"

	"github.com/drover-io/drover/core/proto"
)

// Plan is what a new backup must do: read the chunks in Read from the
// snapshot; every other chunk is final in Chunks already (taken from the
// parent backup, or zero because the parent did not cover it and nothing
// wrote it since).
type Plan struct {
	SizeBytes  uint64
	ChunkBytes uint32
	Read       []int
	Chunks     []Chunk
}

// PlanFull plans a backup that reads every chunk.
func PlanFull(sizeBytes uint64, chunkBytes uint32) (*Plan, error) {
	if err := checkGeometry(sizeBytes, chunkBytes); err != nil {
		return nil, err
	}
	n := ChunkCount(sizeBytes, chunkBytes)
	p := &Plan{SizeBytes: sizeBytes, ChunkBytes: chunkBytes, Chunks: make([]Chunk, n), Read: make([]int, n)}
	for i := range p.Read {
		p.Read[i] = i
	}
	return p, nil
}

func checkGeometry(sizeBytes uint64, chunkBytes uint32) error {
	if chunkBytes == 0 || chunkBytes%BlockSize != 0 || chunkBytes > maxChunkBytes {
		return fmt.Errorf("chunk size %d: not a multiple of %d up to %d", chunkBytes, BlockSize, maxChunkBytes)
	}
	if sizeBytes%BlockSize != 0 || sizeBytes/uint64(chunkBytes) > maxChunkCount {
		return fmt.Errorf("volume size %d: not a multiple of %d or too large", sizeBytes, BlockSize)
	}
	return nil
}

// PlanIncremental plans a backup of a snapshot whose blocks changed since
// the parent backup's snapshot are in changed (the engine's changed
// extents from the parent's snapshot to the new one). A chunk is read when
// a changed block falls in it, or when its extent differs from the
// parent's (the volume grew past a partial last chunk); otherwise it is
// the parent's chunk, or zero beyond the parent's size.
func PlanIncremental(parent *Manifest, sizeBytes uint64, changed []proto.Extent) (*Plan, error) {
	if err := checkGeometry(sizeBytes, parent.ChunkBytes); err != nil {
		return nil, err
	}
	if sizeBytes < parent.SizeBytes {
		return nil, fmt.Errorf("volume shrank from %d to %d bytes since backup %s", parent.SizeBytes, sizeBytes, parent.ID)
	}
	cb := uint64(parent.ChunkBytes)
	n := ChunkCount(sizeBytes, parent.ChunkBytes)
	read := make([]bool, n)
	for _, x := range changed {
		lo, hi := x.BlockIndex*BlockSize, (x.BlockIndex+x.BlockCount)*BlockSize
		if x.BlockCount == 0 || hi > sizeBytes || hi < lo {
			return nil, fmt.Errorf("changed extent [%d, +%d) beyond %d bytes", x.BlockIndex, x.BlockCount, sizeBytes)
		}
		for c := lo / cb; c*cb < hi; c++ {
			read[c] = true
		}
	}
	p := &Plan{SizeBytes: sizeBytes, ChunkBytes: parent.ChunkBytes, Chunks: make([]Chunk, n)}
	for i := range n {
		off, length := ChunkRange(i, sizeBytes, parent.ChunkBytes)
		switch {
		case read[i]:
		case i < len(parent.Chunks):
			if _, plen := ChunkRange(i, parent.SizeBytes, parent.ChunkBytes); plen != length {
				read[i] = true // a partial last chunk that grew
				break
			}
			p.Chunks[i] = parent.Chunks[i]
		case off >= parent.SizeBytes:
			p.Chunks[i] = Chunk{Zero: true} // grown space nothing wrote
		}
		if read[i] {
			p.Read = append(p.Read, i)
		}
	}
	return p, nil
}

// Apply lists what turning a volume holding backup from (nil: a new,
// zeroed volume) into backup to takes: the chunks whose content differs.
// Chunks to must be zero in are listed too when from had data there.
func Apply(from, to *Manifest) ([]int, error) {
	if from != nil && (from.ChunkBytes != to.ChunkBytes || from.SizeBytes > to.SizeBytes) {
		return nil, fmt.Errorf("backup %s (chunk %d, %d bytes) cannot follow %s (chunk %d, %d bytes)",
			to.ID, to.ChunkBytes, to.SizeBytes, from.ID, from.ChunkBytes, from.SizeBytes)
	}
	var out []int
	for i, c := range to.Chunks {
		old := Chunk{Zero: true}
		if from != nil && i < len(from.Chunks) {
			if _, plen := ChunkRange(i, from.SizeBytes, from.ChunkBytes); plen == uint64(chunkLen(to, i)) {
				old = from.Chunks[i]
			} else {
				old = Chunk{} // partial chunk that grew: rewrite it
			}
		}
		if old.Zero && c.Zero || !old.Zero && !c.Zero && old.Hash == c.Hash && old.Hash != (Hash{}) {
			continue
		}
		out = append(out, i)
	}
	return out, nil
}

func chunkLen(m *Manifest, i int) uint64 {
	_, n := ChunkRange(i, m.SizeBytes, m.ChunkBytes)
	return n
}

// IsZero reports whether data is all zeros.
func IsZero(data []byte) bool {
	for _, b := range data {
		if b != 0 {
			return false
		}
	}
	return true
}
