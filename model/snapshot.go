package model

import (
	"fmt"
	"maps"
	"slices"
)

// Snapshot freezes the head as a snapshot called name and starts an empty
// head. Names are unique among live snapshots and must not be empty. A
// snapshot counts as a flush for the crash oracle.
func (d *Device) Snapshot(name string) error {
	if name == "" {
		return fmt.Errorf("snapshot: empty name: %w", ErrBadLength)
	}
	if d.snapshotIndex(name) >= 0 {
		return fmt.Errorf("snapshot %q: %w", name, ErrExists)
	}
	d.head().name = name
	d.layers = append(d.layers, newHead())
	d.Flush()
	return nil
}

// DeleteSnapshot removes snapshot name and merges its blocks into its child
// wherever the child has not overwritten them, so the view of the device
// and of every other snapshot is unchanged.
func (d *Device) DeleteSnapshot(name string) error {
	i := d.snapshotIndex(name)
	if i < 0 {
		return fmt.Errorf("delete snapshot %q: %w", name, ErrNotFound)
	}
	parent, child := d.layers[i], d.layers[i+1]
	for blockIndex, block := range parent.blocks {
		if _, overwritten := child.blocks[blockIndex]; !overwritten {
			child.blocks[blockIndex] = block
		}
	}
	d.layers = slices.Delete(d.layers, i, i+1)
	return nil
}

// Revert makes the device read as snapshot name did when it was taken.
// Snapshots newer than it and the head's writes are discarded, and an empty
// head starts on top of it. The size is unchanged. A revert counts as a
// flush for the crash oracle.
func (d *Device) Revert(name string) error {
	i := d.snapshotIndex(name)
	if i < 0 {
		return fmt.Errorf("revert to snapshot %q: %w", name, ErrNotFound)
	}
	clear(d.layers[i+1:])
	d.layers = append(d.layers[:i+1], newHead())
	d.Flush()
	return nil
}

// Snapshots returns the names of the live snapshots, oldest first.
func (d *Device) Snapshots() []string {
	names := make([]string, 0, len(d.layers)-1)
	for _, l := range d.layers[:len(d.layers)-1] {
		names = append(names, l.name)
	}
	return names
}

// ChangedBlocks returns, sorted, the indexes of the blocks written, trimmed
// or zeroed after snapshot from and up to and including snapshot to: the
// union of the touched sets of the layers in (from, to]. An empty from means
// from the beginning; an empty to means up to now, including the head.
// Because deleting a snapshot merges its touched set into its child, the
// answer stays a superset of what really changed between any two live
// snapshots.
func (d *Device) ChangedBlocks(from, to string) ([]uint64, error) {
	first := 0
	if from != "" {
		i := d.snapshotIndex(from)
		if i < 0 {
			return nil, fmt.Errorf("changed blocks from %q: %w", from, ErrNotFound)
		}
		first = i + 1
	}
	last := len(d.layers) - 1
	if to != "" {
		last = d.snapshotIndex(to)
		if last < 0 {
			return nil, fmt.Errorf("changed blocks to %q: %w", to, ErrNotFound)
		}
	}
	if first > last+1 {
		return nil, fmt.Errorf("changed blocks from %q to %q: %w", from, to, ErrSnapshotOrder)
	}
	touched := make(map[uint64]struct{})
	for _, l := range d.layers[first : last+1] {
		for blockIndex := range l.blocks {
			touched[blockIndex] = struct{}{}
		}
	}
	return slices.Sorted(maps.Keys(touched)), nil
}

// snapshotIndex returns the layer index of snapshot name, or -1.
func (d *Device) snapshotIndex(name string) int {
	if name == "" {
		return -1
	}
	for i, l := range d.layers[:len(d.layers)-1] {
		if l.name == name {
			return i
		}
	}
	return -1
}
