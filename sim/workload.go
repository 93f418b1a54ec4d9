package sim

import (
	"bytes"
	"encoding/binary"
	"errors"

	"github.com/anishathalye/porcupine"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/model"
)

// Blocks clients write are stamped: bytes 0..8 hold a write id unique in
// the run, 8..16 the block index, 16..24 and the last 8 bytes a mix of the
// two. Anything else a read returns (other than all zeros) is garbage.

func mix(id, block uint64) uint64 {
	x := id*0x9e3779b97f4a7c15 ^ (block + 0x632be59bd9b4e019)
	x ^= x >> 31
	x *= 0xbf58476d1ce4e5b9
	return x ^ x>>29
}

func stamp(buf []byte, id, block uint64) {
	clear(buf)
	binary.LittleEndian.PutUint64(buf[0:], id)
	binary.LittleEndian.PutUint64(buf[8:], block)
	m := mix(id, block)
	binary.LittleEndian.PutUint64(buf[16:], m)
	binary.LittleEndian.PutUint64(buf[len(buf)-8:], m)
}

// unstamp returns the write id a block holds (0: zeros), or ok=false if
// it is neither zeros nor a whole stamp for this block.
func unstamp(buf []byte, block uint64) (uint64, bool) {
	id := binary.LittleEndian.Uint64(buf[0:])
	if id == 0 {
		return 0, allZero(buf)
	}
	m := mix(id, block)
	if binary.LittleEndian.Uint64(buf[8:]) != block || binary.LittleEndian.Uint64(buf[16:]) != m ||
		binary.LittleEndian.Uint64(buf[len(buf)-8:]) != m {
		return 0, false
	}
	if !allZero(buf[24 : len(buf)-8]) {
		return 0, false
	}
	return id, true
}

var zeroBlock [proto.BlockSize]byte

// allZero reports whether b (at most a block) is all zeros.
func allZero(b []byte) bool { return bytes.Equal(b, zeroBlock[:len(b)]) }

// client issues one request at a time to the current engine.
type client struct {
	s    *Sim
	id   int
	done bool
}

const farFuture = int64(1) << 62

func (c *client) next() {
	s := c.s
	if s.stopped || c.done {
		return
	}
	h := s.hist
	if h.clientOps >= uint64(s.opt.Ops) {
		c.done = true
		s.clientDone()
		return
	}
	if h.pausing || s.reverting != nil || s.idling != nil {
		s.after(2000, c.next)
		return
	}
	en := s.pickEngine()
	if en == nil || !en.e.Serving() {
		s.after(5000, c.next)
		return
	}
	c.issue(en)
}

// pickEngine is usually the newest engine; while an older one is still
// alive (a takeover in progress), some requests go to it.
func (s *Sim) pickEngine() *engineNode {
	cur := s.current()
	if !cur.alive {
		return nil
	}
	if len(s.engines) > 1 && s.rng.IntN(4) == 0 {
		if old := s.engines[len(s.engines)-2]; old.alive {
			return old
		}
	}
	return cur
}

func (c *client) issue(en *engineNode) {
	s, k := c.s, c.s.knobs
	n := uint32(1 + s.rng.IntN(int(k.MaxBlocks)))
	bi := uint64(s.rng.IntN(int(k.HotBlocks - uint64(n) + 1)))
	req := engine.Request{BlockIndex: bi, BlockCount: n}
	switch p := s.rng.IntN(100); {
	case p < 40:
		req.Op = proto.OpRead
	case p < 75:
		req.Op = proto.OpWrite
	case p < 80:
		req.Op, req.FUA = proto.OpWrite, true
	case p < 85:
		req.Op = proto.OpTrim
	case p < 90:
		req.Op = proto.OpWriteZeroes
	default:
		req.Op = proto.OpFlush
		req.BlockIndex, req.BlockCount = 0, 0
	}
	var ids []uint64
	if req.Op == proto.OpWrite {
		req.Data = make([]byte, uint64(n)*proto.BlockSize)
		for i := uint64(0); i < uint64(n); i++ {
			s.hist.nextWrite++
			ids = append(ids, s.hist.nextWrite)
			stamp(req.Data[i*proto.BlockSize:(i+1)*proto.BlockSize], s.hist.nextWrite, bi+i)
		}
	}
	op := s.hist.begin(c.id, en, req, ids)
	en.submit(req, func(rep engine.Reply) {
		s.hist.end(op, rep)
		s.after(s.uniform(0, s.knobs.ThinkUs), c.next)
	})
}

// opRecord is one client request in the history.
type opRecord struct {
	client int
	era    int
	req    engine.Request
	ids    []uint64 // write ids per block (writes)
	call   int64
	ret    int64 // farFuture while unknown
	ok     bool
	values []uint64 // reads: ids found per block
}

// era is a span of the history between two points where acknowledged but
// unflushed writes may have been lost (every replica crashed, or an engine
// restarted after a replica crashed): linearizability is checked within
// an era, durability across its start.
type era struct {
	start  int64
	init   map[uint64]uint64          // block → value at the start
	under  map[uint64]map[uint64]bool // block → what a crash may bring back beneath init
	ops    []*opRecord
	writes map[uint64][]*opRecord // block → write-like ops, in submit order
}

