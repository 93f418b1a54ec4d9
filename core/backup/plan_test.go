package backup

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/drover-io/drover/core/proto"
	"pgregory.net/rapid"
)

// vol is a test volume: its content and the manifest of a backup of it
// built the simple way (every chunk hashed).
func manifestOf(t *rapid.T, id string, data []byte, chunkBytes uint32) *Manifest {
	m := &Manifest{Volume: "v", ID: id, BlockBytes: BlockSize, ChunkBytes: chunkBytes, SizeBytes: uint64(len(data))}
	for i := range ChunkCount(m.SizeBytes, chunkBytes) {
		off, n := ChunkRange(i, m.SizeBytes, chunkBytes)
		m.Chunks = append(m.Chunks, chunkOf(data[off:off+n]))
	}
	if err := m.Check(); err != nil {
		t.Fatalf("check: %v", err)
	}
	return m
}

func chunkOf(data []byte) Chunk {
	if IsZero(data) {
		return Chunk{Zero: true}
	}
	return Chunk{Hash: HashOf(data)}
}

// TestIncrementalPlanMatchesFull: an incremental plan from changed
// extents (a superset of the blocks that changed, as the engine gives),
// with the planned chunks read, equals a full backup of the new content;
// growth past a partial last chunk is handled. Apply then turns the old
// content into the new.
func TestIncrementalPlanMatchesFull(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		chunkBytes := uint32(rapid.IntRange(1, 4).Draw(t, "chunkBlocks")) * BlockSize
		sizeBlocks := rapid.IntRange(1, 40).Draw(t, "sizeBlocks")
		old := make([]byte, sizeBlocks*BlockSize)
		for b := range sizeBlocks {
			if rapid.Bool().Draw(t, "filled") {
				old[b*BlockSize] = byte(rapid.IntRange(1, 3).Draw(t, "v"))
			}
		}
		parent := manifestOf(t, "p", old, chunkBytes)
		grow := rapid.IntRange(0, 6).Draw(t, "grow")
		cur := append(append([]byte(nil), old...), make([]byte, grow*BlockSize)...)
		var changed []proto.Extent
		for range rapid.IntRange(0, 6).Draw(t, "writes") {
			b := rapid.IntRange(0, sizeBlocks+grow-1).Draw(t, "block")
			cur[b*BlockSize] = byte(rapid.IntRange(0, 3).Draw(t, "nv"))
			changed = append(changed, proto.Extent{BlockIndex: uint64(b), BlockCount: 1})
		}
		for range rapid.IntRange(0, 2).Draw(t, "spurious") {
			b := rapid.IntRange(0, sizeBlocks+grow-1).Draw(t, "sblock")
			changed = append(changed, proto.Extent{BlockIndex: uint64(b), BlockCount: 1})
		}
		plan, err := PlanIncremental(parent, uint64(len(cur)), changed)
		if err != nil {
			t.Fatalf("plan: %v", err)
		}
		for _, i := range plan.Read {
			off, n := ChunkRange(i, plan.SizeBytes, chunkBytes)
			plan.Chunks[i] = chunkOf(cur[off : off+n])
		}
		want := manifestOf(t, "n", cur, chunkBytes)
		for i := range want.Chunks {
			if want.Chunks[i] != plan.Chunks[i] {
				t.Fatalf("chunk %d: plan %+v, full %+v (read %v)", i, plan.Chunks[i], want.Chunks[i], plan.Read)
			}
		}
		// Apply: old content + listed chunks of the new = new content.
		got := append(append([]byte(nil), old...), make([]byte, grow*BlockSize)...)
		list, err := Apply(parent, want)
		if err != nil {
			t.Fatalf("apply: %v", err)
		}
		for _, i := range list {
			off, n := ChunkRange(i, want.SizeBytes, chunkBytes)
			copy(got[off:off+n], cur[off:off+n])
		}
		if !bytes.Equal(got, cur) {
			t.Fatalf("apply %v did not reproduce the new content", list)
		}
	})
}

