// Package replicarun is the production driver of one replica: a Runner owns
// a replica.Replica and the store executor it runs on, steps requests into
// it, executes the store IOs it emits and feeds their completions back, and
// hands every reply to the caller whose request it answers.
//
// The Runner does its work on the goroutine that brings a request
// (decode → core → pwrite → reply), as docs/decisions/0006 asks: quick
// IOs (reads, writes, index updates, hole punches) run inline on the
// calling goroutine, one after another; IOs that may block for long (syncs,
// metadata writes, layer creation and removal, uncached reads) run on a
// goroutine of their own so that a flush does not hold up the requests behind it. The replica
// state machine is not safe for concurrent use; a mutex guards it, and no
// IO and no reply callback ever runs under that mutex.
package replicarun

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/core/store"
	"github.com/drover-io/drover/transports/bufpool"
)

// Executor runs one store IO to completion. Implementations must be safe
// for concurrent use: the Runner executes independent IOs concurrently.
// transports/filestore.Store is one; NewLockedExecutor makes one of a store
// that is not (such as core/memstore).
type Executor interface {
	Execute(io store.IO) store.Completion
}

// ActiveRegions is the activity-log bound (replica.Config.MaxActiveRegions)
// production replicas run with: 1,024 regions of 4 MiB, so random
// overwrites across up to 4 GiB of a volume record their regions once and
// then run without metadata writes. The core's default (64 regions, 256
// MiB) suits the simulator's small volumes; with it a 1 GiB volume under
// random overwrites evicts and re-records regions — a metadata write and
// fsync — every few writes (measured: 4 KiB random writes at queue depth
// 32 on tmpfs dropped from ~40k to ~13k IOPS). The cost is on recovery:
// after a crash every listed region is read and checked (at most 4 GiB).
const ActiveRegions = 1024

// maxWaiting bounds the requests a Runner holds a reply callback for. The
// replica itself queues at most a few thousand; the rest of the margin is
// for duplicates that never get a reply (see waiters).
const maxWaiting = 16384

// ErrClosed is returned (or passed to OnDown) once a Runner is closed.
var ErrClosed = errors.New("replica runner closed")

// LoadError reports that a replica could not be loaded from its store.
type LoadError struct {
	ID     proto.ReplicaID
	Reason string // the replica's own account, e.g. "read metadata: missing"
	// Last is the store IO loading had executed last when it stopped: the
	// part of the store that is damaged or unreadable (its Kind and Layer;
	// a metadata read whose bytes do not decode is a ReadMeta).
	Last store.IO
}

func (e *LoadError) Error() string {
	return fmt.Sprintf("load replica %s: %s", e.ID, e.Reason)
}

// Part names the part of the store loading stopped at, e.g. "metadata"
// or "index of layer 3".
func (e *LoadError) Part() string {
	switch e.Last.Kind {
	case store.ReadMeta, store.WriteMeta:
		return "metadata"
	case store.ReadIndex, store.WriteIndex, store.SyncIndex:
		return fmt.Sprintf("index of layer %d", e.Last.Layer)
	case store.ReadData, store.WriteData, store.SyncData, store.PunchHole:
		return fmt.Sprintf("data of layer %d", e.Last.Layer)
	case store.CreateLayer, store.RemoveLayer:
		return fmt.Sprintf("layer %d", e.Last.Layer)
	}
	return "store"
}

// waiter is a caller waiting for the reply to one request.
type waiter struct {
	epoch uint64
	op    proto.Op
	reply func(proto.Reply)
}

// Runner drives one replica. Create it with Open.
type Runner struct {
	id   proto.ReplicaID
	exec Executor

	mu     sync.Mutex
	rep    *replica.Replica // nil in a failed Runner (NewFailed)
	closed bool
	// failed is why a Runner made by NewFailed serves nothing.
	failed string
	// checkSize, when set, vets every expand before the replica sees it
	// (SetSizeCheck).
	checkSize func(sizeBytes uint64) error
	// waiters maps a request id to the callers waiting for a reply with
	// that id, oldest first. Ids are chosen by engines, so two engines (of
	// different epochs) may reuse one; the replica answers them in order.
	waiters  map[uint64]waiterList
	nWaiting int
	downs    map[*localLink]struct{}

	ios sync.WaitGroup // IOs being executed, for Close
	// intentsSlow records that the last WriteIntents took at least
	// slowIntents: the next ones run on goroutines of their own.
	intentsSlow atomic.Bool
	// runFirstFn is runFirst, called through a func value so that run and
	// runFirst are not mutually recursive to escape analysis, which would
	// then move runFirst's stack array to the heap.
	runFirstFn func(store.IO)
}

