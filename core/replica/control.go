package replica

import (
	"sort"

	"github.com/drover-io/drover/core/blockset"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
)

const maxNameBytes = 255

func (r *Replica) controlRunner(op proto.Op) func(o *op) {
	switch op {
	case proto.OpFlush:
		return r.runFlush
	case proto.OpOpen:
		return r.runOpen
	case proto.OpSetMembership:
		return r.runSetMembership
	case proto.OpSnapshot:
		return r.runSnapshot
	case proto.OpDeleteSnapshot:
		return r.runDeleteSnapshot
	case proto.OpRevert:
		return r.runRevert
	case proto.OpExpand:
		return r.runExpand
	case proto.OpChangedExtents:
		return r.runChangedExtents
	case proto.OpSetChain:
		return r.runSetChain
	case proto.OpSettle:
		return r.runSettle
	case proto.OpShrink:
		return r.runShrink
	case proto.OpSetSnapshotAttrs:
		return r.runSetSnapshotAttrs
	}
	return nil
}

// done replies OK (or with the failure that stopped the replica).
func (r *Replica) done(o *op, ok bool) {
	if ok {
		r.reply(proto.Reply{ID: o.req.ID})
	} else {
		r.replyErr(o.req.ID, proto.StatusIOError, "%s", r.why)
	}
	r.finish(o)
}

func (r *Replica) fails(o *op, st proto.Status, format string, args ...any) {
	r.replyErr(o.req.ID, st, format, args...)
	r.finish(o)
}

// flushAll makes every completed write durable: sync the data of every
// layer written since the last flush, then write and sync their index
// entries (and the head's flushed sequence). Runs as a barrier.
func (r *Replica) flushAll(seq uint64, then func(ok bool)) {
	if r.cfg.Bugs.SkipFlushSync {
		r.flushedSeq = max(r.flushedSeq, seq)
		then(true)
		return
	}
	var syncs, writes, isyncs []store.IO
	for _, id := range sortedLayerIDs(r.dirtyData) {
		syncs = append(syncs, store.IO{Kind: store.SyncData, Layer: id})
	}
	indexLayers := map[store.LayerID]bool{}
	for id := range r.dirty {
		indexLayers[id] = true
	}
	h := r.head().meta.ID
	newSeq := max(r.flushedSeq, seq)
	for _, id := range sortedLayerIDs(indexLayers) {
		writes = append(writes, store.IO{Kind: store.WriteIndex, Layer: id, Entries: sortedEntries(r.dirty[id])})
		isyncs = append(isyncs, store.IO{Kind: store.SyncIndex, Layer: id})
	}
	// The head's flushed sequence is written only once every entry it
	// vouches for is durable: a crash in between must not leave the new
	// sequence over old entries, or a settle would read the write intents
	// of the wrong cycle (write intents are tagged with it) and take a
	// write that landed for rot (sim swarm/242).
	var seqWrite, seqSync []store.IO
	if newSeq != r.flushedSeq {
		seqWrite = []store.IO{{Kind: store.WriteIndex, Layer: h, FlushedSeq: newSeq}}
		seqSync = []store.IO{{Kind: store.SyncIndex, Layer: h}}
	}
	r.inStages([][]store.IO{syncs, writes, isyncs, seqWrite, seqSync}, func(ok bool) {
		if ok {
			clear(r.dirty)
			clear(r.dirtyData)
			r.dirtyCount = 0
			r.flushedSeq = newSeq
			for _, reg := range r.active {
				reg.dirty = false
			}
		}
		then(ok)
	})
}

// inStages runs each stage's IOs concurrently, stage after stage. Any
// failure fails the replica (flush-path errors leave the disk unknown).
func (r *Replica) inStages(stages [][]store.IO, then func(ok bool)) {
	for len(stages) > 0 && len(stages[0]) == 0 {
		stages = stages[1:]
	}
	if len(stages) == 0 {
		then(true)
		return
	}
	left, failed := len(stages[0]), false
	for _, io := range stages[0] {
		r.issue(io, func(c store.Completion) {
			left--
			if c.Err != store.OK && !failed {
				failed = true
				r.fail(sprintf("%v of layer %d: %v %s", io.Kind, io.Layer, c.Err, c.Detail))
			}
			if left == 0 {
				if failed {
					then(false)
				} else {
					r.inStages(stages[1:], then)
				}
			}
		})
	}
}

