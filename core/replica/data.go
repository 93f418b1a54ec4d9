package replica

import (
	"fmt"
	"sort"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
)

func sprintf(format string, args ...any) string { return fmt.Sprintf(format, args...) }

// resolve returns the newest layer holding block b, or nil.
func (r *Replica) resolve(b uint64) *layer { return r.resolveAt(len(r.layers)-1, b) }

// resolveAt returns the newest layer at or below index top holding block
// b, or nil.
func (r *Replica) resolveAt(top int, b uint64) *layer {
	for i := top; i >= 0; i-- {
		if r.layers[i].held.Contains(b) {
			return r.layers[i]
		}
	}
	return nil
}

// layerRun is a run of blocks to read from one layer.
type layerRun struct {
	l        *layer
	start, n uint64
}

// runsFor groups [lo, hi) into runs of blocks whose data lives in one layer;
// blocks that read as zeros are skipped. The slice is scratch, valid until
// the next call.
func (r *Replica) runsFor(lo, hi uint64) []layerRun { return r.runsAt(len(r.layers)-1, lo, hi) }

// runsAt is runsFor for the chain cut at layer index top (a snapshot's
// view).
func (r *Replica) runsAt(top int, lo, hi uint64) []layerRun {
	runs := r.runBuf[:0]
	for b := lo; b < hi; b++ {
		l := r.resolveAt(top, b)
		if l == nil || l.zero.Contains(b) {
			continue
		}
		if n := len(runs); n > 0 && runs[n-1].l == l && runs[n-1].start+runs[n-1].n == b {
			runs[n-1].n++
			continue
		}
		runs = append(runs, layerRun{l: l, start: b, n: 1})
	}
	r.runBuf = runs
	return runs
}

// verify checks blocks read from l against their index entries (the
// unflushed entry when there is one). It returns the first bad block.
func (r *Replica) verify(l *layer, c store.Completion, start uint64) (uint64, string) {
	return r.check(l, c, start, true)
}

// check is verify, with the checksums computed only when sums is set (the
// index entries' kinds are always checked).
func (r *Replica) check(l *layer, c store.Completion, start uint64, sums bool) (uint64, string) {
	for i := range c.Entries {
		b := start + uint64(i)
		e := c.Entries[i]
		if d, ok := r.dirtyEntry(l, b); ok {
			e = d
		}
		if !l.held.Contains(b) || l.zero.Contains(b) {
			continue
		}
		if e.Kind != proto.BlockData {
			return b, sprintf("block %d of layer %d: index holds %d, not data", b, l.meta.ID, e.Kind)
		}
		if !sums || r.cfg.Bugs.SkipReadChecksums {
			continue
		}
		if got := crcOf(c.Data[i*proto.BlockSize : (i+1)*proto.BlockSize]); got != e.CRC {
			return b, sprintf("block %d of layer %d: checksum %08x, index says %08x", b, l.meta.ID, got, e.CRC)
		}
	}
	return 0, ""
}

func (r *Replica) runRead(o *op) { r.readRuns(o, r.runsFor(o.lo, o.hi)) }

// readRuns reads o's blocks from runs (blocks in no run read as zeros),
// checks them and replies: with the store's buffer when one run holds
// every block, zeros when none holds any, else with a buffer gathered
// from all of them.
func (r *Replica) readRuns(o *op, runs []layerRun) {
	switch {
	case len(runs) == 1 && runs[0].start == o.lo && runs[0].n == o.hi-o.lo:
		r.readWhole(o, runs[0])
	case len(runs) == 0:
		r.readZeros(o)
	default:
		r.readGather(o, runs)
	}
}

// readZeros answers a read of blocks no layer holds: no IO, so the op is
// reused at once.
func (r *Replica) readZeros(o *op) {
	out := r.cfg.NewBuffer(int(uint64(o.req.BlockCount) * proto.BlockSize))
	clear(out)
	r.reply(proto.Reply{ID: o.req.ID, Data: out})
	r.finish(o)
	r.reuseOp(o)
}

