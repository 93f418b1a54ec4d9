package model

import (
	"errors"
	"fmt"
)

// ErrInUse means a shrink would cut off data some layer holds.
var ErrInUse = errors.New("data in use beyond the new end")

// Shrink cuts the device to sizeBytes, a positive multiple of BlockSize no
// larger than the current size. It is refused (ErrInUse) when any layer,
// snapshot or head, holds data (not zeros) at or beyond the new end: only
// space nothing uses can go. Blocks beyond the end are forgotten, so a
// later Expand reads zeros there. Like Revert, a shrink that cuts is a
// flush point; one to the current size changes nothing.
func (d *Device) Shrink(sizeBytes uint64) error {
	if sizeBytes == 0 || sizeBytes%BlockSize != 0 {
		return fmt.Errorf("shrink to %d bytes: not a positive multiple of %d: %w", sizeBytes, BlockSize, ErrBadLength)
	}
	if sizeBytes > d.sizeBytes {
		return fmt.Errorf("shrink from %d to %d bytes: %w", d.sizeBytes, sizeBytes, ErrOutOfRange)
	}
	if sizeBytes == d.sizeBytes {
		return nil // nothing to cut: not a flush point
	}
	end := sizeBytes / BlockSize
	for _, l := range d.layers {
		for b, data := range l.blocks {
			if b >= end && data != nil {
				return fmt.Errorf("shrink to %d bytes: layer %q holds data at block %d: %w", sizeBytes, l.name, b, ErrInUse)
			}
		}
	}
	for _, l := range d.layers {
		for b := range l.blocks {
			if b >= end {
				delete(l.blocks, b)
			}
		}
	}
	d.Flush()
	d.sizeBytes = sizeBytes
	return nil
}
