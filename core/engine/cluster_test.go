package engine_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/drover-io/drover/core/drive"
	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
)

// tc wraps a drive.Cluster with fatal-on-error helpers for scenario tests.
type tc struct {
	t testing.TB
	*drive.Cluster
}

func newCluster(t testing.TB, n int, sizeBytes uint64, cfg engine.Config) *tc {
	t.Helper()
	c := &tc{t: t, Cluster: drive.NewCluster(n, sizeBytes, cfg, nil)}
	if !c.Engine().Serving() {
		ph, why := c.Engine().Phase()
		t.Fatalf("engine not serving after open: %s %s", ph, why)
	}
	return c
}

func (c *tc) submit(req engine.Request) engine.Reply {
	c.t.Helper()
	r, ok := c.Do(req, 5000)
	if !ok {
		c.t.Fatalf("no reply to %v", req.Op)
	}
	return r
}

func (c *tc) adminDo(req engine.AdminRequest) engine.AdminReply {
	c.t.Helper()
	r, ok := c.Admin(req, 5000)
	if !ok {
		c.t.Fatalf("no admin reply to %v", req.Op)
	}
	return r
}

func (c *tc) settle() { c.Run(500, 5000) }

func block(v uint64) []byte {
	b := make([]byte, proto.BlockSize)
	binary.LittleEndian.PutUint64(b, v)
	b[100] = byte(v)
	return b
}

func (c *tc) write(bi uint64, v uint64) {
	c.t.Helper()
	if r := c.submit(engine.Request{Op: proto.OpWrite, BlockIndex: bi, BlockCount: 1, Data: block(v)}); r.Err != nil {
		c.t.Fatalf("write %d: %v", bi, r.Err)
	}
}

func (c *tc) expect(bi uint64, v uint64) {
	c.t.Helper()
	r := c.submit(engine.Request{Op: proto.OpRead, BlockIndex: bi, BlockCount: 1})
	if r.Err != nil {
		c.t.Fatalf("read %d: %v", bi, r.Err)
	}
	want := block(v)
	if v == 0 {
		want = make([]byte, proto.BlockSize)
	}
	if !bytes.Equal(r.Data, want) {
		c.t.Fatalf("block %d: got value %d, want %d", bi, binary.LittleEndian.Uint64(r.Data), v)
	}
}

func TestEngineBasicIO(t *testing.T) {
	c := newCluster(t, 3, 64*proto.BlockSize, engine.Config{Volume: "v"})
	c.write(3, 7)
	c.expect(3, 7)
	c.expect(4, 0)
	if r := c.submit(engine.Request{Op: proto.OpFlush}); r.Err != nil {
		t.Fatal(r.Err)
	}
	for i := 0; i < 3; i++ { // round robin hits every replica
		c.expect(3, 7)
	}
	if r := c.submit(engine.Request{Op: proto.OpTrim, BlockIndex: 3, BlockCount: 1}); r.Err != nil {
		t.Fatal(r.Err)
	}
	c.expect(3, 0)
	r := c.submit(engine.Request{Op: proto.OpRead, BlockIndex: 63, BlockCount: 2})
	if !errors.Is(r.Err, engine.ErrInvalid) {
		t.Fatalf("read past the end: got %v, want ErrInvalid", r.Err)
	}
}

func TestEngineReplicaFailureAndRebuild(t *testing.T) {
	// 3000 blocks: more than one request's worth (1024), so rebuild must
	// list each layer in windows a replica accepts (a 12 MiB rebuild once
	// failed on every attempt: listing windows of 65536 blocks were
	// refused by the replica's 1024-block request limit).
	c := newCluster(t, 3, 3000*proto.BlockSize, engine.Config{Volume: "v", RebuildAfterTicks: 30})
	c.write(2999, 9)
	c.write(1, 1)
	c.SetDown("r2", true)
	c.write(2, 2) // r2 times out, goes ERR; the write is acknowledged by r1, r3
	info := c.adminDo(engine.AdminRequest{Op: engine.AdminInfo}).Info
	if info.Replicas[1].Mode != engine.ModeERR {
		t.Fatalf("r2 mode %v, want ERR", info.Replicas[1].Mode)
	}
	c.write(3, 3)
	c.SetDown("r2", false)
	c.settle() // auto rebuild
	info = c.adminDo(engine.AdminRequest{Op: engine.AdminInfo}).Info
	for _, r := range info.Replicas {
		if r.Mode != engine.ModeRW {
			t.Fatalf("after rebuild %s is %v (%s)", r.ID, r.Mode, r.Why)
		}
	}
	for i := 0; i < 3; i++ {
		c.expect(1, 1)
		c.expect(2, 2)
		c.expect(3, 3)
		c.expect(2999, 9)
	}
}

