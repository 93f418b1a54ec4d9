// Package proto holds the messages the engine and its replicas exchange.
//
// The same values travel through the simulator (as Go values) and over TCP
// (encoded by this package's wire format, see wire.go). Every request names
// the engine epoch that sent it; a replica refuses requests from an epoch
// lower than the one it has been fenced at.
package proto

import "fmt"

// BlockSize is the unit of every data operation, in bytes.
const BlockSize = 4096

// ReplicaID names a replica for the life of its data. It is chosen when the
// replica is created and recorded in every membership that includes it.
type ReplicaID string

// Op is the kind of a request.
type Op uint8

// Data-path operations carry BlockIndex/BlockCount; control operations carry
// the fields their comment names.
const (
	// OpRead returns BlockCount blocks from the merged view of the chain.
	OpRead Op = iota + 1
	// OpWrite stores Data (BlockCount blocks) in the head layer.
	OpWrite
	// OpTrim makes blocks read as zeros and releases their space.
	OpTrim
	// OpWriteZeroes makes blocks read as zeros.
	OpWriteZeroes
	// OpFlush makes every write acknowledged before it durable. Seq is the
	// highest write sequence the flush covers.
	OpFlush

	// OpOpen fences the replica at Epoch (which must be >= its current one)
	// and returns Info. Lower epochs are refused from then on.
	OpOpen
	// OpInfo returns Info without changing anything.
	OpInfo
	// OpSetMembership durably records Membership (must be newer than the
	// recorded one) under the request's epoch.
	OpSetMembership
	// OpSnapshot flushes, freezes the head as a snapshot layer called Name,
	// and starts a new empty head.
	OpSnapshot
	// OpDeleteSnapshot merges the snapshot Name into its child and removes it.
	OpDeleteSnapshot
	// OpRevert discards the head and every layer newer than snapshot Name,
	// and starts a new empty head on top of Name.
	OpRevert
	// OpExpand grows the volume to SizeBytes.
	OpExpand
	// OpChangedExtents lists the blocks written in layers newer than Name
	// (empty: from the bottom) up to and including Name2 (empty: the head).
	OpChangedExtents
	// OpLayerBlocks lists, for one layer (Name; empty means the head), the
	// blocks in [BlockIndex, BlockIndex+BlockCount) it holds, with checksums.
	OpLayerBlocks
	// OpLayerRead reads blocks of one layer (Name; empty: head) exactly as
	// stored, with checksums, without looking at other layers. Rebuild source.
	OpLayerRead
	// OpLayerWrite stores Data into one layer (Name; empty: head) at
	// BlockIndex; Blocks says per block whether it is data, zero, or absent
	// (absent removes the block from that layer). Rebuild target.
	OpLayerWrite
	// OpSetChain makes the replica's snapshot layers exactly Chain (oldest
	// first), keeping layers whose names match, creating empty ones for the
	// rest and dropping others; the head stays. A nonzero SizeBytes below
	// the replica's size cuts it back to it. Rebuild target only.
	OpSetChain
	// OpSettle recomputes checksums of blocks in regions that may hold torn
	// unflushed writes after a crash (the active regions) so that every
	// block reads back as some whole content, and forgets those regions.
	OpSettle
	// OpSnapRead returns BlockCount blocks from BlockIndex as snapshot Name
	// shows them: the chain cut at that layer (empty Name: the head, as
	// OpRead). Backups read snapshots with it.
	OpSnapRead
	// OpMergeSnapshot merges blocks [BlockIndex, BlockIndex+BlockCount) of
	// snapshot Name into its child (blocks the child lacks are copied). It
	// changes no view and holds only writes to that range, so an engine
	// deletes a large snapshot online as a series of windows, then sends
	// OpDeleteSnapshot, which finds nothing left to copy.
	OpMergeSnapshot
	// OpListSnapshots returns Snapshots: every layer oldest first, the head
	// last (empty name), with its attributes and sizes.
	OpListSnapshots
	// OpShrink cuts the volume to SizeBytes when no layer holds data (not
	// zeros) at or beyond it; otherwise StatusInvalid and nothing changes.
	// The engine sends it only while the volume is detached.
	OpShrink
	// OpSetSnapshotAttrs sets snapshot Name's Attrs: an engine restores
	// them on a replica whose layer lost them (a rebuild creates layers
	// by name only).
	OpSetSnapshotAttrs
)

