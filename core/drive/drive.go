// Package drive runs a replica synchronously for tests: ReplicaDriver owns
// a replica.Replica and the memstore.Store it runs on, keeps the IOs the
// replica emits in a pending pool, and completes them one at a time in an
// order a caller-supplied chooser picks. Everything is deterministic: the
// same requests and the same chooser give the same history.
package drive

import (
	"github.com/drover-io/drover/core/memstore"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/core/store"
)

// Executor runs one store IO to completion. *memstore.Store is one; tests
// wrap it to inject failures.
type Executor interface {
	Execute(io store.IO) store.Completion
}

// ReplicaDriver drives one replica on one in-memory store.
type ReplicaDriver struct {
	Replica *replica.Replica
	Store   *memstore.Store
	// Exec executes IOs; New sets it to Store. Replace it to inject faults.
	Exec Executor

	cfg     replica.Config
	choose  func(n int) int
	pending []store.IO
	replies []proto.Reply
}

// New starts a replica on st and runs its loading to completion. choose(n)
// returns which of n pending IOs completes next (0 <= result < n); nil
// means first-issued first.
func New(cfg replica.Config, st *memstore.Store, choose func(n int) int) *ReplicaDriver {
	d := &ReplicaDriver{Store: st, Exec: st, cfg: cfg, choose: choose}
	d.start()
	return d
}

func (d *ReplicaDriver) start() {
	d.Replica = replica.New(d.cfg)
	d.collect()
	d.Run()
}

func (d *ReplicaDriver) collect() {
	rd := d.Replica.Ready()
	d.pending = append(d.pending, rd.IOs...)
	d.replies = append(d.replies, rd.Replies...)
}

// Send steps one request into the replica; its IOs join the pending pool.
func (d *ReplicaDriver) Send(req proto.Request) {
	d.Replica.Step(req)
	d.collect()
}

// Pending returns how many IOs are issued and not yet completed.
func (d *ReplicaDriver) Pending() int { return len(d.pending) }

// Step executes and completes one pending IO, chosen by the chooser. It
// returns false when none is pending.
func (d *ReplicaDriver) Step() bool {
	if len(d.pending) == 0 {
		return false
	}
	i := 0
	if d.choose != nil {
		i = d.choose(len(d.pending))
	}
	io := d.pending[i]
	d.pending = append(d.pending[:i], d.pending[i+1:]...)
	d.Replica.Complete(d.Exec.Execute(io))
	d.collect()
	return true
}

// Run completes pending IOs (and those they lead to) until none is left.
func (d *ReplicaDriver) Run() {
	for d.Step() {
	}
}

// Replies returns and forgets the replies collected so far, in the order
// the replica emitted them.
func (d *ReplicaDriver) Replies() []proto.Reply {
	r := d.replies
	d.replies = nil
	return r
}

// Do sends req, runs until quiescent and returns the reply to req (other
// replies stay collected). A request the replica drops gets a zero Reply
// with Status StatusNotReady and Err "no reply".
func (d *ReplicaDriver) Do(req proto.Request) proto.Reply {
	d.Send(req)
	d.Run()
	for i, rep := range d.replies {
		if rep.ID == req.ID {
			d.replies = append(d.replies[:i], d.replies[i+1:]...)
			return rep
		}
	}
	return proto.Reply{ID: req.ID, Status: proto.StatusNotReady, Err: "no reply"}
}

// Crash simulates a power loss: IOs not yet executed are dropped, the
// store loses unsynced changes except those keep chooses to keep (see
// memstore.Store.Crash), collected replies are discarded, and a new
// replica starts on the same store and finishes loading.
func (d *ReplicaDriver) Crash(keep func(layer store.LayerID, blockIndex uint64, isIndex bool) bool) {
	d.pending, d.replies = nil, nil
	d.Store.Crash(keep)
	d.start()
}
