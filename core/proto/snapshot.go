package proto

// BackingPrefix starts the name of the layer holding a volume's backing
// image (a read-only base every replica holds at the bottom of its chain);
// snapshots may not take such names.
const BackingPrefix = "backing:"

// RetiredPrefix starts the names OpSnapRead takes for a replica's retired
// layers: RetiredName(i) reads the i-th (newest first) of the layers a
// rebuild's OpSetChain took out of its chain, which it keeps until it is
// RW in a recorded membership. A block whose only good copy sat in such
// a layer (the source's copy rotted) can still be found there. Snapshots
// may not take such names.
const RetiredPrefix = "retired:"

// MaxRetiredLayers bounds the retired layers a replica keeps.
const MaxRetiredLayers = 8

// RetiredName names the i-th newest retired layer for OpSnapRead.
func RetiredName(i int) string { return RetiredPrefix + string(rune('0'+i)) }

// RetiredIndex parses a RetiredName; ok is false for any other name.
func RetiredIndex(name string) (i int, ok bool) {
	if len(name) != len(RetiredPrefix)+1 || name[:len(RetiredPrefix)] != RetiredPrefix {
		return 0, false
	}
	i = int(name[len(RetiredPrefix)] - '0')
	return i, i >= 0 && i < MaxRetiredLayers
}

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
