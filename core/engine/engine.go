// Package engine is one volume's replication logic as a pure state machine.
//
// An Engine takes frontend requests (Submit), admin requests (Admin),
// replica replies (Step), lost connections (ReplicaDown) and timer ticks
// (Tick), and returns effects (Ready): messages to replicas, replies to the
// frontend and to admin callers. It never touches a clock, socket or
// goroutine; time is counted in ticks the driver delivers.
//
// Replication rules (docs/ARCHITECTURE.md states the contracts, and
// docs/decisions/ the reasoning):
//   - Writes, trims and write-zeroes go to every RW and WO replica and are
//     acknowledged when all of them have acknowledged. A replica that fails
//     or times out goes to ERR and leaves the set; no write is acknowledged
//     until the membership without it is recorded by a quorum of the last
//     recorded membership's RW replicas.
//   - Reads go to one RW replica, round robin; on error they fail over, and
//     a corrupt block is repaired from the replica that served the read.
//   - Opening takes an epoch above every replica's and fences a quorum of
//     the newest recorded membership before serving.
//   - Overlapping frontend requests are ordered: a write waits for every
//     overlapping request before it, a read for every overlapping write.
package engine

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/drover-io/drover/core/proto"
)

// Errors returned to the frontend and admin callers. Callers branch with
// errors.Is.
var (
	// ErrInvalid: the request is malformed or out of range.
	ErrInvalid = errors.New("invalid request")
	// ErrNotOpen: the engine has not finished opening its replicas.
	ErrNotOpen = errors.New("volume is not open yet")
	// ErrFaulted: too few healthy replicas; the volume stopped serving.
	ErrFaulted = errors.New("volume is faulted")
	// ErrFenced: a newer engine took over the replicas.
	ErrFenced = errors.New("engine was fenced by a newer epoch")
	// ErrIO: every replica that could serve the request failed.
	ErrIO = errors.New("io error")
	// ErrBusy: too many requests are queued, or a conflicting admin task
	// is running.
	ErrBusy = errors.New("busy")
	// ErrDetached: the volume is detached (no frontend IO).
	ErrDetached = errors.New("volume is detached")
	// ErrNoSpace: a replica's disk is full.
	ErrNoSpace = errors.New("no space left on a replica")
	// ErrNotFound: no such snapshot or replica.
	ErrNotFound = errors.New("not found")
	// ErrExists: a snapshot or replica of that name exists already.
	ErrExists = errors.New("already exists")
)

const (
	maxWaiting       = 4096 // frontend requests queued behind conflicts
	maxBlocksPerIO   = 1024 // per frontend request (4 MiB)
	rebuildWindow    = 1 << 16
	rebuildRunBlocks = 256
	// rebuildRunsInFlight bounds the copies (read then write of one run)
	// a rebuild has outstanding: 32 MiB. On the bench disk 32 in flight
	// rebuilt about twice as fast as 8 (4 MiB runs were slower still).
	rebuildRunsInFlight = 32
	// rebuildFlushBytes, rebuildFlushTicks: a rebuild flushes its target
	// once this many bytes were copied and this many ticks passed since
	// the last flush, so a target killed midway keeps what it got: at
	// most about half a second of copying (at the drivers' 10 ms tick) is
	// lost, or 32 MiB on a slow rebuild. A flush holds up the target's
	// later writes until it is done; every 32 MiB at 700 MB/s that cost a
	// 2 GiB rebuild about 7% (722/736 against 659/692 MB/s).
	rebuildFlushBytes  = 32 << 20
	rebuildFlushTicks  = 50
	maxTombstones      = 16
	defaultTimeout     = 100 // ticks
	defaultFlushEvery  = 500 // ticks
	defaultRetryTicks  = 20
	defaultRebuildWait = 50
)

