package replica_test

import (
	"errors"
	"fmt"
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
		m.Layers = append(m.Layers, replica.LayerMeta{ID: next, Name: name})
		next++
	}
	m.NextLayerID = next + store.LayerID(rapid.Uint64Range(0, 5).Draw(t, "nextGap"))
	if rapid.Bool().Draw(t, "membership") {
		ms := &proto.Membership{Gen: rapid.Uint64().Draw(t, "gen"), Epoch: rapid.Uint64().Draw(t, "mepoch")}
		for n := rapid.IntRange(0, 4).Draw(t, "members"); n > 0; n-- {
			ms.Members = append(ms.Members, proto.Member{ID: proto.ReplicaID(rapid.StringN(0, 8, -1).Draw(t, "mid")),
				Mode: proto.MemberMode(rapid.Uint8().Draw(t, "mode"))})
		}
		m.Membership = ms
	}
	for n := rapid.IntRange(0, 5).Draw(t, "active"); n > 0; n-- {
		m.Active = append(m.Active, replica.RegionKey{Layer: store.LayerID(rapid.Uint64().Draw(t, "al")), Region: rapid.Uint64().Draw(t, "ar")})
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
