package replica_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"reflect"
	"testing"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/core/store"
	"pgregory.net/rapid"
)

// genMeta draws a valid Meta (nil for empty lists, as DecodeMeta returns).
func genMeta(t *rapid.T) *replica.Meta {
	m := &replica.Meta{
		ID:        proto.ReplicaID(rapid.StringN(0, 12, -1).Draw(t, "id")),
		SizeBytes: proto.BlockSize * rapid.Uint64Range(0, 1<<40).Draw(t, "sizeBlocks"),
		Epoch:     rapid.Uint64().Draw(t, "epoch"),
	}
	nLayers := rapid.IntRange(1, 6).Draw(t, "layers")
	next := store.LayerID(1)
	for i := range nLayers {
		next += store.LayerID(rapid.Uint64Range(0, 3).Draw(t, "gap"))
		name := ""
		if i < nLayers-1 {
			name = fmt.Sprintf("%s-%d", rapid.StringN(0, 8, -1).Draw(t, "name"), i)
		}
		l := replica.LayerMeta{ID: next, Name: name}
		if name != "" {
			l.Attrs.CreatedUnixNano = rapid.Int64().Draw(t, "created")
			for n := rapid.IntRange(0, 3).Draw(t, "labels"); n > 0; n-- {
				l.Attrs.Labels = append(l.Attrs.Labels, proto.Label{Key: rapid.StringN(0, 6, -1).Draw(t, "lk"), Value: rapid.StringN(0, 6, -1).Draw(t, "lv")})
			}
		}
		m.Layers = append(m.Layers, l)
		next++
	}
	m.NextLayerID = next + store.LayerID(rapid.Uint64Range(0, 5).Draw(t, "nextGap"))
	m.Created = rapid.Uint64().Draw(t, "storeCreated")
	if rapid.Bool().Draw(t, "membership") {
		ms := &proto.Membership{Gen: rapid.Uint64().Draw(t, "gen"), Epoch: rapid.Uint64().Draw(t, "mepoch")}
		for n := rapid.IntRange(0, 4).Draw(t, "members"); n > 0; n-- {
			ms.Members = append(ms.Members, proto.Member{ID: proto.ReplicaID(rapid.StringN(0, 8, -1).Draw(t, "mid")),
				Mode: proto.MemberMode(rapid.Uint8().Draw(t, "mode")), Created: rapid.Uint64().Draw(t, "mcreated")})
		}
		for n := rapid.IntRange(0, 3).Draw(t, "prev"); n > 0; n-- {
			ms.Prev = append(ms.Prev, proto.Member{ID: proto.ReplicaID(rapid.StringN(0, 8, -1).Draw(t, "pid")),
				Mode: proto.MemberMode(rapid.Uint8().Draw(t, "pmode")), Created: rapid.Uint64().Draw(t, "pcreated")})
		}
		m.Membership = ms
	}
	for n := rapid.IntRange(0, 5).Draw(t, "active"); n > 0; n-- {
		m.Active = append(m.Active, replica.RegionKey{Layer: store.LayerID(rapid.Uint64().Draw(t, "al")), Region: rapid.Uint64().Draw(t, "ar")})
	}
	for n := rapid.IntRange(0, proto.MaxRetiredLayers).Draw(t, "retired"); n > 0; n-- {
		m.Retired = append(m.Retired, replica.LayerMeta{ID: m.NextLayerID, Name: rapid.StringN(0, 8, -1).Draw(t, "rname")})
		m.NextLayerID++
	}
	for n := rapid.IntRange(0, 5).Draw(t, "recovered"); n > 0; n-- {
		m.Recovered = append(m.Recovered, proto.Extent{BlockIndex: rapid.Uint64().Draw(t, "rb"), BlockCount: rapid.Uint64().Draw(t, "rc")})
	}
	return m
}

func TestMetaRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		m := genMeta(t)
		enc := m.Encode()
		got, err := replica.DecodeMeta(enc)
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, m)
		}
	})
}

// decodeMustFail requires DecodeMeta to reject b with ErrBadMeta.
func decodeMustFail(t *rapid.T, what string, b []byte) {
	m, err := replica.DecodeMeta(b)
	if err == nil || m != nil || !errors.Is(err, replica.ErrBadMeta) {
		t.Fatalf("%s: DecodeMeta = %v, %v; want ErrBadMeta", what, m, err)
	}
}

// TestDecodeMetaRejectsDamage: truncations, bit flips, appended bytes and
// random blobs are errors wrapping ErrBadMeta, never panics.
func TestDecodeMetaRejectsDamage(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		enc := genMeta(t).Encode()
		cut := rapid.IntRange(0, len(enc)-1).Draw(t, "cut")
		decodeMustFail(t, "truncated", enc[:cut])
		flipped := append([]byte(nil), enc...)
		bit := rapid.IntRange(0, len(enc)*8-1).Draw(t, "bit")
		flipped[bit/8] ^= 1 << (bit % 8)
		decodeMustFail(t, "bit flipped", flipped)
		decodeMustFail(t, "extended", append(append([]byte(nil), enc...), rapid.SliceOfN(rapid.Byte(), 1, 8).Draw(t, "tail")...))
		decodeMustFail(t, "random", rapid.SliceOfN(rapid.Byte(), 0, 300).Draw(t, "random"))
	})
}

// TestDecodeMetaVersion1 reads a blob in the first encoding (no snapshot
// attributes), as replicas created before version 2 hold on disk.
func TestDecodeMetaVersion1(t *testing.T) {
	var body []byte
	u64 := func(v uint64) { body = binary.LittleEndian.AppendUint64(body, v) }
	str := func(s string) { u64(uint64(len(s))); body = append(body, s...) }
	str("r1")
	u64(1 << 20) // size
	u64(7)       // epoch
	u64(3)       // next layer id
	u64(2)       // layers
	u64(1)
	str("snap")
	u64(2)
	str("")
	body = append(body, 0) // no membership
	u64(0)                 // active
	u64(0)                 // recovered
	u64(0)                 // suspect
	blob := binary.LittleEndian.AppendUint32(nil, 0x4d565244)
	blob = binary.LittleEndian.AppendUint32(blob, 1)
	blob = binary.LittleEndian.AppendUint64(blob, uint64(len(body)))
	blob = append(blob, body...)
	blob = binary.LittleEndian.AppendUint32(blob, crc32.Checksum(blob, crc32.MakeTable(crc32.Castagnoli)))
	m, err := replica.DecodeMeta(blob)
	if err != nil {
		t.Fatal(err)
	}
	want := []replica.LayerMeta{{ID: 1, Name: "snap"}, {ID: 2}}
	if m.ID != "r1" || m.SizeBytes != 1<<20 || m.Epoch != 7 || !reflect.DeepEqual(m.Layers, want) {
		t.Fatalf("decoded %+v", m)
	}
	again, err := replica.DecodeMeta(m.Encode())
	if err != nil || !reflect.DeepEqual(again, m) {
		t.Fatalf("re-encoded as version 2: %+v, %v", again, err)
	}
}