// Config sets up an Engine.
type Config struct {
	// Volume names the volume (for messages).
	Volume string
	// Replicas are the replicas to open.
	Replicas []proto.ReplicaID
	// MinHealthy is the fewest RW replicas with which writes are still
	// acknowledged (default 1, as in Longhorn).
	MinHealthy int
	// TimeoutTicks is how long a replica may take to answer (default 100).
	TimeoutTicks int64
	// RetryTicks is how long to wait before retrying a failed open (20).
	RetryTicks int64
	// FlushEveryTicks: once this many ticks passed since the last flush
	// and writes were sent since, the engine flushes on its own (default
	// 500, 5 s at the production tick; negative: never). It bounds what
	// the replicas keep between flushes — each head write's intent record
	// stays until a flush moves the flushed sequence — and what a crash
	// of every replica can lose from a client that never flushes.
	FlushEveryTicks int64
	// RebuildAfterTicks: an ERR replica is re-opened and rebuilt after this
	// many ticks (default 50; negative: never automatically).
	RebuildAfterTicks int64
	// MinEpoch is a floor for the epoch taken at open.
	MinEpoch uint64
	// LeaseTicks is the read lease (default TimeoutTicks/4): an engine
	// serves reads only while a quorum answered it at its epoch within
	// the lease, and a new engine serves nothing until a lease has passed
	// since it fenced its replicas. So a stale engine that has not yet
	// noticed it was replaced never returns data older than a write the
	// new one acknowledged. Clocks must tick at the same rate (bounded
	// drift; ticks are monotonic).
	LeaseTicks int64
	// Nonce distinguishes this engine incarnation from any other that may
	// open the same replicas at the same time: its low 16 bits are the low
	// bits of every epoch it takes, so two engines never share an epoch
	// (as Paxos ballots carry the proposer). Drivers draw it at random.
	Nonce uint64
	// FirstRequestID is where request ids start (a driver that routes
	// replies from several engines by id gives each its own range).
	FirstRequestID uint64
	// Spares are replicas the driver offers for replacing failed members
	// (fresh replicas on other disks or hosts), tried in order. A member
	// that stays ERR for ReplaceAfterTicks is taken out of the volume (a
	// tombstone in the membership keeps it out) and the first spare that
	// is not a member is rebuilt in its place under its own, new ID.
	Spares []proto.ReplicaID
	// ReplaceAfterTicks is how long a member may stay ERR before it is
	// replaced by a spare (default 10 x RebuildAfterTicks; negative:
	// never).
	ReplaceAfterTicks int64
	// RebuildBytesPerTick paces every rebuild's copies (0: no limit);
	// AdminAddReplica may set its own. The driver converts a rate in
	// bytes per second with its tick length.
	RebuildBytesPerTick uint64
	// BackingImage, when set, declares the volume to be on that backing
	// image: an open fails (and retries) while the replicas' chain starts
	// on another image, or, for a volume no engine opened before, on
	// none. A chain without one is accepted afterwards: deleting the
	// backing snapshot merges the image into the volume.
	BackingImage string
	// BackingSHA256 (hex), when set, is the image's checksum: a replica
	// whose shared backing layer records another is never current, and
	// never rebuilt (its image layer is read-only): it stays ERR, and a
	// spare replaces it. Unset, the current replicas' checksum is the
	// volume's.
	BackingSHA256 string
	// CopyShape sizes a rebuild's (and an open's resync) copying; zero
	// fields take the production defaults. The simulator's small volumes
	// shrink them so that its rebuilds span many windows and runs.
	CopyShape CopyShape
	// Bugs plants deliberate faults for the simulator's canary tests.
	Bugs Bugs
}

// CopyShape sizes the copying of a layer sync.
type CopyShape struct {
	// WindowBlocks: blocks listed (and compared) per listing; the next
	// window is listed while one is copied (default 65,536).
	WindowBlocks uint64
	// RunBlocks: blocks per copy, at most (default 256: 1 MiB).
	RunBlocks uint64
	// RunsInFlight: copies outstanding, at most (default 32).
	RunsInFlight int
	// FlushBytes, FlushTicks: a rebuild flushes its target once this
	// many bytes were copied and this many ticks passed since its last
	// flush (default 32 MiB and 50 ticks; a negative FlushTicks: no
	// wait).
	FlushBytes uint64
	FlushTicks int64
}

