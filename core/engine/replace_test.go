package engine_test

import (
	"bytes"
	"slices"
	"testing"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
)

func modes(info engine.VolumeInfo) map[proto.ReplicaID]engine.Mode {
	out := map[proto.ReplicaID]engine.Mode{}
	for _, r := range info.Replicas {
		out[r.ID] = r.Mode
	}
	return out
}

// sameContent reads every block of two replicas directly and compares.
func sameContent(t *testing.T, c *tc, a, b proto.ReplicaID, blocks uint64) {
	t.Helper()
	for bi := uint64(0); bi < blocks; bi += 1024 {
		n := uint32(min(1024, blocks-bi))
		ra := c.Direct(a, proto.Request{Op: proto.OpRead, BlockIndex: bi, BlockCount: n})
		rb := c.Direct(b, proto.Request{Op: proto.OpRead, BlockIndex: bi, BlockCount: n})
		if ra.Status != proto.StatusOK || rb.Status != proto.StatusOK {
			t.Fatalf("direct reads: %v %s / %v %s", ra.Status, ra.Err, rb.Status, rb.Err)
		}
		if !bytes.Equal(ra.Data, rb.Data) {
			t.Fatalf("%s and %s differ in blocks [%d,+%d)", a, b, bi, n)
		}
	}
}

// A member that stays down is replaced by a spare under the spare's own
// ID; the old one is tombstoned, so a restarted engine configured with the
// original replicas neither rebuilds it back in nor forgets the spare.
func TestReplaceFailedReplicaWithSpare(t *testing.T) {
	const blocks = 512
	cfg := engine.Config{Volume: "v", RebuildAfterTicks: 10, ReplaceAfterTicks: 60, Spares: []proto.ReplicaID{"s1", "s2"}}
	c := newCluster(t, 3, blocks*proto.BlockSize, cfg)
	c.AddNode("s1", blocks*proto.BlockSize)
	c.AddNode("s2", blocks*proto.BlockSize)
	c.settle()
	for b := uint64(0); b < blocks; b += 3 {
		c.write(b, b+1)
	}
	if got := c.Engine().Info().Spares; !slices.Equal(got, []proto.ReplicaID{"s1", "s2"}) {
		t.Fatalf("free spares %v, want s1 s2", got)
	}
	c.SetDown("r3", true)
	c.write(1, 1000) // r3 fails this write and goes ERR
	replaced := c.RunUntil(func() bool {
		m := modes(c.Engine().Info())
		lr := c.Engine().Info().LastRebuild
		return m["s1"] == engine.ModeRW && m["r3"] == engine.ModeNone && lr != nil && lr.Target == "s1"
	}, 5000)
	info := c.Engine().Info()
	if !replaced {
		t.Fatalf("r3 not replaced by s1: %+v", info.Replicas)
	}
	if !slices.Equal(info.Removed, []proto.ReplicaID{"r3"}) || info.Replaced != 1 || !slices.Equal(info.Spares, []proto.ReplicaID{"s2"}) {
		t.Fatalf("removed %v replaced %d spares %v; want [r3] 1 [s2]", info.Removed, info.Replaced, info.Spares)
	}
	if lr := info.LastRebuild; lr == nil || lr.Target != "s1" || lr.Stage != "done" || lr.BytesCopied == 0 {
		t.Fatalf("last rebuild %+v", info.LastRebuild)
	}
	c.expect(1, 1000)
	c.expect(3, 4)
	sameContent(t, c, "r1", "s1", blocks)

	// r3 comes back; a new engine is configured with r1..r3 only.
	c.SetDown("r3", false)
	c.RestartEngine()
	c.Run(200, 3000)
	info = c.Engine().Info()
	m := modes(info)
	if len(m) != 3 || m["r1"] != engine.ModeRW || m["r2"] != engine.ModeRW || m["s1"] != engine.ModeRW {
		t.Fatalf("after restart: %+v (want r1 r2 s1 RW, r3 out)", info.Replicas)
	}
	if !slices.Equal(info.Removed, []proto.ReplicaID{"r3"}) {
		t.Fatalf("tombstones after restart: %v", info.Removed)
	}
	c.expect(1, 1000)
}

