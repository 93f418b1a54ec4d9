package replica

import (
	"github.com/drover-io/drover/core/proto"
)

// runShrink cuts the replica to o.req.SizeBytes if no layer holds data at
// or beyond it (blocks recorded as zeros may go: they read as zeros
// anyway). Entries beyond the end are made absent and flushed before the
// metadata records the new size, so a later expansion finds nothing
// there; a crash in between leaves the old size with those blocks absent,
// which reads the same.
func (r *Replica) runShrink(o *op) {
	size := o.req.SizeBytes
	switch {
	case size == 0 || size%proto.BlockSize != 0:
		r.fails(o, proto.StatusInvalid, "shrink: size %d is not a positive multiple of %d", size, proto.BlockSize)
		return
	case size > r.meta.SizeBytes:
		r.fails(o, proto.StatusInvalid, "shrink: %d bytes is larger than the volume's %d (expand grows it)", size, r.meta.SizeBytes)
		return
	case size == r.meta.SizeBytes:
		r.done(o, true)
		return
	}
	end := size / proto.BlockSize
	for _, l := range r.layers {
		b, ok := firstDataFrom(l, end, r.sizeBlocks())
		if sharedLayer(l) {
			// Its entries cannot be dropped: any block it holds beyond
			// the end is in the way, even zeros.
			l.held.Extents(end, r.sizeBlocks(), func(start, _ uint64) bool {
				b, ok = start, true
				return false
			})
		}
		if ok {
			name := l.meta.Name
			if name == "" {
				name = "the head"
			} else {
				name = "snapshot " + name
			}
			r.fails(o, proto.StatusInvalid, "shrink to %d bytes: %s holds data at byte %d, beyond the new end", size, name, b*proto.BlockSize)
			return
		}
	}
	r.truncate(end)
	r.meta.Recovered = clipExtents(r.meta.Recovered, end)
	r.meta.Suspect = clipExtents(r.meta.Suspect, end)
	r.flushAll(r.flushedSeq, func(ok bool) {
		if !ok {
			r.done(o, false)
			return
		}
		r.meta.SizeBytes = size
		r.writeMeta(func(ok bool) { r.done(o, ok) })
	})
}

// firstDataFrom returns the first block in [from, to) that l holds as data.
func firstDataFrom(l *layer, from, to uint64) (uint64, bool) {
	found, at := false, uint64(0)
	l.held.Extents(from, to, func(start, n uint64) bool {
		for b := start; b < start+n; b++ {
			if !l.zero.Contains(b) {
				found, at = true, b
				return false
			}
		}
		return true
	})
	return at, found
}

// clipExtents drops what lies at or beyond end.
func clipExtents(xs []proto.Extent, end uint64) []proto.Extent {
	var out []proto.Extent
	for _, x := range xs {
		if x.BlockIndex >= end {
			continue
		}
		x.BlockCount = min(x.BlockCount, end-x.BlockIndex)
		out = append(out, x)
	}
	return out
}