// Bugs are deliberate faults, for proving the simulator's checkers catch
// them. All false in production.
type Bugs struct {
	AckAfterFirst      bool // acknowledge a write after the first replica
	RebuildSkipLast    bool // rebuild skips the last run it should copy
	NoQuorumOpen       bool // serve after fencing any single replica
	ReadStaleReplicas  bool // serve reads from WO replicas too
	SkipResyncOnReopen bool // ignore replicas' recovered regions
	IgnoreHeartbeats   bool // heartbeat failures leave a replica RW
	RepairWritesReply  bool // read repair writes the reply's Data, not a copy
	TrustEmptyReplicas bool // open counts and trusts replicas with no membership record
	IgnoreDurableMark  bool // open trusts members whatever durable writes they hold
}

// Request is a frontend IO.
type Request struct {
	ID         uint64
	Op         proto.Op // OpRead, OpWrite, OpTrim, OpWriteZeroes, OpFlush
	BlockIndex uint64
	BlockCount uint32
	Data       []byte // OpWrite
	FUA        bool
}

// Reply answers a Request. Err is nil on success. A failed write's effect
// is unknown: it may or may not have reached some replicas.
type Reply struct {
	ID  uint64
	Err error
	// Data is a read's data. It is the caller's alone: the engine keeps
	// no reference (a read repair writes a copy), so the caller may
	// recycle it once read, if the links that brought it say so
	// (transports/link.Handler).
	Data []byte
	// DataHeld, on a write's reply, says that a replica may still be
	// reading the request's Data: a replica that left the set had not
	// answered it when it was acknowledged, or a call to one ended
	// without an answer (timed out, link lost). Without it every replica
	// the write went to has answered it, so the caller may reuse Data.
	DataHeld bool
}

// Message is a request for one replica. Messages to the same replica must
// be delivered in the order they were emitted (a TCP connection does so).
type Message struct {
	To  proto.ReplicaID
	Req proto.Request
}

// Ready is a batch of effects: send Messages (in order per replica), then
// deliver Replies and AdminReplies.
type Ready struct {
	Messages     []Message
	Replies      []Reply
	AdminReplies []AdminReply
	// Free lists data the engine is done with: a layer read reply's Data
	// (a rebuild's run) that it passed on in a layer write the target has
	// acknowledged. Nothing the engine holds or will send refers to it,
	// and the target received all of it, so the driver may reuse it (a
	// pooled buffer) once it handled the rest of this Ready.
	Free [][]byte
	// Events are things an operator wants to know happened (events.go),
	// in order, for the driver to log.
	Events []Event
}

// Phase is where an engine is in its life.
type Phase uint8

const (
	// PhaseOpening: fencing, choosing the current replicas, resyncing.
	PhaseOpening Phase = iota
	// PhaseServing: frontend IO is accepted (after one read lease).
	PhaseServing
	// PhaseFaulted: too few healthy replicas; IO fails until an open.
	PhaseFaulted
	// PhaseFenced: a newer engine fenced a replica; this one stops.
	PhaseFenced
)

var phaseNames = [...]string{"opening", "serving", "faulted", "fenced"}

func (p Phase) String() string {
	if int(p) < len(phaseNames) {
		return phaseNames[p]
	}
	return fmt.Sprintf("phase(%d)", uint8(p))
}

// Mode is a replica's state as the engine sees it.
type Mode uint8

const (
	// ModeNone: not opened or not part of the volume.
	ModeNone Mode = iota
	// ModeRW: current, serving reads and writes.
	ModeRW
	// ModeWO: rebuilding, receiving writes.
	ModeWO
	// ModeERR: failed; out of the set until rebuilt.
	ModeERR
)

func (m Mode) String() string { return [...]string{"-", "RW", "WO", "ERR"}[m] }

