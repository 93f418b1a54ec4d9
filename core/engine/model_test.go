package engine_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/drover-io/drover/core/drive"
	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
	"github.com/drover-io/drover/model"
	"pgregory.net/rapid"
)

// mh runs a drive.Cluster next to a model.Device. Writes reach the model
// when they are submitted (the engine orders overlapping requests in
// submission order, so the model's order is the engine's); a read must
// return the model's content as of its submission; flushes are only
// submitted when no write is in flight, so the model point they cover is
// exactly the writes acknowledged before them.
type mh struct {
	t     *rapid.T
	c     *drive.Cluster
	m     *model.Device
	rng   *rand.Rand
	n     int
	stamp uint64
	snaps int
}

// pend is a frontend request in flight and what its reply must match.
type pend struct {
	id   uint64
	req  engine.Request
	want []byte
	mark model.FlushPoint
}

const maxTicks = 3000

func newMH(t *rapid.T, minN int, cfg engine.Config) *mh {
	n := rapid.IntRange(minN, 5).Draw(t, "replicas")
	sizeBlocks := rapid.Uint64Range(4, 48).Draw(t, "sizeBlocks")
	seed := rapid.Uint64().Draw(t, "seed")
	h := &mh{t: t, n: n, m: model.NewDevice(sizeBlocks * proto.BlockSize),
		rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	h.c = drive.NewCluster(n, sizeBlocks*proto.BlockSize, cfg, func(k int) int { return h.rng.IntN(k) })
	if !h.c.Engine().Serving() {
		ph, why := h.c.Engine().Phase()
		t.Fatalf("not serving after open: %s %s", ph, why)
	}
	return h
}

func (h *mh) sizeBlocks() uint64 { return h.m.SizeBytes() / proto.BlockSize }

// data returns n blocks, each stamped with a fresh id in its first 8
// bytes and its block index after it.
func (h *mh) data(b uint64, n uint32) []byte {
	out := make([]byte, int(n)*proto.BlockSize)
	for i := range uint64(n) {
		h.stamp++
		binary.LittleEndian.PutUint64(out[i*proto.BlockSize:], h.stamp)
		binary.LittleEndian.PutUint64(out[i*proto.BlockSize+8:], b+i)
	}
	return out
}

func (h *mh) genRange() (uint64, uint32) {
	size := h.sizeBlocks()
	n := rapid.Uint32Range(1, uint32(min(6, size))).Draw(h.t, "blockCount")
	b := rapid.Uint64Range(0, size-uint64(n)).Draw(h.t, "blockIndex")
	return b, n
}

// genBatch draws 1..6 frontend requests, submits them at once and applies
// them to the model. Only the first may be a flush.
func (h *mh) genBatch() []*pend {
	var ps []*pend
	for i := rapid.IntRange(1, 6).Draw(h.t, "batch"); i > 0; i-- {
		b, n := h.genRange()
		req := engine.Request{BlockIndex: b, BlockCount: n, FUA: rapid.IntRange(0, 4).Draw(h.t, "fua") == 0}
		p := &pend{}
		switch k := rapid.IntRange(0, 9).Draw(h.t, "op"); {
		case k < 4:
			req.Op, req.Data = proto.OpWrite, h.data(b, n)
			must(h.t, h.m.Write(b, req.Data))
		case k < 7:
			req.Op, req.FUA = proto.OpRead, false
			p.want = mustRead(h.t, h.m, b, n)
		case k == 7:
			req.Op = proto.OpTrim
			must(h.t, h.m.Trim(b, n))
		case k == 8:
			req.Op = proto.OpWriteZeroes
			must(h.t, h.m.WriteZeroes(b, n))
		default:
			if len(ps) > 0 {
				req.Op, req.FUA = proto.OpRead, false
				p.want = mustRead(h.t, h.m, b, n)
				break
			}
			req = engine.Request{Op: proto.OpFlush}
		}
		p.req = req
		p.mark = h.m.Mark()
		p.id = h.c.Submit(req)
		ps = append(ps, p)
	}
	return ps
}

// waitAll runs until every request of ps is answered.
func (h *mh) waitAll(ps []*pend) {
	host := h.c.Host()
	ok := h.c.RunUntil(func() bool {
		for _, p := range ps {
			if _, ok := host.Replies[p.id]; !ok {
				return false
			}
		}
		return true
	}, maxTicks)
	if !ok {
		h.t.Fatalf("requests not answered after %d ticks", maxTicks)
	}
}

// check checks the replies to ps. A nil allow means every request must
// succeed; otherwise allow says whether an error is acceptable, and the
// first error stops the checks (the model is then not trusted further).
func (h *mh) check(ps []*pend, allow func(error) bool) error {
	host := h.c.Host()
	for _, p := range ps {
		r := host.Replies[p.id]
		if r.Err != nil {
			if allow != nil && allow(r.Err) {
				return r.Err
			}
			h.t.Fatalf("%v [%d,+%d): %v", p.req.Op, p.req.BlockIndex, p.req.BlockCount, r.Err)
		}
		switch {
		case p.req.Op == proto.OpRead:
			if !bytes.Equal(r.Data, p.want) {
				h.t.Fatalf("read [%d,+%d): %s", p.req.BlockIndex, p.req.BlockCount, diffBlocks(p.req.BlockIndex, r.Data, p.want))
			}
		case p.req.Op == proto.OpFlush:
			h.m.FlushTo(p.mark)
		case p.req.FUA:
			h.m.FlushBlocksTo(p.mark, p.req.BlockIndex, uint64(p.req.BlockCount))
		}
	}
	return nil
}

func diffBlocks(b uint64, got, want []byte) string {
	for i := 0; i < len(want); i += proto.BlockSize {
		if !bytes.Equal(got[i:i+proto.BlockSize], want[i:i+proto.BlockSize]) {
			return fmt.Sprintf("block %d holds stamp %d, want %d", b+uint64(i/proto.BlockSize),
				binary.LittleEndian.Uint64(got[i:]), binary.LittleEndian.Uint64(want[i:]))
		}
	}
	return fmt.Sprintf("%d bytes, want %d", len(got), len(want))
}

func must(t *rapid.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("model: %v", err)
	}
}

