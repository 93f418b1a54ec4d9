// Package replica is one replica's logic as a pure state machine.
//
// A Replica holds a chain of layers (read-only snapshots plus one writable
// head) on an abstract store (core/store). It takes requests from an engine
// (Step) and store completions (Complete), and returns effects (Ready): store
// IOs to run and replies to send. It never touches a clock, file or socket.
//
// Durability design. Data is written in place; a layer's index (one entry
// per block: kind and CRC32C) is written only after the data it describes
// has been synced (flush = SyncData, WriteIndex, SyncIndex). So after a
// crash the index never runs ahead of the data. The one way a block can
// fail its checksum after a crash without bit rot is an unsynced in-place
// overwrite of a block whose entry was already durable; to find those, a
// region (1,024 blocks) is recorded in the metadata's active list, durably,
// before any in-place write into it (an activity log, as in DRBD), and
// every head write records its blocks' new checksums durably before its
// data (write intents, intents.go). On load, a block of an active region
// that fails its checksum is settled only when it matches an intent (the
// new content landed); anything else stays corrupt and is reported
// suspect, since it may be rot. Outside active regions a mismatch is
// corruption.
package replica

import (
	"fmt"
	"hash/crc32"

	"github.com/drover-io/drover/core/blockset"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
)

const (
	// RegionBlocks is the activity-log granularity (4 MiB).
	RegionBlocks = 1024
	// maxBlocksPerRequest bounds one data request (4 MiB).
	maxBlocksPerRequest = 1024
	// maxBlocksPerListing bounds the range of one OpLayerBlocks (256 MiB).
	maxBlocksPerListing = 1 << 16
	// maxQueued bounds requests waiting in the replica.
	maxQueued = 4096
	// maxDirtyEntries triggers an internal flush when exceeded, bounding
	// the index entries held in memory between flushes.
	maxDirtyEntries = 1 << 16
	// mergeBatchBlocks bounds the blocks copied per snapshot-merge step.
	mergeBatchBlocks = 256
)

// Config sets up a Replica.
type Config struct {
	// ID names the replica; written into new metadata.
	ID proto.ReplicaID
	// CreateSizeBytes, when nonzero, creates an empty replica of that size
	// if the store holds no metadata. Zero: a missing replica is an error.
	CreateSizeBytes uint64
	// MaxActiveRegions bounds the activity log (default 64 = 256 MiB).
	MaxActiveRegions int
	// NewBuffer, if set, returns a buffer of sizeBytes (content
	// undefined) for a read the replica assembles itself (zeros, or data
	// from several layers); it goes out with the reply, whose receiver
	// owns it, so a driver may hand out recycled buffers. Default: make.
	NewBuffer func(sizeBytes int) []byte
	// Backing, with CreateSizeBytes, creates the replica on a backing
	// image the store already holds as layer BackingLayerID (backing.go).
	Backing *Backing
	// Bugs plants deliberate faults for the simulator's canary tests.
	Bugs Bugs
}

// Bugs are deliberate faults, for proving the checkers catch them. All
// false in production.
type Bugs struct {
	SkipFlushSync      bool // flush replies without syncing anything
	AcceptStaleEpochs  bool // requests from lower epochs are served
	SkipReadChecksums  bool // reads return data whatever its checksum
	IgnoreIndexDamage  bool // a layer whose index fails to read loads as empty
	SettleAnyChecksum  bool // a crash's settle takes any checksum it finds, as before intents
	SettleZerosAsTrims bool // a settle takes zeros under a data entry for a trim, intent or not
}

// Ready is a batch of effects. IOs may run concurrently and complete in
// any order; the replica never emits an IO that depends on one still in
// flight. Replies may be sent at once: a reply is only emitted after the
// IOs it promises have completed, except a small overwrite's without FUA,
// answered once queued (ackEarly in intents.go), whose promise (later
// requests see it, a later flush makes it durable) the replica keeps by
// holding the write in flight until its data is written.
type Ready struct {
	IOs     []store.IO
	Replies []proto.Reply
}

type state uint8

const (
	stateLoading state = iota
	stateReady
	stateFailed // a fatal IO error or bad metadata: every request fails
)

