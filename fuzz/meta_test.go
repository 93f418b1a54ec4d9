// Package fuzz holds fuzz targets for Drover's parsers and core.
package fuzz

import (
	"bytes"
	"errors"
	"testing"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
)

// FuzzDecodeMeta: DecodeMeta never panics, rejects with ErrBadMeta, and
// what it accepts re-encodes to the same bytes.
func FuzzDecodeMeta(f *testing.F) {
	seeds := []*replica.Meta{
		{ID: "r1", SizeBytes: 1 << 30, NextLayerID: 2, Layers: []replica.LayerMeta{{ID: 1}}},
		{ID: "r2", SizeBytes: 4096, Epoch: 7, NextLayerID: 5,
			Layers:     []replica.LayerMeta{{ID: 1, Name: "a"}, {ID: 3, Name: "b"}, {ID: 4}},
			Membership: &proto.Membership{Gen: 3, Epoch: 7, Members: []proto.Member{{ID: "r1", Mode: proto.ModeRW}, {ID: "r2", Mode: proto.ModeWO}}},
			Active:     []replica.RegionKey{{Layer: 4, Region: 0}, {Layer: 4, Region: 9}},
			Recovered:  []proto.Extent{{BlockIndex: 0, BlockCount: 1024}}},
	}
	for _, m := range seeds {
		enc := m.Encode()
		f.Add(enc)
		f.Add(enc[:len(enc)/2])
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := replica.DecodeMeta(b)
		if err != nil {
			if m != nil || !errors.Is(err, replica.ErrBadMeta) {
				t.Fatalf("DecodeMeta = %v, %v: want nil and ErrBadMeta", m, err)
			}
			return
		}
		if enc := m.Encode(); !bytes.Equal(enc, b) {
			t.Fatalf("accepted blob re-encodes differently:\n in %x\nout %x", b, enc)
		}
	})
}