// Open starts a replica on exec and runs its loading (reading metadata and
// every layer's index, settling regions a crash left active) to
// completion. A replica that fails to load yields a *LoadError.
func Open(cfg replica.Config, exec Executor) (*Runner, error) {
	if exec == nil {
		return nil, fmt.Errorf("open replica %s: nil executor", cfg.ID)
	}
	if cfg.NewBuffer == nil {
		cfg.NewBuffer = bufpool.Get // replies hand them on (link.Handler)
	}
	r := &Runner{
		id: cfg.ID, exec: exec, rep: replica.New(cfg),
		waiters: map[uint64]waiterList{}, downs: map[*localLink]struct{}{},
	}
	r.runFirstFn = r.runFirst
	// Loading is sequential: each IO follows from the last completion.
	pending := r.rep.Ready().IOs
	var last store.IO
	for len(pending) > 0 {
		last = pending[0]
		pending = pending[1:]
		r.rep.Complete(exec.Execute(last))
		pending = append(pending, r.rep.Ready().IOs...)
	}
	last.Data, last.Entries, last.Meta = nil, nil, nil // only its kind and layer are kept
	if !r.rep.Loaded() {
		return nil, &LoadError{ID: cfg.ID, Reason: "loading stopped with no IO pending", Last: last}
	}
	if why := r.rep.Err(); why != "" {
		return nil, &LoadError{ID: cfg.ID, Reason: why, Last: last}
	}
	return r, nil
}

// NewFailed returns a Runner for a replica that could not be loaded: it
// answers every request with StatusIOError and why, so that an engine
// reaching it (over TCP or in process) marks it ERR and says why, instead
// of finding nothing at the address. It touches no store: damaged data is
// left as it is for an operator to inspect, repair or replace.
func NewFailed(id proto.ReplicaID, why string) *Runner {
	if why == "" {
		why = "failed to load"
	}
	return &Runner{id: id, failed: why, waiters: map[uint64]waiterList{}, downs: map[*localLink]struct{}{}}
}

// Failed returns why the Runner serves nothing ("" for a loaded one).
func (r *Runner) Failed() string { return r.failed }

// SetSizeCheck installs check, which vets every expand that would grow
// the replica before the replica sees it: an error refuses the expand with
// StatusInvalid and its text, and nothing is written (for example a size
// the file system cannot address, or over the disk's over-provisioning
// limit). Call it before the Runner serves requests.
func (r *Runner) SetSizeCheck(check func(sizeBytes uint64) error) { r.checkSize = check }

// ID returns the replica's id.
func (r *Runner) ID() proto.ReplicaID { return r.id }

// Handle steps req into the replica and arranges for reply to be called
// once with its answer. Handle may run the request's IOs, and call reply
// (for this or other requests), on the calling goroutine before it returns;
// replies of requests whose IOs complete elsewhere are called from there.
// req.Data must stay untouched until reply is called. A request the
// replica drops as a duplicate of one in flight moves the reply of the
// original to this reply; a duplicate of one already answered gets none.
func (r *Runner) Handle(req proto.Request, reply func(proto.Reply)) {
	var buf [4]store.IO
	r.run(r.step(req, reply, buf[:0]))
}

// step steps req into the replica, delivers the replies that follow at
// once, and appends the IOs to run (with r.run, on any goroutine) to ios:
// the ordered half of Handle.
func (r *Runner) step(req proto.Request, reply func(proto.Reply), ios []store.IO) []store.IO {
	if r.failed != "" {
		reply(proto.Reply{ID: req.ID, Status: proto.StatusIOError,
			Err: fmt.Sprintf("replica %s serves nothing: %s", r.id, r.failed)})
		return ios
	}
	if req.Op == proto.OpExpand && r.checkSize != nil {
		if err := r.vetExpand(req.SizeBytes); err != nil {
			reply(proto.Reply{ID: req.ID, Status: proto.StatusInvalid, Err: fmt.Sprintf("replica %s: expand refused: %v", r.id, err)})
			return ios
		}
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		reply(proto.Reply{ID: req.ID, Status: proto.StatusNotReady, Err: ErrClosed.Error()})
		return ios
	}
	if r.nWaiting >= maxWaiting {
		r.mu.Unlock()
		reply(proto.Reply{ID: req.ID, Status: proto.StatusNotReady,
			Err: fmt.Sprintf("replica %s is busy: %d requests waiting", r.id, maxWaiting)})
		return ios
	}
	r.rep.Step(req)
	rd := r.rep.Ready()
	var buf [2]delivery // on the stack: most steps deliver at most one
	deliveries := buf[:0]
	if i := replyIndex(rd.Replies, req.ID); i >= 0 {
		// Answered at once (refused, or served without IO): it is ours,
		// even if an older request with the same id is still waiting.
		// The others are routed around it, so that rd keeps its slice
		// for Release (cutting it out would leave a slice of no capacity,
		// and the replica's next reply would allocate).
		deliveries = append(deliveries, delivery{reply, rd.Replies[i]})
		deliveries = r.routeSkip(deliveries, rd.Replies, i)
	} else {
		r.addWaiter(req, reply)
		deliveries = r.route(deliveries, rd.Replies)
	}
	r.ios.Add(len(rd.IOs))
	ios = append(ios, rd.IOs...)
	r.rep.Release(rd)
	r.mu.Unlock()
	deliver(deliveries)
	return ios
}