func sortedLayerIDs[V any](m map[store.LayerID]V) []store.LayerID {
	ids := make([]store.LayerID, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

func sortedEntries(m map[uint64]proto.BlockState) []proto.BlockState {
	out := make([]proto.BlockState, 0, len(m))
	for _, e := range m {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].BlockIndex < out[j].BlockIndex })
	return out
}

func (r *Replica) runFlush(o *op) {
	r.flushAll(o.req.Seq, func(ok bool) { r.done(o, ok) })
}

func (r *Replica) runOpen(o *op) {
	if o.req.Epoch < r.meta.Epoch && !r.cfg.Bugs.AcceptStaleEpochs {
		panic(sprintf("replica invariant: fence epoch would go from %d back to %d", r.meta.Epoch, o.req.Epoch))
	}
	r.meta.Epoch = o.req.Epoch
	if r.meta.Created == 0 {
		r.meta.Created = o.req.Epoch // this store's name from now on
	}
	r.writeMeta(func(ok bool) {
		if !ok {
			r.done(o, false)
			return
		}
		info := r.Info()
		r.reply(proto.Reply{ID: o.req.ID, Info: &info})
		r.finish(o)
	})
}

func (r *Replica) runSetMembership(o *op) {
	m := o.req.Membership
	cur := r.meta.Membership
	switch {
	case m == nil || len(m.Members) == 0:
		r.fails(o, proto.StatusInvalid, "set-membership: empty membership")
		return
	case cur != nil && m.Gen < cur.Gen:
		r.fails(o, proto.StatusStaleEpoch, "set-membership: generation %d is older than recorded %d", m.Gen, cur.Gen)
		return
	}
	r.meta.Membership = m.Clone()
	r.meta.Membership.Epoch = o.req.Epoch
	// RW in a recorded membership: whole again, so the layers a rebuild
	// retired are no longer anyone's last good copy.
	var drop []store.LayerID
	if m.Mode(r.cfg.ID) == proto.ModeRW {
		for _, l := range r.retired {
			drop = append(drop, l.meta.ID)
		}
		r.retired = nil
	}
	r.writeMeta(func(ok bool) {
		if !ok || len(drop) == 0 {
			r.done(o, ok)
			return
		}
		r.removeLayers(o, drop)
	})
}

func (r *Replica) checkNewName(name string) string {
	if name == "" || len(name) > maxNameBytes {
		return sprintf("snapshot name must be 1..%d bytes, got %d", maxNameBytes, len(name))
	}
	if l, _ := r.layerByName(name); l != nil {
		return sprintf("snapshot %q already exists", name)
	}
	return ""
}

func (r *Replica) runSnapshot(o *op) {
	if msg := r.checkNewName(o.req.Name); msg != "" {
		st := proto.StatusInvalid
		if o.req.Name != "" && len(o.req.Name) <= maxNameBytes {
			st = proto.StatusExists
		}
		r.fails(o, st, "snapshot: %s", msg)
		return
	}
	if msg := checkAttrs(o.req.Attrs); msg != "" {
		r.fails(o, proto.StatusInvalid, "snapshot: %s", msg)
		return
	}
	r.flushAll(o.req.Seq, func(ok bool) {
		if !ok {
			r.done(o, false)
			return
		}
		id := r.allocLayer()
		r.issue(store.IO{Kind: store.CreateLayer, Layer: id}, func(c store.Completion) {
			if c.Err != store.OK {
				r.fails(o, proto.StatusIOError, "create layer %d: %v %s", id, c.Err, c.Detail)
				return
			}
			r.head().meta.Name = o.req.Name
			if a := o.req.Attrs.Clone(); a != nil {
				r.head().meta.Attrs = *a
			}
			r.layers = append(r.layers, &layer{meta: LayerMeta{ID: id}})
			r.writeMeta(func(ok bool) { r.done(o, ok) })
		})
	})
}