// readGather serves a read from several runs into one buffer: blocks in
// no run read as zeros.
func (r *Replica) readGather(o *op, runs []layerRun) {
	req := o.req
	out := r.cfg.NewBuffer(int(uint64(req.BlockCount) * proto.BlockSize))
	clear(out)
	left := len(runs)
	status, detail, bad := proto.StatusOK, "", uint64(0)
	done := func() {
		if status == proto.StatusOK {
			r.reply(proto.Reply{ID: req.ID, Data: out})
		} else {
			r.reply(proto.Reply{ID: req.ID, Status: status, Err: detail, BlockIndex: bad})
		}
		r.finish(o)
	}
	if left == 0 {
		done()
		return
	}
	for _, run := range runs {
		run := run
		r.issue(store.IO{Kind: store.ReadData, Layer: run.l.meta.ID, BlockIndex: run.start, BlockCount: run.n}, func(c store.Completion) {
			left--
			switch {
			case c.Err != store.OK:
				if status == proto.StatusOK || status == proto.StatusCorrupt {
					status, detail = proto.StatusIOError, sprintf("read layer %d: %v %s", run.l.meta.ID, c.Err, c.Detail)
				}
			default:
				if b, why := r.verify(run.l, c, run.start); why != "" {
					if status == proto.StatusOK || (status == proto.StatusCorrupt && b < bad) {
						status, detail, bad = proto.StatusCorrupt, why, b
					}
				}
				copy(out[(run.start-o.lo)*proto.BlockSize:], c.Data)
			}
			if left == 0 {
				done()
			}
		})
	}
}

// readWhole serves a read that one layer holds whole: the store's buffer
// is the reply, no second buffer and no copy. The store may return the
// entries in the op's own buffer (store.ReadData).
func (r *Replica) readWhole(o *op, run layerRun) {
	io := store.IO{Kind: store.ReadData, Layer: run.l.meta.ID, BlockIndex: run.start, BlockCount: run.n}
	if run.n <= inlineEntries {
		io.Entries = o.entryBuf[:0]
	}
	r.issueFor(io, pendingIO{kind: ioReadWhole, o: o, l: run.l})
}

// completeData takes the completion of a data-path IO (ioKind): the op
// is reused once its last IO completed and it was answered.
func (r *Replica) completeData(p pendingIO, c store.Completion) {
	o, l := p.o, p.l
	switch p.kind {
	case ioReadWhole:
		if c.Err != store.OK {
			r.replyErr(o.req.ID, proto.StatusIOError, "read layer %d: %v %s", l.meta.ID, c.Err, c.Detail)
		} else if b, why := r.verify(l, c, o.lo); why != "" {
			r.reply(proto.Reply{ID: o.req.ID, Status: proto.StatusCorrupt, Err: why, BlockIndex: b})
		} else {
			r.reply(proto.Reply{ID: o.req.ID, Data: c.Data})
		}
		r.finish(o)
	case ioWrite:
		if o.acked && c.Err != store.OK {
			// Answered already: the write it promised is lost.
			r.fail(sprintf("write acknowledged early: %v %s", c.Err, c.Detail))
			r.finish(o)
			break
		}
		if !r.ioOK(o, c, "write") {
			break
		}
		r.dirtyData[l.meta.ID] = true
		for _, e := range o.entries {
			r.setEntry(l, e)
		}
		if r.finishWrite(o, l, true) {
			return // FUA: the op goes on
		}
	case ioFUASync:
		if !r.syncOK(o, c, "fua sync") {
			break
		}
		r.issueFor(store.IO{Kind: store.WriteIndex, Layer: l.meta.ID, Entries: o.entries, FUASeq: o.req.Seq}, pendingIO{kind: ioFUAIndex, o: o, l: l})
		return
	case ioFUAIndex:
		if !r.syncOK(o, c, "fua index") {
			break
		}
		r.issueFor(store.IO{Kind: store.SyncIndex, Layer: l.meta.ID}, pendingIO{kind: ioFUAIndexSync, o: o, l: l})
		return
	case ioFUAIndexSync:
		if !r.syncOK(o, c, "fua index sync") {
			break
		}
		r.fuaSeq = max(r.fuaSeq, o.req.Seq)
		r.reply(proto.Reply{ID: o.req.ID})
		r.finish(o)
	}
	r.reuseOp(o)
}

