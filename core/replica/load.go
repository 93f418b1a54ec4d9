package replica

import (
	"fmt"
	"sort"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
)

// load reads the metadata, then every layer's index, then settles the
// active regions left by a crash.
func (r *Replica) load() {
	r.issue(store.IO{Kind: store.ReadMeta}, func(c store.Completion) {
		if c.Err != store.OK {
			r.fail(fmt.Sprintf("read metadata: %v %s", c.Err, c.Detail))
			return
		}
		if c.Meta == nil {
			r.create()
			return
		}
		m, err := DecodeMeta(c.Meta)
		if err != nil {
			r.fail(fmt.Sprintf("replica %s: %v", r.cfg.ID, err))
			return
		}
		r.meta = *m
		r.flushedSeq, r.fuaSeq = m.FlushedSeq, m.FUASeq
		r.layers, r.retired = nil, nil
		for _, lm := range m.Layers {
			r.layers = append(r.layers, &layer{meta: lm})
		}
		for _, lm := range m.Retired {
			r.retired = append(r.retired, &layer{meta: lm})
		}
		r.loadIndexes(0)
	})
}

func (r *Replica) create() {
	size := r.cfg.CreateSizeBytes
	if size == 0 || size%proto.BlockSize != 0 {
		r.fail(fmt.Sprintf("replica %s has no metadata and no valid size to create it with (%d bytes)", r.cfg.ID, size))
		return
	}
	if r.cfg.Backing != nil {
		r.createOnBacking(size)
		return
	}
	r.meta = Meta{ID: r.cfg.ID, SizeBytes: size, NextLayerID: 2, Layers: []LayerMeta{{ID: 1}}}
	r.layers = []*layer{{meta: r.meta.Layers[0]}}
	r.issue(store.IO{Kind: store.CreateLayer, Layer: 1}, func(c store.Completion) {
		if c.Err != store.OK {
			r.fail(fmt.Sprintf("create head layer: %v %s", c.Err, c.Detail))
			return
		}
		r.writeMeta(func(ok bool) {
			if ok {
				r.state = stateReady
			}
		})
	})
}

// loadIndexes reads the index of every layer of the chain, then of every
// retired layer.
func (r *Replica) loadIndexes(i int) {
	if i == len(r.layers)+len(r.retired) {
		r.loadIntents()
		return
	}
	var l *layer
	if i < len(r.layers) {
		l = r.layers[i]
	} else {
		l = r.retired[i-len(r.layers)]
	}
	r.issue(store.IO{Kind: store.ReadIndex, Layer: l.meta.ID, BlockCount: r.sizeBlocks()}, func(c store.Completion) {
		if c.Err != store.OK && r.cfg.Bugs.IgnoreIndexDamage {
			c = store.Completion{}
		}
		if c.Err != store.OK {
			r.fail(fmt.Sprintf("read index of layer %d: %v %s", l.meta.ID, c.Err, c.Detail))
			return
		}
		for _, e := range c.Entries {
			if e.BlockIndex >= r.sizeBlocks() {
				continue // beyond the size: left by a shrink we refuse; ignore
			}
			l.held.Add(e.BlockIndex)
			l.indexed.Add(e.BlockIndex)
			if e.Kind == proto.BlockZero {
				l.zero.Add(e.BlockIndex)
			}
		}
		// Take the highest: a snapshot's flush records the sequence in the
		// layer it freezes, and the new head has none until its own flush.
		r.flushedSeq = max(r.flushedSeq, c.FlushedSeq)
		r.fuaSeq = max(r.fuaSeq, c.FUASeq)
		r.loadIndexes(i + 1)
	})
}

// settleActive checks every block of every active region (one region at a
// time) and recomputes checksums that fail in the head: such a block holds
// a whole unsynced overwrite or the synced content, either of which a
// client may see after a crash.
func (r *Replica) settleActive() {
	keys := append([]RegionKey(nil), r.meta.Active...)
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].Layer != keys[j].Layer {
			return keys[i].Layer < keys[j].Layer
		}
		return keys[i].Region < keys[j].Region
	})
	r.settleRegions(keys)
}