func (r *Replica) allocLayer() store.LayerID {
	id := r.meta.NextLayerID
	r.meta.NextLayerID++
	return id
}

// runDeleteSnapshot merges a snapshot into its child, batch by batch:
// copy every block the child lacks, make the child durable, then drop the
// snapshot from the chain (one atomic metadata write) and remove its data.
// A crash at any point leaves a valid chain: until the metadata write the
// snapshot still provides every block the child has not got durably.
func (r *Replica) runDeleteSnapshot(o *op) {
	l, i := r.layerByName(o.req.Name)
	if l == nil || l == r.head() || o.req.Name == "" {
		r.fails(o, proto.StatusNotFound, "delete snapshot: no snapshot %q", o.req.Name)
		return
	}
	child := r.layers[i+1]
	r.mergeFrom(o, l, child, 0, r.sizeBlocks(), func() {
		r.flushAll(r.flushedSeq, func(ok bool) {
			if !ok {
				r.done(o, false)
				return
			}
			r.layers = append(r.layers[:i], r.layers[i+1:]...)
			r.forgetLayer(l.meta.ID)
			r.writeMeta(func(ok bool) {
				if !ok {
					r.done(o, false)
					return
				}
				r.removeLayers(o, []store.LayerID{l.meta.ID})
			})
		})
	})
}

// mergeFrom copies blocks of src in [from, to) that dst lacks,
// mergeBatchBlocks at a time.
func (r *Replica) mergeFrom(o *op, src, dst *layer, from, to uint64, then func()) {
	var batch []uint64
	next := to
	src.held.Extents(from, to, func(start, n uint64) bool {
		for b := start; b < start+n; b++ {
			if len(batch) == mergeBatchBlocks {
				next = b
				return false
			}
			if !dst.held.Contains(b) {
				batch = append(batch, b)
			}
		}
		return true
	})
	if len(batch) == 0 && next >= to {
		then()
		return
	}
	var runs []proto.Extent
	for _, b := range batch {
		if src.zero.Contains(b) {
			r.setEntry(dst, proto.BlockState{BlockIndex: b, Kind: proto.BlockZero})
			continue
		}
		runs = appendExtent(runs, proto.Extent{BlockIndex: b, BlockCount: 1})
	}
	r.copyRuns(o, src, dst, runs, func() { r.mergeFrom(o, src, dst, next, to, then) })
}

func (r *Replica) copyRuns(o *op, src, dst *layer, runs []proto.Extent, then func()) {
	if len(runs) == 0 {
		then()
		return
	}
	run := runs[0]
	r.issue(store.IO{Kind: store.ReadData, Layer: src.meta.ID, BlockIndex: run.BlockIndex, BlockCount: run.BlockCount}, func(c store.Completion) {
		if c.Err != store.OK {
			r.fails(o, proto.StatusIOError, "merge read of layer %d: %v %s", src.meta.ID, c.Err, c.Detail)
			return
		}
		if b, why := r.verify(src, c, run.BlockIndex); why != "" {
			r.reply(proto.Reply{ID: o.req.ID, Status: proto.StatusCorrupt, Err: "merge: " + why, BlockIndex: b})
			r.finish(o)
			return
		}
		r.issue(store.IO{Kind: store.WriteData, Layer: dst.meta.ID, BlockIndex: run.BlockIndex, Data: c.Data}, func(w store.Completion) {
			if !r.ioOK(o, w, "merge write") {
				return
			}
			r.dirtyData[dst.meta.ID] = true
			for i := uint64(0); i < run.BlockCount; i++ {
				blk := c.Data[i*proto.BlockSize : (i+1)*proto.BlockSize]
				r.setEntry(dst, proto.BlockState{BlockIndex: run.BlockIndex + i, Kind: proto.BlockData, CRC: crcOf(blk)})
			}
			r.copyRuns(o, src, dst, runs[1:], then)
		})
	})
}

