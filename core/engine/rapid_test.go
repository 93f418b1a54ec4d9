package engine_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/model"
	"pgregory.net/rapid"
)

// TestEngineMatchesModel runs random batches of concurrent frontend
// requests, with every event interleaving the chooser picks, and admin
// requests in between, against model.Device.
func TestEngineMatchesModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		h := newMH(t, 1, engine.Config{Volume: "v"})
		for step := rapid.IntRange(1, 12).Draw(t, "steps"); step > 0; step-- {
			if rapid.IntRange(0, 3).Draw(t, "kind") == 0 {
				h.genAdmin()
				continue
			}
			ps := h.genBatch()
			h.waitAll(ps)
			h.check(ps, nil)
			h.c.Run(1, maxTicks)
			h.verifyReplicas(mustRead(t, h.m, 0, uint32(h.sizeBlocks())))
		}
		h.verify()
	})
}

// TestEngineReplicaFailure takes one replica at a time down (unreachable)
// mid-sequence and brings it back. While it is down, requests succeed
// unless the rest is not a quorum of the membership (one replica; or two
// and the lowest-named one is down), in which case they may fail with
// ErrFaulted, which is final. Back up, the automatic rebuild makes it RW
// again and every replica then holds the model's content.
func TestEngineReplicaFailure(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		h := newMH(t, 1, engine.Config{Volume: "v", TimeoutTicks: 20, RebuildAfterTicks: 30, RetryTicks: 10})
		down := proto.ReplicaID("")
		faultOK := false // a replica down whose loss breaks the quorum
		for step := rapid.IntRange(1, 12).Draw(t, "steps"); step > 0; step-- {
			switch k := rapid.IntRange(0, 5).Draw(t, "kind"); {
			case k == 0 && down == "":
				// Let lost messages time out and rebuilds finish first:
				// this test fails one replica at a time.
				h.c.Run(25, maxTicks)
				if !h.c.RunUntil(h.allRW, maxTicks) {
					t.Fatalf("not all RW before failing one: %+v", h.modes())
				}
				h.c.Run(25, maxTicks)
				if !h.allRW() {
					t.Fatalf("not all RW before failing one: %+v", h.modes())
				}
				down = rapid.SampledFrom(h.c.Order).Draw(t, "down")
				h.c.SetDown(down, true)
				faultOK = faultOK || h.n == 1 || (h.n == 2 && down == "r1")
			case k == 1 && down != "":
				h.c.SetDown(down, false)
				down = ""
			default:
				ps := h.genBatch()
				h.waitAll(ps)
				err := h.check(ps, func(err error) bool {
					return faultOK && (errors.Is(err, engine.ErrFaulted) || errors.Is(err, engine.ErrIO))
				})
				if err != nil {
					// Faulted by design; it must stay so.
					r, _ := h.c.Do(engine.Request{Op: proto.OpFlush}, maxTicks)
					if !errors.Is(r.Err, engine.ErrFaulted) {
						t.Fatalf("after a fault: flush %v, want ErrFaulted", r.Err)
					}
					return
				}
			}
		}
		if down != "" {
			h.c.SetDown(down, false)
		}
		if !h.c.RunUntil(h.allRW, maxTicks) {
			t.Fatalf("not all RW after healing: %+v", h.modes())
		}
		h.verify()
	})
}

// TestEngineCrash crashes every replica (keeping a random part of their
// unsynced changes) and the engine at a random point of a batch, restarts
// them, and requires the new engine to open at a higher epoch, every block
// to hold what the crash oracle allows, and the replicas to agree. Some
// steps restart only the engine.
func TestEngineCrash(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		h := newMH(t, 1, engine.Config{Volume: "v", RetryTicks: 10})
		for step := rapid.IntRange(1, 10).Draw(t, "steps"); step > 0; step-- {
			switch k := rapid.IntRange(0, 5).Draw(t, "kind"); {
			case k == 0:
				h.genAdmin()
			case k == 1, k == 2:
				h.crashDuring(k == 2)
			default:
				ps := h.genBatch()
				h.waitAll(ps)
				h.check(ps, nil)
			}
		}
		h.verify()
	})
}

