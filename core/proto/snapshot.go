package proto

// BackingPrefix starts the name of the layer holding a volume's backing
// image (a read-only base every replica holds at the bottom of its chain);
// snapshots may not take such names.
const BackingPrefix = "backing:"

// SnapshotAttrs are what a user and the production driver attach to a
// snapshot: its creation time (Unix nanoseconds, from the driver's clock)
// and labels (sorted by key, keys unique). The core stores them with the
// layer and reports them back; it never reads them.
type SnapshotAttrs struct {
	CreatedUnixNano int64
	Labels          []Label
}

// Label is one key=value pair on a snapshot.
type Label struct {
	Key, Value string
}

// Clone returns a deep copy of a (nil stays nil).
func (a *SnapshotAttrs) Clone() *SnapshotAttrs {
	if a == nil {
		return nil
	}
	c := *a
	c.Labels = append([]Label(nil), a.Labels...)
	return &c
}

// SnapshotInfo describes one layer of a replica's chain (OpListSnapshots).
type SnapshotInfo struct {
	Name  string // empty for the head
	Attrs SnapshotAttrs
	// DataBlocks are the blocks this layer holds data for: stored once,
	// by this layer only (layers share no blocks).
	DataBlocks uint64
	// ZeroBlocks are the blocks this layer records as zeros (no data).
	ZeroBlocks uint64
	// ShadowedBlocks are the data blocks its child also holds: deleting
	// this snapshot frees them; the rest move into the child.
	ShadowedBlocks uint64
}