// vetExpand runs the size check on an expand that would grow the
// replica (one to its size or below changes nothing and passes). The
// check may do IO, so it runs outside r.mu.
func (r *Runner) vetExpand(sizeBytes uint64) error {
	r.mu.Lock()
	cur := uint64(0)
	if !r.closed {
		cur = r.rep.Info().SizeBytes
	}
	r.mu.Unlock()
	if sizeBytes <= cur {
		return nil
	}
	return r.checkSize(sizeBytes)
}

// Do steps req and waits for its reply. It suits control-plane callers
// and tests; the data path uses Handle.
func (r *Runner) Do(req proto.Request) proto.Reply {
	ch := make(chan proto.Reply, 1)
	r.Handle(req, func(rep proto.Reply) { ch <- rep })
	return <-ch
}

// Info returns what the replica reports about itself (as OpInfo does).
func (r *Runner) Info() proto.Info {
	if r.failed != "" {
		return proto.Info{ID: r.id}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rep.Info()
}

// Close stops taking requests, waits for the IOs in flight to finish, and
// tells every local link to the Runner that it is down. Requests still
// waiting for a reply get none. The executor may be closed afterwards.
func (r *Runner) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	links := r.downs
	r.downs = nil
	r.mu.Unlock()
	r.ios.Wait()
	for l := range links {
		l.onDown(fmt.Errorf("replica %s: %w", r.id, ErrClosed))
	}
	return nil
}

// addWaiter records reply as waiting for req's answer. A request with the
// epoch and id of one already waiting is a duplicate the replica drops; the
// original's answer then goes to the newest caller (an engine resending
// after reconnecting).
func (r *Runner) addWaiter(req proto.Request, reply func(proto.Reply)) {
	w := waiter{epoch: req.Epoch, op: req.Op, reply: reply}
	wl, ok := r.waiters[req.ID]
	if !ok {
		r.waiters[req.ID] = waiterList{head: w}
		r.nWaiting++
		return
	}
	if wl.head.epoch == req.Epoch {
		wl.head.reply = reply
		r.waiters[req.ID] = wl
		return
	}
	for i := range wl.rest {
		if wl.rest[i].epoch == req.Epoch {
			wl.rest[i].reply = reply
			return
		}
	}
	wl.rest = append(wl.rest, w)
	r.waiters[req.ID] = wl
	r.nWaiting++
}

// waiterList is the callers waiting for one request id, oldest first. The
// first is held inline, so the common case (one caller per id) costs no
// slice.
type waiterList struct {
	head waiter
	rest []waiter
}

// pop removes the oldest waiter and reports whether any is left.
func (wl *waiterList) pop() (waiter, bool) {
	w := wl.head
	if len(wl.rest) == 0 {
		return w, false
	}
	wl.head = wl.rest[0]
	wl.rest = wl.rest[1:]
	if len(wl.rest) == 0 {
		wl.rest = nil
	}
	return w, true
}

// route pairs replies with their oldest waiter. After an OK open at epoch
// E the replica answers older epochs only with StatusStaleEpoch, so the
// waiters still left for them once the batch is routed (mostly duplicates
// of answered requests, which would otherwise wait forever and could take
// the reply of a newer engine's request reusing their id) are dropped.
func (r *Runner) route(out []delivery, reps []proto.Reply) []delivery {
	return r.routeSkip(out, reps, -1)
}

// routeSkip is route for every reply but reps[skip].
func (r *Runner) routeSkip(out []delivery, reps []proto.Reply, skip int) []delivery {
	var opened uint64
	for i, rep := range reps {
		if i == skip {
			continue
		}
		wl, ok := r.waiters[rep.ID]
		if !ok {
			continue // the caller of a duplicate of an answered request
		}
		w, more := wl.pop()
		if more {
			r.waiters[rep.ID] = wl
		} else {
			delete(r.waiters, rep.ID)
		}
		r.nWaiting--
		out = append(out, delivery{w.reply, rep})
		if w.op == proto.OpOpen && rep.Status == proto.StatusOK {
			opened = max(opened, w.epoch)
		}
	}
	if opened > 0 {
		r.dropOlderThan(opened)
	}
	return out
}

