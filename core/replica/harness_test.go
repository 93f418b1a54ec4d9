package replica_test

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"

	"github.com/drover-io/drover/core/drive"
	"github.com/drover-io/drover/core/memstore"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/core/store"
	"github.com/drover-io/drover/model"
)

// failer is what harness helpers need from *testing.T and *rapid.T.
type failer interface {
	Helper()
	Fatalf(format string, args ...any)
}

// harness runs one replica next to a model.Device and checks one against
// the other. Writes reach the model when they are sent, so an unacked write
// is a possible crash outcome; flushes and FUA writes make the model
// durable only up to the point they were sent (model.Mark) and only once
// acknowledged.
type harness struct {
	t      failer
	d      *drive.ReplicaDriver
	m      *model.Device
	rng    *rand.Rand
	epoch  uint64
	nextID uint64
	stamp  uint64
	sent   map[uint64]*sentOp
}

// sentOp is a data request in flight and what its reply must match.
type sentOp struct {
	req  proto.Request
	mark model.FlushPoint // flush, FUA: the model point it covers
	want []byte           // read: the model's content when it was sent
}

func newHarness(t failer, sizeBlocks uint64, cfg replica.Config, seed uint64) *harness {
	h := &harness{t: t, m: model.NewDevice(sizeBlocks * proto.BlockSize), epoch: 1,
		rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), sent: map[uint64]*sentOp{}}
	cfg.CreateSizeBytes = sizeBlocks * proto.BlockSize
	h.d = drive.New(cfg, memstore.New(), func(n int) int { return h.rng.IntN(n) })
	if rep := h.do(proto.Request{Op: proto.OpOpen}); rep.Status != proto.StatusOK {
		t.Fatalf("open: %v %s", rep.Status, rep.Err)
	}
	return h
}

func (h *harness) sizeBlocks() uint64 { return h.m.SizeBytes() / proto.BlockSize }

// req fills in the epoch and a fresh id.
func (h *harness) req(r proto.Request) proto.Request {
	h.nextID++
	r.ID, r.Epoch = h.nextID, h.epoch
	return r
}

func (h *harness) do(r proto.Request) proto.Reply { return h.d.Do(h.req(r)) }

// data returns blockCount unique blocks: each starts with a write stamp
// and its block index, so a read names the write it saw.
func (h *harness) data(blockIndex uint64, blockCount uint32) []byte {
	h.stamp++
	out := make([]byte, int(blockCount)*proto.BlockSize)
	for i := range int(blockCount) {
		blk := out[i*proto.BlockSize : (i+1)*proto.BlockSize]
		binary.LittleEndian.PutUint64(blk, h.stamp)
		binary.LittleEndian.PutUint64(blk[8:], blockIndex+uint64(i))
		for j := 16; j < len(blk); j += 512 {
			blk[j] = byte(h.stamp) ^ byte(i)
		}
	}
	return out
}

// send issues a data request and records it in the model.
func (h *harness) send(r proto.Request) {
	r = h.req(r)
	s := &sentOp{req: r}
	var err error
	switch r.Op {
	case proto.OpWrite:
		err = h.m.Write(r.BlockIndex, r.Data)
	case proto.OpTrim:
		err = h.m.Trim(r.BlockIndex, r.BlockCount)
	case proto.OpWriteZeroes:
		err = h.m.WriteZeroes(r.BlockIndex, r.BlockCount)
	case proto.OpRead:
		s.want, err = h.m.Read(r.BlockIndex, r.BlockCount)
	}
	if err != nil {
		h.t.Fatalf("model %v: %v", r.Op, err)
	}
	if r.Op == proto.OpFlush || r.FUA {
		s.mark = h.m.Mark()
	}
	h.sent[r.ID] = s
	h.d.Send(r)
}