type member struct {
	id       proto.ReplicaID
	lastOK   int64 // send tick of the newest request it answered at our epoch
	mode     Mode
	why      string // last failure
	errSince int64  // tick it went ERR (reset by every failed rebuild)
	// down: not RW since downSince (spare replacement counts from here).
	down      bool
	downSince int64
	// unreachable: the last attempt to rebuild it found it not answering.
	unreachable bool
	// rebuildFails counts its rebuilds failed in a row: each doubles the
	// wait before the next automatic one (at most 64 times
	// RebuildAfterTicks), since every attempt that gets as far as the
	// snapshot leaves a rebuild snapshot behind until every member is RW.
	rebuildFails int
	// silent: its heartbeats have failed (timed out or found no
	// connection) since silentSince, with no answer at our epoch since.
	silent      bool
	silentSince int64
	info        *proto.Info
	// created is its store's creation epoch as it last reported it (at
	// our open, or its rebuild's): recorded with it in memberships.
	created uint64
}

type call struct {
	to       proto.ReplicaID
	sent     int64 // tick the request went out
	deadline int64
	// What the reply goes to: a frontend request's (f, by kind), or
	// then. The data path uses f, so a call costs no closure.
	kind callKind
	f    *fop
	then func(proto.Reply)
}

// callKind says which frontend handler a call's reply goes to.
type callKind uint8

const (
	callThen   callKind = iota // c.then
	callWrite                  // e.onWriteReply(c.f, ...)
	callRead                   // e.onReadReply(c.f, ...)
	callRepair                 // e.onRepairReply(c.f, ...)
)

// answer hands a call's reply to whoever waits for it. The call has left
// e.calls: a frontend request it names counts one call fewer, and goes
// back to the free list once finished with none left (reuse).
func (e *Engine) answer(c *call, rep proto.Reply) {
	if c.kind == callThen {
		c.then(rep)
		return
	}
	f := c.f
	f.calls--
	if rep.Status == proto.StatusUnreachable {
		// Synthesized (timeout, lost link): the replica may still hold
		// the request's data.
		f.dataHeld = true
	}
	switch c.kind {
	case callWrite:
		e.onWriteReply(f, c.to, rep)
	case callRead:
		e.onReadReply(f, c.to, rep)
	case callRepair:
		e.onRepairReply(f, c.to, rep)
	}
	e.reuse(f)
}

// Engine is the state machine.
type Engine struct {
	cfg   Config
	phase Phase
	why   string
	now   int64

	epoch     uint64
	sizeBytes uint64
	chain     []string
	members   map[proto.ReplicaID]*member
	committed *proto.Membership
	// committedPrev, when set, is a membership whose quorum must also
	// record the next change: committed was adopted at open and may never
	// have been committed by the engine that recorded it.
	committedPrev *proto.Membership
	attached      bool
	writeSeq      uint64
	// The last flush started (a client's or the engine's own): the write
	// sequence it covers and when. flushOwn: the engine's own flush is
	// waiting or running.
	flushedUpTo uint64
	flushedAt   int64
	flushOwn    bool
	counters    Counters
	nextID      uint64
	calls       map[uint64]call
	spare       Ready             // released slices for the next effects
	memberList  []*member         // sortedMembers' cache
	targetBuf   []proto.ReplicaID // scratch for startFop and readFrom
	roundRobin  int

	waiting []*fop
	running []*fop
	parked  []*fop // writes whose acknowledgement waits for a membership commit
	// parkedAdmin: admin successes waiting for a membership commit.
	parkedAdmin []func()
	// freeFops are finished frontend requests no call names any more,
	// reused by Submit (io.go: newFop) so a request allocates nothing.
	freeFops []*fop

	change  *memberChange
	admin   []*adminTask
	rebuild *rebuildTask
	// lastRebuild is the outcome of the last rebuild that ended.
	lastRebuild *RebuildProgress
	// dropRetryAt is the first tick at which rebuild snapshots may be
	// queued for merging again after an internal delete failed.
	dropRetryAt int64
	// replaced counts members replaced by spares.
	replaced int
	// removed are tombstones of replicas removed or replaced, recorded in
	// every membership so no engine rebuilds them back in (bounded).
	removed []proto.ReplicaID
	retryAt int64
	// quietUntil: a new engine serves no IO before this tick (a lease
	// after it fenced its replicas). lastBeat: the last lease heartbeat.
	quietUntil int64
	lastBeat   int64
	opening    *openTask
	// snapReads counts AdminReadSnapshot requests in flight (backup.go).
	snapReads int
	// backingSHA256: the checksum of the backing image the volume is on,
	// from the config or the current replicas at open ("" unknown).
	backingSHA256 string

	ready Ready
}

