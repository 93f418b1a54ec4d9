package replica

import (
	"sort"

	"github.com/drover-io/drover/core/blockset"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
)

const (
	// maxLabels bounds the labels on one snapshot.
	maxLabels = 64
	// maxLabelBytes bounds a label key or value.
	maxLabelBytes = 255
)

// newSnapshotOp validates OpMergeSnapshot and OpListSnapshots. Neither is
// a barrier: a merge window holds only writes to its range (it copies
// blocks of a read-only snapshot into its child where the child has none,
// which changes no view), and a listing reads only in-memory sets.
func (r *Replica) newSnapshotOp(o *op) (*op, proto.Status, string) {
	req := o.req
	if req.Op == proto.OpListSnapshots {
		o.lo, o.hi, o.run = 0, 0, r.runListSnapshots
		return o, proto.StatusOK, ""
	}
	if req.BlockCount == 0 || req.BlockCount > maxBlocksPerListing {
		return nil, proto.StatusInvalid, sprintf("block count %d not in 1..%d", req.BlockCount, maxBlocksPerListing)
	}
	if req.BlockIndex >= r.sizeBlocks() {
		return nil, proto.StatusInvalid, sprintf("block %d beyond the volume's %d blocks", req.BlockIndex, r.sizeBlocks())
	}
	if l, i := r.layerByName(req.Name); l == nil || req.Name == "" || i == len(r.layers)-1 {
		return nil, proto.StatusNotFound, sprintf("no snapshot %q", req.Name)
	}
	o.hi = min(o.hi, r.sizeBlocks())
	o.write, o.run = true, r.runMergeWindow
	return o, proto.StatusOK, ""
}

// runMergeWindow copies the blocks in [o.lo, o.hi) that snapshot Name
// holds and its child lacks into the child, then makes the child's
// entries in the window durable before it answers (syncWindow). Until
// then, and after a crash, the snapshot still provides them.
func (r *Replica) runMergeWindow(o *op) {
	// A barrier queued before this op (delete, revert, set-chain) may have
	// changed the chain since newSnapshotOp looked: look again.
	src, i := r.layerByName(o.req.Name)
	if src == nil || i == len(r.layers)-1 {
		r.fails(o, proto.StatusNotFound, "merge snapshot: no snapshot %q", o.req.Name)
		return
	}
	hi := min(o.hi, r.sizeBlocks())
	dst := r.layers[i+1]
	r.mergeFrom(o, src, dst, o.lo, hi, func() {
		r.syncWindow(dst, o.lo, hi, func(ok bool) { r.done(o, ok) })
	})
}

// syncWindow makes l's unflushed entries in [lo, hi) durable: its data
// synced, then those entries written and synced. A merge window does
// this before it answers, so that the merged blocks never pile up for
// the snapshot delete's final flush to sync at once: for the rebuild
// snapshot of a 2 GiB volume, that was up to the whole volume per
// replica in one call, which under disk load outlasted the engine's call
// timeout on every replica, and the snapshot was never merged away. Not
// a barrier: the window holds every write to [lo, hi), so no entry there
// changes meanwhile; writes elsewhere go on, and their entries stay
// dirty for the next flush. Entries written here may belong to client
// writes not yet flushed: making them durable early is allowed (their
// data is synced first), and the flushed sequence does not move.
func (r *Replica) syncWindow(l *layer, lo, hi uint64, then func(ok bool)) {
	var entries []proto.BlockState
	for b, e := range r.dirty[l.meta.ID] {
		if b >= lo && b < hi {
			entries = append(entries, e)
		}
	}
	if len(entries) == 0 || r.cfg.Bugs.SkipFlushSync {
		then(true)
		return
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].BlockIndex < entries[j].BlockIndex })
	id := l.meta.ID
	stages := [][]store.IO{
		{{Kind: store.SyncData, Layer: id}},
		{{Kind: store.WriteIndex, Layer: id, Entries: entries}},
		{{Kind: store.SyncIndex, Layer: id}},
	}
	r.inStages(stages, func(ok bool) {
		if ok {
			m := r.dirty[id]
			for _, e := range entries {
				delete(m, e.BlockIndex)
			}
			r.dirtyCount -= len(entries)
		}
		then(ok)
	})
}

// checkAttrs bounds what a snapshot request may store in the metadata.
func checkAttrs(a *proto.SnapshotAttrs) string {
	if a == nil {
		return ""
	}
	if len(a.Labels) > maxLabels {
		return sprintf("%d labels, at most %d", len(a.Labels), maxLabels)
	}
	for _, l := range a.Labels {
		if l.Key == "" || len(l.Key) > maxLabelBytes || len(l.Value) > maxLabelBytes {
			return sprintf("label %q: key must be 1..%d bytes and value at most %d", l.Key, maxLabelBytes, maxLabelBytes)
		}
	}
	return ""
}

func (r *Replica) runListSnapshots(o *op) {
	out := make([]proto.SnapshotInfo, 0, len(r.layers))
	for i, l := range r.layers {
		s := proto.SnapshotInfo{Name: l.meta.Name, Attrs: *l.meta.Attrs.Clone()}
		s.ZeroBlocks = l.zero.Len()
		s.DataBlocks = l.held.Len() - s.ZeroBlocks
		if i+1 < len(r.layers) {
			child := &r.layers[i+1].held
			s.ShadowedBlocks = intersectLen(&l.held, child, r.sizeBlocks()) - intersectLen(&l.zero, child, r.sizeBlocks())
		}
		out = append(out, s)
	}
	r.reply(proto.Reply{ID: o.req.ID, Snapshots: out})
	r.finish(o)
}

// intersectLen counts the blocks below sizeBlocks in both a and b by
// merging their runs.
func intersectLen(a, b *blockset.Set, sizeBlocks uint64) uint64 {
	runs := func(s *blockset.Set) []proto.Extent {
		var out []proto.Extent
		s.Extents(0, sizeBlocks, func(start, count uint64) bool {
			out = append(out, proto.Extent{BlockIndex: start, BlockCount: count})
			return true
		})
		return out
	}
	ra, rb := runs(a), runs(b)
	var n uint64
	for i, j := 0, 0; i < len(ra) && j < len(rb); {
		x, y := ra[i], rb[j]
		lo := max(x.BlockIndex, y.BlockIndex)
		hi := min(x.BlockIndex+x.BlockCount, y.BlockIndex+y.BlockCount)
		if hi > lo {
			n += hi - lo
		}
		if x.BlockIndex+x.BlockCount < y.BlockIndex+y.BlockCount {
			i++
		} else {
			j++
		}
	}
	return n
}

// runSetSnapshotAttrs replaces snapshot Name's attributes (one metadata
// write).
func (r *Replica) runSetSnapshotAttrs(o *op) {
	l, i := r.layerByName(o.req.Name)
	switch {
	case l == nil || o.req.Name == "" || i == len(r.layers)-1:
		r.fails(o, proto.StatusNotFound, "set snapshot attributes: no snapshot %q", o.req.Name)
		return
	case o.req.Attrs == nil:
		r.fails(o, proto.StatusInvalid, "set snapshot attributes: none given")
		return
	}
	if msg := checkAttrs(o.req.Attrs); msg != "" {
		r.fails(o, proto.StatusInvalid, "set snapshot attributes: %s", msg)
		return
	}
	l.meta.Attrs = *o.req.Attrs.Clone()
	r.writeMeta(func(ok bool) { r.done(o, ok) })
}