type history struct {
	s                *Sim
	eras             []*era
	nextWrite        uint64
	clientOps        uint64
	blockOps         uint64
	pausing          bool              // clients wait: an era boundary is being read
	inflight         int               // client requests not yet answered
	pendingRevert    map[uint64]uint64 // snapshot values of a revert with unknown outcome
	boundaryReading  bool
	boundaryGen      uint64 // bumps when a boundary read must start over
	lastCrashAt      int64  // when a replica last crashed (-1: never)
	boundaryOpenedAt int64  // when the last boundary's engine opened
	boundaryEngine   *engineNode
	visualPath       string
	livenessFrom     int64
	maxLatencyUs     int64
}

func newHistory(s *Sim) *history {
	h := &history{s: s, lastCrashAt: -1}
	h.eras = append(h.eras, &era{init: map[uint64]uint64{}, writes: map[uint64][]*opRecord{}})
	return h
}

func (h *history) cur() *era { return h.eras[len(h.eras)-1] }

func (h *history) begin(client int, en *engineNode, req engine.Request, ids []uint64) *opRecord {
	e := h.cur()
	h.inflight++
	op := &opRecord{client: client, era: len(h.eras) - 1, req: req, ids: ids, call: h.s.now, ret: farFuture}
	e.ops = append(e.ops, op)
	if req.Op != proto.OpRead && req.Op != proto.OpFlush {
		for i := uint64(0); i < uint64(req.BlockCount); i++ {
			b := req.BlockIndex + i
			e.writes[b] = append(e.writes[b], op)
		}
	}
	h.s.note("call", uint64(client), uint64(req.Op), req.BlockIndex, uint64(req.BlockCount))
	return op
}

func (h *history) end(op *opRecord, rep engine.Reply) {
	s := h.s
	h.inflight--
	op.ret = s.now
	op.ok = rep.Err == nil
	h.clientOps++
	h.s.note("return", uint64(op.client), boolU(op.ok))
	if !op.ok {
		if errors.Is(rep.Err, engine.ErrFenced) {
			s.count("client-fenced")
		}
		return
	}
	h.blockOps += uint64(max(op.req.BlockCount, 1))
	if s.healed && op.call >= h.livenessFrom {
		h.maxLatencyUs = max(h.maxLatencyUs, op.ret-op.call)
	}
	if op.req.Op == proto.OpRead {
		op.values = make([]uint64, op.req.BlockCount)
		for i := range op.values {
			b := op.req.BlockIndex + uint64(i)
			v, ok := unstamp(rep.Data[i*proto.BlockSize:(i+1)*proto.BlockSize], b)
			if !ok {
				s.fail("integrity: client %d read garbage in block %d at %dus", op.client, b, s.now)
			}
			op.values[i] = v
		}
	}
}

