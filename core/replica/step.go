package replica

import (
	"sort"

	"github.com/drover-io/drover/core/proto"
)

// op is one request (or internal task) waiting for, or holding, its turn.
// Ops that overlap in blocks, one of them writing, run in arrival order;
// barrier ops run alone.
type op struct {
	req      proto.Request
	lo, hi   uint64 // blocks [lo, hi)
	write    bool
	barrier  bool
	inplace  *layer // layer written in place (needs active regions)
	run      func(o *op)
	internal bool
	// entries are a write's index entries, in entryBuf when they fit;
	// entryBuf also takes a whole-layer read's entries from the store.
	entries  []proto.BlockState
	entryBuf [inlineEntries]proto.BlockState
	// acked marks a write answered before its data was written
	// (ackEarly): its req.Data is then the replica's own copy.
	acked bool
}

// inlineEntries is how many index entries an op holds without a slice of
// its own (32 KiB of blocks: most requests).
const inlineEntries = 8

// getOp returns an empty op, reused when one is free.
func (r *Replica) getOp() *op {
	n := len(r.freeOps)
	if n == 0 {
		return &op{}
	}
	o := r.freeOps[n-1]
	r.freeOps[n-1] = nil
	r.freeOps = r.freeOps[:n-1]
	return o
}

// reuseOp puts o on the free list. Only the data path's completion
// handlers call it (data.go), for an op that is finished and that no
// pending IO or closure names any more: its last IO just completed.
func (r *Replica) reuseOp(o *op) {
	for _, x := range r.inflight {
		if x == o {
			panic("replica: reusing an op still in flight")
		}
	}
	if o.acked {
		r.releaseEarly(o)
	}
	*o = op{}
	if len(r.freeOps) < maxQueued {
		r.freeOps = append(r.freeOps, o)
	}
}

// Step feeds one request from the engine.
func (r *Replica) Step(req proto.Request) {
	switch r.state {
	case stateLoading:
		r.replyErr(req.ID, proto.StatusNotReady, "replica %s is still loading", r.cfg.ID)
		return
	case stateFailed:
		r.replyErr(req.ID, proto.StatusIOError, "replica %s failed: %s", r.cfg.ID, r.why)
		return
	}
	if req.Op == proto.OpInfo {
		info := r.Info()
		r.reply(proto.Reply{ID: req.ID, Info: &info})
		return
	}
	// The epoch is checked before duplicates so that a fenced engine hears
	// StatusStaleEpoch, and a request from an epoch never opened cannot
	// advance (epoch, id) past the live engine's requests.
	if st, msg := r.checkEpoch(req); st != proto.StatusOK {
		r.replyErr(req.ID, st, "%s", msg)
		return
	}
	switch {
	case req.Epoch == r.lastEpoch && req.ID <= r.lastID:
		return // a duplicate: the original is or will be answered
	case req.Epoch < r.lastEpoch && !r.cfg.Bugs.AcceptStaleEpochs:
		// An open at lastEpoch is queued: this epoch is as good as fenced.
		r.replyErr(req.ID, proto.StatusStaleEpoch, "epoch %d is below the queued open of epoch %d", req.Epoch, r.lastEpoch)
		return
	case req.Epoch >= r.lastEpoch:
		r.lastEpoch, r.lastID = req.Epoch, req.ID
	}
	// A replica serves an engine only after that engine opened it in this
	// incarnation: after a restart it may have lost unsynced writes the
	// engine believes it holds, so the engine must notice and rebuild it.
	if req.Op == proto.OpOpen {
		r.opened = true
	} else if !r.opened {
		r.replyErr(req.ID, proto.StatusNotReady, "replica %s restarted since it was opened: open it again", r.cfg.ID)
		return
	}
	if len(r.queue) >= maxQueued {
		r.replyErr(req.ID, proto.StatusNotReady, "replica %s is busy: %d requests queued", r.cfg.ID, len(r.queue))
		return
	}
	o, st, msg := r.newOp(req)
	if st != proto.StatusOK {
		rep := proto.Reply{ID: req.ID, Status: st, Err: sprintf("%s: %s", req.Op, msg)}
		if st == proto.StatusCorrupt {
			// The engine looks for that block's copy elsewhere.
			rep.BlockIndex, _ = firstCorrupt(req)
		}
		r.reply(rep)
		return
	}
	r.queue = append(r.queue, o)
	r.schedule()
}

func (r *Replica) checkEpoch(req proto.Request) (proto.Status, string) {
	cur := r.meta.Epoch
	switch {
	case req.Op == proto.OpOpen && req.Epoch >= cur:
		return proto.StatusOK, ""
	case req.Epoch < cur && !r.cfg.Bugs.AcceptStaleEpochs:
		return proto.StatusStaleEpoch, sprintf("epoch %d is below the replica's fence %d", req.Epoch, cur)
	case req.Epoch > cur && req.Op != proto.OpOpen:
		return proto.StatusInvalid, sprintf("epoch %d was never opened here (fenced at %d): send open first", req.Epoch, cur)
	}
	return proto.StatusOK, ""
}

