package replica

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
)

// metaMagic starts every encoded metadata blob ("DRVM").
const metaMagic = 0x4d565244

// metaVersion is the encoding version this package writes. Versions 1
// (no snapshot attributes), 2 (no durable sequences), 3 (no creation
// epochs) and 4 (no retired layers) are still read.
const metaVersion = 5

// maxMetaBytes bounds a blob we are willing to decode.
const maxMetaBytes = 16 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrBadMeta reports metadata that cannot be decoded.
var ErrBadMeta = errors.New("bad replica metadata")

// Meta is everything a replica keeps in its atomic metadata blob.
type Meta struct {
	ID          proto.ReplicaID
	SizeBytes   uint64
	Epoch       uint64
	NextLayerID store.LayerID
	Layers      []LayerMeta // oldest first; the last is the head
	Membership  *proto.Membership
	// Active are the regions that may hold in-place writes not yet synced:
	// after a crash their blocks are checked and settled.
	Active []RegionKey
	// Recovered are head extents settled after a crash that the engine has
	// not yet resynced with the other replicas.
	Recovered []proto.Extent
	// Suspect are head blocks whose checksum the settle recomputed.
	Suspect []proto.Extent
	// FlushedSeq and FUASeq (version 3) are the replica's durable write
	// sequences as of this metadata write. Layers' index headers carry
	// them too, but a chain change (a snapshot deleted or reverted away,
	// a layer reshaped by a rebuild) can drop the layer that held the
	// highest, and an engine's open must never see them go down.
	FlushedSeq uint64
	FUASeq     uint64
	// Created (version 4) is the epoch of the first open of this store
	// (proto.Info.Created); the membership's members carry theirs too.
	Created uint64
	// Retired (version 5) are layers a rebuild's chain change took out of
	// the chain, newest first: kept, unread, as donors for blocks rotted
	// on every other copy, until this replica is RW in a membership.
	Retired []LayerMeta
}

// LayerMeta names one layer.
type LayerMeta struct {
	ID   store.LayerID
	Name string // empty for the head
	// Attrs are the snapshot's creation time and labels (version 2).
	Attrs proto.SnapshotAttrs
}

// RegionKey names one region of one layer.
type RegionKey struct {
	Layer  store.LayerID
	Region uint64
}

type encoder struct{ b []byte }

func (e *encoder) u64(v uint64) { e.b = binary.LittleEndian.AppendUint64(e.b, v) }
func (e *encoder) u8(v uint8)   { e.b = append(e.b, v) }
func (e *encoder) str(s string) { e.u64(uint64(len(s))); e.b = append(e.b, s...) }