// forgetLayer drops in-memory state of a layer leaving the chain.
func (r *Replica) forgetLayer(id store.LayerID) {
	r.dirtyCount -= len(r.dirty[id])
	delete(r.dirty, id)
	delete(r.dirtyData, id)
	for k := range r.active {
		if k.Layer == id {
			delete(r.active, k)
		}
	}
}

// removeLayers deletes layer storage after the metadata no longer names
// it, then replies. A failed removal leaks space but not correctness.
func (r *Replica) removeLayers(o *op, ids []store.LayerID) {
	left := len(ids)
	if left == 0 {
		r.done(o, true)
		return
	}
	for _, id := range ids {
		r.issue(store.IO{Kind: store.RemoveLayer, Layer: id}, func(store.Completion) {
			left--
			if left == 0 {
				r.done(o, true)
			}
		})
	}
}

func (r *Replica) runRevert(o *op) {
	_, i := r.layerByName(o.req.Name)
	if i < 0 || o.req.Name == "" {
		r.fails(o, proto.StatusNotFound, "revert: no snapshot %q", o.req.Name)
		return
	}
	id := r.allocLayer()
	r.issue(store.IO{Kind: store.CreateLayer, Layer: id}, func(c store.Completion) {
		if c.Err != store.OK {
			r.fails(o, proto.StatusIOError, "create layer %d: %v %s", id, c.Err, c.Detail)
			return
		}
		var dropped []store.LayerID
		for _, l := range r.layers[i+1:] {
			dropped = append(dropped, l.meta.ID)
			r.forgetLayer(l.meta.ID)
		}
		r.layers = append(r.layers[:i+1:i+1], &layer{meta: LayerMeta{ID: id}})
		r.meta.Recovered, r.meta.Suspect = nil, nil // the reverted head holds none of them
		r.writeMeta(func(ok bool) {
			if !ok {
				r.done(o, false)
				return
			}
			r.removeLayers(o, dropped)
		})
	})
}

func (r *Replica) runExpand(o *op) {
	size := o.req.SizeBytes
	switch {
	case size%proto.BlockSize != 0:
		r.fails(o, proto.StatusInvalid, "expand: size %d is not a multiple of %d", size, proto.BlockSize)
	case size < r.meta.SizeBytes:
		r.fails(o, proto.StatusInvalid, "expand: shrinking from %d to %d bytes is not supported", r.meta.SizeBytes, size)
	case size == r.meta.SizeBytes:
		r.done(o, true)
	default:
		r.meta.SizeBytes = size
		r.writeMeta(func(ok bool) { r.done(o, ok) })
	}
}

func (r *Replica) runChangedExtents(o *op) {
	lo, hi := -1, len(r.layers)-1
	if o.req.Name != "" {
		if _, lo = r.layerByName(o.req.Name); lo < 0 || lo == len(r.layers)-1 {
			r.fails(o, proto.StatusNotFound, "changed extents: no snapshot %q", o.req.Name)
			return
		}
	}
	if o.req.Name2 != "" {
		if _, hi = r.layerByName(o.req.Name2); hi < 0 {
			r.fails(o, proto.StatusNotFound, "changed extents: no snapshot %q", o.req.Name2)
			return
		}
	}
	if hi <= lo {
		r.fails(o, proto.StatusInvalid, "changed extents: %q is not older than %q", o.req.Name, o.req.Name2)
		return
	}
	var union blockset.Set
	for _, l := range r.layers[lo+1 : hi+1] {
		l.held.Extents(0, r.sizeBlocks(), func(start, n uint64) bool {
			union.AddRange(start, n)
			return true
		})
	}
	var out []proto.Extent
	union.Extents(0, r.sizeBlocks(), func(start, n uint64) bool {
		out = append(out, proto.Extent{BlockIndex: start, BlockCount: n})
		return true
	})
	r.reply(proto.Reply{ID: o.req.ID, Extents: out})
	r.finish(o)
}