type layer struct {
	meta LayerMeta
	held blockset.Set // blocks this layer holds (data or zero)
	zero blockset.Set // subset of held stored as zeros
	// indexed holds every block whose entry in the layer's index may be
	// durable (loaded, or in a WriteIndex issued since): only an in-place
	// write over such a block needs a write intent first. Elsewhere a
	// crash leaves no entry for the new content to be checked against,
	// and the block reads as it did before the write.
	indexed blockset.Set
}

// Replica is the state machine. Create it with New, then drive it.
type Replica struct {
	cfg   Config
	state state
	why   string // reason for stateFailed

	// Bound once: a method value made per request would allocate.
	runReadFn, runWriteFn, runTrimFn func(*op)
	keyBuf                           []RegionKey // regionKeys' scratch
	runBuf                           []layerRun  // runsFor's scratch
	spare                            Ready       // released slices for the next effects

	meta   Meta     // last durable-or-pending metadata (Layers mirror)
	layers []*layer // oldest first; last is head
	// retired are layers a rebuild's OpSetChain took out of the chain,
	// newest first (Meta.Retired): read only by OpSnapRead of a
	// RetiredName, dropped once this replica is RW in a membership.
	retired []*layer

	flushedSeq uint64 // every write up to it is durable
	fuaSeq     uint64 // the highest FUA write made durable
	opened     bool   // an engine sent OpOpen since this incarnation loaded
	lastEpoch  uint64 // (lastEpoch, lastID) of the newest request seen
	lastID     uint64

	// dirty holds index entries changed since the last flush, per layer.
	dirty      map[store.LayerID]map[uint64]proto.BlockState
	dirtyCount int
	dirtyData  map[store.LayerID]bool // layers with unsynced data

	active      map[RegionKey]*region
	activeClock uint64
	metaBusy    bool
	metaWaiters []func(ok bool)
	metaQueued  []func(ok bool)

	queue    []*op
	inflight []*op
	freeOps  []*op // finished data ops no pending IO names, for newOp

	nextIO  uint64
	pending map[uint64]pendingIO
	ready   Ready

	// Intents (intents.go): writes waiting for their checksums to be
	// recorded, and whether a WriteIntents IO is in flight.
	intentQueue   []*op
	intentBatch   []*op // the batch whose intents are in flight
	intentEntries []proto.BlockState
	intentBusy    bool
	// earlyAckBytes counts the data of writes answered before it was
	// written (ackEarly); earlyFree keeps released copies by block
	// count.
	earlyAckBytes int
	earlyFree     [earlyAckMaxBlocks + 1][][]byte
	// settleIntents are the checksums the head's blocks may hold after
	// the crash being settled (load only).
	settleIntents map[uint64][]uint32
	// rotFound counts blocks a settle found rotted (neither synced nor
	// recorded as a write's intent): left corrupt, for the engine to
	// repair.
	rotFound uint64
}

// pendingIO is what an IO's completion goes to: the data path's IOs by
// kind, with their op and layer (no closure per IO), the rest to fn.
type pendingIO struct {
	kind ioKind
	o    *op
	l    *layer
	fn   func(store.Completion)
}

// ioKind names the handler of a data-path IO's completion (data.go).
type ioKind uint8

const (
	ioFunc         ioKind = iota // fn
	ioReadWhole                  // readWhole's ReadData
	ioWrite                      // runWrite's WriteData
	ioFUASync                    // finishWrite's SyncData
	ioFUAIndex                   // finishWrite's WriteIndex
	ioFUAIndexSync               // finishWrite's SyncIndex
	ioIntents                    // pumpIntents' WriteIntents
)

type region struct {
	durable bool   // recorded in a completed meta write
	dirty   bool   // written since the last completed flush
	lastUse uint64 // for eviction
}

// New returns a replica that starts loading its store; call Ready for the
// first IOs.
func New(cfg Config) *Replica {
	if cfg.MaxActiveRegions <= 0 {
		cfg.MaxActiveRegions = 64
	}
	if cfg.NewBuffer == nil {
		cfg.NewBuffer = func(n int) []byte { return make([]byte, n) }
	}
	r := &Replica{
		cfg:       cfg,
		dirty:     map[store.LayerID]map[uint64]proto.BlockState{},
		dirtyData: map[store.LayerID]bool{},
		active:    map[RegionKey]*region{},
		pending:   map[uint64]pendingIO{},
	}
	r.runReadFn, r.runWriteFn, r.runTrimFn = r.runRead, r.runWrite, r.runTrim
	r.load()
	return r
}

