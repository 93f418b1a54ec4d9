// Package backup holds the pure logic of Drover's backups: how a snapshot
// is cut into chunks, the manifest that lists them (and its encoding), the
// plan of an incremental backup from changed extents, the difference
// between two backups (DR standby volumes apply it), and the decisions of
// the chunk garbage collector. It does no IO: transports/backuprun reads
// snapshots, compresses, hashes and talks to object stores.
//
// Object layout in a backup target (see transports/backuprun):
//
//	chunks/<h[0:2]>/<h>        zstd-compressed chunk named by the SHA-256
//	                           of its uncompressed content
//	backups/<volume>/<id>      manifest, written last: a backup exists once
//	                           its manifest does
//	locks/<kind>-<id>          markers of running backups and sweeps
package backup

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
)

// DefaultChunkBytes is the default chunk size (2 MiB).
const DefaultChunkBytes = 2 << 20

// BlockSize is the unit chunks are made of (the engine's block size).
const BlockSize = 4096

// Limits a manifest must respect; a decoder refuses anything beyond them.
const (
	maxNameBytes   = 255
	maxLabels      = 64
	maxLabelBytes  = 1024
	maxChunkBytes  = 64 << 20
	maxChunkCount  = 1 << 26 // 128 TiB at 2 MiB
	manifestMagic  = "DRVBKUP\x00"
	manifestVer    = 1
	chunkEntrySize = 1 + sha256.Size + 4
)

// MaxChunkBytes is the largest chunk a manifest may describe: what a
// restore is willing to decompress for one chunk.
const MaxChunkBytes = maxChunkBytes

// ErrBadManifest wraps every manifest decoding failure.
var ErrBadManifest = errors.New("bad backup manifest")

// Hash is the SHA-256 of a chunk's uncompressed content.
type Hash [sha256.Size]byte

// String returns the hash in hex.
func (h Hash) String() string { return fmt.Sprintf("%x", h[:]) }

// HashOf returns the hash of a chunk's content.
func HashOf(data []byte) Hash { return sha256.Sum256(data) }

// ParseHash parses a hex hash.
func ParseHash(s string) (Hash, error) {
	var h Hash
	if len(s) != 2*len(h) {
		return h, fmt.Errorf("hash %q: want %d hex digits", s, 2*len(h))
	}
	for i := range h {
		hi, ok1 := unhex(s[2*i])
		lo, ok2 := unhex(s[2*i+1])
		if !ok1 || !ok2 {
			return h, fmt.Errorf("hash %q: not hex", s)
		}
		h[i] = hi<<4 | lo
	}
	return h, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// Chunk is one chunk of a backup: all zeros (not stored), or stored under
// its hash. StoredBytes is the compressed size (for statistics).
type Chunk struct {
	Zero        bool
	Hash        Hash
	StoredBytes uint32
}

// Manifest describes one backup and is self-contained: restoring needs
// only it and the chunks it names. Chunk i covers bytes
// [i*ChunkBytes, min((i+1)*ChunkBytes, SizeBytes)).
type Manifest struct {
	Volume      string
	ID          string // unique in the volume, sortable by creation
	Snapshot    string // the volume snapshot it was read from
	Parent      string // the backup it was incremental to ("" = full)
	CreatedUnix int64  // seconds, set by the driver (the core has no clock)
	SizeBytes   uint64
	BlockBytes  uint32
	ChunkBytes  uint32
	Labels      map[string]string
	Chunks      []Chunk
}

// ChunkCount returns how many chunks cover sizeBytes.
func ChunkCount(sizeBytes uint64, chunkBytes uint32) int {
	return int((sizeBytes + uint64(chunkBytes) - 1) / uint64(chunkBytes))
}

// ChunkRange returns chunk i's byte range in a volume of sizeBytes.
func ChunkRange(i int, sizeBytes uint64, chunkBytes uint32) (off, length uint64) {
	off = uint64(i) * uint64(chunkBytes)
	return off, min(uint64(chunkBytes), sizeBytes-off)
}

// Check validates a manifest's fields.
func (m *Manifest) Check() error {
	switch {
	case m.Volume == "" || len(m.Volume) > maxNameBytes || m.ID == "" || len(m.ID) > maxNameBytes:
		return fmt.Errorf("%w: volume %q and id %q must be 1..%d bytes", ErrBadManifest, m.Volume, m.ID, maxNameBytes)
	case len(m.Snapshot) > maxNameBytes || len(m.Parent) > maxNameBytes:
		return fmt.Errorf("%w: snapshot or parent name too long", ErrBadManifest)
	case m.BlockBytes != BlockSize:
		return fmt.Errorf("%w: block size %d, want %d", ErrBadManifest, m.BlockBytes, BlockSize)
	case m.ChunkBytes == 0 || m.ChunkBytes%m.BlockBytes != 0 || m.ChunkBytes > maxChunkBytes:
		return fmt.Errorf("%w: chunk size %d is not a multiple of %d up to %d", ErrBadManifest, m.ChunkBytes, m.BlockBytes, maxChunkBytes)
	case m.SizeBytes%uint64(m.BlockBytes) != 0:
		return fmt.Errorf("%w: size %d is not a multiple of %d", ErrBadManifest, m.SizeBytes, m.BlockBytes)
	case m.SizeBytes/uint64(m.ChunkBytes) > maxChunkCount:
		return fmt.Errorf("%w: size %d is too large", ErrBadManifest, m.SizeBytes)
	case len(m.Chunks) != ChunkCount(m.SizeBytes, m.ChunkBytes):
		return fmt.Errorf("%w: %d chunks for %d bytes in chunks of %d", ErrBadManifest, len(m.Chunks), m.SizeBytes, m.ChunkBytes)
	case len(m.Labels) > maxLabels:
		return fmt.Errorf("%w: %d labels, at most %d", ErrBadManifest, len(m.Labels), maxLabels)
	}
	for k, v := range m.Labels {
		if len(k) == 0 || len(k)+len(v) > maxLabelBytes {
			return fmt.Errorf("%w: label %q", ErrBadManifest, k)
		}
	}
	return nil
}

// Encode returns the manifest's canonical encoding: magic, version, body,
// and the SHA-256 of all before it.
func (m *Manifest) Encode() ([]byte, error) {
	if err := m.Check(); err != nil {
		return nil, err
	}
	b := append([]byte(manifestMagic), 0, 0, 0, 0)
	binary.LittleEndian.PutUint32(b[len(manifestMagic):], manifestVer)
	for _, s := range []string{m.Volume, m.ID, m.Snapshot, m.Parent} {
		b = appendString(b, s)
	}
	b = binary.LittleEndian.AppendUint64(b, uint64(m.CreatedUnix))
	b = binary.LittleEndian.AppendUint64(b, m.SizeBytes)
	b = binary.LittleEndian.AppendUint32(b, m.BlockBytes)
	b = binary.LittleEndian.AppendUint32(b, m.ChunkBytes)
	keys := make([]string, 0, len(m.Labels))
	for k := range m.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(keys)))
	for _, k := range keys {
		b = appendString(appendString(b, k), m.Labels[k])
	}
	b = binary.LittleEndian.AppendUint64(b, uint64(len(m.Chunks)))
	for _, c := range m.Chunks {
		kind := byte(1)
		if c.Zero {
			kind = 0
		}
		b = append(b, kind)
		b = append(b, c.Hash[:]...)
		b = binary.LittleEndian.AppendUint32(b, c.StoredBytes)
	}
	sum := sha256.Sum256(b)
	return append(b, sum[:]...), nil
}