// runSetChain reshapes the snapshot layers to the given names (rebuild
// target): layers with matching names are kept, missing ones created
// empty, others retired; the head stays.
//
// A layer leaving the chain that holds data is retired, not removed: its
// blocks may be the last good copy of ones rotted on the rebuild's source
// (which no check found yet), and the rebuild reads them back through
// OpSnapRead of a RetiredName when the source's copy fails its checksum.
// Retired layers are dropped once this replica is RW in a recorded
// membership (runSetMembership); beyond MaxRetiredLayers, the layers
// retiring now are removed (the older ones were in the chain longer ago,
// when this replica was last whole).
func (r *Replica) runSetChain(o *op) {
	seen := map[string]bool{}
	for _, n := range o.req.Chain {
		if _, retired := proto.RetiredIndex(n); retired {
			r.fails(o, proto.StatusInvalid, "set chain: %q names a retired layer", n)
			return
		}
		if n == "" || seen[n] || len(n) > maxNameBytes {
			r.fails(o, proto.StatusInvalid, "set chain: bad or repeated name %q", n)
			return
		}
		seen[n] = true
	}
	if size := o.req.SizeBytes; size != 0 && size != r.meta.SizeBytes {
		if size%proto.BlockSize != 0 || size > r.meta.SizeBytes {
			r.fails(o, proto.StatusInvalid, "set chain: size %d must be a smaller multiple of %d than %d", size, proto.BlockSize, r.meta.SizeBytes)
			return
		}
		r.truncate(size / proto.BlockSize)
		r.meta.SizeBytes = size
	}
	r.flushAll(r.flushedSeq, func(ok bool) {
		if !ok {
			r.done(o, false)
			return
		}
		byName := map[string]*layer{}
		for _, l := range r.layers[:len(r.layers)-1] {
			byName[l.meta.Name] = l
		}
		var chain []*layer
		var creates []store.IO
		for _, n := range o.req.Chain {
			l := byName[n]
			if l == nil {
				l = &layer{meta: LayerMeta{ID: r.allocLayer(), Name: n}}
				creates = append(creates, store.IO{Kind: store.CreateLayer, Layer: l.meta.ID})
			}
			delete(byName, n)
			chain = append(chain, l)
		}
		var leaving []*layer
		for _, l := range byName {
			leaving = append(leaving, l)
		}
		sort.Slice(leaving, func(i, j int) bool { return leaving[i].meta.ID > leaving[j].meta.ID })
		var dropped []store.LayerID
		var retire []*layer
		for _, l := range leaving {
			if l.held.Len() == 0 || sharedLayer(l) || len(retire)+len(r.retired) >= proto.MaxRetiredLayers {
				dropped = append(dropped, l.meta.ID)
			} else {
				retire = append(retire, l)
			}
		}
		sort.Slice(dropped, func(i, j int) bool { return dropped[i] < dropped[j] })
		r.afterAll(o, creates, "create layer", func() {
			for _, id := range dropped {
				r.forgetLayer(id)
			}
			for _, l := range retire {
				r.forgetLayer(l.meta.ID)
			}
			r.retired = append(retire, r.retired...)
			r.layers = append(chain, r.head())
			r.writeMeta(func(ok bool) {
				if !ok {
					r.done(o, false)
					return
				}
				r.removeLayers(o, dropped)
			})
		})
	})
}

func (r *Replica) runSettle(o *op) {
	r.meta.Recovered, r.meta.Suspect = nil, nil
	r.writeMeta(func(ok bool) { r.done(o, ok) })
}

// truncate forgets every block at or beyond sizeBlocks in every layer, as
// entries the next flush writes as absent: a rebuild target that took an
// expansion the volume never completed is cut back to the volume's size,
// and a later expansion must not find old blocks there.
func (r *Replica) truncate(sizeBlocks uint64) {
	for _, l := range r.layers {
		if sharedLayer(l) {
			continue // read-only; a shrink never cuts into it
		}
		var gone []uint64
		l.held.Extents(sizeBlocks, r.sizeBlocks(), func(start, n uint64) bool {
			for b := start; b < start+n; b++ {
				gone = append(gone, b)
			}
			return true
		})
		for _, b := range gone {
			r.setEntry(l, proto.BlockState{BlockIndex: b, Kind: proto.BlockAbsent})
		}
	}
}