// New returns an engine that starts opening its replicas; call Ready for
// the first messages.
func New(cfg Config) *Engine {
	if cfg.MinHealthy <= 0 {
		cfg.MinHealthy = 1
	}
	if cfg.TimeoutTicks <= 0 {
		cfg.TimeoutTicks = defaultTimeout
	}
	if cfg.RetryTicks <= 0 {
		cfg.RetryTicks = defaultRetryTicks
	}
	if cfg.LeaseTicks <= 0 {
		cfg.LeaseTicks = max(cfg.TimeoutTicks/4, 4)
	}
	if cfg.RebuildAfterTicks == 0 {
		cfg.RebuildAfterTicks = defaultRebuildWait
	}
	if cfg.FlushEveryTicks == 0 {
		cfg.FlushEveryTicks = defaultFlushEvery
	}
	if cfg.ReplaceAfterTicks == 0 {
		cfg.ReplaceAfterTicks = 10 * max(cfg.RebuildAfterTicks, defaultRebuildWait)
	}
	if cfg.CopyShape.WindowBlocks == 0 {
		cfg.CopyShape.WindowBlocks = rebuildWindow
	}
	if cfg.CopyShape.RunBlocks == 0 {
		cfg.CopyShape.RunBlocks = rebuildRunBlocks
	}
	if cfg.CopyShape.RunsInFlight <= 0 {
		cfg.CopyShape.RunsInFlight = rebuildRunsInFlight
	}
	if cfg.CopyShape.FlushBytes == 0 {
		cfg.CopyShape.FlushBytes = rebuildFlushBytes
	}
	if cfg.CopyShape.FlushTicks == 0 {
		cfg.CopyShape.FlushTicks = rebuildFlushTicks
	}
	e := &Engine{cfg: cfg, members: map[proto.ReplicaID]*member{}, calls: map[uint64]call{}, attached: true,
		nextID: cfg.FirstRequestID}
	for _, id := range cfg.Replicas {
		e.members[id] = &member{id: id}
	}
	e.startOpen()
	return e
}

// Ready returns and clears the effects produced since the last call.
// The slices are the caller's, unless it hands them back with Release.
func (e *Engine) Ready() Ready {
	rd := e.ready
	e.ready, e.spare = e.spare, Ready{}
	return rd
}

// Release hands back the slices of a Ready whose elements the caller has
// all consumed and keeps nothing of (the values inside, such as a
// request's Data, stay the caller's): the engine gathers later effects in
// them instead of allocating. Optional; a driver that calls it saves the
// allocations of every round.
func (e *Engine) Release(rd Ready) {
	clear(rd.Messages)
	clear(rd.Replies)
	clear(rd.AdminReplies)
	clear(rd.Free)
	clear(rd.Events)
	e.spare = Ready{Messages: rd.Messages[:0], Replies: rd.Replies[:0], AdminReplies: rd.AdminReplies[:0], Free: rd.Free[:0],
		Events: rd.Events[:0]}
}

// HasReady reports whether Ready would return anything.
func (e *Engine) HasReady() bool {
	return len(e.ready.Messages)+len(e.ready.Replies)+len(e.ready.AdminReplies)+len(e.ready.Free)+len(e.ready.Events) > 0
}

// Step feeds a reply from replica from.
func (e *Engine) Step(from proto.ReplicaID, rep proto.Reply) {
	c, ok := e.calls[rep.ID]
	if !ok || c.to != from {
		return // late (timed out), duplicated, or not ours
	}
	delete(e.calls, rep.ID)
	if rep.Status == proto.StatusStaleEpoch {
		e.fence(fmt.Sprintf("replica %s: %s", from, rep.Err))
		return
	}
	if rep.Info != nil && rep.Info.Epoch > e.epoch && e.phase == PhaseServing {
		e.fence(fmt.Sprintf("replica %s is fenced at epoch %d", from, rep.Info.Epoch))
		return
	}
	e.noteContact(from, &c, rep)
	e.answer(&c, rep)
	e.schedule()
}

