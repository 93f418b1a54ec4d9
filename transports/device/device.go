// Package device defines Device, what every frontend (NBD, iSCSI, CSI)
// serves: a block device addressed in bytes. The engine's production
// driver implements it for Drover volumes; File implements it on a plain
// file as a reference for frontend tests and benchmarks. It lives under
// transports/ because the engine driver (transports/enginerun) implements
// it: transports must not import frontends, while frontends may import
// this one transports package.
package device

import (
	"context"
	"errors"
)

// Typed errors a Device returns; frontends map them to protocol codes
// (NBD: EINVAL, EIO, ENOSPC, EPERM; SCSI sense: ILLEGAL REQUEST, MEDIUM
// ERROR, SPACE ALLOCATION FAILED ...).
var (
	// ErrInvalid: offset/length out of range or misaligned.
	ErrInvalid = errors.New("invalid offset or length")
	// ErrIO: the device could not do it (every replica failed, say).
	ErrIO = errors.New("input/output error")
	// ErrNoSpace: out of space.
	ErrNoSpace = errors.New("no space left on device")
	// ErrReadOnly: the device refuses writes.
	ErrReadOnly = errors.New("read-only device")
)

// Device is a block device. Offsets and lengths are in bytes and must be
// multiples of MinBlockBytes (a Device may accept finer ones). Calls may
// run concurrently; overlapping writes in flight at once land in an
// unspecified order, as on a disk. A call's success means the data is
// acknowledged: readable by every later call; FUA and Flush make it
// durable across crashes.
type Device interface {
	// SizeBytes is the device size.
	SizeBytes() uint64
	// MinBlockBytes is the smallest offset/length granule accepted (512 or
	// 4096). PreferredBlockBytes is the granule that avoids
	// read-modify-write (4096 for Drover volumes).
	MinBlockBytes() uint32
	PreferredBlockBytes() uint32
	ReadAt(ctx context.Context, p []byte, off uint64) error
	WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error
	// Trim releases a range (reads as zeros afterwards on Drover volumes).
	Trim(ctx context.Context, off, length uint64, fua bool) error
	// WriteZeroes makes a range read as zeros.
	WriteZeroes(ctx context.Context, off, length uint64, fua bool) error
	// Flush makes every acknowledged write durable.
	Flush(ctx context.Context) error
}