func boolU(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// value is what a write-like op leaves in block b.
func (op *opRecord) value(b uint64) uint64 {
	if op.req.Op == proto.OpWrite {
		return op.ids[b-op.req.BlockIndex]
	}
	return 0
}

// enginePumped begins an era boundary when an engine first serves after
// a replica restarted (that replica may have lost acknowledged unflushed
// writes, and the new engine may take it as its resync source): clients
// pause, every hot block is read, checked against the durability oracle,
// and becomes the new era's initial value. If the boundary's engine dies
// first, the next engine to serve takes the boundary over.
func (h *history) enginePumped(en *engineNode) {
	switch phase, _ := en.e.Phase(); {
	case phase == engine.PhaseOpening: // first open, or a reopen after a fault
		en.openedAt, en.served = -1, false
	case phase == engine.PhaseServing && en.openedAt < 0:
		en.openedAt = h.s.now // fenced and resynced; quiet period next
	}
	if !en.e.Serving() {
		return
	}
	if !en.served {
		en.served = true
		if !h.pausing && h.lastCrashAt >= h.boundaryOpenedAt {
			// A replica restarted after the last boundary's engine
			// opened (even during its read): this open may have taken it
			// as a resync source, so unflushed data may be gone.
			h.pausing, h.boundaryEngine, h.boundaryReading = true, en, false
			h.boundaryOpenedAt = en.openedAt
		}
	}
	if h.pausing && (h.boundaryEngine == nil || !h.boundaryEngine.alive) {
		// Forced (forceBoundary), or the boundary's engine died before
		// its read finished: any engine serving now reads it. (Only an
		// engine's first serve took it over once, so a boundary whose
		// engine died while the next one already served paused the
		// clients for good: sim swarm/643.)
		h.boundaryEngine, h.boundaryReading = en, false
	}
	if !h.pausing || en != h.boundaryEngine || h.boundaryReading {
		return
	}
	h.boundaryReading = true
	h.readBoundary(en)
}

// forceBoundary pauses the clients and has the next engine that serves
// (even one that served already) read an era boundary.
func (h *history) forceBoundary() {
	if h.pausing {
		return // a boundary is coming anyway; pendingRevert widens it
	}
	h.pausing, h.boundaryEngine, h.boundaryReading = true, nil, false
	h.boundaryGen++
}

// readBoundary reads every hot block once and starts the next era.
func (h *history) readBoundary(en *engineNode) {
	gen := h.boundaryGen
	h.s.readHot(en, "after recovery",
		func() bool { return en.alive && h.boundaryEngine == en && h.boundaryGen == gen },
		func() bool { return h.boundaryGen == gen },
		h.newEra)
}

// readHot reads every hot block once through en, retrying a failed read
// 5 ms later, and calls then with the write id each block holds. before
// guards each attempt and after each reply: when one says no, that block
// is dropped (the reader was abandoned). where names the moment in an
// integrity failure.
func (s *Sim) readHot(en *engineNode, where string, before, after func() bool, then func(map[uint64]uint64)) {
	values := map[uint64]uint64{}
	left := int(s.knobs.HotBlocks)
	var read func(b uint64)
	read = func(b uint64) {
		if !before() {
			return
		}
		en.submit(engine.Request{Op: proto.OpRead, BlockIndex: b, BlockCount: 1}, func(rep engine.Reply) {
			if !after() {
				return
			}
			if rep.Err != nil {
				s.after(5000, func() { read(b) })
				return
			}
			v, ok := unstamp(rep.Data, b)
			if !ok {
				s.fail("integrity: garbage in block %d %s", b, where)
			}
			values[b] = v
			if left--; left == 0 {
				then(values)
			}
		})
	}
	for b := uint64(0); b < s.knobs.HotBlocks; b++ {
		read(b)
	}
}

func (h *history) newEra(values map[uint64]uint64) {
	s := h.s
	prev := h.cur()
	under := map[uint64]map[uint64]bool{}
	for b, v := range values {
		allowed := h.allowedAfterCrash(prev, b)
		if h.pendingRevert != nil {
			allowed[h.pendingRevert[b]] = true // a revert whose outcome is unknown
		}
		if !allowed[v] {
			s.fail("durability: block %d holds write %d after recovery at %dus, which the flushed history does not allow", b, v, s.now)
		}
		under[b] = allowed
	}
	h.pausing, h.boundaryReading, h.boundaryEngine, h.pendingRevert = false, false, nil, nil
	h.startEra(values, under)
}

// allowedAfterCrash returns what block b may hold after a crash at the end
// of era e: the last write a flush made durable (a write acknowledged
// before an acknowledged flush was sent, or an acknowledged FUA write) or
// any write sent after it. With no such write, the era's initial value
// if a flush made it durable, else anything the era started on top of.
func (h *history) allowedAfterCrash(e *era, b uint64) map[uint64]bool {
	allowed := map[uint64]bool{}
	ws := e.writes[b]
	floor := -1
	for i, w := range ws {
		if w.ok && w.ret != farFuture && h.durable(e, w) {
			floor = i
		}
	}
	switch {
	case floor >= 0:
		allowed[ws[floor].value(b)] = true
	case h.flushedSince(e, e.start):
		allowed[e.init[b]] = true
	default:
		allowed[e.init[b]] = true
		for v := range e.under[b] {
			allowed[v] = true
		}
		if e.under == nil {
			allowed[0] = true
		}
	}
	for _, w := range ws[floor+1:] {
		allowed[w.value(b)] = true
	}
	return allowed
}

// flushedSince reports whether a flush sent at or after t was acknowledged.
func (h *history) flushedSince(e *era, t int64) bool {
	for _, f := range e.ops {
		if f.req.Op == proto.OpFlush && f.ok && f.call >= t {
			return true
		}
	}
	return false
}

// durable reports whether an acknowledged write was made durable.
func (h *history) durable(e *era, w *opRecord) bool {
	if w.req.FUA && w.req.Op == proto.OpWrite {
		return true
	}
	return h.flushedSince(e, w.ret)
}

// porcupineOps turns an era into per-block operations.
func (h *history) porcupineOps(e *era, index int) []porcupine.Operation {
	var ops []porcupine.Operation
	// Each era starts from its initial values (the first era from zeros,
	// or from a backing image's content).
	for b, v := range e.init {
		ops = append(ops, porcupine.Operation{ClientId: -1, Input: model.BlockInput{Block: b, Write: true, Value: v},
			Call: e.start - 2, Output: model.BlockOutput{}, Return: e.start - 1})
	}
	for _, op := range e.ops {
		if op.req.Op == proto.OpFlush {
			continue
		}
		for i := uint64(0); i < uint64(op.req.BlockCount); i++ {
			b := op.req.BlockIndex + i
			in := model.BlockInput{Block: b, Write: op.req.Op != proto.OpRead}
			out := model.BlockOutput{Unknown: !op.ok}
			if in.Write {
				in.Value = op.value(b)
			} else if op.ok {
				out.Value = op.values[i]
			} else {
				continue // a failed read tells nothing
			}
			ops = append(ops, porcupine.Operation{ClientId: op.client, Input: in, Call: op.call, Output: out, Return: op.ret})
		}
	}
	return ops
}