func (r *Replica) runWrite(o *op) {
	req, h := o.req, r.head()
	o.entries = o.entryBuf[:0]
	if req.BlockCount > inlineEntries {
		o.entries = make([]proto.BlockState, 0, req.BlockCount)
	}
	for i := range req.BlockCount {
		o.entries = append(o.entries, proto.BlockState{BlockIndex: o.lo + uint64(i), Kind: proto.BlockData,
			CRC: crcOf(req.Data[i*proto.BlockSize : (i+1)*proto.BlockSize])})
	}
	if !h.needIntents(o.lo, uint64(req.BlockCount)) {
		// No block here has a durable entry: a crash leaves none for the
		// new content to be settled against.
		r.issueFor(store.IO{Kind: store.WriteData, Layer: h.meta.ID, BlockIndex: o.lo, Data: req.Data}, pendingIO{kind: ioWrite, o: o, l: h})
		return
	}
	r.ackEarly(o, h)
	r.queueIntents(o)
}

// ioOK handles a failed write-path IO: ENOSPC changes nothing and fails
// the request; any other error fails the replica (the disk's state is
// unknown). It reports whether the IO succeeded.
func (r *Replica) ioOK(o *op, c store.Completion, what string) bool {
	switch c.Err {
	case store.OK:
		return true
	case store.ErrNoSpace:
		r.replyErr(o.req.ID, proto.StatusNoSpace, "%s: %v %s", what, c.Err, c.Detail)
	default:
		r.fail(sprintf("%s: %v %s", what, c.Err, c.Detail))
		r.replyErr(o.req.ID, proto.StatusIOError, "%s: %v %s", what, c.Err, c.Detail)
	}
	r.finish(o)
	return false
}

// finishWrite replies to a write-like op whose entries (o.entries) are
// set in l, first making its blocks durable when the request asked for
// FUA: sync the layer's data (if any was written), then write and sync
// just these entries (completeData runs those steps). It reports whether
// the op goes on (FUA) rather than being answered now.
func (r *Replica) finishWrite(o *op, l *layer, dataWritten bool) bool {
	if !o.req.FUA || r.cfg.Bugs.SkipFlushSync {
		if !o.acked {
			r.reply(proto.Reply{ID: o.req.ID})
		}
		r.finish(o)
		return false
	}
	if dataWritten {
		r.issueFor(store.IO{Kind: store.SyncData, Layer: l.meta.ID}, pendingIO{kind: ioFUASync, o: o, l: l})
	} else {
		r.issueFor(store.IO{Kind: store.WriteIndex, Layer: l.meta.ID, Entries: o.entries, FUASeq: o.req.Seq}, pendingIO{kind: ioFUAIndex, o: o, l: l})
	}
	return true
}

// syncOK fails the replica on any error of a sync-path IO.
func (r *Replica) syncOK(o *op, c store.Completion, what string) bool {
	if c.Err == store.OK {
		return true
	}
	r.fail(sprintf("%s: %v %s", what, c.Err, c.Detail))
	r.replyErr(o.req.ID, proto.StatusIOError, "%s: %v %s", what, c.Err, c.Detail)
	r.finish(o)
	return false
}

// runTrim serves trim and write-zeroes alike: blocks read as zeros after
// it. Data the head holds is punched out; a zero entry masks lower layers.
func (r *Replica) runTrim(o *op) {
	h := r.head()
	var punches []proto.Extent
	var entries []proto.BlockState
	for b := o.lo; b < o.hi; b++ {
		if h.held.Contains(b) && !h.zero.Contains(b) {
			punches = appendExtent(punches, proto.Extent{BlockIndex: b, BlockCount: 1})
		}
		// Always a zero entry, even where no layer holds the block yet:
		// a rebuild may still fill lower layers, and this block must then
		// keep reading as zeros (sim seed 27: a trim during a rebuild was
		// skipped on the target, whose copied snapshot then showed through).
		entries = append(entries, proto.BlockState{BlockIndex: b, Kind: proto.BlockZero})
	}
	apply := func() {
		for _, e := range entries {
			r.setEntry(h, e)
		}
		if len(punches) > 0 {
			r.dirtyData[h.meta.ID] = true
		}
		o.entries = entries
		r.finishWrite(o, h, len(punches) > 0)
	}
	// A hole punched before its zero entry is flushed reads as zeros
	// under a data entry: recorded first as an intent (the checksum of
	// zeros), so a settle takes it for the trim it is. Zeros under a
	// data entry without one are a lost write, not a trim.
	intents := zeroIntents(h, punches)
	if len(intents) == 0 {
		r.afterAll(o, punchIOs(h, punches), "punch", apply)
		return
	}
	r.recordIntents(o, h, intents, "trim", func() {
		r.afterAll(o, punchIOs(h, punches), "punch", apply)
	})
}