// newOp validates req and wraps it in an op.
func (r *Replica) newOp(req proto.Request) (*op, proto.Status, string) {
	o := r.getOp()
	o.req, o.lo, o.hi = req, req.BlockIndex, req.BlockIndex+uint64(req.BlockCount)
	if req.Op.IsData() && req.Op != proto.OpFlush || req.Op == proto.OpLayerRead ||
		req.Op == proto.OpLayerWrite || req.Op == proto.OpLayerBlocks {
		if msg := r.checkRange(req); msg != "" {
			return nil, proto.StatusInvalid, msg
		}
	}
	switch req.Op {
	case proto.OpRead:
		o.run = r.runReadFn
	case proto.OpSnapRead:
		return r.newSnapRead(o)
	case proto.OpMergeSnapshot, proto.OpListSnapshots:
		return r.newSnapshotOp(o)
	case proto.OpWrite:
		if uint64(len(req.Data)) != uint64(req.BlockCount)*proto.BlockSize {
			return nil, proto.StatusInvalid, sprintf("%d data bytes for %d blocks", len(req.Data), req.BlockCount)
		}
		o.write, o.inplace, o.run = true, r.head(), r.runWriteFn
	case proto.OpTrim, proto.OpWriteZeroes:
		o.write, o.inplace, o.run = true, r.head(), r.runTrimFn
	case proto.OpLayerBlocks, proto.OpLayerRead, proto.OpLayerWrite:
		l, _ := r.layerByName(req.Name)
		if l == nil {
			return nil, proto.StatusNotFound, sprintf("no snapshot %q", req.Name)
		}
		o.run = r.runLayerBlocks
		if req.Op == proto.OpLayerRead {
			o.run = r.runLayerRead
		}
		if req.Op == proto.OpLayerWrite {
			if sharedLayer(l) {
				return nil, proto.StatusInvalid, sprintf("layer %q is a shared backing image: read-only", req.Name)
			}
			if st, msg := checkLayerWrite(req); msg != "" {
				return nil, st, msg
			}
			o.write, o.inplace, o.run = true, l, r.runLayerWrite
		}
	default:
		run := r.controlRunner(req.Op)
		if run == nil {
			return nil, proto.StatusInvalid, "unknown operation"
		}
		o.barrier, o.run = true, run
	}
	return o, proto.StatusOK, ""
}

func (r *Replica) checkRange(req proto.Request) string {
	limit := uint32(maxBlocksPerRequest)
	if req.Op == proto.OpLayerBlocks {
		limit = maxBlocksPerListing // a listing moves no data
	}
	if req.BlockCount == 0 || req.BlockCount > limit {
		return sprintf("block count %d not in 1..%d", req.BlockCount, limit)
	}
	if req.BlockIndex >= r.sizeBlocks() || uint64(req.BlockCount) > r.sizeBlocks()-req.BlockIndex {
		return sprintf("blocks [%d, +%d) beyond the volume's %d blocks", req.BlockIndex, req.BlockCount, r.sizeBlocks())
	}
	return ""
}

// checkLayerWrite checks a layer write's shape (StatusInvalid) and every
// data block against its checksum (StatusCorrupt: the source's copy rotted
// — layer reads do not checksum — or it was damaged on the way).
func checkLayerWrite(req proto.Request) (proto.Status, string) {
	if len(req.Blocks) != int(req.BlockCount) || uint64(len(req.Data)) != uint64(req.BlockCount)*proto.BlockSize {
		return proto.StatusInvalid, sprintf("%d block states and %d bytes for %d blocks", len(req.Blocks), len(req.Data), req.BlockCount)
	}
	for i, b := range req.Blocks {
		if b.BlockIndex != req.BlockIndex+uint64(i) || b.Kind > proto.BlockZero {
			return proto.StatusInvalid, sprintf("block state %d is for block %d kind %d", i, b.BlockIndex, b.Kind)
		}
	}
	if bad, ok := firstCorrupt(req); ok {
		return proto.StatusCorrupt, sprintf("block %d does not match its checksum", bad)
	}
	return proto.StatusOK, ""
}

// firstCorrupt returns the first data block of a well-formed layer write
// whose bytes do not match its checksum.
func firstCorrupt(req proto.Request) (uint64, bool) {
	for i, b := range req.Blocks {
		if b.Kind == proto.BlockData && crcOf(req.Data[i*proto.BlockSize:(i+1)*proto.BlockSize]) != b.CRC {
			return b.BlockIndex, true
		}
	}
	return 0, false
}

func (o *op) conflicts(x *op) bool {
	if o.barrier || x.barrier {
		return true
	}
	return (o.write || x.write) && o.lo < x.hi && x.lo < o.hi
}