func appendString(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// DecodeManifest decodes and checks an encoded manifest. Any damage gives
// an error wrapping ErrBadManifest; it never panics.
func DecodeManifest(b []byte) (*Manifest, error) {
	if len(b) < len(manifestMagic)+4+sha256.Size || !bytes.HasPrefix(b, []byte(manifestMagic)) {
		return nil, fmt.Errorf("%w: not a manifest (%d bytes)", ErrBadManifest, len(b))
	}
	body, sum := b[:len(b)-sha256.Size], b[len(b)-sha256.Size:]
	if got := sha256.Sum256(body); !bytes.Equal(got[:], sum) {
		return nil, fmt.Errorf("%w: checksum mismatch", ErrBadManifest)
	}
	d := &decoder{b: body[len(manifestMagic):]}
	if v := d.u32(); v != manifestVer {
		return nil, fmt.Errorf("%w: version %d, this build reads %d", ErrBadManifest, v, manifestVer)
	}
	m := &Manifest{}
	m.Volume, m.ID, m.Snapshot, m.Parent = d.str(), d.str(), d.str(), d.str()
	m.CreatedUnix = int64(d.u64())
	m.SizeBytes, m.BlockBytes, m.ChunkBytes = d.u64(), d.u32(), d.u32()
	if n := d.u32(); n > 0 && n <= maxLabels {
		m.Labels = make(map[string]string, n)
		for range n {
			k := d.str()
			m.Labels[k] = d.str()
		}
	} else if n > maxLabels {
		d.fail("%d labels", n)
	}
	n := d.u64()
	if d.err == nil && n > uint64(len(d.b))/chunkEntrySize {
		d.fail("%d chunks in %d bytes", n, len(d.b))
	}
	if d.err == nil {
		m.Chunks = make([]Chunk, n)
		for i := range m.Chunks {
			e := d.take(chunkEntrySize)
			if e == nil {
				break
			}
			if e[0] > 1 {
				d.fail("chunk %d kind %d", i, e[0])
				break
			}
			m.Chunks[i].Zero = e[0] == 0
			copy(m.Chunks[i].Hash[:], e[1:])
			m.Chunks[i].StoredBytes = binary.LittleEndian.Uint32(e[1+sha256.Size:])
		}
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return nil, d.err
	}
	if err := m.Check(); err != nil {
		return nil, err
	}
	return m, nil
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrBadManifest, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.b) < n {
		d.fail("truncated")
		return nil
	}
	out := d.b[:n]
	d.b = d.b[n:]
	return out
}

func (d *decoder) u32() uint32 {
	if b := d.take(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if b := d.take(8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

func (d *decoder) str() string {
	n := d.u32()
	if n > maxLabelBytes {
		d.fail("string of %d bytes", n)
		return ""
	}
	return string(d.take(int(n)))
}

// Refs returns the distinct chunk hashes a manifest references.
func (m *Manifest) Refs() map[Hash]bool {
	out := make(map[Hash]bool, len(m.Chunks))
	for _, c := range m.Chunks {
		if !c.Zero {
			out[c.Hash] = true
		}
	}
	return out
}