// zeroIntents lists the intents of punching runs: each block's checksum
// becomes that of zeros.
func zeroIntents(l *layer, runs []proto.Extent) []proto.BlockState {
	var out []proto.BlockState
	for _, x := range runs {
		for b := x.BlockIndex; b < x.BlockIndex+x.BlockCount; b++ {
			if l.indexed.Contains(b) {
				out = append(out, proto.BlockState{BlockIndex: b, Kind: proto.BlockData, CRC: zeroCRC})
			}
		}
	}
	return out
}

func punchIOs(l *layer, punches []proto.Extent) []store.IO {
	ios := make([]store.IO, 0, len(punches))
	for _, p := range punches {
		ios = append(ios, store.IO{Kind: store.PunchHole, Layer: l.meta.ID, BlockIndex: p.BlockIndex, BlockCount: p.BlockCount})
	}
	return ios
}

// afterAll issues ios concurrently and calls then once all succeeded; on a
// failure the op is failed through ioOK.
func (r *Replica) afterAll(o *op, ios []store.IO, what string, then func()) {
	left, failed := len(ios), false
	if left == 0 {
		then()
		return
	}
	for _, io := range ios {
		r.issue(io, func(c store.Completion) {
			left--
			if failed {
				return
			}
			if c.Err != store.OK {
				failed = true
				r.ioOK(o, c, what)
				return
			}
			if left == 0 {
				then()
			}
		})
	}
}

func (r *Replica) runLayerBlocks(o *op) {
	l, _ := r.layerByName(o.req.Name)
	r.issue(store.IO{Kind: store.ReadIndex, Layer: l.meta.ID, BlockIndex: o.lo, BlockCount: o.hi - o.lo}, func(c store.Completion) {
		if c.Err != store.OK {
			r.replyErr(o.req.ID, proto.StatusIOError, "read index of layer %d: %v %s", l.meta.ID, c.Err, c.Detail)
			r.finish(o)
			return
		}
		r.reply(proto.Reply{ID: o.req.ID, Blocks: listedStates(c.Entries, r.dirty[l.meta.ID], o.lo, o.hi)})
		r.finish(o)
	})
}

// listedStates returns the states of [lo, hi) that are not absent, sorted
// by block: the index's entries with the unflushed ones (dirty) over them.
// A rebuild lists whole frozen layers, 65,536 blocks at a time, with
// nothing dirty: that case takes one pass over the index's entries.
func listedStates(entries []proto.BlockState, dirty map[uint64]proto.BlockState, lo, hi uint64) []proto.BlockState {
	inOrder := true
	for i := 1; i < len(entries) && inOrder; i++ {
		inOrder = entries[i].BlockIndex > entries[i-1].BlockIndex
	}
	for b := range dirty {
		if b >= lo && b < hi {
			inOrder = false
			break
		}
	}
	if inOrder {
		out := make([]proto.BlockState, 0, len(entries))
		for _, e := range entries {
			if e.Kind != proto.BlockAbsent && e.BlockIndex >= lo && e.BlockIndex < hi {
				out = append(out, e)
			}
		}
		return out
	}
	byBlock := map[uint64]proto.BlockState{}
	for _, e := range entries {
		if e.BlockIndex >= lo && e.BlockIndex < hi {
			byBlock[e.BlockIndex] = e
		}
	}
	for b, e := range dirty {
		if b >= lo && b < hi {
			byBlock[b] = e
		}
	}
	out := make([]proto.BlockState, 0, len(byBlock))
	for _, e := range byBlock {
		if e.Kind != proto.BlockAbsent {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].BlockIndex < out[j].BlockIndex })
	return out
}

