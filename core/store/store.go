// Package store defines the abstract layer store a replica runs on: the IO
// effects core/replica emits and the completions it consumes.
//
// A replica's store holds one metadata blob and a set of layers. Each layer
// has a data area (BlockSize blocks, sparse) and an index area holding one
// entry per block (kind + CRC32C) plus a small header (FlushedSeq, FUASeq). Drivers
// (core/memstore for tests and the simulator, transports/filestore for real
// disks) execute IOs concurrently and in any order; the replica only issues
// an IO once everything it must follow has completed.
//
// Durability contract, which the simulator's crash model follows exactly:
//   - WriteMeta replaces the blob atomically and durably before completing.
//   - CreateLayer and RemoveLayer are durable when they complete.
//   - WriteData, PunchHole and WriteIndex are volatile until a SyncData /
//     SyncIndex of that layer completes; a crash may keep any subset of
//     them, block by block (a block's data is kept whole or not at all).
package store

import (
	"fmt"

	"github.com/drover-io/drover/core/proto"
)

// LayerID names a layer's storage within one replica (not across replicas).
type LayerID uint64

// Kind is the kind of an IO.
type Kind uint8

const (
	// ReadMeta returns the metadata blob (nil when none was ever written).
	ReadMeta Kind = iota + 1
	// WriteMeta atomically and durably replaces the metadata blob with Meta.
	WriteMeta
	// CreateLayer creates an empty layer, emptying any layer of that id a
	// crash left behind (durable on completion).
	CreateLayer
	// RemoveLayer deletes a layer and its data (durable on completion).
	RemoveLayer
	// ReadIndex returns the non-absent entries of Layer in
	// [BlockIndex, BlockIndex+BlockCount), and the layer's FlushedSeq and
	// FUASeq. Damage the store can detect in the index (a page whose
	// checksum fails, a truncated file) is ErrDamaged naming it, never
	// entries read as absent; ReadData and WriteIndex check the pages
	// they use the same way.
	ReadIndex
	// WriteIndex stores Entries (absent entries clear), FlushedSeq (if
	// nonzero) and FUASeq (if above the stored one: concurrent FUA
	// writes may complete in any order) in Layer's index.
	WriteIndex
	// SyncIndex makes completed WriteIndex IOs of Layer durable.
	SyncIndex
	// ReadData returns BlockCount blocks of Layer's data at BlockIndex
	// (holes read as zeros) and, in Entries, the index entry of each of
	// those blocks (absent ones included), so the replica can verify them.
	// The completion's Data and Entries are the replica's from then on
	// (it may hand Data to the engine as a read's reply): a store never
	// reuses them. When the IO's Entries has room for BlockCount entries
	// (its capacity), the store may return them in its backing array
	// rather than a new slice; the replica then must not touch that
	// array until the completion is in.
	ReadData
	// WriteData stores Data at BlockIndex in Layer.
	WriteData
	// PunchHole deallocates [BlockIndex, BlockIndex+BlockCount) of Layer's
	// data; those blocks then read as zeros.
	PunchHole
	// SyncData makes completed WriteData and PunchHole IOs of Layer durable.
	SyncData
	// WriteIntents durably records, before it completes, the checksums
	// (Entries) that blocks of Layer may hold after a crash because a
	// write to them is about to be issued, tagged with FlushedSeq (the
	// replica's durable flushed sequence when it wrote them). Records of
	// other tags may be discarded: the replica only asks for its own.
	WriteIntents
	// ReadIntents returns, in Entries, every intent recorded for Layer
	// with the tag FlushedSeq (a block may appear more than once).
	ReadIntents
)

var kindNames = [...]string{"?", "read-meta", "write-meta", "create-layer",
	"remove-layer", "read-index", "write-index", "sync-index", "read-data",
	"write-data", "punch-hole", "sync-data", "write-intents", "read-intents"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// IO is one effect on the store.
type IO struct {
	ID   uint64 // unique within the replica's life; echoed in Completion
	Kind Kind
	// Uncached marks a ReadData or WriteData as a one-off transfer of
	// much data that no one is likely to read again soon (a rebuild
	// source's reads, its target's writes): the store may move it around
	// its cache. The result is the same either way, and an uncached write
	// is no more durable than another until the layer's SyncData. (Next
	// to Kind, so that an IO stays 128 bytes: a production driver copies
	// it into a goroutine's closure for every sync.)
	Uncached   bool
	Layer      LayerID
	BlockIndex uint64
	BlockCount uint64
	Data       []byte
	Entries    []proto.BlockState
	FlushedSeq uint64
	FUASeq     uint64
	Meta       []byte
}

// Err classifies a failed IO.
type Err uint8

const (
	// OK: the IO succeeded.
	OK Err = iota
	// ErrIO: the device failed (EIO).
	ErrIO
	// ErrNoSpace: the device is full (ENOSPC); the IO changed nothing.
	ErrNoSpace
	// ErrMissing: the layer or blob does not exist.
	ErrMissing
	// ErrDamaged: the store found its own bookkeeping damaged (an index
	// page or header whose checksum fails, an index cut short). Nothing
	// the replica holds can be trusted after it: the replica stops.
	ErrDamaged
)

func (e Err) String() string {
	switch e {
	case OK:
		return "ok"
	case ErrIO:
		return "io error"
	case ErrNoSpace:
		return "no space left on device"
	case ErrMissing:
		return "missing"
	case ErrDamaged:
		return "damaged"
	}
	return fmt.Sprintf("err(%d)", uint8(e))
}

// Completion reports the outcome of one IO.
type Completion struct {
	ID         uint64
	Err        Err
	Detail     string // driver's error text, for humans
	Data       []byte
	Entries    []proto.BlockState
	FlushedSeq uint64
	FUASeq     uint64
	Meta       []byte
}