// settle checks the replies collected so far against the model and lands
// acknowledged flushes and FUA writes in it.
func (h *harness) settle() {
	h.t.Helper()
	for _, rep := range h.d.Replies() {
		s := h.sent[rep.ID]
		if s == nil {
			h.t.Fatalf("reply to unknown request %d", rep.ID)
		}
		delete(h.sent, rep.ID)
		if rep.Status != proto.StatusOK {
			h.t.Fatalf("%v %d [%d,+%d): %v %s", s.req.Op, rep.ID, s.req.BlockIndex, s.req.BlockCount, rep.Status, rep.Err)
		}
		switch {
		case s.req.Op == proto.OpFlush:
			h.m.FlushTo(s.mark)
		case s.req.FUA:
			h.m.FlushBlocksTo(s.mark, s.req.BlockIndex, uint64(s.req.BlockCount))
		case s.req.Op == proto.OpRead || s.req.Op == proto.OpSnapRead:
			h.checkRead(s.req.BlockIndex, rep.Data, s.want)
		}
	}
}

func (h *harness) checkRead(blockIndex uint64, got, want []byte) {
	h.t.Helper()
	if len(got) != len(want) {
		h.t.Fatalf("read at %d: %d bytes, want %d", blockIndex, len(got), len(want))
	}
	for i := 0; i < len(want); i += proto.BlockSize {
		g, w := got[i:i+proto.BlockSize], want[i:i+proto.BlockSize]
		if string(g) != string(w) {
			h.t.Fatalf("block %d reads %s, model says %s", blockIndex+uint64(i/proto.BlockSize), describe(g), describe(w))
		}
	}
}

func describe(blk []byte) string {
	return fmt.Sprintf("stamp %d block %d", binary.LittleEndian.Uint64(blk), binary.LittleEndian.Uint64(blk[8:]))
}

// readAll reads the whole volume in pieces (ready replica, nothing pending).
func (h *harness) readAll() []byte {
	h.t.Helper()
	size := h.sizeBlocks()
	out := make([]byte, 0, size*proto.BlockSize)
	for b := uint64(0); b < size; b += 256 {
		n := uint32(min(256, size-b))
		rep := h.do(proto.Request{Op: proto.OpRead, BlockIndex: b, BlockCount: n})
		if rep.Status != proto.StatusOK {
			h.t.Fatalf("read [%d,+%d): %v %s (block %d)", b, n, rep.Status, rep.Err, rep.BlockIndex)
		}
		out = append(out, rep.Data...)
	}
	return out
}

// verify requires the replica to read exactly as the model.
func (h *harness) verify() {
	h.t.Helper()
	want, err := h.m.Read(0, uint32(h.sizeBlocks()))
	if err != nil {
		h.t.Fatalf("model read: %v", err)
	}
	h.checkRead(0, h.readAll(), want)
}

// crash drops what has not completed, crashes the store keeping a random
// part of the unsynced changes, reopens, and requires every block to hold
// something the model's crash oracle allows; then settles the model.
func (h *harness) crash() {
	h.t.Helper()
	h.settle()
	keepPct := h.rng.IntN(101)
	h.d.Crash(func(store.LayerID, uint64, bool) bool { return h.rng.IntN(100) < keepPct })
	clear(h.sent)
	if !h.d.Replica.Loaded() || h.d.Replica.Err() != "" {
		h.t.Fatalf("reload after crash: %s", h.d.Replica.Err())
	}
	// A restarted replica serves only after it is opened again.
	if rep := h.do(proto.Request{Op: proto.OpOpen}); rep.Status != proto.StatusOK {
		h.t.Fatalf("open after crash: %v %s", rep.Status, rep.Err)
	}
	got := h.readAll()
	at := func(b uint64) []byte { return got[b*proto.BlockSize : (b+1)*proto.BlockSize] }
	for b := uint64(0); b < h.sizeBlocks(); b++ {
		if err := h.m.CheckAfterCrash(b, at(b)); err != nil {
			h.t.Fatalf("after crash (%s): %v", describe(at(b)), err)
		}
	}
	if err := h.m.Crash(func(b uint64, _ []model.CrashOutcome) []byte { return at(b) }); err != nil {
		h.t.Fatalf("model crash: %v", err)
	}
}
