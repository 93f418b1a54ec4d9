package model

import (
	"fmt"
	"math"
)

// FlushPoint is a moment in a Device's write history, taken by Mark.
//
// It lets a harness apply writes to the model when it sends them to the
// system under test (so every write sent, acknowledged or not, is a
// possible crash outcome) while a flush's effect lands only when the flush
// is acknowledged: take a Mark when sending the flush and call FlushTo with
// it when the flush completes. Writes sent after the mark stay unflushed.
// The same goes for a FUA write with FlushBlocksTo over its blocks.
type FlushPoint struct {
	seq uint64
	// content holds, for every block unflushed at the mark, its content
	// then (nil for zeros). The slices alias the immutable layer store.
	content map[uint64][]byte
}

// Mark returns the current point of the write history.
func (d *Device) Mark() FlushPoint {
	p := FlushPoint{seq: d.seq, content: make(map[uint64][]byte, len(d.unflushed))}
	for blockIndex := range d.unflushed {
		p.content[blockIndex] = d.block(blockIndex)
	}
	return p
}

// FlushTo makes every write made before p durable, as a flush sent at p
// and acknowledged now does; writes made after p stay unflushed. A point
// older than a later flush changes nothing.
func (d *Device) FlushTo(p FlushPoint) {
	d.flushBlocksTo(p, 0, math.MaxUint64)
}

// FlushBlocksTo is FlushTo restricted to blockCount blocks from
// blockIndex, as a FUA write made just before p and acknowledged now.
func (d *Device) FlushBlocksTo(p FlushPoint, blockIndex, blockCount uint64) {
	d.flushBlocksTo(p, blockIndex, blockIndex+blockCount)
}

func (d *Device) flushBlocksTo(p FlushPoint, lo, hi uint64) {
	for blockIndex, u := range d.unflushed {
		if blockIndex < lo || blockIndex >= hi || u.since > p.seq {
			continue // outside, or every write in this record follows p
		}
		flushed, ok := p.content[blockIndex]
		if !ok {
			panic(fmt.Sprintf("model: FlushTo: block %d unflushed at the mark but not recorded", blockIndex))
		}
		n := newUnflushed(flushed, p.seq+1)
		for _, digest := range u.digests {
			if last := u.last[digest]; last > p.seq {
				n.add(digest, last)
			}
		}
		if len(n.digests) == 1 {
			delete(d.unflushed, blockIndex) // nothing written after p
			continue
		}
		d.unflushed[blockIndex] = n
	}
}

// ReadSnapshot returns blockCount blocks from blockIndex as snapshot name
// shows them (empty name: the current view, as Read).
func (d *Device) ReadSnapshot(name string, blockIndex uint64, blockCount uint32) ([]byte, error) {
	top := len(d.layers) - 1
	if name != "" {
		if top = d.snapshotIndex(name); top < 0 {
			return nil, fmt.Errorf("read snapshot %q: %w", name, ErrNotFound)
		}
	}
	if blockCount == 0 {
		return nil, fmt.Errorf("read snapshot %q at block %d: zero block count: %w", name, blockIndex, ErrBadLength)
	}
	if err := d.checkRange(blockIndex, uint64(blockCount)); err != nil {
		return nil, fmt.Errorf("read snapshot %q: %w", name, err)
	}
	out := make([]byte, int(blockCount)*BlockSize)
	for i := range uint64(blockCount) {
		if block := d.blockUpTo(top, blockIndex+i); block != nil {
			copy(out[i*BlockSize:], block)
		}
	}
	return out, nil
}