// A replica added by request under a new ID copies everything, and a
// replica that was away briefly copies only what changed meanwhile.
func TestRebuildCopiesOnlyWhatDiffers(t *testing.T) {
	const blocks = 1024
	c := newCluster(t, 2, blocks*proto.BlockSize, engine.Config{Volume: "v", RebuildAfterTicks: 10})
	for b := uint64(0); b < blocks; b++ {
		c.write(b, b+1)
	}
	c.AddNode("r9", blocks*proto.BlockSize)
	c.settle()
	if r := c.adminDo(engine.AdminRequest{Op: engine.AdminAddReplica, Replica: "r9"}); r.Err != nil {
		t.Fatalf("add r9: %v", r.Err)
	}
	lr := c.Engine().Info().LastRebuild
	if lr == nil || lr.Stage != "done" || lr.BytesCopied != blocks*proto.BlockSize {
		t.Fatalf("full rebuild: %+v, want %d bytes copied", lr, blocks*proto.BlockSize)
	}
	sameContent(t, c, "r1", "r9", blocks)
	c.settle() // the rebuild snapshot is merged away everywhere

	c.SetDown("r9", true)
	c.write(0, 7) // r9 goes ERR
	changed := map[uint64]bool{0: true}
	for b := uint64(5); b < blocks; b += 37 {
		c.write(b, b+5000)
		changed[b] = true
	}
	c.SetDown("r9", false)
	c.Crash("r9", func(store.LayerID, uint64, bool) bool { return true })
	ok := c.RunUntil(func() bool {
		lr := c.Engine().Info().LastRebuild
		return lr != nil && lr.Target == "r9" && lr.Stage == "done" && lr.BytesCopied < blocks*proto.BlockSize
	}, 5000)
	lr = c.Engine().Info().LastRebuild
	if !ok || lr.BytesCopied != uint64(len(changed))*proto.BlockSize {
		t.Fatalf("catch-up: %+v; want %d bytes copied (%d changed blocks)", lr, len(changed)*proto.BlockSize, len(changed))
	}
	sameContent(t, c, "r1", "r9", blocks)
}

// A paced rebuild never copies more than its budget allows: one burst
// plus the rate for every tick that passed.
func TestRebuildRateLimit(t *testing.T) {
	const blocks, rate = 2048, 64 << 10 // 8 MiB at 64 KiB a tick
	c := newCluster(t, 1, blocks*proto.BlockSize, engine.Config{Volume: "v", RebuildAfterTicks: -1})
	for b := uint64(0); b < blocks; b += 4 {
		c.submit(engine.Request{Op: proto.OpWrite, BlockIndex: b, BlockCount: 4, Data: bytes.Repeat(block(b), 4)})
	}
	c.AddNode("r2", blocks*proto.BlockSize)
	c.settle()
	c.SubmitAdmin(engine.AdminRequest{Op: engine.AdminAddReplica, Replica: "r2", RateBytesPerTick: rate})
	const burst = 256 * proto.BlockSize
	start := c.Ticks
	maxSeen, done := uint64(0), false
	for i := 0; i < 5000 && !done; i++ {
		for c.Step() {
		}
		info := c.Engine().Info()
		if p := info.Rebuild; p != nil {
			if p.RateBytesPerTick != rate {
				t.Fatalf("rate %d reported, want %d", p.RateBytesPerTick, rate)
			}
			allowed := uint64(burst) + uint64(c.Ticks-start)*rate
			if p.BytesCopied > allowed {
				t.Fatalf("tick %d: %d bytes copied, budget allows %d", c.Ticks-start, p.BytesCopied, allowed)
			}
			maxSeen = max(maxSeen, p.BlocksDone)
			if p.BlocksDone > p.BlocksTotal {
				t.Fatalf("progress %d of %d blocks", p.BlocksDone, p.BlocksTotal)
			}
		}
		done = info.LastRebuild != nil && info.LastRebuild.Stage == "done"
		c.Tick()
	}
	if !done {
		t.Fatalf("paced rebuild did not finish: %+v", c.Engine().Info().Rebuild)
	}
	if ticks := c.Ticks - start; uint64(ticks)*rate+burst < blocks*proto.BlockSize {
		t.Fatalf("finished in %d ticks: faster than the rate allows", ticks)
	}
	if maxSeen == 0 {
		t.Fatalf("progress never moved")
	}
	sameContent(t, c, "r1", "r2", blocks)
}