// Ready returns and clears the effects produced since the last call.
// The slices are the caller's, unless it hands them back with Release.
func (r *Replica) Ready() Ready {
	rd := r.ready
	r.ready, r.spare = r.spare, Ready{}
	return rd
}

// Release hands back the slices of a Ready whose elements the caller has
// all taken (copied out; the values inside, such as an IO's Data, stay
// the caller's): the replica gathers later effects in them instead of
// allocating. Optional.
func (r *Replica) Release(rd Ready) {
	clear(rd.IOs)
	clear(rd.Replies)
	r.spare = Ready{IOs: rd.IOs[:0], Replies: rd.Replies[:0]}
}

// HasReady reports whether Ready would return anything.
func (r *Replica) HasReady() bool { return len(r.ready.IOs)+len(r.ready.Replies) > 0 }

// Complete feeds the completion of an IO previously emitted.
func (r *Replica) Complete(c store.Completion) {
	p, ok := r.pending[c.ID]
	if !ok {
		return // a completion from before a restart, or duplicated: ignore
	}
	delete(r.pending, c.ID)
	if c.Err == store.ErrDamaged && !r.cfg.Bugs.IgnoreIndexDamage {
		// Its own bookkeeping is damaged: what else is, it cannot tell.
		r.fail(fmt.Sprintf("replica %s: store damaged: %s", r.meta.ID, c.Detail))
	}
	if p.kind == ioFunc {
		p.fn(c)
	} else if p.kind == ioIntents {
		r.intentsDone(p.l, c)
	} else {
		r.completeData(p, c)
	}
	r.schedule()
}

// Loaded reports whether the replica finished loading (or failed).
func (r *Replica) Loaded() bool { return r.state != stateLoading }

// Err returns why the replica failed, or "" if it has not.
func (r *Replica) Err() string { return r.why }

func (r *Replica) issue(io store.IO, then func(store.Completion)) {
	r.issueFor(io, pendingIO{fn: then})
}

// issueFor emits io; its completion goes to p.
func (r *Replica) issueFor(io store.IO, p pendingIO) {
	if io.Kind == store.WriteIndex && len(io.Entries) > 0 {
		r.noteIndexed(io)
	}
	r.nextIO++
	io.ID = r.nextIO
	r.pending[io.ID] = p
	r.ready.IOs = append(r.ready.IOs, io)
}

// noteIndexed records the blocks a WriteIndex may make durable (a crash
// may keep any of its entries once it is issued).
func (r *Replica) noteIndexed(io store.IO) {
	for _, l := range r.layers {
		if l.meta.ID != io.Layer {
			continue
		}
		for _, e := range io.Entries {
			l.indexed.Add(e.BlockIndex)
		}
		return
	}
}

// needIntents reports whether an in-place write to [lo, lo+n) of l must
// record write intents first: some block there may have a durable entry.
func (l *layer) needIntents(lo, n uint64) bool {
	if l.indexed.Len() == 0 {
		return false
	}
	for b := lo; b < lo+n; b++ {
		if l.indexed.Contains(b) {
			return true
		}
	}
	return false
}

func (r *Replica) reply(rep proto.Reply) { r.ready.Replies = append(r.ready.Replies, rep) }

func (r *Replica) replyErr(id uint64, st proto.Status, format string, args ...any) {
	r.reply(proto.Reply{ID: id, Status: st, Err: fmt.Sprintf(format, args...)})
}

// fail stops the replica: after an IO failure whose effect on the disk is
// unknown (a failed sync, say), nothing it holds can be trusted.
func (r *Replica) fail(why string) {
	if r.state == stateFailed {
		return
	}
	r.state, r.why = stateFailed, why
	for _, o := range r.queue {
		r.replyErr(o.req.ID, proto.StatusIOError, "replica failed: %s", why)
	}
	r.queue = nil
	r.failIntents()
}