// schedule starts every queued op that conflicts with nothing in flight
// and nothing queued before it.
func (r *Replica) schedule() {
	if r.state != stateReady {
		return
	}
	if r.dirtyCount > maxDirtyEntries && !r.flushQueued() {
		r.queue = append([]*op{r.internalFlush()}, r.queue...)
	}
	for i := 0; i < len(r.queue); {
		o := r.queue[i]
		if r.blocked(o, i) {
			if o.barrier {
				return
			}
			i++
			continue
		}
		if o.inplace != nil && !r.claimRegions(o) {
			return // waits for a flush to free activity-log space
		}
		r.queue = append(r.queue[:i], r.queue[i+1:]...)
		r.inflight = append(r.inflight, o)
		if !o.internal && o.req.Epoch < r.meta.Epoch && !r.cfg.Bugs.AcceptStaleEpochs {
			r.replyErr(o.req.ID, proto.StatusStaleEpoch, "epoch %d fenced by %d while queued", o.req.Epoch, r.meta.Epoch)
			r.finish(o)
			continue
		}
		r.startOp(o)
		if r.state != stateReady {
			return
		}
	}
}

func (r *Replica) blocked(o *op, i int) bool {
	for _, x := range r.inflight {
		if o.conflicts(x) {
			return true
		}
	}
	for _, x := range r.queue[:i] {
		if o.conflicts(x) {
			return true
		}
	}
	return false
}

func (r *Replica) flushQueued() bool {
	for _, o := range r.queue {
		if o.internal {
			return true
		}
	}
	return false
}

func (r *Replica) internalFlush() *op {
	return &op{barrier: true, internal: true, run: func(o *op) {
		r.flushAll(r.flushedSeq, func(bool) { r.finish(o) })
	}}
}

// startOp runs o once the regions it writes in place are durably active.
func (r *Replica) startOp(o *op) {
	if o.inplace == nil || r.regionsDurable(o) {
		o.run(o)
		return
	}
	r.writeMeta(func(ok bool) {
		if !ok {
			r.replyErr(o.req.ID, proto.StatusIOError, "record active regions: %s", r.why)
			r.finish(o)
			return
		}
		o.run(o)
	})
}

func (r *Replica) finish(o *op) {
	for i, x := range r.inflight {
		if x == o {
			r.inflight = append(r.inflight[:i], r.inflight[i+1:]...)
			break
		}
	}
}

// regionKeys lists o's regions in a scratch slice, valid until the next
// call.
func (r *Replica) regionKeys(o *op) []RegionKey {
	keys := r.keyBuf[:0]
	for reg := o.lo / RegionBlocks; reg*RegionBlocks < o.hi; reg++ {
		keys = append(keys, RegionKey{Layer: o.inplace.meta.ID, Region: reg})
	}
	r.keyBuf = keys
	return keys
}

func (r *Replica) regionsDurable(o *op) bool {
	for _, k := range r.regionKeys(o) {
		if reg := r.active[k]; reg == nil || !reg.durable {
			return false
		}
	}
	return true
}

// claimRegions marks o's regions active and dirty, evicting clean regions
// when the log is full. It returns false (and queues a flush when nothing
// is in flight) if there is no room yet.
func (r *Replica) claimRegions(o *op) bool {
	keys := r.regionKeys(o)
	need := 0
	for _, k := range keys {
		if r.active[k] == nil {
			need++
		}
	}
	if len(r.active)+need > r.cfg.MaxActiveRegions {
		r.evictClean(len(r.active) + need - r.cfg.MaxActiveRegions)
	}
	if len(r.active)+need > r.cfg.MaxActiveRegions && len(keys) <= r.cfg.MaxActiveRegions {
		if len(r.inflight) == 0 && !r.flushQueued() {
			r.queue = append([]*op{r.internalFlush()}, r.queue...)
			r.schedule()
		}
		return false
	}
	r.activeClock++
	for _, k := range keys {
		reg := r.active[k]
		if reg == nil {
			reg = &region{}
			r.active[k] = reg
		}
		reg.dirty, reg.lastUse = true, r.activeClock
	}
	return true
}

func (r *Replica) evictClean(n int) {
	var clean []RegionKey
	for k, reg := range r.active {
		if !reg.dirty {
			clean = append(clean, k)
		}
	}
	sort.Slice(clean, func(i, j int) bool {
		a, b := r.active[clean[i]], r.active[clean[j]]
		if a.lastUse != b.lastUse {
			return a.lastUse < b.lastUse
		}
		if clean[i].Layer != clean[j].Layer {
			return clean[i].Layer < clean[j].Layer
		}
		return clean[i].Region < clean[j].Region
	})
	for _, k := range clean[:min(n, len(clean))] {
		delete(r.active, k)
	}
}