// Encode returns m as bytes: magic, version, body length, body, CRC32C of
// everything before the CRC.
func (m *Meta) Encode() []byte {
	var e encoder
	e.str(string(m.ID))
	e.u64(m.SizeBytes)
	e.u64(m.Epoch)
	e.u64(uint64(m.NextLayerID))
	e.u64(uint64(len(m.Layers)))
	for _, l := range m.Layers {
		e.u64(uint64(l.ID))
		e.str(l.Name)
		e.u64(uint64(l.Attrs.CreatedUnixNano))
		e.u64(uint64(len(l.Attrs.Labels)))
		for _, lb := range l.Attrs.Labels {
			e.str(lb.Key)
			e.str(lb.Value)
		}
	}
	if m.Membership == nil {
		e.u8(0)
	} else {
		e.u8(1)
		e.u64(m.Membership.Gen)
		e.u64(m.Membership.Epoch)
		e.u64(uint64(len(m.Membership.Members)))
		for _, x := range m.Membership.Members {
			e.str(string(x.ID))
			e.u8(uint8(x.Mode))
		}
		e.u64(uint64(len(m.Membership.Prev)))
		for _, x := range m.Membership.Prev {
			e.str(string(x.ID))
			e.u8(uint8(x.Mode))
		}
	}
	e.u64(uint64(len(m.Active)))
	for _, a := range m.Active {
		e.u64(uint64(a.Layer))
		e.u64(a.Region)
	}
	e.u64(uint64(len(m.Recovered)))
	for _, x := range m.Recovered {
		e.u64(x.BlockIndex)
		e.u64(x.BlockCount)
	}
	e.u64(uint64(len(m.Suspect)))
	for _, x := range m.Suspect {
		e.u64(x.BlockIndex)
		e.u64(x.BlockCount)
	}
	e.u64(m.FlushedSeq)
	e.u64(m.FUASeq)
	e.u64(m.Created)
	if m.Membership != nil {
		for _, x := range m.Membership.Members {
			e.u64(x.Created)
		}
		for _, x := range m.Membership.Prev {
			e.u64(x.Created)
		}
	}
	e.u64(uint64(len(m.Retired)))
	for _, l := range m.Retired {
		e.u64(uint64(l.ID))
		e.str(l.Name)
	}
	out := make([]byte, 0, 16+len(e.b)+4)
	out = binary.LittleEndian.AppendUint32(out, metaMagic)
	out = binary.LittleEndian.AppendUint32(out, metaVersion)
	out = binary.LittleEndian.AppendUint64(out, uint64(len(e.b)))
	out = append(out, e.b...)
	return binary.LittleEndian.AppendUint32(out, crc32.Checksum(out, castagnoli))
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) u64() uint64 {
	if d.err != nil || len(d.b) < 8 {
		d.fail("truncated")
		return 0
	}
	v := binary.LittleEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

func (d *decoder) u8() uint8 {
	if d.err != nil || len(d.b) < 1 {
		d.fail("truncated")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) str() string {
	n := d.u64()
	if d.err != nil || n > uint64(len(d.b)) {
		d.fail("string length out of range")
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

// count reads a list length and checks it against the bytes left, given
// the minimum encoded size of one element.
func (d *decoder) count(minElemBytes int) int {
	n := d.u64()
	if d.err == nil && n > uint64(len(d.b)/minElemBytes) {
		d.fail("list length out of range")
	}
	if d.err != nil {
		return 0
	}
	return int(n)
}

func (d *decoder) fail(why string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrBadMeta, why)
	}
}

// DecodeMeta parses a blob written by Encode. Any damage is an error
// wrapping ErrBadMeta; it never panics.
func DecodeMeta(b []byte) (*Meta, error) {
	if len(b) < 20 {
		return nil, fmt.Errorf("%w: %d bytes is too short", ErrBadMeta, len(b))
	}
	if len(b) > maxMetaBytes {
		return nil, fmt.Errorf("%w: %d bytes is too long", ErrBadMeta, len(b))
	}
	if binary.LittleEndian.Uint32(b) != metaMagic {
		return nil, fmt.Errorf("%w: bad magic", ErrBadMeta)
	}
	version := binary.LittleEndian.Uint32(b[4:])
	if version < 1 || version > metaVersion {
		return nil, fmt.Errorf("%w: version %d, want 1..%d", ErrBadMeta, version, metaVersion)
	}
	body := binary.LittleEndian.Uint64(b[8:])
	if body != uint64(len(b)-20) {
		return nil, fmt.Errorf("%w: body length %d does not match %d bytes", ErrBadMeta, body, len(b))
	}
	sum := binary.LittleEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(b[:len(b)-4], castagnoli) != sum {
		return nil, fmt.Errorf("%w: checksum mismatch", ErrBadMeta)
	}
	d := &decoder{b: b[16 : len(b)-4]}
	m := &Meta{ID: proto.ReplicaID(d.str()), SizeBytes: d.u64(), Epoch: d.u64(), NextLayerID: store.LayerID(d.u64())}
	for i, n := 0, d.count(16); i < n; i++ {
		l := LayerMeta{ID: store.LayerID(d.u64()), Name: d.str()}
		if version >= 2 {
			l.Attrs.CreatedUnixNano = int64(d.u64())
			for j, k := 0, d.count(16); j < k; j++ {
				l.Attrs.Labels = append(l.Attrs.Labels, proto.Label{Key: d.str(), Value: d.str()})
			}
		}
		m.Layers = append(m.Layers, l)
	}
	if d.u8() == 1 {
		ms := &proto.Membership{Gen: d.u64(), Epoch: d.u64()}
		for i, n := 0, d.count(9); i < n; i++ {
			ms.Members = append(ms.Members, proto.Member{ID: proto.ReplicaID(d.str()), Mode: proto.MemberMode(d.u8())})
		}
		for i, n := 0, d.count(9); i < n; i++ {
			ms.Prev = append(ms.Prev, proto.Member{ID: proto.ReplicaID(d.str()), Mode: proto.MemberMode(d.u8())})
		}
		m.Membership = ms
	}
	for i, n := 0, d.count(16); i < n; i++ {
		m.Active = append(m.Active, RegionKey{Layer: store.LayerID(d.u64()), Region: d.u64()})
	}
	for i, n := 0, d.count(16); i < n; i++ {
		m.Recovered = append(m.Recovered, proto.Extent{BlockIndex: d.u64(), BlockCount: d.u64()})
	}
	for i, n := 0, d.count(16); i < n; i++ {
		m.Suspect = append(m.Suspect, proto.Extent{BlockIndex: d.u64(), BlockCount: d.u64()})
	}
	if version >= 3 {
		m.FlushedSeq, m.FUASeq = d.u64(), d.u64()
	}
	if version >= 4 {
		m.Created = d.u64()
		if ms := m.Membership; ms != nil {
			for i := range ms.Members {
				ms.Members[i].Created = d.u64()
			}
			for i := range ms.Prev {
				ms.Prev[i].Created = d.u64()
			}
		}
	}
	if version >= 5 {
		for i, n := 0, d.count(16); i < n; i++ {
			m.Retired = append(m.Retired, LayerMeta{ID: store.LayerID(d.u64()), Name: d.str()})
		}
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	if d.err != nil {
		return nil, d.err
	}
	if err := m.validate(); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Meta) validate() error {
	if len(m.Layers) == 0 {
		return fmt.Errorf("%w: no layers", ErrBadMeta)
	}
	if m.SizeBytes%proto.BlockSize != 0 {
		return fmt.Errorf("%w: size %d is not a multiple of %d", ErrBadMeta, m.SizeBytes, proto.BlockSize)
	}
	seen := map[store.LayerID]bool{}
	names := map[string]bool{}
	for i, l := range m.Layers {
		if seen[l.ID] || l.ID >= m.NextLayerID {
			return fmt.Errorf("%w: layer id %d repeated or beyond next id %d", ErrBadMeta, l.ID, m.NextLayerID)
		}
		seen[l.ID] = true
		head := i == len(m.Layers)-1
		if head != (l.Name == "") || names[l.Name] {
			return fmt.Errorf("%w: layer %d has bad name %q", ErrBadMeta, l.ID, l.Name)
		}
		names[l.Name] = true
	}
	if len(m.Retired) > proto.MaxRetiredLayers {
		return fmt.Errorf("%w: %d retired layers, at most %d", ErrBadMeta, len(m.Retired), proto.MaxRetiredLayers)
	}
	for _, l := range m.Retired {
		if seen[l.ID] || l.ID >= m.NextLayerID {
			return fmt.Errorf("%w: retired layer id %d repeated or beyond next id %d", ErrBadMeta, l.ID, m.NextLayerID)
		}
		seen[l.ID] = true
	}
	return nil
}