func (r *Replica) head() *layer { return r.layers[len(r.layers)-1] }

func (r *Replica) sizeBlocks() uint64 { return r.meta.SizeBytes / proto.BlockSize }

func (r *Replica) layerByName(name string) (*layer, int) {
	if name == "" {
		return r.head(), len(r.layers) - 1
	}
	for i, l := range r.layers[:len(r.layers)-1] {
		if l.meta.Name == name {
			return l, i
		}
	}
	return nil, -1
}

// entry returns the index entry for b in l as the replica currently
// believes it: the unflushed one if any, else derived from the sets (CRC
// unknown: the caller must read it from the store).
func (r *Replica) dirtyEntry(l *layer, b uint64) (proto.BlockState, bool) {
	e, ok := r.dirty[l.meta.ID][b]
	return e, ok
}

func (r *Replica) setEntry(l *layer, e proto.BlockState) {
	m := r.dirty[l.meta.ID]
	if m == nil {
		m = map[uint64]proto.BlockState{}
		r.dirty[l.meta.ID] = m
	}
	n := len(m)
	m[e.BlockIndex] = e // one map operation: this runs for every block written
	r.dirtyCount += len(m) - n
	switch e.Kind {
	case proto.BlockData:
		l.held.Add(e.BlockIndex)
		l.zero.Remove(e.BlockIndex)
	case proto.BlockZero:
		l.held.Add(e.BlockIndex)
		l.zero.Add(e.BlockIndex)
	default:
		l.held.Remove(e.BlockIndex)
		l.zero.Remove(e.BlockIndex)
	}
}

// Info describes the replica.
func (r *Replica) Info() proto.Info {
	info := proto.Info{
		ID: r.meta.ID, SizeBytes: r.meta.SizeBytes, Epoch: r.meta.Epoch,
		FlushedSeq: r.flushedSeq, FUASeq: r.fuaSeq, Created: r.meta.Created, Membership: r.meta.Membership.Clone(),
		ActiveRegions: uint32(len(r.active)), Dirty: len(r.meta.Recovered) > 0, Opened: r.opened,
		Recovered:     r.Recovered(),
		Suspect:       append([]proto.Extent(nil), r.meta.Suspect...),
		BackingSHA256: r.backingSHA256(),
	}
	for _, l := range r.layers[:len(r.layers)-1] {
		info.Chain = append(info.Chain, l.meta.Name)
	}
	return info
}

// Recovered returns the head extents settled after a crash that the engine
// has not yet resynced (cleared by OpSettle).
func (r *Replica) Recovered() []proto.Extent {
	return append([]proto.Extent(nil), r.meta.Recovered...)
}

// IndexBytes estimates the memory held by the layer indexes.
func (r *Replica) IndexBytes() uint64 {
	var n uint64
	for _, l := range r.layers {
		n += l.held.SizeBytes() + l.zero.SizeBytes()
	}
	return n
}

func crcOf(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// zeroCRC is the checksum of a block of zeros: a hole's write intent.
var zeroCRC = crcOf(make([]byte, proto.BlockSize))

// CRC returns the CRC32C (Castagnoli) of b, as used for stored blocks.
func CRC(b []byte) uint32 { return crcOf(b) }

// Resolve returns the layer that provides block b of the current view and
// how that layer holds it (BlockAbsent: no layer does; it reads as zeros).
// Checkers use it to compare replicas without going through requests.
func (r *Replica) Resolve(b uint64) (store.LayerID, proto.BlockKind) {
	l := r.resolve(b)
	switch {
	case l == nil:
		return 0, proto.BlockAbsent
	case l.zero.Contains(b):
		return l.meta.ID, proto.BlockZero
	}
	return l.meta.ID, proto.BlockData
}

// SizeBytes returns the replica's size.
func (r *Replica) SizeBytes() uint64 { return r.meta.SizeBytes }

// LayerName returns the name of layer id in the chain ("" for the head,
// "?" when the chain does not hold it): for debugging and tests.
func (r *Replica) LayerName(id store.LayerID) string {
	for _, l := range r.layers {
		if l.meta.ID == id {
			return l.meta.Name
		}
	}
	return "?"
}