// ReplicaDown reports that the connection to a replica was lost: every
// call outstanding to it fails.
func (e *Engine) ReplicaDown(id proto.ReplicaID) {
	for _, reqID := range e.sortedCalls() {
		if c, ok := e.calls[reqID]; ok && c.to == id {
			delete(e.calls, reqID)
			e.answer(&c, proto.Reply{ID: reqID, Status: proto.StatusUnreachable, Err: "connection lost"})
		}
	}
	e.schedule()
}

// Tick advances the engine's clock by one tick: calls past their deadline
// fail, and retries that are due run.
func (e *Engine) Tick() {
	e.now++
	for _, reqID := range e.sortedCalls() {
		if c, ok := e.calls[reqID]; ok && c.deadline <= e.now {
			delete(e.calls, reqID)
			e.answer(&c, proto.Reply{ID: reqID, Status: proto.StatusUnreachable, Err: "timed out"})
		}
	}
	if e.phase == PhaseOpening && e.opening == nil && e.now >= e.retryAt {
		e.startOpen()
	}
	if e.rebuild != nil {
		e.rebuild.tick()
	}
	if e.phase == PhaseServing {
		e.maybeAutoRebuild()
		e.heartbeat()
		e.maybeFlush()
	}
	e.schedule()
}

// maybeFlush queues a flush of the engine's own when writes went
// unflushed for FlushEveryTicks (Config.FlushEveryTicks). It is ordered
// with frontend requests as a client's flush is, and answers no one.
func (e *Engine) maybeFlush() {
	if e.cfg.FlushEveryTicks < 0 || e.flushOwn || e.writeSeq <= e.flushedUpTo ||
		e.now-e.flushedAt < e.cfg.FlushEveryTicks || len(e.waiting) >= maxWaiting {
		return
	}
	f := e.newFop(Request{Op: proto.OpFlush})
	f.own, e.flushOwn = true, true
	e.waiting = append(e.waiting, f)
}