// TestManifestRoundTrip: encode/decode is the identity, and any single
// byte change or truncation is refused with ErrBadManifest.
func TestManifestRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.IntRange(0, 20).Draw(t, "chunks")
		m := &Manifest{Volume: "vol", ID: rapid.StringMatching(`[a-z0-9]{1,20}`).Draw(t, "id"), Snapshot: "s", Parent: "p",
			CreatedUnix: rapid.Int64().Draw(t, "created"), BlockBytes: BlockSize, ChunkBytes: 8 * BlockSize,
			SizeBytes: uint64(n) * 8 * BlockSize, Labels: map[string]string{"k": rapid.String().Draw(t, "label")}}
		for i := range n {
			c := Chunk{Zero: rapid.Bool().Draw(t, "zero")}
			if !c.Zero {
				c.Hash = HashOf([]byte{byte(i)})
				c.StoredBytes = rapid.Uint32().Draw(t, "stored")
			}
			m.Chunks = append(m.Chunks, c)
		}
		b, err := m.Encode()
		if err != nil {
			t.Fatalf("encode: %v", err)
		}
		d, err := DecodeManifest(b)
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		b2, _ := d.Encode()
		if !bytes.Equal(b, b2) {
			t.Fatalf("round trip changed the encoding")
		}
		i := rapid.IntRange(0, len(b)-1).Draw(t, "at")
		bad := append([]byte(nil), b...)
		bad[i] ^= byte(rapid.IntRange(1, 255).Draw(t, "xor"))
		if _, err := DecodeManifest(bad); !errors.Is(err, ErrBadManifest) {
			t.Fatalf("byte %d damaged: %v", i, err)
		}
		if _, err := DecodeManifest(b[:i]); !errors.Is(err, ErrBadManifest) {
			t.Fatalf("truncated to %d: %v", i, err)
		}
	})
}

// FuzzDecodeManifest: decoding never panics, and what decodes re-encodes
// to the same bytes.
func FuzzDecodeManifest(f *testing.F) {
	m := &Manifest{Volume: "v", ID: "1", BlockBytes: BlockSize, ChunkBytes: BlockSize, SizeBytes: 2 * BlockSize,
		Chunks: []Chunk{{Zero: true}, {Hash: HashOf([]byte("x")), StoredBytes: 9}}}
	b, _ := m.Encode()
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeManifest(b)
		if err != nil {
			return
		}
		b2, err := m.Encode()
		if err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("decoded manifest re-encodes differently: %v", err)
		}
	})
}

// FuzzManifestBody fuzzes a manifest's body under a valid checksum (raw
// bytes rarely get past the SHA-256): what a hostile bucket can write.
// An accepted manifest re-encodes to the same bytes, holds no more
// chunks than its bytes encode, and every chunk a restore would write
// lies inside the volume it describes.
func FuzzManifestBody(f *testing.F) {
	m := &Manifest{Volume: "v", ID: "1", BlockBytes: BlockSize, ChunkBytes: 2 * BlockSize, SizeBytes: 3 * BlockSize,
		Labels: map[string]string{"k": "v"}, Chunks: []Chunk{{Zero: true}, {Hash: HashOf([]byte("x")), StoredBytes: 9}}}
	b, _ := m.Encode()
	f.Add(b[len(manifestMagic) : len(b)-sha256.Size])
	f.Fuzz(func(t *testing.T, body []byte) {
		b := append([]byte(manifestMagic), body...)
		sum := sha256.Sum256(b)
		b = append(b, sum[:]...)
		m, err := DecodeManifest(b)
		if err != nil {
			if !errors.Is(err, ErrBadManifest) {
				t.Fatalf("error %v is not ErrBadManifest", err)
			}
			return
		}
		if b2, err := m.Encode(); err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("decoded manifest re-encodes differently: %v", err)
		}
		if len(m.Chunks) > len(body)/chunkEntrySize {
			t.Fatalf("%d chunks from %d bytes", len(m.Chunks), len(body))
		}
		todo, err := Apply(nil, m)
		if err != nil {
			t.Fatalf("apply to a new volume: %v", err)
		}
		for _, i := range todo {
			off, n := ChunkRange(i, m.SizeBytes, m.ChunkBytes)
			if i < 0 || i >= len(m.Chunks) || n == 0 || n > uint64(m.ChunkBytes) || off+n > m.SizeBytes || off+n < off {
				t.Fatalf("chunk %d: [%d, +%d) outside a %d-byte volume", i, off, n, m.SizeBytes)
			}
		}
	})
}