// runLayerRead serves a rebuild's (or resync's) read of one layer. It is
// read once, in large runs, mostly from disk: Uncached lets the store
// read it around the page cache. Its data blocks are not checksummed
// here: the reply carries each block's checksum from the index, and the
// only use of it, a layer write, checks every block against it on the
// receiving replica (StatusCorrupt there sends the engine to another
// source), so checksumming here too would only cost a pass over the data.
func (r *Replica) runLayerRead(o *op) {
	l, _ := r.layerByName(o.req.Name)
	io := store.IO{Kind: store.ReadData, Layer: l.meta.ID, BlockIndex: o.lo, BlockCount: o.hi - o.lo, Uncached: true}
	r.issue(io, func(c store.Completion) {
		defer r.finish(o)
		if c.Err != store.OK {
			r.replyErr(o.req.ID, proto.StatusIOError, "read layer %d: %v %s", l.meta.ID, c.Err, c.Detail)
			return
		}
		if b, why := r.check(l, c, o.lo, false); why != "" {
			r.reply(proto.Reply{ID: o.req.ID, Status: proto.StatusCorrupt, Err: why, BlockIndex: b})
			return
		}
		blocks := make([]proto.BlockState, len(c.Entries))
		for i := range c.Entries {
			b := o.lo + uint64(i)
			e := c.Entries[i]
			if d, ok := r.dirtyEntry(l, b); ok {
				e = d
			}
			e.BlockIndex = b
			if !l.held.Contains(b) {
				e = proto.BlockState{BlockIndex: b}
			}
			if e.Kind != proto.BlockData {
				clear(c.Data[i*proto.BlockSize : (i+1)*proto.BlockSize])
				e.CRC = 0
			}
			blocks[i] = e
		}
		r.reply(proto.Reply{ID: o.req.ID, Data: c.Data, Blocks: blocks})
	})
}

// runLayerWrite makes blocks of one layer exactly as given (rebuild and
// resync): data is written, zero and absent blocks punched out. The data
// is written once and not read back soon: Uncached lets the store write
// it around its cache.
func (r *Replica) runLayerWrite(o *op) {
	l, _ := r.layerByName(o.req.Name)
	head := l == r.head()
	var ios []store.IO
	var punches []proto.Extent
	for i, b := range o.req.Blocks {
		switch {
		case b.Kind == proto.BlockData:
			start := i
			if n := len(ios); n > 0 && ios[n-1].BlockIndex+uint64(len(ios[n-1].Data))/proto.BlockSize == b.BlockIndex {
				ios[n-1].Data = o.req.Data[(ios[n-1].BlockIndex-o.lo)*proto.BlockSize : (i+1)*proto.BlockSize]
				continue
			}
			ios = append(ios, store.IO{Kind: store.WriteData, Layer: l.meta.ID, BlockIndex: b.BlockIndex,
				Data: o.req.Data[start*proto.BlockSize : (i+1)*proto.BlockSize], Uncached: true})
		case l.held.Contains(b.BlockIndex) && !l.zero.Contains(b.BlockIndex) && (b.Kind == proto.BlockZero || !head):
			// A block leaving the head keeps its data until the space is
			// reused: were it punched, a crash before its absent entry is
			// durable would leave zeros under its old entry, which the
			// settle takes for the zeros a trim intended (its intent is
			// zeros' checksum) — a zero where the layers below hold data.
			punches = appendExtent(punches, proto.Extent{BlockIndex: b.BlockIndex, BlockCount: 1})
		}
	}
	ios = append(ios, punchIOs(l, punches)...)
	write := func() {
		r.afterAll(o, ios, "layer write", func() {
			for _, b := range o.req.Blocks {
				r.setEntry(l, b)
			}
			r.dirtyData[l.meta.ID] = true
			r.reply(proto.Reply{ID: o.req.ID})
			r.finish(o)
		})
	}
	if !head {
		write()
		return
	}
	// In place in the head (a resync, a repair): like a write, its new
	// checksums (zeros' for the holes it punches) are recorded before its
	// data, so a crash before the next flush settles them rather than
	// taking them for rot.
	var intents []proto.BlockState
	for _, b := range o.req.Blocks {
		if b.Kind == proto.BlockData && l.indexed.Contains(b.BlockIndex) {
			intents = append(intents, b)
		}
	}
	intents = append(intents, zeroIntents(l, punches)...)
	if len(intents) == 0 {
		write()
		return
	}
	r.recordIntents(o, l, intents, "layer write", write)
}

// recordIntents durably records intents for layer l before then runs
// (not group-committed: the data path's writes are, in pumpIntents).
func (r *Replica) recordIntents(o *op, l *layer, intents []proto.BlockState, what string, then func()) {
	r.issue(store.IO{Kind: store.WriteIntents, Layer: l.meta.ID, Entries: intents, FlushedSeq: r.flushedSeq}, func(c store.Completion) {
		if c.Err != store.OK {
			r.fail(sprintf("record %s intents: %v %s", what, c.Err, c.Detail))
			r.fails(o, proto.StatusIOError, "record %s intents: %v %s", what, c.Err, c.Detail)
			return
		}
		then()
	})
}
