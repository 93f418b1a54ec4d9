package model

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
)

// zeroBlockDigest is the SHA-256 of an all-zero block.
var zeroBlockDigest = sha256.Sum256(make([]byte, BlockSize))

// CrashOutcome is one content a block may hold after a crash.
type CrashOutcome struct {
	// Digest is the SHA-256 of the content.
	Digest [sha256.Size]byte
	// Data is the content itself, or nil when the model keeps only the
	// digest: it keeps in full only the flushed value and the current
	// value, so that a burst of unflushed writes to one block costs 32
	// bytes per distinct value rather than 4 KiB.
	Data []byte
	// Current is true for the block's current content, the one a read
	// returns now. The flushed value is always the first outcome; because
	// outcomes are deduplicated, the current one need not be the last.
	Current bool
}

// unflushedBlock is what a crash may leave in one block written since the
// last flush: the flushed value or any value written after it.
type unflushedBlock struct {
	// flushed is the content as of the last flush, nil for zeros. It
	// aliases an immutable slice of the layer store.
	flushed []byte
	// digests lists the SHA-256 of the flushed value, then of every
	// distinct value written after it, in first-written order.
	digests [][sha256.Size]byte
	// last maps each digest to the write sequence number that last wrote
	// it (0 for the flushed value never rewritten), keeping repeated
	// writes O(1) and letting FlushTo tell writes before a mark from
	// writes after it.
	last map[[sha256.Size]byte]uint64
	// since is the sequence number from which this record's history
	// counts: writes before it were flushed or came before its creation.
	since uint64
}

func digestOf(block []byte) [sha256.Size]byte {
	if block == nil {
		return zeroBlockDigest
	}
	return sha256.Sum256(block)
}

// noteUnflushed records that block (nil for zeros) is about to become the
// content of blockIndex without a flush.
func (d *Device) noteUnflushed(blockIndex uint64, block []byte) {
	u, ok := d.unflushed[blockIndex]
	if !ok {
		flushed := d.block(blockIndex)
		u = newUnflushed(flushed, d.seq)
		d.unflushed[blockIndex] = u
	}
	u.add(digestOf(block), d.seq)
}

// newUnflushed starts the record of a block whose durable content is
// flushed as of write sequence number since.
func newUnflushed(flushed []byte, since uint64) *unflushedBlock {
	u := &unflushedBlock{flushed: flushed, since: since, last: make(map[[sha256.Size]byte]uint64)}
	u.add(digestOf(flushed), 0)
	return u
}

func (u *unflushedBlock) add(digest [sha256.Size]byte, seq uint64) {
	if _, dup := u.last[digest]; !dup {
		u.digests = append(u.digests, digest)
	}
	u.last[digest] = max(u.last[digest], seq)
}

// UnflushedBlocks returns, sorted, the blocks written since the last flush:
// the only blocks whose content a crash may change.
func (d *Device) UnflushedBlocks() []uint64 {
	return slices.Sorted(maps.Keys(d.unflushed))
}

// CrashOutcomes returns the contents blockIndex may hold after a crash: the
// value as of the last flush, then each distinct value written after it, in
// order. A block not written since the last flush has one outcome, its
// current content. Data is set for the flushed and the current value only;
// see CrashOutcome. Out-of-range blocks read as zeros.
func (d *Device) CrashOutcomes(blockIndex uint64) []CrashOutcome {
	current := d.block(blockIndex)
	u, ok := d.unflushed[blockIndex]
	if !ok {
		return []CrashOutcome{{Digest: digestOf(current), Data: zeroFilled(current), Current: true}}
	}
	currentDigest := digestOf(current)
	outcomes := make([]CrashOutcome, 0, len(u.digests))
	for i, digest := range u.digests {
		outcome := CrashOutcome{Digest: digest, Current: digest == currentDigest}
		switch {
		case i == 0:
			outcome.Data = zeroFilled(u.flushed)
		case outcome.Current:
			outcome.Data = zeroFilled(current)
		}
		outcomes = append(outcomes, outcome)
	}
	return outcomes
}

// zeroFilled returns a copy of block, or a zero block for nil.
func zeroFilled(block []byte) []byte {
	if block == nil {
		return make([]byte, BlockSize)
	}
	return slices.Clone(block)
}

// CheckAfterCrash returns nil when got is an allowed content of blockIndex
// after a crash, and otherwise an error naming the block, what it got and
// what was allowed.
func (d *Device) CheckAfterCrash(blockIndex uint64, got []byte) error {
	if len(got) != BlockSize {
		return fmt.Errorf("block %d after crash: got %d bytes, want %d: %w", blockIndex, len(got), BlockSize, ErrBadLength)
	}
	gotDigest := sha256.Sum256(got)
	outcomes := d.CrashOutcomes(blockIndex)
	for _, outcome := range outcomes {
		if outcome.Digest == gotDigest {
			return nil
		}
	}
	allowed := make([]string, 0, len(outcomes))
	for i, outcome := range outcomes {
		label := "written after flush"
		if i == 0 {
			label = "flushed"
		}
		allowed = append(allowed, fmt.Sprintf("%s sha256:%x", label, outcome.Digest[:8]))
	}
	return fmt.Errorf("block %d after crash holds sha256:%x (first 8 bytes %#x), which was never flushed or written to it since the last flush; allowed: %v",
		blockIndex, gotDigest[:8], binary.LittleEndian.Uint64(got), allowed)
}

// Crash settles the device after a crash. For every block written since the
// last flush, in increasing block order, settle is given the allowed
// outcomes (as CrashOutcomes returns them) and returns the content the block
// holds after the crash: outcomes[i].Data in a model-only test, or what the
// system under test returned in a harness. If every returned content is
// allowed, the device takes them and the settled state counts as flushed;
// otherwise the device is unchanged and the error lists every bad block.
// Settled blocks stay in the head's touched set even when they went back to
// the flushed value, so ChangedBlocks over-reports rather than misses them,
// as a replica that logged the interrupted write would.
func (d *Device) Crash(settle func(blockIndex uint64, outcomes []CrashOutcome) []byte) error {
	blockIndexes := d.UnflushedBlocks()
	settled := make([][]byte, len(blockIndexes))
	var errs []error
	for i, blockIndex := range blockIndexes {
		got := settle(blockIndex, d.CrashOutcomes(blockIndex))
		if err := d.CheckAfterCrash(blockIndex, got); err != nil {
			errs = append(errs, err)
			continue
		}
		settled[i] = slices.Clone(got)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("crash: %w", err)
	}
	// Unflushed blocks always live in the head: snapshots and reverts flush.
	head := d.head()
	for i, blockIndex := range blockIndexes {
		block := settled[i]
		if isZero(block) {
			block = nil
		}
		head.blocks[blockIndex] = block
	}
	d.Flush()
	return nil
}