var opNames = [...]string{"?", "read", "write", "trim", "write-zeroes", "flush",
	"open", "info", "set-membership", "snapshot", "delete-snapshot", "revert",
	"expand", "changed-extents", "layer-blocks", "layer-read", "layer-write",
	"set-chain", "settle", "snap-read", "merge-snapshot", "list-snapshots", "shrink", "set-snapshot-attrs"}

func (o Op) String() string {
	if int(o) < len(opNames) {
		return opNames[o]
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// IsData reports whether o is a client data-path operation.
func (o Op) IsData() bool { return o >= OpRead && o <= OpFlush }

// Request is one message from an engine to a replica.
type Request struct {
	ID    uint64 // chosen by the engine, echoed in the reply
	Epoch uint64
	Op    Op

	BlockIndex uint64
	BlockCount uint32
	Data       []byte // OpWrite, OpLayerWrite: BlockCount*BlockSize bytes
	FUA        bool   // OpWrite/Trim/WriteZeroes: durable before the reply
	Seq        uint64 // OpWrite: engine write sequence; OpFlush: covered seq

	Name       string      // snapshot or layer name
	Name2      string      // OpChangedExtents: upper bound
	SizeBytes  uint64      // OpExpand
	Membership *Membership // OpSetMembership
	Chain      []string    // OpSetChain
	Blocks     []BlockState
	// Attrs are the new snapshot's attributes (OpSnapshot), chosen by the
	// production driver (the core has no clock); kept, never interpreted.
	Attrs *SnapshotAttrs
}

// Status is the outcome of a request. Errors the engine branches on have
// their own status; everything else is StatusIOError with a message.
type Status uint8

const (
	StatusOK Status = iota
	// StatusStaleEpoch: the request's epoch is below the replica's fence.
	StatusStaleEpoch
	// StatusCorrupt: a block failed its checksum; Reply.BlockIndex names it.
	StatusCorrupt
	// StatusIOError: the disk failed the operation.
	StatusIOError
	// StatusNoSpace: the disk is full; nothing was changed.
	StatusNoSpace
	// StatusInvalid: the request is malformed or out of range.
	StatusInvalid
	// StatusNotFound: a named snapshot does not exist.
	StatusNotFound
	// StatusExists: a snapshot of that name already exists.
	StatusExists
	// StatusNotReady: the replica is still loading or is closed.
	StatusNotReady
	// StatusUnreachable: no reply came (timeout or lost connection). Never
	// sent by a replica; drivers and the engine synthesize it.
	StatusUnreachable
)

var statusNames = [...]string{"ok", "stale epoch", "corrupt block", "io error",
	"no space", "invalid request", "not found", "already exists", "not ready", "unreachable"}

func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("status(%d)", uint8(s))
}

// Reply answers one Request.
type Reply struct {
	ID     uint64
	Status Status
	Err    string // human detail when Status != StatusOK

	Data       []byte         // OpRead, OpLayerRead, OpSnapRead
	BlockIndex uint64         // StatusCorrupt: the first bad block
	Blocks     []BlockState   // OpLayerBlocks, OpLayerRead
	Extents    []Extent       // OpChangedExtents
	Info       *Info          // OpOpen, OpInfo
	Snapshots  []SnapshotInfo // OpListSnapshots
}

// BlockKind says what a layer holds for one block.
type BlockKind uint8

const (
	// BlockAbsent: the layer does not hold the block (look further down).
	BlockAbsent BlockKind = iota
	// BlockData: the layer holds data for the block.
	BlockData
	// BlockZero: the layer holds the block as zeros (trimmed or zeroed).
	BlockZero
)

// BlockState describes one block of one layer.
type BlockState struct {
	BlockIndex uint64
	Kind       BlockKind
	CRC        uint32 // CRC32C (Castagnoli) of the block's data; 0 unless Data
}

// Extent is a run of blocks.
type Extent struct {
	BlockIndex uint64
	BlockCount uint64
}

// MemberMode is a replica's role in a membership.
type MemberMode uint8

const (
	// ModeRW: current; receives writes and serves reads.
	ModeRW MemberMode = iota + 1
	// ModeWO: being rebuilt; receives writes, serves no reads.
	ModeWO
	// ModeRemoved: a tombstone. The replica was removed or replaced and
	// must not be rebuilt back in, even if an engine is configured with
	// it; it receives nothing and counts for no quorum.
	ModeRemoved
	// ModeFailed: a member that failed (ERR) and is to be rebuilt or
	// replaced; it receives nothing and counts for no quorum. Recorded so
	// that a new engine knows the member even if not configured with it
	// (a spare that replaced another).
	ModeFailed
)

func (m MemberMode) String() string {
	switch m {
	case ModeRW:
		return "RW"
	case ModeWO:
		return "WO"
	case ModeRemoved:
		return "removed"
	case ModeFailed:
		return "failed"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// Member is one replica in a membership.
type Member struct {
	ID   ReplicaID
	Mode MemberMode
	// Created is the member's store's creation epoch as the recording
	// engine saw it (Info.Created; 0: unknown). A replica reporting the
	// same one holds the store the record names: not wiped or replaced
	// since, so it remembers every membership it recorded, even none.
	Created uint64
}

// Membership is the replica set of a volume as an engine last recorded it.
// Gen increases with every change, across engines.
type Membership struct {
	Gen     uint64
	Epoch   uint64 // the epoch of the engine that recorded it
	Members []Member
	// Prev is the membership this one replaced. Until a newer one is
	// recorded on a quorum of both, an engine that finds this one must
	// fence a quorum of Prev too: this one may never have been committed.
	Prev []Member
}

// Clone returns a deep copy of m.
func (m *Membership) Clone() *Membership {
	if m == nil {
		return nil
	}
	c := *m
	c.Members = append([]Member(nil), m.Members...)
	c.Prev = append([]Member(nil), m.Prev...)
	return &c
}

// Mode returns id's mode in m, or 0 when id is not a member.
func (m *Membership) Mode(id ReplicaID) MemberMode {
	if m == nil {
		return 0
	}
	for _, x := range m.Members {
		if x.ID == id {
			return x.Mode
		}
	}
	return 0
}

// Info is what a replica reports about itself.
type Info struct {
	ID         ReplicaID
	SizeBytes  uint64
	Epoch      uint64 // the epoch it is fenced at
	FlushedSeq uint64 // every write up to this sequence is durable
	// FUASeq is the highest sequence of a FUA write made durable (its
	// blocks only). With FlushedSeq it orders replicas by what they hold
	// durably: see engine's open (a copy restored from an old backup has
	// a lower pair than the replicas that went on).
	FUASeq uint64
	// Created is the epoch of the first engine that opened this store:
	// recorded once, durably, it names the store. A wiped or replaced
	// disk gets a new one at its next open.
	Created       uint64
	Chain         []string // snapshot names, oldest first (the head excluded)
	Membership    *Membership
	ActiveRegions uint32 // regions that may hold torn unflushed writes
	Dirty         bool   // it crashed with unsettled regions (needs OpSettle)
	// Opened: an engine opened it in this incarnation (at Epoch). A
	// replica restarted since may have lost unsynced writes, and serves
	// nothing until it is opened again; heartbeats read this to notice.
	Opened bool
	// BackingSHA256 is the SHA-256 (hex) of the backing image shared as
	// the bottom layer (the one the replica was created on), as recorded
	// then; empty without one, or for a replica created before it was.
	BackingSHA256 string
	// Recovered lists the head extents settled after a crash, which the
	// engine must resync across replicas before sending OpSettle.
	Recovered []Extent
	// Suspect lists head blocks whose checksum had to be recomputed when
	// settling: a whole unsynced overwrite, or bit rot the settle could not
	// tell from one. The engine prefers another replica's copy of them.
	Suspect []Extent
}