// crashDuring submits a batch, runs a random number of events, then
// crashes the engine, and the replicas too unless engineOnly.
func (h *mh) crashDuring(engineOnly bool) {
	t := h.t
	ps := h.genBatch()
	host := h.c.Host()
	for i := rapid.IntRange(0, 60).Draw(t, "events"); i > 0 && h.c.Step(); i-- {
	}
	h.check(answered(host.Replies, ps), nil)
	oldEpoch := h.c.Engine().Epoch()
	for _, hh := range h.c.Hosts {
		h.c.Kill(hh)
	}
	if !engineOnly {
		for _, id := range h.c.Order {
			h.c.Crash(id, h.keepRandom())
		}
	}
	h.c.StartEngine(h.c.Config())
	if !h.c.RunUntil(h.c.Engine().Serving, maxTicks) {
		ph, why := h.c.Engine().Phase()
		t.Fatalf("engine not serving after restart: %s %s", ph, why)
	}
	if h.c.Engine().Epoch() <= oldEpoch {
		t.Fatalf("restarted engine took epoch %d, not above %d", h.c.Engine().Epoch(), oldEpoch)
	}
	got, err := h.readAll()
	if err != nil {
		t.Fatalf("read all after restart: %v", err)
	}
	// Replicas still loading when the engine opened are rebuilt.
	if !h.c.RunUntil(h.allRW, maxTicks) {
		t.Fatalf("not all RW after restart: %+v", h.modes())
	}
	if err := h.m.Crash(func(b uint64, _ []model.CrashOutcome) []byte {
		return got[b*proto.BlockSize : (b+1)*proto.BlockSize]
	}); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	want := mustRead(t, h.m, 0, uint32(h.sizeBlocks()))
	if !bytes.Equal(got, want) {
		t.Fatalf("after restart, outside unflushed blocks: %s", diffBlocks(0, got, want))
	}
	h.verify()
	// The model now counts the settled state as flushed: make it so.
	if r, _ := h.c.Do(engine.Request{Op: proto.OpFlush}, maxTicks); r.Err != nil {
		t.Fatalf("flush after restart: %v", r.Err)
	}
}

func answered(replies map[uint64]engine.Reply, ps []*pend) []*pend {
	var out []*pend
	for _, p := range ps {
		if _, ok := replies[p.id]; ok {
			out = append(out, p)
		}
	}
	return out
}

// TestEngineCorruption flips a bit of a block on one replica: reads
// through the engine still return the right data, and the corrupt copy is
// repaired.
func TestEngineCorruption(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		h := newMH(t, 2, engine.Config{Volume: "v"})
		for step := rapid.IntRange(1, 6).Draw(t, "steps"); step > 0; step-- {
			if rapid.IntRange(0, 4).Draw(t, "kind") == 0 {
				h.genAdmin()
				continue
			}
			ps := h.genBatch()
			h.waitAll(ps)
			h.check(ps, nil)
		}
		b := rapid.Uint64Range(0, h.sizeBlocks()-1).Draw(t, "corruptBlock")
		id := rapid.SampledFrom(h.c.Order).Draw(t, "corruptReplica")
		d := h.data(b, 1)
		ps := []*pend{{req: engine.Request{Op: proto.OpWrite, BlockIndex: b, BlockCount: 1, Data: d}}}
		must(t, h.m.Write(b, d))
		ps[0].id = h.c.Submit(ps[0].req)
		h.waitAll(ps)
		h.check(ps, nil)
		if rapid.Bool().Draw(t, "flushFirst") {
			h.c.Do(engine.Request{Op: proto.OpFlush}, maxTicks)
		}
		if !h.c.CorruptBlock(id, b, rapid.UintRange(0, proto.BlockSize*8-1).Draw(t, "bit")) {
			t.Fatalf("block %d has no data on %s", b, id)
		}
		want := mustRead(t, h.m, b, 1)
		for i := 0; i < h.n; i++ {
			r, _ := h.c.Do(engine.Request{Op: proto.OpRead, BlockIndex: b, BlockCount: 1}, maxTicks)
			if r.Err != nil || !bytes.Equal(r.Data, want) {
				t.Fatalf("read %d of corrupt block %d: %v %s", i, b, r.Err, diffBlocks(b, r.Data, want))
			}
		}
		h.c.Run(5, maxTicks)
		rep := h.c.Direct(id, proto.Request{Op: proto.OpRead, BlockIndex: b, BlockCount: 1})
		if rep.Status != proto.StatusOK || !bytes.Equal(rep.Data, want) {
			t.Fatalf("corrupt replica %s not repaired: %v %s", id, rep.Status, rep.Err)
		}
		h.verify()
	})
}

