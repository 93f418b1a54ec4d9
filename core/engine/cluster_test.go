package engine_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/memstore"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/core/store"
)

// node is one replica process in the test cluster.
type node struct {
	id    proto.ReplicaID
	st    *memstore.Store
	r     *replica.Replica
	down  bool // unreachable: messages to it are lost
	inbox []proto.Request
	ios   []store.IO
}

// cluster runs an engine and its replicas synchronously. choose picks
// which pending event runs next (nil: the first), so tests can shuffle
// IO completion and message interleaving deterministically.
type cluster struct {
	t       testing.TB
	e       *engine.Engine
	nodes   map[proto.ReplicaID]*node
	order   []proto.ReplicaID
	outbox  map[proto.ReplicaID][]proto.Reply // replies from a node to the engine
	replies map[uint64]engine.Reply
	admin   map[uint64]engine.AdminReply
	choose  func(n int) int
	nextID  uint64
	cfg     engine.Config
}

func newCluster(t testing.TB, n int, sizeBytes uint64, cfg engine.Config) *cluster {
	c := &cluster{t: t, nodes: map[proto.ReplicaID]*node{}, outbox: map[proto.ReplicaID][]proto.Reply{},
		replies: map[uint64]engine.Reply{}, admin: map[uint64]engine.AdminReply{}}
	for i := 0; i < n; i++ {
		id := proto.ReplicaID(fmt.Sprintf("r%d", i+1))
		c.addNode(id, sizeBytes)
		cfg.Replicas = append(cfg.Replicas, id)
	}
	c.cfg = cfg
	c.e = engine.New(cfg)
	c.run()
	if !c.e.Serving() {
		ph, why := c.e.Phase()
		t.Fatalf("engine not serving after open: %s %s", ph, why)
	}
	return c
}

func (c *cluster) addNode(id proto.ReplicaID, sizeBytes uint64) *node {
	nd := &node{id: id, st: memstore.New()}
	nd.r = replica.New(replica.Config{ID: id, CreateSizeBytes: sizeBytes})
	c.nodes[id] = nd
	c.order = append(c.order, id)
	c.runNode(nd)
	return nd
}

func (c *cluster) runNode(nd *node) {
	for {
		rd := nd.r.Ready()
		if len(rd.IOs) == 0 && len(rd.Replies) == 0 {
			return
		}
		if !nd.down {
			c.outbox[nd.id] = append(c.outbox[nd.id], rd.Replies...)
		}
		for _, io := range rd.IOs {
			nd.r.Complete(nd.st.Execute(io))
		}
	}
}

// run delivers everything until quiescent, ticking when idle; it stops
// after 500 idle ticks in a row or 5000 ticks in all.
func (c *cluster) run() {
	for idle, ticks := 0, 0; idle < 500 && ticks < 5000; ticks++ {
		for c.step() {
			idle = 0
		}
		idle++
		c.e.Tick()
	}
}

func (c *cluster) step() bool {
	rd := c.e.Ready()
	progress := len(rd.Messages)+len(rd.Replies)+len(rd.AdminReplies) > 0
	for _, m := range rd.Messages {
		nd := c.nodes[m.To]
		if nd == nil || nd.down {
			continue
		}
		nd.inbox = append(nd.inbox, m.Req)
	}
	for _, r := range rd.Replies {
		c.replies[r.ID] = r
	}
	for _, r := range rd.AdminReplies {
		c.admin[r.ID] = r
	}
	for _, id := range c.order {
		nd := c.nodes[id]
		for len(nd.inbox) > 0 {
			req := nd.inbox[0]
			nd.inbox = nd.inbox[1:]
			nd.r.Step(req)
			c.runNode(nd)
			progress = true
		}
		for len(c.outbox[id]) > 0 {
			rep := c.outbox[id][0]
			c.outbox[id] = c.outbox[id][1:]
			c.e.Step(id, rep)
			progress = true
		}
	}
	return progress
}

func (c *cluster) submit(req engine.Request) engine.Reply {
	c.nextID++
	req.ID = c.nextID
	c.e.Submit(req)
	c.run()
	r, ok := c.replies[req.ID]
	if !ok {
		c.t.Fatalf("no reply to %v", req.Op)
	}
	return r
}

func (c *cluster) adminDo(req engine.AdminRequest) engine.AdminReply {
	c.nextID++
	req.ID = c.nextID
	c.e.Admin(req)
	c.run()
	r, ok := c.admin[req.ID]
	if !ok {
		c.t.Fatalf("no admin reply to %v", req.Op)
	}
	return r
}

func block(v uint64) []byte {
	b := make([]byte, proto.BlockSize)
	binary.LittleEndian.PutUint64(b, v)
	b[100] = byte(v)
	return b
}

func (c *cluster) write(bi uint64, v uint64) {
	c.t.Helper()
	if r := c.submit(engine.Request{Op: proto.OpWrite, BlockIndex: bi, BlockCount: 1, Data: block(v)}); r.Err != nil {
		c.t.Fatalf("write %d: %v", bi, r.Err)
	}
}

func (c *cluster) expect(bi uint64, v uint64) {
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
	c := newCluster(t, 3, 64*proto.BlockSize, engine.Config{Volume: "v", RebuildAfterTicks: 30})
	c.write(1, 1)
	c.nodes["r2"].down = true
	c.write(2, 2) // r2 times out, goes ERR; the write is acknowledged by r1, r3
	info := c.adminDo(engine.AdminRequest{Op: engine.AdminInfo}).Info
	if info.Replicas[1].Mode != engine.ModeERR {
		t.Fatalf("r2 mode %v, want ERR", info.Replicas[1].Mode)
	}
	c.write(3, 3)
	c.nodes["r2"].down = false
	c.run() // auto rebuild
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
	c.e.SetAttached(false)
	if r := c.adminDo(engine.AdminRequest{Op: engine.AdminRevert, Name: "s1"}); r.Err != nil {
		t.Fatal(r.Err)
	}
	c.e.SetAttached(true)
	c.expect(1, 1)
	c.expect(1, 1)
}