func mustRead(t *rapid.T, m *model.Device, b uint64, n uint32) []byte {
	t.Helper()
	d, err := m.Read(b, n)
	must(t, err)
	return d
}

func (h *mh) admin(req engine.AdminRequest) engine.AdminReply {
	h.t.Helper()
	r, ok := h.c.Admin(req, maxTicks)
	if !ok {
		h.t.Fatalf("admin %v %q: no reply", req.Op, req.Name)
	}
	return r
}

// genAdmin runs one admin request alone and applies it to the model.
func (h *mh) genAdmin() {
	snaps := h.m.Snapshots()
	switch k := rapid.IntRange(0, 6).Draw(h.t, "admin"); {
	case k == 0 || len(snaps) == 0:
		h.snaps++
		name := fmt.Sprintf("s%d", h.snaps)
		if r := h.admin(engine.AdminRequest{Op: engine.AdminSnapshot, Name: name}); r.Err != nil {
			h.t.Fatalf("snapshot %s: %v", name, r.Err)
		}
		must(h.t, h.m.Snapshot(name))
	case k == 1:
		name := rapid.SampledFrom(snaps).Draw(h.t, "delete")
		if r := h.admin(engine.AdminRequest{Op: engine.AdminDeleteSnapshot, Name: name}); r.Err != nil {
			h.t.Fatalf("delete %s: %v", name, r.Err)
		}
		must(h.t, h.m.DeleteSnapshot(name))
	case k == 2:
		name := rapid.SampledFrom(snaps).Draw(h.t, "revert")
		h.c.Engine().SetAttached(false)
		r := h.admin(engine.AdminRequest{Op: engine.AdminRevert, Name: name})
		h.c.Engine().SetAttached(true)
		if r.Err != nil {
			h.t.Fatalf("revert %s: %v", name, r.Err)
		}
		must(h.t, h.m.Revert(name))
	case k == 3:
		size := h.m.SizeBytes() + rapid.Uint64Range(0, 8).Draw(h.t, "grow")*proto.BlockSize
		if r := h.admin(engine.AdminRequest{Op: engine.AdminExpand, SizeBytes: size}); r.Err != nil {
			h.t.Fatalf("expand to %d: %v", size, r.Err)
		}
		must(h.t, h.m.Expand(size))
	case k == 4:
		r := h.admin(engine.AdminRequest{Op: engine.AdminDeleteSnapshot, Name: "nope"})
		if !errors.Is(r.Err, engine.ErrNotFound) {
			h.t.Fatalf("delete of a missing snapshot: %v, want ErrNotFound", r.Err)
		}
	case k == 5:
		h.shrink()
	default:
		names := append([]string{""}, snaps...)
		i := rapid.IntRange(0, len(names)-1).Draw(h.t, "from")
		j := rapid.IntRange(i, len(names)).Draw(h.t, "to")
		from, to := names[i], ""
		if j < len(names) && j > i {
			to = names[j]
		}
		r := h.admin(engine.AdminRequest{Op: engine.AdminChangedExtents, Name: from, Name2: to})
		if r.Err != nil {
			h.t.Fatalf("changed extents %q..%q: %v", from, to, r.Err)
		}
		want, err := h.m.ChangedBlocks(from, to)
		must(h.t, err)
		h.checkChanged(from, to, r.Extents, want)
	}
	h.verifyReplicas(mustRead(h.t, h.m, 0, uint32(h.sizeBlocks())))
	info := h.admin(engine.AdminRequest{Op: engine.AdminInfo}).Info
	info.Chain = slices.DeleteFunc(info.Chain, func(n string) bool { return strings.HasPrefix(n, "rebuild-") })
	if !slices.Equal(info.Chain, h.m.Snapshots()) || info.SizeBytes != h.m.SizeBytes() {
		h.t.Fatalf("engine chain %v size %d, model %v %d", info.Chain, info.SizeBytes, h.m.Snapshots(), h.m.SizeBytes())
	}
}