func (r *Replica) settleRegions(keys []RegionKey) {
	if len(keys) == 0 {
		r.settleIntents = nil
		r.meta.Active = nil
		r.writeMeta(func(ok bool) {
			if ok {
				r.state = stateReady
			}
		})
		return
	}
	k := keys[0]
	var l *layer
	for _, x := range r.layers {
		if x.meta.ID == k.Layer {
			l = x
		}
	}
	start := k.Region * RegionBlocks
	// Only the head is settled. Snapshot layers are written in place only
	// by a rebuild, which compares checksums again when it reruns; a
	// mismatch there stays a corrupt block (repaired from another
	// replica) rather than being declared good (sim seed 72: bit rot in a
	// snapshot layer's active region was settled into garbage).
	if l == nil || l != r.head() || start >= r.sizeBlocks() {
		r.settleRegions(keys[1:])
		return
	}
	n := min(uint64(RegionBlocks), r.sizeBlocks()-start)
	r.issue(store.IO{Kind: store.ReadData, Layer: l.meta.ID, BlockIndex: start, BlockCount: n}, func(c store.Completion) {
		if c.Err != store.OK {
			r.fail(fmt.Sprintf("settle layer %d region %d: %v %s", l.meta.ID, k.Region, c.Err, c.Detail))
			return
		}
		var fixes []proto.BlockState
		for i, e := range c.Entries {
			if e.Kind != proto.BlockData {
				continue
			}
			block := c.Data[i*proto.BlockSize : (i+1)*proto.BlockSize]
			sum := crcOf(block)
			if sum == e.CRC {
				continue
			}
			switch {
			case (r.intended(e.BlockIndex, sum) || r.cfg.Bugs.SettleZerosAsTrims) && allZero(block):
				// A trim's hole (or a write of zeros) that landed before
				// its index entry. Recorded as zeros, as the model
				// records it: it reads the same, and it is not data a
				// shrink would cut off.
				fixes = append(fixes, proto.BlockState{BlockIndex: e.BlockIndex, Kind: proto.BlockZero})
				l.zero.Add(e.BlockIndex)
			case r.intended(e.BlockIndex, sum):
				// A write that landed before its index entry: new
				// content, whole (its intent was recorded first).
				fixes = append(fixes, proto.BlockState{BlockIndex: e.BlockIndex, Kind: proto.BlockData, CRC: sum})
			default:
				// Neither the synced content nor a recorded write: rot.
				// The entry stays, so the block reads as corrupt and is
				// repaired from another replica; suspect, so that the
				// engine's open looks for that copy at once.
				r.rotFound++
				r.meta.Suspect = mergeExtent(r.meta.Suspect, proto.Extent{BlockIndex: e.BlockIndex, BlockCount: 1})
			}
		}
		if l == r.head() {
			r.meta.Recovered = mergeExtent(r.meta.Recovered, proto.Extent{BlockIndex: start, BlockCount: n})
		}
		if len(fixes) == 0 {
			r.settleRegions(keys[1:])
			return
		}
		r.issue(store.IO{Kind: store.WriteIndex, Layer: l.meta.ID, Entries: fixes}, func(c store.Completion) {
			if c.Err != store.OK {
				r.fail(fmt.Sprintf("settle index of layer %d: %v %s", l.meta.ID, c.Err, c.Detail))
				return
			}
			r.issue(store.IO{Kind: store.SyncIndex, Layer: l.meta.ID}, func(c store.Completion) {
				if c.Err != store.OK {
					r.fail(fmt.Sprintf("sync settled index of layer %d: %v %s", l.meta.ID, c.Err, c.Detail))
					return
				}
				r.settleRegions(keys[1:])
			})
		})
	})
}

// mergeExtent adds x to a sorted list of disjoint extents, coalescing.
func mergeExtent(list []proto.Extent, x proto.Extent) []proto.Extent {
	out := make([]proto.Extent, 0, len(list)+1)
	placed := false
	for _, e := range list {
		if !placed && x.BlockIndex < e.BlockIndex {
			out = appendExtent(out, x)
			placed = true
		}
		out = appendExtent(out, e)
	}
	if !placed {
		out = appendExtent(out, x)
	}
	return out
}

func appendExtent(out []proto.Extent, x proto.Extent) []proto.Extent {
	if n := len(out); n > 0 && out[n-1].BlockIndex+out[n-1].BlockCount >= x.BlockIndex {
		last := &out[n-1]
		end := max(last.BlockIndex+last.BlockCount, x.BlockIndex+x.BlockCount)
		last.BlockCount = end - last.BlockIndex
		return out
	}
	return append(out, x)
}

// writeMeta persists r.meta (with the current layers and active regions).
// Writes are serialized; callers queued while one is in flight are served
// by the next write, which includes their changes.
func (r *Replica) writeMeta(then func(ok bool)) {
	if r.metaBusy {
		r.metaQueued = append(r.metaQueued, then)
		return
	}
	r.metaBusy = true
	r.metaWaiters = append(r.metaWaiters, then)
	r.meta.Layers = r.meta.Layers[:0]
	for _, l := range r.layers {
		r.meta.Layers = append(r.meta.Layers, l.meta)
	}
	r.meta.Retired = r.meta.Retired[:0]
	for _, l := range r.retired {
		r.meta.Retired = append(r.meta.Retired, l.meta)
	}
	// Only durable sequences are in memory (they are set once the flush
	// or FUA write completed), so recording them here promises nothing
	// the disk does not hold.
	r.meta.FlushedSeq, r.meta.FUASeq = r.flushedSeq, r.fuaSeq
	if r.state != stateLoading {
		r.meta.Active = r.activeKeys()
	}
	included := map[RegionKey]*region{}
	for k, v := range r.active {
		included[k] = v
	}
	r.issue(store.IO{Kind: store.WriteMeta, Meta: r.meta.Encode()}, func(c store.Completion) {
		r.metaBusy = false
		ok := c.Err == store.OK
		if !ok {
			r.fail(fmt.Sprintf("write metadata: %v %s", c.Err, c.Detail))
		}
		for _, reg := range included {
			reg.durable = reg.durable || ok
		}
		waiters := r.metaWaiters
		r.metaWaiters = nil
		for _, w := range waiters {
			w(ok)
		}
		if q := r.metaQueued; len(q) > 0 && r.state != stateFailed {
			r.metaQueued = nil
			r.writeMeta(func(ok bool) {
				for _, w := range q {
					w(ok)
				}
			})
		}
	})
}

func (r *Replica) activeKeys() []RegionKey {
	keys := make([]RegionKey, 0, len(r.active))
	for k := range r.active {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].Layer != keys[j].Layer {
			return keys[i].Layer < keys[j].Layer
		}
		return keys[i].Region < keys[j].Region
	})
	return keys
}

// allZero reports whether b holds only zero bytes.
func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
