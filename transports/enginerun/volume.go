package enginerun

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/bufpool"
	"github.com/drover-io/drover/transports/device"
)

const (
	// minBlockBytes is the finest granule Volume accepts; anything not
	// aligned to proto.BlockSize is done by read-modify-write.
	minBlockBytes = 512
	// maxChunkBlocks is the largest engine request (4 MiB).
	maxChunkBlocks = 1024
)

// Volume serves a Driver's volume as a device.Device: byte offsets,
// requests split into engine requests of at most 4 MiB, and offsets or
// lengths aligned to 512 but not to 4096 done by read-modify-write.
//
// Every write-like request holds a lock on the 4 KiB blocks it touches
// until the engine has taken it, so a read-modify-write never interleaves
// with another write to the same block (which would lose one of them).
// Reads take no lock: the engine orders a read after every overlapping
// write submitted before it.
type Volume struct {
	d     *Driver
	locks rangeLock
	stats IOStats
}

var _ device.Device = (*Volume)(nil)

// NewVolume returns the device view of d's volume.
func NewVolume(d *Driver) *Volume { return &Volume{d: d} }

// Stats returns the volume's request counters (frontend requests that
// passed the range checks, whichever path served them).
func (v *Volume) Stats() *IOStats { return &v.stats }

// Driver returns the driver the volume runs on.
func (v *Volume) Driver() *Driver { return v.d }

// SizeBytes returns the volume size; it grows after an expand.
func (v *Volume) SizeBytes() uint64 { return v.d.SizeBytes() }

// MinBlockBytes returns 512: finer than 4 KiB costs a read-modify-write.
func (v *Volume) MinBlockBytes() uint32 { return minBlockBytes }

// TrimZeroes reports that a trimmed range reads back as zeros: the
// engine records a zero entry for every trimmed block (so no older layer
// shows through) and partial blocks are zeroed by read-modify-write. NBD
// then serves WRITE_ZEROES that allow a hole as a trim, and iSCSI
// advertises LBPRZ.
func (v *Volume) TrimZeroes() bool { return true }

// PreferredBlockBytes returns 4096, the engine's block size.
func (v *Volume) PreferredBlockBytes() uint32 { return proto.BlockSize }

// check validates a byte range against the device rules.
func (v *Volume) check(op string, off, length uint64) error {
	size := v.SizeBytes()
	switch {
	case off%minBlockBytes != 0 || length%minBlockBytes != 0:
		return fmt.Errorf("%s [%d, +%d): not a multiple of %d bytes: %w", op, off, length, minBlockBytes, device.ErrInvalid)
	case off > size || length > size-off:
		return fmt.Errorf("%s [%d, +%d): beyond the volume's %d bytes: %w", op, off, length, size, device.ErrInvalid)
	}
	return nil
}

// mapErr turns an engine error into the device's typed errors, keeping
// the engine's error in the chain too.
func mapErr(op string, off, length uint64, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	kind := device.ErrIO
	switch {
	case errors.Is(err, engine.ErrInvalid):
		kind = device.ErrInvalid
	case errors.Is(err, engine.ErrNoSpace):
		kind = device.ErrNoSpace
	}
	return fmt.Errorf("%s [%d, +%d): %w: %w", op, off, length, kind, err)
}

// blockSpan returns the blocks covering [off, off+length).
func blockSpan(off, length uint64) (lo, hi uint64) {
	return off / proto.BlockSize, (off + length + proto.BlockSize - 1) / proto.BlockSize
}

// ReadAt reads len(p) bytes at off.
func (v *Volume) ReadAt(ctx context.Context, p []byte, off uint64) error {
	n := uint64(len(p))
	if err := v.check("read", off, n); err != nil || n == 0 {
		return err
	}
	start := time.Now()
	err := v.readInto(ctx, p, off)
	v.stats.record(IORead, n, start, err)
	return mapErr("read", off, n, err)
}

// readInto reads the blocks covering [off, off+len(p)) chunk by chunk
// and copies the wanted bytes into p.
func (v *Volume) readInto(ctx context.Context, p []byte, off uint64) error {
	lo, hi := blockSpan(off, uint64(len(p)))
	for b := lo; b < hi; b += maxChunkBlocks {
		count := min(hi-b, maxChunkBlocks)
		rep, err := v.d.Submit(ctx, engine.Request{Op: proto.OpRead, BlockIndex: b, BlockCount: uint32(count)})
		if err == nil {
			err = rep.Err
		}
		if err != nil {
			return err
		}
		chunkOff := b * proto.BlockSize
		// Copy the overlap of [chunkOff, chunkOff+len) and [off, off+len(p)).
		from := max(off, chunkOff)
		to := min(off+uint64(len(p)), chunkOff+count*proto.BlockSize)
		copy(p[from-off:to-off], rep.Data[from-chunkOff:to-chunkOff])
		// The reply's data is ours alone (a store's or a link's buffer
		// handed over with the reply; the engine keeps none of it).
		bufpool.Put(rep.Data)
	}
	return nil
}

