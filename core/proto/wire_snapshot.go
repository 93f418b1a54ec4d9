package proto

import "encoding/binary"

// Wire encoding of snapshot attributes and listings (see wire.go):
//
//	attrs    = created i64 | label count u32 | (key string | value string)*
//	snapshot = name string | attrs | data u64 | zero u64 | shadowed u64

func appendAttrs(b []byte, a *SnapshotAttrs) []byte {
	b = binary.LittleEndian.AppendUint64(b, uint64(a.CreatedUnixNano))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(a.Labels)))
	for _, l := range a.Labels {
		b = appendString(b, l.Key)
		b = appendString(b, l.Value)
	}
	return b
}

func appendSnapshots(b []byte, ss []SnapshotInfo) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(ss)))
	for i := range ss {
		s := &ss[i]
		b = appendString(b, s.Name)
		b = appendAttrs(b, &s.Attrs)
		b = appendU64s(b, s.DataBlocks, s.ZeroBlocks, s.ShadowedBlocks)
	}
	return b
}

func (d *decoder) attrs() *SnapshotAttrs {
	a := &SnapshotAttrs{CreatedUnixNano: int64(d.u64("created"))}
	n := d.count(8, "labels") // two empty strings at least
	for i := 0; i < n && d.err == nil; i++ {
		a.Labels = append(a.Labels, Label{Key: d.string("label key"), Value: d.string("label value")})
	}
	return a
}

func (d *decoder) snapshots() []SnapshotInfo {
	n := d.count(4+8+4+24, "snapshots")
	out := make([]SnapshotInfo, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		s := SnapshotInfo{Name: d.string("snapshot name")}
		s.Attrs = *d.attrs()
		s.DataBlocks, s.ZeroBlocks, s.ShadowedBlocks = d.u64("data blocks"), d.u64("zero blocks"), d.u64("shadowed blocks")
		out = append(out, s)
	}
	return out
}