func (e *Engine) sortedCalls() []uint64 {
	ids := make([]uint64, 0, len(e.calls))
	for id := range e.calls {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// send emits a request to a replica and registers what to do with its
// reply (or its timeout).
func (e *Engine) send(to proto.ReplicaID, req proto.Request, then func(proto.Reply)) {
	e.sendCall(req, call{to: to, then: then})
}

// sendFop emits a frontend request's message; its reply goes to the
// read or write handler (kind) with f.
func (e *Engine) sendFop(to proto.ReplicaID, req proto.Request, kind callKind, f *fop) {
	f.calls++
	e.sendCall(req, call{to: to, kind: kind, f: f})
}

func (e *Engine) sendCall(req proto.Request, c call) {
	e.nextID++
	req.ID = e.nextID
	req.Epoch = e.epoch
	c.sent, c.deadline = e.now, e.now+e.cfg.TimeoutTicks
	e.calls[req.ID] = c
	e.ready.Messages = append(e.ready.Messages, Message{To: c.to, Req: req})
}

func (e *Engine) replyFrontend(id uint64, err error, data []byte) {
	e.ready.Replies = append(e.ready.Replies, Reply{ID: id, Err: err, Data: data})
}

// fence stops the engine for good: a newer engine owns the replicas.
func (e *Engine) fence(why string) {
	if e.phase == PhaseFenced {
		return
	}
	e.phase, e.why = PhaseFenced, why
	e.failAll(fmt.Errorf("%w: %s", ErrFenced, why))
}

// fault stops serving: too few healthy replicas or no quorum.
func (e *Engine) fault(why string) {
	if e.phase == PhaseFenced || e.phase == PhaseFaulted {
		return
	}
	e.phase, e.why = PhaseFaulted, why
	e.failAll(fmt.Errorf("%w: %s", ErrFaulted, why))
}

// failAll fails every frontend and admin request in progress. Replies
// from replicas to calls still outstanding are then ignored. The requests
// are abandoned to the garbage collector, never reused: their calls are
// forgotten without being counted down.
func (e *Engine) failAll(err error) {
	for _, f := range append(e.running, e.waiting...) {
		if !f.replied && !f.own {
			e.replyFrontend(f.req.ID, err, nil)
		}
	}
	e.flushOwn = false
	e.running, e.waiting, e.parked, e.parkedAdmin = nil, nil, nil, nil
	for _, a := range e.admin {
		e.adminReply(a, nil, err)
	}
	e.admin = nil
	clear(e.calls)
	e.change, e.rebuild, e.opening = nil, nil, nil
}

// Phase returns the engine's phase and, when stopped, why.
func (e *Engine) Phase() (Phase, string) { return e.phase, e.why }

// Serving reports whether the engine accepts frontend IO.
// It stays false during the quiet period after open (one read lease),
// while requests are accepted but held.
func (e *Engine) Serving() bool { return e.phase == PhaseServing && e.now >= e.quietUntil }

// Epoch returns the epoch the engine opened its replicas at.
func (e *Engine) Epoch() uint64 { return e.epoch }

// ChainLen returns how many snapshots the chain holds, and how many of
// them rebuilds took (cheaper than Info, for per-tick accounting).
func (e *Engine) ChainLen() (snapshots, rebuild int) {
	for _, n := range e.chain {
		if strings.HasPrefix(n, rebuildSnapshotPrefix) {
			rebuild++
		}
	}
	return len(e.chain), rebuild
}

// SizeBytes returns the volume size.
func (e *Engine) SizeBytes() uint64 { return e.sizeBytes }

// SetAttached records whether a frontend is attached; revert needs the
// volume detached.
func (e *Engine) SetAttached(attached bool) { e.attached = attached }

// holding reports whether new frontend IO is held: a barrier admin task
// or a rebuild is waiting for IO to drain or working under the hold.
func (e *Engine) holding() bool {
	if len(e.admin) > 0 && e.admin[0].barrier {
		return true
	}
	return e.rebuild != nil && e.rebuild.holding
}

// sortedMembers returns the members by id. The slice is cached until the
// members change (then a new one is made, so a caller still ranging over
// the old one is unaffected); callers must not modify it.
func (e *Engine) sortedMembers() []*member {
	if len(e.memberList) == len(e.members) {
		same := true
		for _, m := range e.memberList {
			if e.members[m.id] != m {
				same = false
				break
			}
		}
		if same {
			return e.memberList
		}
	}
	out := make([]*member, 0, len(e.members))
	for _, m := range e.members {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	e.memberList = out
	return out
}

// writeTargets are the replicas every write goes to.
func (e *Engine) writeTargets() []proto.ReplicaID { return e.appendWriteTargets(nil) }

func (e *Engine) appendWriteTargets(out []proto.ReplicaID) []proto.ReplicaID {
	for _, m := range e.sortedMembers() {
		if m.mode == ModeRW || m.mode == ModeWO {
			out = append(out, m.id)
		}
	}
	return out
}

// readable are the replicas reads may go to: RW in the engine's view and
// in the recorded membership.
func (e *Engine) readable() []proto.ReplicaID { return e.appendReadable(nil) }

func (e *Engine) appendReadable(out []proto.ReplicaID) []proto.ReplicaID {
	for _, m := range e.sortedMembers() {
		ok := m.mode == ModeRW && e.committed.Mode(m.id) == proto.ModeRW
		if e.cfg.Bugs.ReadStaleReplicas && m.mode == ModeWO {
			ok = true
		}
		if ok {
			out = append(out, m.id)
		}
	}
	return out
}

func (e *Engine) rwCount() int {
	n := 0
	for _, m := range e.members {
		if m.mode == ModeRW {
			n++
		}
	}
	return n
}

// noteContact records that a replica answered a request at the engine's
// epoch: any reply but stale-epoch and unreachable proves it, except an
// Info (answered whatever the epoch) that shows another epoch.
func (e *Engine) noteContact(from proto.ReplicaID, c *call, rep proto.Reply) {
	m := e.members[from]
	if m == nil || rep.Status == proto.StatusUnreachable || e.phase != PhaseServing {
		return
	}
	if rep.Info != nil && rep.Info.Epoch != e.epoch {
		return
	}
	m.lastOK = max(m.lastOK, c.sent)
	m.silent = false
}

// leaseValid reports whether reads may be served: a quorum of the
// committed membership answered requests sent within the lease, and the
// quiet period after open has passed.
func (e *Engine) leaseValid() bool {
	if e.now < e.quietUntil || e.committed == nil {
		return false
	}
	return quorumWhere(e.committed, func(id proto.ReplicaID) bool {
		m := e.members[id]
		return m != nil && m.lastOK > 0 && e.now-m.lastOK < e.cfg.LeaseTicks
	})
}

// heartbeat keeps the read lease fresh while IO is idle: an Info to every
// RW replica a few times per lease. Its reply also tells whether a newer
// engine fenced the replica (Step fences this engine then) and whether the
// replica is still the one this engine opened (onHeartbeat).
func (e *Engine) heartbeat() {
	if e.now-e.lastBeat < max(e.cfg.LeaseTicks/4, 1) {
		return
	}
	e.lastBeat = e.now
	for _, m := range e.sortedMembers() {
		if m.mode == ModeRW {
			id, sent := m.id, e.now
			e.send(id, proto.Request{Op: proto.OpInfo}, func(rep proto.Reply) { e.onHeartbeat(id, sent, rep) })
		}
	}
}

// onHeartbeat takes an RW replica out of the set when its heartbeat shows
// it failed, as a failed write would, so that an idle volume starts its
// rebuild or replacement too. A replica that answers but has failed,
// restarted (it may have lost unsynced writes), or is at another epoch is
// out at once; one that does not answer (timeouts, a lost connection) is
// out once it has answered nothing for TimeoutTicks, the bound a write
// has, so a connection that drops and comes straight back costs nothing.
func (e *Engine) onHeartbeat(id proto.ReplicaID, sent int64, rep proto.Reply) {
	m := e.members[id]
	if m == nil || m.mode != ModeRW || e.phase != PhaseServing || e.cfg.Bugs.IgnoreHeartbeats {
		return
	}
	var why string
	switch {
	case rep.Status == proto.StatusUnreachable:
		if !m.silent {
			m.silent, m.silentSince = true, sent
		}
		if e.now-m.silentSince < e.cfg.TimeoutTicks {
			e.counters.HeartbeatFailures++
			return
		}
		why = fmt.Sprintf("heartbeat: no answer for %d ticks (%s)", e.now-m.silentSince, rep.Err)
	case rep.Status != proto.StatusOK || rep.Info == nil:
		why = fmt.Sprintf("heartbeat: %v %s", rep.Status, rep.Err)
	case rep.Info.Epoch != e.epoch || !rep.Info.Opened:
		why = fmt.Sprintf("heartbeat: restarted since it was opened (epoch %d, opened %v)", rep.Info.Epoch, rep.Info.Opened)
	default:
		return
	}
	e.counters.HeartbeatFailures++
	if !e.canDrop(id) {
		return
	}
	e.replicaFailed(id, why)
}

// canDrop reports whether an RW replica can leave the set without
// faulting the volume: the rest still meet MinHealthy and are a quorum of
// the committed membership (and of its predecessor, while that counts).
// A heartbeat drops a replica only then: no write is at stake, so
// faulting the volume would gain nothing — a write finds the replica's
// failure itself, and reads already need the lease.
func (e *Engine) canDrop(id proto.ReplicaID) bool {
	if e.rwCount()-1 < e.cfg.MinHealthy {
		return false
	}
	rest := func(x proto.ReplicaID) bool {
		m := e.members[x]
		return x != id && m != nil && m.mode == ModeRW
	}
	return quorumWhere(e.committed, rest) && (e.committedPrev == nil || quorumWhere(e.committedPrev, rest))
}