// WriteAt writes p at off; fua makes it durable before returning.
func (v *Volume) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	n := uint64(len(p))
	if err := v.check("write", off, n); err != nil || n == 0 {
		return err
	}
	start := time.Now()
	err := v.mutate(ctx, proto.OpWrite, off, n, p, fua)
	v.stats.record(IOWrite, n, start, err)
	return mapErr("write", off, n, err)
}

// Trim releases [off, off+length); it reads as zeros afterwards. Parts of
// blocks are zeroed by read-modify-write.
func (v *Volume) Trim(ctx context.Context, off, length uint64, fua bool) error {
	if err := v.check("trim", off, length); err != nil || length == 0 {
		return err
	}
	start := time.Now()
	err := v.mutate(ctx, proto.OpTrim, off, length, nil, fua)
	v.stats.record(IODiscard, length, start, err)
	return mapErr("trim", off, length, err)
}

// WriteZeroes makes [off, off+length) read as zeros.
func (v *Volume) WriteZeroes(ctx context.Context, off, length uint64, fua bool) error {
	if err := v.check("write-zeroes", off, length); err != nil || length == 0 {
		return err
	}
	start := time.Now()
	err := v.mutate(ctx, proto.OpWriteZeroes, off, length, nil, fua)
	v.stats.record(IOWrite, length, start, err)
	return mapErr("write-zeroes", off, length, err)
}

// Flush makes every acknowledged write durable on every replica.
func (v *Volume) Flush(ctx context.Context) error {
	start := time.Now()
	rep, err := v.d.Submit(ctx, engine.Request{Op: proto.OpFlush})
	if err == nil {
		err = rep.Err
	}
	v.stats.record(IOFlush, 0, start, err)
	return mapErr("flush", 0, 0, err)
}

// mutate does a write, trim or write-zeroes of [off, off+length) under
// the range lock. Data is nil for trim and write-zeroes. Partial blocks
// at either end are read, patched, and written whole; the whole blocks in
// between go to the engine as op in chunks of at most 4 MiB.
func (v *Volume) mutate(ctx context.Context, op proto.Op, off, length uint64, data []byte, fua bool) error {
	lo, hi := blockSpan(off, length)
	if err := v.locks.lock(ctx, lo, hi); err != nil {
		return err
	}
	defer v.locks.unlock(lo, hi)
	end := off + length
	headEnd := min(end, lo*proto.BlockSize+proto.BlockSize)
	if off%proto.BlockSize != 0 || headEnd-off < proto.BlockSize {
		// The first block is partial: patch it alone.
		if err := v.patch(ctx, lo, off, headEnd, dataAt(data, off, off, headEnd), fua); err != nil {
			return err
		}
		lo++
	}
	if lo < hi && end%proto.BlockSize != 0 {
		tailStart := (hi - 1) * proto.BlockSize
		if err := v.patch(ctx, hi-1, tailStart, end, dataAt(data, off, tailStart, end), fua); err != nil {
			return err
		}
		hi--
	}
	for b := lo; b < hi; b += maxChunkBlocks {
		count := min(hi-b, maxChunkBlocks)
		req := engine.Request{Op: op, BlockIndex: b, BlockCount: uint32(count), FUA: fua}
		if op == proto.OpWrite {
			start := b*proto.BlockSize - off
			req.Data = bufpool.Get(int(count * proto.BlockSize))
			copy(req.Data, data[start:start+count*proto.BlockSize])
		}
		if err := v.submitOwned(ctx, req); err != nil {
			return err
		}
	}
	return nil
}

// dataAt returns data's bytes for volume range [from, to), where data
// starts at volume offset base; nil data (zeros) stays nil.
func dataAt(data []byte, base, from, to uint64) []byte {
	if data == nil {
		return nil
	}
	return data[from-base : to-base]
}

// patch read-modify-writes one block: bytes [from, to) of the volume,
// inside block b, become data (zeros when data is nil).
func (v *Volume) patch(ctx context.Context, b, from, to uint64, data []byte, fua bool) error {
	buf := bufpool.Get(proto.BlockSize)
	if err := v.readInto(ctx, buf, b*proto.BlockSize); err != nil {
		bufpool.Put(buf)
		return err
	}
	dst := buf[from-b*proto.BlockSize : to-b*proto.BlockSize]
	if data == nil {
		clear(dst)
	} else {
		copy(dst, data)
	}
	return v.submitOwned(ctx, engine.Request{Op: proto.OpWrite, BlockIndex: b, BlockCount: 1, Data: buf, FUA: fua})
}

// submitOwned submits a request whose Data (may be nil) the volume owns,
// from bufpool: it returns to the pool only after a successful reply from
// every replica the write went to (not DataHeld). On a failure or
// cancellation, or when a replica that left the set may still hold it,
// it is left to the garbage collector.
func (v *Volume) submitOwned(ctx context.Context, req engine.Request) error {
	rep, err := v.d.Submit(ctx, req)
	if err == nil {
		err = rep.Err
	}
	if err == nil && !rep.DataHeld {
		bufpool.Put(req.Data)
	}
	return err
}