func (r *Runner) dropOlderThan(epoch uint64) {
	for id, wl := range r.waiters {
		var kept []waiter
		for _, w := range append([]waiter{wl.head}, wl.rest...) {
			if w.epoch >= epoch {
				kept = append(kept, w)
			}
		}
		r.nWaiting -= 1 + len(wl.rest) - len(kept)
		if len(kept) == 0 {
			delete(r.waiters, id)
		} else {
			r.waiters[id] = waiterList{head: kept[0], rest: kept[1:]}
		}
	}
}

// run executes ios and what their completions lead to. Quick IOs run here,
// one after another; blocking ones each get a goroutine. It returns ios
// emptied, with whatever capacity it grew to, for reuse.
func (r *Runner) run(ios []store.IO) []store.IO {
	for len(ios) > 0 {
		io := ios[len(ios)-1]
		ios[len(ios)-1] = store.IO{}
		ios = ios[:len(ios)-1]
		if blocking(io) || io.Kind == store.WriteIntents && r.intentsSlow.Load() {
			go r.runFirstFn(io)
			continue
		}
		ios = r.complete(r.execute(io), ios)
	}
	return ios
}

// runFirst executes io on this goroutine, whatever its kind, then what
// follows from it as run does.
func (r *Runner) runFirst(io store.IO) {
	var buf [4]store.IO // on the stack, as in Handle
	r.run(r.complete(r.execute(io), buf[:0]))
}

// slowIntents is how long a WriteIntents (a write and an fdatasync) may
// take and still run inline on the goroutine that issued it. On tmpfs
// (or a disk whose cache is safe) it takes a few microseconds, less than
// a goroutine of its own costs (drover bench --tmpfs, 1-replica 4 KiB
// random writes at queue depth 1, two runs each: 16.5 and 19.6 us of CPU
// per IO always on goroutines, 11.1 and 12.8 adaptive); on a disk it takes tens of
// microseconds to milliseconds, and run inline it held up the
// connection's reader, so that no later write could join its group
// commit (1-replica 4 KiB random writes at queue depth 32 on ext4: 0.07x
// of nbdkit-file inline, 0.16x on goroutines, same run).
const slowIntents = 50 * time.Microsecond

// execute runs io, timing WriteIntents to choose how the next ones run.
func (r *Runner) execute(io store.IO) store.Completion {
	if io.Kind != store.WriteIntents {
		return r.exec.Execute(io)
	}
	start := time.Now()
	c := r.exec.Execute(io)
	r.intentsSlow.Store(time.Since(start) >= slowIntents)
	return c
}

// complete feeds c to the replica, delivers the replies that follow, and
// appends the IOs to run next to ios.
func (r *Runner) complete(c store.Completion, ios []store.IO) []store.IO {
	r.mu.Lock()
	r.rep.Complete(c)
	rd := r.rep.Ready()
	var buf [4]delivery // on the stack: a completion answers a few at most
	deliveries := r.route(buf[:0], rd.Replies)
	r.ios.Add(len(rd.IOs) - 1)
	ios = append(ios, rd.IOs...)
	r.rep.Release(rd)
	r.mu.Unlock()
	deliver(deliveries)
	return ios
}

// blocking reports whether io may block for long, and so should not hold
// up the calling goroutine: it waits for stable storage, or it is an
// uncached read or write (a rebuild source's or target's, up to a
// megabyte to or from the device with no readahead or write-behind),
// which then run in parallel rather than one after another on the
// connection's goroutine (a 2 GiB rebuild from a cold cache: 13.1 -> 9.0
// s with parallel reads). The replica never
// has two IOs that overlap a written block in flight at once.
func blocking(io store.IO) bool {
	switch io.Kind {
	case store.SyncData, store.SyncIndex, store.WriteMeta, store.CreateLayer, store.RemoveLayer:
		return true
	case store.ReadData, store.WriteData:
		return io.Uncached
	}
	return false
}

type delivery struct {
	fn  func(proto.Reply)
	rep proto.Reply
}

func deliver(ds []delivery) {
	for _, d := range ds {
		d.fn(d.rep)
	}
}

func replyIndex(reps []proto.Reply, id uint64) int {
	for i := range reps {
		if reps[i].ID == id {
			return i
		}
	}
	return -1
}

// lockedExecutor serializes a store that is not safe for concurrent use.
type lockedExecutor struct {
	mu   sync.Mutex
	exec Executor
}

// NewLockedExecutor returns an Executor that runs exec's IOs one at a time,
// for stores (such as core/memstore) that are not safe for concurrent use.
func NewLockedExecutor(exec Executor) Executor { return &lockedExecutor{exec: exec} }

func (e *lockedExecutor) Execute(io store.IO) store.Completion {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.exec.Execute(io)
}
