package replica

import (
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
)

// Intents close the activity log's gap. A write lands in place, and its
// block's index entry changes only at the next flush; a crash in between
// may leave the block's new content under the old checksum. Before any
// data write to the head, its blocks' new checksums are recorded durably
// (store.WriteIntents), tagged with the flushed sequence. After a crash,
// a block of an active region whose data fails its index checksum is
// settled only if the data matches a checksum recorded under the durable
// flushed sequence (a write that landed); anything else is rot and stays
// a corrupt block, repaired from another replica, never served as data.
//
// Writes waiting for their intents are recorded together: one WriteIntents
// IO in flight at a time, carrying every write queued meanwhile (group
// commit), so at queue depth n a durable record costs 1/n of a sync.

// queueIntents holds write o until its blocks' checksums are recorded.
func (r *Replica) queueIntents(o *op) {
	r.intentQueue = append(r.intentQueue, o)
	r.pumpIntents()
}

// pumpIntents records the checksums of every queued write in one IO.
// The batch and its entries reuse the replica's buffers: one batch is in
// flight at a time, and the store copies the entries out.
func (r *Replica) pumpIntents() {
	if r.intentBusy || len(r.intentQueue) == 0 || r.state == stateFailed {
		return
	}
	r.intentBatch, r.intentQueue = r.intentQueue, r.intentBatch[:0]
	h := r.head()
	entries := r.intentEntries[:0]
	// Every queued write started on this head: a chain change is a
	// barrier, which waits for them.
	for _, o := range r.intentBatch {
		entries = append(entries, o.entries...)
	}
	r.intentEntries = entries
	r.intentBusy = true
	r.issueFor(store.IO{Kind: store.WriteIntents, Layer: h.meta.ID, Entries: entries, FlushedSeq: r.flushedSeq}, pendingIO{kind: ioIntents, l: h})
}

// intentsDone issues the data writes of the batch whose intents are now
// recorded (or fails them).
func (r *Replica) intentsDone(l *layer, c store.Completion) {
	r.intentBusy = false
	if c.Err != store.OK {
		// Like a failed sync: what reached the disk is unknown.
		r.fail(sprintf("record write intents: %v %s", c.Err, c.Detail))
	}
	for _, o := range r.intentBatch {
		if r.state == stateFailed {
			if !o.acked {
				r.replyErr(o.req.ID, proto.StatusIOError, "replica failed: %s", r.why)
			}
			r.finish(o)
			r.reuseOp(o)
			continue
		}
		r.issueFor(store.IO{Kind: store.WriteData, Layer: l.meta.ID, BlockIndex: o.lo, Data: o.req.Data}, pendingIO{kind: ioWrite, o: o, l: l})
	}
	clear(r.intentBatch)
	r.intentBatch = r.intentBatch[:0]
	r.pumpIntents()
}

// failIntents answers the writes still waiting for their intents when
// the replica stops.
func (r *Replica) failIntents() {
	for _, o := range r.intentQueue {
		if !o.acked {
			r.replyErr(o.req.ID, proto.StatusIOError, "replica failed: %s", r.why)
		}
		r.finish(o)
		r.reuseOp(o)
	}
	r.intentQueue = nil
}

// loadIntents reads the checksums the head's blocks may hold after the
// crash being settled, then settles the active regions.
func (r *Replica) loadIntents() {
	h := r.head()
	r.issue(store.IO{Kind: store.ReadIntents, Layer: h.meta.ID, FlushedSeq: r.flushedSeq}, func(c store.Completion) {
		if c.Err != store.OK {
			r.fail(sprintf("read write intents of layer %d: %v %s", h.meta.ID, c.Err, c.Detail))
			return
		}
		r.settleIntents = map[uint64][]uint32{}
		for _, e := range c.Entries {
			r.settleIntents[e.BlockIndex] = append(r.settleIntents[e.BlockIndex], e.CRC)
		}
		r.settleActive()
	})
}

// intended reports whether the head's block b may hold data with
// checksum sum after the crash: a write recorded its intent.
func (r *Replica) intended(b uint64, sum uint32) bool {
	if r.cfg.Bugs.SettleAnyChecksum {
		return true
	}
	for _, c := range r.settleIntents[b] {
		if c == sum {
			return true
		}
	}
	return false
}

// Early acknowledgement. Waiting for its intents' sync would put a sync
// on every overwrite's reply (on a disk, the whole of its latency at
// queue depth 1). A write without FUA promises nothing durable before the
// next flush, only that later requests see it; so an overwrite of data
// the head holds is answered as soon as it is queued for its intents,
// and keeps a copy of its data (the driver may reuse the request's
// buffer once it is answered). It stays in flight until its data is
// written: requests that overlap it (reads too) and barriers (a flush,
// an open, a snapshot) wait for it as before, so a read after the answer
// sees it and a flush after it makes it durable. The intents are still
// durable before the data is written. A failure after the answer fails
// the replica: the write it promised is lost, and the engine drops this
// replica. FUA writes, writes over holes or zeros (which may need new
// space, and could fail with ENOSPC), writes over 32 KiB and writes past
// the bound wait for their data as before.

const (
	// maxEarlyAckBytes bounds the data of writes answered early and not
	// yet written (their copies).
	maxEarlyAckBytes = 1 << 20
	// earlyAckMaxBlocks is the largest write answered early (32 KiB): a
	// larger one's intents cost little next to its data, while its copy
	// (1 MiB: 3.6 -> 6.6 ms of CPU per write on 3 replicas over TCP)
	// does not.
	earlyAckMaxBlocks = inlineEntries
)

// ackEarly answers write o at once if it may be (above), taking a copy
// of its data.
func (r *Replica) ackEarly(o *op, h *layer) {
	n := len(o.req.Data)
	if o.req.FUA || n > earlyAckMaxBlocks*proto.BlockSize || r.earlyAckBytes+n > maxEarlyAckBytes {
		return
	}
	for b := o.lo; b < o.hi; b++ {
		if !h.held.Contains(b) || h.zero.Contains(b) {
			return
		}
	}
	var buf []byte
	if k := n / proto.BlockSize; len(r.earlyFree[k]) > 0 {
		free := r.earlyFree[k]
		buf = free[len(free)-1]
		r.earlyFree[k] = free[:len(free)-1]
	} else {
		buf = make([]byte, n)
	}
	copy(buf, o.req.Data)
	o.req.Data, o.acked = buf, true
	r.earlyAckBytes += n
	r.reply(proto.Reply{ID: o.req.ID})
}

// releaseEarly takes back the copy of an early-answered write no IO
// names any more, and keeps it for reuse.
func (r *Replica) releaseEarly(o *op) {
	n := len(o.req.Data)
	r.earlyAckBytes -= n
	if r.earlyAckBytes < 0 {
		panic("replica: early acknowledgements out of balance")
	}
	if k := n / proto.BlockSize; len(r.earlyFree[k])*n < maxEarlyAckBytes {
		r.earlyFree[k] = append(r.earlyFree[k], o.req.Data)
	}
}
