package model

import (
	"errors"
	"fmt"
	"slices"
)

// BlockSize is the size of one block in bytes. Every offset and length the
// Device accepts is a whole number of blocks.
const BlockSize = 4096

// Sentinel errors returned (wrapped with context) by Device. Callers branch
// with errors.Is.
var (
	// ErrNotFound means a named snapshot does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists means a snapshot with that name already exists.
	ErrExists = errors.New("already exists")
	// ErrOutOfRange means a block range reaches past the end of the device.
	ErrOutOfRange = errors.New("out of range")
	// ErrShrink means an expansion asked for a smaller size.
	ErrShrink = errors.New("cannot shrink")
	// ErrBadLength means a length or size is not a positive multiple of
	// BlockSize, or a snapshot name is empty.
	ErrBadLength = errors.New("bad length")
	// ErrSnapshotOrder means ChangedBlocks was asked for a range whose
	// start snapshot is newer than its end.
	ErrSnapshotOrder = errors.New("snapshots out of order")
)

// layer is one level of the layer chain: a snapshot, or the writable head.
// blocks holds every block touched while the layer was the head; a nil
// value means the block was trimmed or zeroed and reads as zeros. The key
// set is exactly the layer's "touched" set that ChangedBlocks reports.
type layer struct {
	name   string
	blocks map[uint64][]byte
}

// Device is a sequential block device with snapshots, the reference every
// test compares Drover against. It is a layered store, like a replica:
// snapshot layers oldest first, then the writable head. A snapshot freezes
// the head and starts an empty one; deleting a snapshot merges its blocks
// into its child (the next newer layer, possibly the head) where the child
// has not overwritten them; reverting discards every newer layer and the
// head and starts an empty head.
//
// Storage is sparse: only touched blocks use memory. Reverting does not
// change the size; expansion only grows it. A Device also tracks what may
// survive a crash; see CrashOutcomes.
//
// A Device is not safe for concurrent use.
type Device struct {
	sizeBytes uint64
	// layers holds the snapshots oldest first; the last element is the head.
	layers []*layer
	// unflushed holds, for every block written since the last flush, what a
	// crash may leave in it.
	unflushed map[uint64]*unflushedBlock
	// seq counts block writes (trims and zeroes included); Mark records it.
	seq uint64
}

// NewDevice returns an empty device of sizeBytes, which must be a multiple
// of BlockSize; it panics otherwise, since that is a bug in the test.
func NewDevice(sizeBytes uint64) *Device {
	if sizeBytes%BlockSize != 0 {
		panic(fmt.Sprintf("model: NewDevice(%d): size is not a multiple of %d", sizeBytes, BlockSize))
	}
	return &Device{
		sizeBytes: sizeBytes,
		layers:    []*layer{newHead()},
		unflushed: make(map[uint64]*unflushedBlock),
	}
}

func newHead() *layer {
	return &layer{blocks: make(map[uint64][]byte)}
}

// SizeBytes returns the current size of the device.
func (d *Device) SizeBytes() uint64 {
	return d.sizeBytes
}

func (d *Device) head() *layer {
	return d.layers[len(d.layers)-1]
}

// checkRange reports whether blockCount blocks from blockIndex lie inside
// the device.
func (d *Device) checkRange(blockIndex uint64, blockCount uint64) error {
	sizeBlocks := d.sizeBytes / BlockSize
	if blockIndex > sizeBlocks || blockCount > sizeBlocks-blockIndex {
		return fmt.Errorf("blocks [%d, %d+%d) on a device of %d blocks: %w",
			blockIndex, blockIndex, blockCount, sizeBlocks, ErrOutOfRange)
	}
	return nil
}

