package enginerun

import (
	"errors"
	"fmt"
	"sync"

	"github.com/drover-io/drover/core/memstore"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/transports/link"
)

// memReplicas is a set of in-memory replicas reachable through links that
// run each request to completion inside Send, on the caller's goroutine,
// as an in-process link does. Tests cut and heal them to simulate lost
// connections.
type memReplicas struct {
	mu    sync.Mutex
	nodes map[string]*memNode
}

type memNode struct {
	mu    sync.Mutex
	r     *replica.Replica
	st    *memstore.Store
	up    bool
	links map[*memLink]bool
}

func newMemReplicas(sizeBytes uint64, ids ...string) *memReplicas {
	m := &memReplicas{nodes: map[string]*memNode{}}
	for _, id := range ids {
		nd := &memNode{st: memstore.New(), up: true, links: map[*memLink]bool{}}
		nd.r = replica.New(replica.Config{ID: proto.ReplicaID(id), CreateSizeBytes: sizeBytes})
		nd.run()
		m.nodes[id] = nd
	}
	return m
}

// run completes the replica's IOs until it is quiescent and returns its
// replies. The caller holds nd.mu.
func (nd *memNode) run() []proto.Reply {
	var out []proto.Reply
	for {
		rd := nd.r.Ready()
		if len(rd.IOs) == 0 && len(rd.Replies) == 0 {
			return out
		}
		out = append(out, rd.Replies...)
		for _, io := range rd.IOs {
			nd.r.Complete(nd.st.Execute(io))
		}
	}
}

func (m *memReplicas) dial(addr string, h link.Handler) (link.Link, error) {
	m.mu.Lock()
	nd := m.nodes[addr]
	m.mu.Unlock()
	if nd == nil {
		return nil, fmt.Errorf("dial %s: no such replica", addr)
	}
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if !nd.up {
		return nil, fmt.Errorf("dial %s: %w", addr, errors.New("connection refused"))
	}
	l := &memLink{nd: nd, h: h}
	nd.links[l] = true
	return l, nil
}

// cut breaks every link to addr and refuses new ones until heal.
func (m *memReplicas) cut(addr string) {
	nd := m.nodes[addr]
	nd.mu.Lock()
	nd.up = false
	links := nd.links
	nd.links = map[*memLink]bool{}
	nd.mu.Unlock()
	for l := range links {
		l.h.OnDown(errors.New("cut by test"))
	}
}

func (m *memReplicas) heal(addr string) {
	nd := m.nodes[addr]
	nd.mu.Lock()
	nd.up = true
	nd.mu.Unlock()
}

// reopenRead restarts the replica on its store (as after a clean
// shutdown), opens it at a higher epoch and reads blocks [lo, lo+n). Use
// it after the driver is closed and the volume flushed.
func (m *memReplicas) reopenRead(addr string, lo uint64, n uint32) ([]byte, error) {
	nd := m.nodes[addr]
	nd.mu.Lock()
	defer nd.mu.Unlock()
	nd.r = replica.New(replica.Config{ID: proto.ReplicaID(addr)})
	nd.run()
	epoch := nd.r.Info().Epoch + 1
	nd.r.Step(proto.Request{ID: 1, Epoch: epoch, Op: proto.OpOpen})
	nd.r.Step(proto.Request{ID: 2, Epoch: epoch, Op: proto.OpRead, BlockIndex: lo, BlockCount: n})
	for _, rep := range nd.run() {
		if rep.ID == 2 {
			if rep.Status != proto.StatusOK {
				return nil, fmt.Errorf("read %s: %v %s", addr, rep.Status, rep.Err)
			}
			return rep.Data, nil
		}
	}
	return nil, fmt.Errorf("read %s: no reply", addr)
}

type memLink struct {
	nd *memNode
	h  link.Handler
	mu sync.Mutex // serializes OnReply per link
}

func (l *memLink) Send(reqs ...proto.Request) {
	l.nd.mu.Lock()
	if !l.nd.links[l] {
		l.nd.mu.Unlock()
		return
	}
	var out []proto.Reply
	for _, req := range reqs {
		l.nd.r.Step(req)
		out = append(out, l.nd.run()...)
	}
	l.nd.mu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, rep := range out {
		l.h.OnReply(rep)
	}
}

func (l *memLink) Close() error {
	l.nd.mu.Lock()
	delete(l.nd.links, l)
	l.nd.mu.Unlock()
	return nil
}