// readAll reads the whole volume through the engine.
func (h *mh) readAll() ([]byte, error) {
	size := h.sizeBlocks()
	r, ok := h.c.Do(engine.Request{Op: proto.OpRead, BlockIndex: 0, BlockCount: uint32(size)}, maxTicks)
	if !ok {
		return nil, fmt.Errorf("read of the whole volume not answered")
	}
	return r.Data, r.Err
}

// verify reads the volume through the engine once per replica (round
// robin reaches each) and directly from every replica, and requires the
// model's content everywhere.
func (h *mh) verify() {
	h.t.Helper()
	size := h.sizeBlocks()
	want := mustRead(h.t, h.m, 0, uint32(size))
	for i := 0; i < h.n; i++ {
		got, err := h.readAll()
		if err != nil {
			h.t.Fatalf("read all: %v", err)
		}
		if !bytes.Equal(got, want) {
			h.t.Fatalf("read all through the engine: %s", diffBlocks(0, got, want))
		}
	}
	h.verifyReplicas(want)
}

// verifyReplicas requires every replica's merged view to equal want.
func (h *mh) verifyReplicas(want []byte) {
	h.t.Helper()
	size := uint64(len(want) / proto.BlockSize)
	for _, id := range h.c.Order {
		rep := h.c.Direct(id, proto.Request{Op: proto.OpRead, BlockIndex: 0, BlockCount: uint32(size)})
		if rep.Status != proto.StatusOK {
			h.t.Fatalf("direct read of %s: %v %s", id, rep.Status, rep.Err)
		}
		if !bytes.Equal(rep.Data, want) {
			h.t.Fatalf("replica %s: %s", id, diffBlocks(0, rep.Data, want))
		}
	}
}

func (h *mh) modes() []engine.ReplicaInfo {
	return h.admin(engine.AdminRequest{Op: engine.AdminInfo}).Info.Replicas
}

func (h *mh) allRW() bool {
	for _, r := range h.c.Engine().Info().Replicas {
		if r.Mode != engine.ModeRW {
			return false
		}
	}
	return true
}

// keepRandom returns a memstore crash keep function drawing from h's rng.
func (h *mh) keepRandom() func(store.LayerID, uint64, bool) bool {
	p := h.rng.IntN(3) // 0: keep nothing, 1: keep half, 2: keep everything
	return func(store.LayerID, uint64, bool) bool {
		switch p {
		case 0:
			return false
		case 2:
			return true
		}
		return h.rng.IntN(2) == 0
	}
}

// checkChanged compares changed extents with the model's touched set. As
// in core/replica's test, a block the model counts as touched may be left
// out when it reads the same at both ends (a trim of a block no layer
// held); a block that changed may not, nor one the model never touched.
func (h *mh) checkChanged(from, to string, extents []proto.Extent, want []uint64) {
	got := map[uint64]bool{}
	for _, x := range extents {
		for b := x.BlockIndex; b < x.BlockIndex+x.BlockCount; b++ {
			got[b] = true
		}
	}
	touched := map[uint64]bool{}
	for _, b := range want {
		touched[b] = true
		if got[b] {
			continue
		}
		before := make([]byte, proto.BlockSize)
		if from != "" {
			before, _ = h.m.ReadSnapshot(from, b, 1)
		}
		after, _ := h.m.ReadSnapshot(to, b, 1)
		if !bytes.Equal(before, after) {
			h.t.Fatalf("changed extents %q..%q: block %d changed but is not reported", from, to, b)
		}
	}
	for b := range got {
		if !touched[b] {
			h.t.Fatalf("changed extents %q..%q: block %d reported, model never touched it (%v)", from, to, b, want)
		}
	}
}

// shrink cuts the volume by 0..8 blocks: refused while attached, then,
// detached, allowed exactly when the model allows it.
func (h *mh) shrink() {
	cut := rapid.Uint64Range(0, min(8, h.sizeBlocks()-1)).Draw(h.t, "shrink")
	size := h.m.SizeBytes() - cut*proto.BlockSize
	if r := h.admin(engine.AdminRequest{Op: engine.AdminShrink, SizeBytes: size}); cut > 0 && !errors.Is(r.Err, engine.ErrBusy) {
		h.t.Fatalf("shrink while attached: %v, want ErrBusy", r.Err)
	}
	h.c.Engine().SetAttached(false)
	r := h.admin(engine.AdminRequest{Op: engine.AdminShrink, SizeBytes: size})
	h.c.Engine().SetAttached(true)
	want := h.m.Shrink(size)
	switch {
	case want == nil && r.Err != nil:
		h.t.Fatalf("shrink to %d: %v, the model allows it", size, r.Err)
	case want != nil && !errors.Is(r.Err, engine.ErrInvalid):
		h.t.Fatalf("shrink to %d: %v, the model refuses it (%v)", size, r.Err, want)
	}
}