// TestEngineFencing starts a second engine on the same replicas, with
// random partitions between the first engine and the replicas, and
// requires: the second opens at a higher epoch when it can reach a quorum;
// once it has, no write the first engine is given succeeds, and the
// second engine's reads show only its own writes.
func TestEngineFencing(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		h := newMH(t, 1, engine.Config{Volume: "v", TimeoutTicks: 20, RetryTicks: 10, RebuildAfterTicks: -1})
		ps := h.genBatch()
		h.waitAll(ps)
		h.check(ps, nil)
		a := h.c.Host()
		for _, id := range h.c.Order {
			if rapid.Bool().Draw(t, "cutA") {
				h.c.SetCut(a, id, true)
			}
		}
		// Writes of A in flight while B opens: their outcome is unknown.
		for i := rapid.IntRange(0, 3).Draw(t, "inflightA"); i > 0; i-- {
			b, n := h.genRange()
			h.c.Submit(engine.Request{Op: proto.OpWrite, BlockIndex: b, BlockCount: n, Data: h.data(b, n)})
		}
		bh := h.c.StartEngine(h.c.Config())
		if !bh.Engine.Serving() {
			return // B could not fence a quorum (it may not, with A's writes racing)
		}
		if bh.Engine.Epoch() <= a.Engine.Epoch() {
			t.Fatalf("second engine epoch %d not above %d", bh.Engine.Epoch(), a.Engine.Epoch())
		}
		// B writes every block; then A is given writes, which must fail.
		size := h.sizeBlocks()
		want := h.data(0, uint32(size))
		r, ok := h.c.Do(engine.Request{Op: proto.OpWrite, BlockIndex: 0, BlockCount: uint32(size), Data: want}, maxTicks)
		if !ok || r.Err != nil {
			t.Fatalf("second engine's write: %v (answered %v)", r.Err, ok)
		}
		var aIDs []uint64
		for i := rapid.IntRange(1, 4).Draw(t, "lateA"); i > 0; i-- {
			b, n := h.genRange()
			req := engine.Request{ID: 1<<40 + uint64(i), Op: proto.OpWrite, BlockIndex: b, BlockCount: n, Data: h.data(b, n)}
			a.Engine.Submit(req)
			aIDs = append(aIDs, req.ID)
		}
		h.c.Collect(a)
		h.c.Run(30, maxTicks)
		for _, id := range aIDs {
			if r, ok := a.Replies[id]; ok && r.Err == nil {
				t.Fatalf("fenced engine acknowledged a write after the new engine served")
			}
		}
		for i := 0; i < h.n; i++ {
			r, ok := h.c.Do(engine.Request{Op: proto.OpRead, BlockIndex: 0, BlockCount: uint32(size)}, maxTicks)
			if !ok || r.Err != nil {
				t.Fatalf("second engine's read: %v", r.Err)
			}
			if !bytes.Equal(r.Data, want) {
				t.Fatalf("second engine reads another engine's write: %s", diffBlocks(0, r.Data, want))
			}
		}
	})
}

func TestIsQuorum(t *testing.T) {
	mk := func(n int) *proto.Membership {
		m := &proto.Membership{}
		for i := 1; i <= n; i++ {
			m.Members = append(m.Members, proto.Member{ID: proto.ReplicaID(fmt.Sprintf("r%d", i)), Mode: proto.ModeRW})
		}
		m.Members = append(m.Members, proto.Member{ID: "w", Mode: proto.ModeWO}) // WO never counts
		return m
	}
	for _, tt := range []struct {
		n    int
		acks string
		want bool
	}{
		{1, "", false}, {1, "1", true},
		{2, "", false}, {2, "1", true}, {2, "2", false}, {2, "12", true},
		{3, "1", false}, {3, "3", false}, {3, "12", true}, {3, "23", true}, {3, "13", true},
		{4, "1", false}, {4, "12", true}, {4, "13", true}, {4, "23", false}, {4, "34", false}, {4, "234", true},
		{5, "12", false}, {5, "45", false}, {5, "123", true}, {5, "345", true},
		{0, "1", false},
	} {
		acks := map[proto.ReplicaID]bool{"w": true}
		for _, c := range tt.acks {
			acks[proto.ReplicaID("r"+string(c))] = true
		}
		if got := engine.IsQuorum(mk(tt.n), acks); got != tt.want {
			t.Errorf("IsQuorum(%d RW, acks %q) = %v, want %v", tt.n, tt.acks, got, tt.want)
		}
	}
}