// Write stores data at blockIndex. len(data) must be a positive multiple
// of BlockSize and the range must lie inside the device.
func (d *Device) Write(blockIndex uint64, data []byte) error {
	if len(data) == 0 || len(data)%BlockSize != 0 {
		return fmt.Errorf("write at block %d: length %d is not a positive multiple of %d: %w",
			blockIndex, len(data), BlockSize, ErrBadLength)
	}
	blockCount := uint64(len(data) / BlockSize)
	if err := d.checkRange(blockIndex, blockCount); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	for i := range blockCount {
		block := slices.Clone(data[i*BlockSize : (i+1)*BlockSize])
		d.setBlock(blockIndex+i, block)
	}
	return nil
}

// Trim discards blockCount blocks from blockIndex; they read as zeros.
func (d *Device) Trim(blockIndex uint64, blockCount uint32) error {
	if err := d.zeroRange(blockIndex, blockCount); err != nil {
		return fmt.Errorf("trim: %w", err)
	}
	return nil
}

// WriteZeroes makes blockCount blocks from blockIndex read as zeros. The
// model does not distinguish it from Trim.
func (d *Device) WriteZeroes(blockIndex uint64, blockCount uint32) error {
	if err := d.zeroRange(blockIndex, blockCount); err != nil {
		return fmt.Errorf("write zeroes: %w", err)
	}
	return nil
}

func (d *Device) zeroRange(blockIndex uint64, blockCount uint32) error {
	if blockCount == 0 {
		return fmt.Errorf("block %d: zero block count: %w", blockIndex, ErrBadLength)
	}
	if err := d.checkRange(blockIndex, uint64(blockCount)); err != nil {
		return err
	}
	for i := range uint64(blockCount) {
		d.setBlock(blockIndex+i, nil)
	}
	return nil
}

// setBlock makes block (nil for zeros) the head's content of blockIndex and
// records it for the crash oracle. An all-zero block is stored as nil.
func (d *Device) setBlock(blockIndex uint64, block []byte) {
	if block != nil && isZero(block) {
		block = nil
	}
	d.seq++
	d.noteUnflushed(blockIndex, block)
	d.head().blocks[blockIndex] = block
}

// Read returns blockCount blocks from blockIndex as seen through the layer
// chain. The returned slice is a fresh copy.
func (d *Device) Read(blockIndex uint64, blockCount uint32) ([]byte, error) {
	if blockCount == 0 {
		return nil, fmt.Errorf("read at block %d: zero block count: %w", blockIndex, ErrBadLength)
	}
	if err := d.checkRange(blockIndex, uint64(blockCount)); err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	out := make([]byte, int(blockCount)*BlockSize)
	for i := range uint64(blockCount) {
		if block := d.block(blockIndex + i); block != nil {
			copy(out[i*BlockSize:], block)
		}
	}
	return out, nil
}

// block returns the current content of blockIndex, nil for zeros. The
// result aliases the store and must not be modified.
func (d *Device) block(blockIndex uint64) []byte {
	return d.blockUpTo(len(d.layers)-1, blockIndex)
}

// blockUpTo returns the content of blockIndex as seen from layer top down.
func (d *Device) blockUpTo(top int, blockIndex uint64) []byte {
	for i := top; i >= 0; i-- {
		if block, ok := d.layers[i].blocks[blockIndex]; ok {
			return block
		}
	}
	return nil
}

// Flush makes every write so far durable: after it a crash can no longer
// lose or undo them.
func (d *Device) Flush() {
	clear(d.unflushed)
}

// Expand grows the device to sizeBytes, a multiple of BlockSize no smaller
// than the current size. The new space reads as zeros.
func (d *Device) Expand(sizeBytes uint64) error {
	if sizeBytes%BlockSize != 0 {
		return fmt.Errorf("expand to %d bytes: not a multiple of %d: %w", sizeBytes, BlockSize, ErrBadLength)
	}
	if sizeBytes < d.sizeBytes {
		return fmt.Errorf("expand from %d to %d bytes: %w", d.sizeBytes, sizeBytes, ErrShrink)
	}
	d.sizeBytes = sizeBytes
	return nil
}

func isZero(block []byte) bool {
	for _, b := range block {
		if b != 0 {
			return false
		}
	}
	return true
}