func TestEngineSnapshotRevert(t *testing.T) {
	c := newCluster(t, 2, 64*proto.BlockSize, engine.Config{Volume: "v"})
	c.write(1, 1)
	if r := c.adminDo(engine.AdminRequest{Op: engine.AdminSnapshot, Name: "s1"}); r.Err != nil {
		t.Fatal(r.Err)
	}
	c.write(1, 2)
	c.expect(1, 2)
	if r := c.adminDo(engine.AdminRequest{Op: engine.AdminRevert, Name: "s1"}); !errors.Is(r.Err, engine.ErrBusy) {
		t.Fatalf("revert while attached: %v", r.Err)
	}
	c.Engine().SetAttached(false)
	if r := c.adminDo(engine.AdminRequest{Op: engine.AdminRevert, Name: "s1"}); r.Err != nil {
		t.Fatal(r.Err)
	}
	c.Engine().SetAttached(true)
	c.expect(1, 1)
	c.expect(1, 1)
}

// A write whose acknowledgement was parked behind a membership change
// that then failed (no quorum) was never answered: maybeDone marked it
// replied before parking it, and the fault dropped the parked reply.
func TestEngineParkedReplyAnsweredOnFault(t *testing.T) {
	c := newCluster(t, 2, 8*proto.BlockSize, engine.Config{Volume: "v", TimeoutTicks: 20})
	c.settle()
	c.SetDown("r1", true) // r2 alone is not a quorum of {r1, r2}
	r := c.submit(engine.Request{Op: proto.OpWrite, BlockIndex: 1, BlockCount: 1, Data: block(1)})
	if !errors.Is(r.Err, engine.ErrFaulted) {
		t.Fatalf("write without a quorum: %v, want ErrFaulted", r.Err)
	}
}

// An engine that died mid-write left the write on r1 only; the new engine
// (no replica crashed, so nothing was "recovered") served reads from both
// replicas, which disagreed. Open now resyncs replicas' active regions.
func TestEngineRestartResyncsHalfDoneWrite(t *testing.T) {
	c := newCluster(t, 2, 8*proto.BlockSize, engine.Config{Volume: "v"})
	c.settle()
	c.Submit(engine.Request{Op: proto.OpWrite, BlockIndex: 2, BlockCount: 1, Data: block(9)})
	c.Step() // deliver to r1 only (the chooser is FIFO)
	c.RestartEngine()
	if !c.Engine().Serving() {
		t.Fatal("new engine not serving")
	}
	var first []byte
	for i := 0; i < 4; i++ {
		r := c.submit(engine.Request{Op: proto.OpRead, BlockIndex: 2, BlockCount: 1})
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		if first == nil {
			first = r.Data
		} else if !bytes.Equal(first, r.Data) {
			t.Fatalf("read %d of block 2 differs from the first: replicas disagree", i)
		}
	}
}

// TestEngineFlushesOnItsOwn: writes no client flushes are made durable
// by the engine once FlushEveryTicks passed (every replica's flushed
// sequence covers them), and the flush answers no frontend request; an
// engine with it off leaves them unflushed.
func TestEngineFlushesOnItsOwn(t *testing.T) {
	for _, every := range []int64{20, -1} {
		c := newCluster(t, 3, 64*proto.BlockSize, engine.Config{Volume: "v", FlushEveryTicks: every})
		for b := uint64(0); b < 4; b++ {
			c.write(b, b+1)
		}
		for i := 0; i < 40; i++ {
			c.Tick()
			for c.Step() {
			}
		}
		if _, ok := c.Host().Replies[0]; ok {
			t.Fatalf("FlushEveryTicks %d: a frontend reply to a request nobody sent", every)
		}
		for _, id := range []proto.ReplicaID{"r1", "r2", "r3"} {
			got := c.Nodes[id].Replica.Info().FlushedSeq
			if every > 0 && got < 4 {
				t.Fatalf("replica %s flushed up to write %d after 40 ticks, want 4", id, got)
			}
			if every < 0 && got != 0 {
				t.Fatalf("replica %s flushed up to write %d with the engine's own flushes off", id, got)
			}
		}
	}
}

// TestFailedRebuildsBackOff: a member whose rebuilds keep failing (its
// node is down) is retried after RebuildAfterTicks, then twice that, and
// so on up to 64 times, not every RebuildAfterTicks for ever — each
// attempt that reaches its snapshot leaves one behind.
func TestFailedRebuildsBackOff(t *testing.T) {
	c := newCluster(t, 3, 16*proto.BlockSize, engine.Config{Volume: "v", TimeoutTicks: 10, RebuildAfterTicks: 5})
	c.write(0, 1)
	c.SetDown("r3", true)
	c.write(1, 2) // r3 leaves the set
	for i := 0; i < 3000; i++ {
		c.Tick()
		for c.Step() {
		}
	}
	// Without backoff: one attempt per 5 ticks of waiting plus 10 of
	// timeout, about 200. With it: 5+10, 10+10, 20+10, ... 320+10 then
	// 330 a time: about 14.
	n := c.Engine().Info().Counters.RebuildsFailed
	if n < 5 || n > 20 {
		t.Fatalf("%d failed rebuilds in 3000 ticks, want about 14 (backing off)", n)
	}
	c.SetDown("r3", false)
	for i := 0; i < 1000 && c.Engine().Info().Counters.RebuildsDone == 0; i++ {
		c.Tick()
		for c.Step() {
		}
	}
	if c.Engine().Info().Counters.RebuildsDone != 1 {
		t.Fatalf("r3 not rebuilt within 1000 ticks of coming back")
	}
	c.expect(1, 2)
}
