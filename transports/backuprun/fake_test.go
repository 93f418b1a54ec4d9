package backuprun

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/model"
)

// fakeVolume is a Source and Target over model.Device (the reference
// block device, which has snapshots and changed blocks).
type fakeVolume struct {
	mu    sync.Mutex
	name  string
	d     *model.Device
	reads int // snapshot bytes read
	// failRead, when set, fails snapshot reads at that offset.
	failRead func(off uint64) error
}

func newFake(name string, sizeBytes uint64) *fakeVolume {
	return &fakeVolume{name: name, d: model.NewDevice(sizeBytes)}
}

func (f *fakeVolume) Info(context.Context) (string, uint64, []string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.name, f.d.SizeBytes(), f.d.Snapshots(), nil
}

func (f *fakeVolume) Snapshot(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.d.Snapshot(name)
}

func (f *fakeVolume) DeleteSnapshot(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.d.DeleteSnapshot(name)
}

func (f *fakeVolume) ChangedExtents(_ context.Context, from, to string) ([]proto.Extent, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	blocks, err := f.d.ChangedBlocks(from, to)
	if err != nil {
		return nil, err
	}
	var out []proto.Extent
	for _, b := range blocks {
		out = append(out, proto.Extent{BlockIndex: b, BlockCount: 1})
	}
	return out, nil
}

func (f *fakeVolume) ReadSnapshot(_ context.Context, name string, off uint64, p []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failRead != nil {
		if err := f.failRead(off); err != nil {
			return err
		}
	}
	data, err := f.d.ReadSnapshot(name, off/proto.BlockSize, uint32(len(p)/proto.BlockSize))
	if err != nil {
		return err
	}
	f.reads += len(p)
	copy(p, data)
	return nil
}

func (f *fakeVolume) SizeBytes(context.Context) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.d.SizeBytes(), nil
}

func (f *fakeVolume) Grow(_ context.Context, size uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if size > f.d.SizeBytes() {
		return f.d.Expand(size)
	}
	return nil
}

func (f *fakeVolume) WriteAt(_ context.Context, p []byte, off uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.d.Write(off/proto.BlockSize, p)
}

func (f *fakeVolume) WriteZeroes(_ context.Context, off, length uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.d.WriteZeroes(off/proto.BlockSize, uint32(length/proto.BlockSize))
}

func (f *fakeVolume) Flush(context.Context) error { return nil }

// write fills blocks [b, b+n) with content derived from seed.
func (f *fakeVolume) write(b, n uint64, seed byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	data := make([]byte, n*proto.BlockSize)
	for i := range n {
		blk := data[i*proto.BlockSize : (i+1)*proto.BlockSize]
		x := (b+i)*0x9e3779b97f4a7c15 ^ uint64(seed)<<56 | 1
		for j := 0; j < len(blk); j += 8 {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			binary.LittleEndian.PutUint64(blk[j:], x&0x0f0f0f0f0f0f0f0f) // compressible, unique
		}
	}
	if err := f.d.Write(b, data); err != nil {
		panic(fmt.Sprint(err))
	}
}

func (f *fakeVolume) content() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, _ := f.d.Read(0, uint32(f.d.SizeBytes()/proto.BlockSize))
	return b
}
