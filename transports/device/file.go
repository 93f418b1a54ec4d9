package device

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
)

// fallocate(2) modes; the syscall package does not name them.
const (
	fallocKeepSize  = 0x01 // FALLOC_FL_KEEP_SIZE
	fallocPunchHole = 0x02 // FALLOC_FL_PUNCH_HOLE
	fallocZeroRange = 0x10 // FALLOC_FL_ZERO_RANGE
)

// fileBlockBytes is File's MinBlockBytes.
const fileBlockBytes = 512

// zeroChunkBytes bounds the buffer File writes zeros from when the
// filesystem can neither zero a range nor punch a hole in it.
const zeroChunkBytes = 1 << 20

// FileConfig configures OpenFile.
type FileConfig struct {
	// SizeBytes, if not zero, creates the file when it is missing and
	// truncates or extends it to this size (a multiple of 512). Zero opens
	// an existing file at its current size.
	SizeBytes uint64
	// ReadOnly opens the file read-only; writes fail with ErrReadOnly.
	ReadOnly bool
}

// File is a Device on a plain file: pread/pwrite for data, fdatasync for
// Flush and FUA, hole punching for Trim and range zeroing for WriteZeroes.
// It is the reference backend for frontend tests and benchmarks. Offsets
// and lengths must be multiples of 512; File enforces that so frontends
// tested against it do not come to rely on byte-granular IO.
type File struct {
	f         *os.File
	fd        int
	sizeBytes uint64
	readOnly  bool
}

var _ Device = (*File)(nil)

// OpenFile opens (and with cfg.SizeBytes, creates or resizes) the file at
// path as a Device.
func OpenFile(path string, cfg FileConfig) (*File, error) {
	if cfg.SizeBytes%fileBlockBytes != 0 {
		return nil, fmt.Errorf("open file device %s: size %d is not a multiple of %d: %w",
			path, cfg.SizeBytes, fileBlockBytes, ErrInvalid)
	}
	flags := os.O_RDWR
	if cfg.ReadOnly {
		flags = os.O_RDONLY
	}
	if cfg.SizeBytes != 0 && !cfg.ReadOnly {
		flags |= os.O_CREATE
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open file device: %w", err)
	}
	sizeBytes, err := fileSize(f, cfg)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open file device %s: %w", path, err)
	}
	// Fd puts the descriptor in blocking mode, which is what a regular
	// file is in anyway; File issues fallocate and fdatasync on it.
	return &File{f: f, fd: int(f.Fd()), sizeBytes: sizeBytes, readOnly: cfg.ReadOnly}, nil
}

// fileSize applies cfg.SizeBytes to f and returns the device size.
func fileSize(f *os.File, cfg FileConfig) (uint64, error) {
	if cfg.SizeBytes != 0 {
		if cfg.ReadOnly {
			return 0, fmt.Errorf("a read-only file device cannot be resized: %w", ErrInvalid)
		}
		if err := f.Truncate(int64(cfg.SizeBytes)); err != nil {
			return 0, fmt.Errorf("resize to %d bytes: %w", cfg.SizeBytes, classify(err))
		}
		return cfg.SizeBytes, nil
	}
	st, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("stat: %w", err)
	}
	if st.Size()%fileBlockBytes != 0 || st.Size() == 0 {
		return 0, fmt.Errorf("size %d is zero or not a multiple of %d: %w", st.Size(), fileBlockBytes, ErrInvalid)
	}
	return uint64(st.Size()), nil
}

// Close closes the file. It does not flush: call Flush first for
// durability.
func (d *File) Close() error {
	if err := d.f.Close(); err != nil {
		return fmt.Errorf("close file device: %w", err)
	}
	return nil
}

// SizeBytes is the file size fixed at open.
func (d *File) SizeBytes() uint64 { return d.sizeBytes }

// MinBlockBytes is 512.
func (d *File) MinBlockBytes() uint32 { return fileBlockBytes }

// PreferredBlockBytes is 4096, the page size.
func (d *File) PreferredBlockBytes() uint32 { return 4096 }

// TrimZeroes reports that a trimmed range reads back as zeros: File
// punches holes.
func (d *File) TrimZeroes() bool { return true }

// ReadAt reads len(p) bytes at off.
func (d *File) ReadAt(_ context.Context, p []byte, off uint64) error {
	if err := d.check(off, uint64(len(p)), false); err != nil {
		return fmt.Errorf("read %d bytes at %d: %w", len(p), off, err)
	}
	if _, err := d.f.ReadAt(p, int64(off)); err != nil {
		return fmt.Errorf("read %d bytes at %d: %w", len(p), off, classify(err))
	}
	return nil
}

// WriteAt writes p at off; with fua it is durable on return.
func (d *File) WriteAt(_ context.Context, p []byte, off uint64, fua bool) error {
	if err := d.check(off, uint64(len(p)), true); err != nil {
		return fmt.Errorf("write %d bytes at %d: %w", len(p), off, err)
	}
	if _, err := d.f.WriteAt(p, int64(off)); err != nil {
		return fmt.Errorf("write %d bytes at %d: %w", len(p), off, classify(err))
	}
	return d.fua(fua)
}

// Trim punches a hole; the range reads as zeros afterwards. Where the
// filesystem cannot punch holes it writes zeros instead.
func (d *File) Trim(_ context.Context, off, length uint64, fua bool) error {
	if err := d.check(off, length, true); err != nil {
		return fmt.Errorf("trim %d bytes at %d: %w", length, off, err)
	}
	if err := d.zero(off, length, false); err != nil {
		return fmt.Errorf("trim %d bytes at %d: %w", length, off, err)
	}
	return d.fua(fua)
}

// WriteZeroes makes the range read as zeros, keeping it allocated where
// the filesystem supports FALLOC_FL_ZERO_RANGE and punching a hole
// otherwise.
func (d *File) WriteZeroes(_ context.Context, off, length uint64, fua bool) error {
	if err := d.check(off, length, true); err != nil {
		return fmt.Errorf("write zeroes %d bytes at %d: %w", length, off, err)
	}
	if err := d.zero(off, length, true); err != nil {
		return fmt.Errorf("write zeroes %d bytes at %d: %w", length, off, err)
	}
	return d.fua(fua)
}

// Flush makes every completed write durable with fdatasync.
func (d *File) Flush(context.Context) error {
	if d.readOnly {
		return nil
	}
	if err := syscall.Fdatasync(d.fd); err != nil {
		return fmt.Errorf("flush: fdatasync: %w", classify(err))
	}
	return nil
}

func (d *File) fua(fua bool) error {
	if !fua {
		return nil
	}
	if err := syscall.Fdatasync(d.fd); err != nil {
		return fmt.Errorf("fua: fdatasync: %w", classify(err))
	}
	return nil
}

// check validates a request's range and alignment and, for writes, that
// the file is writable.
func (d *File) check(off, length uint64, write bool) error {
	if write && d.readOnly {
		return ErrReadOnly
	}
	if off%fileBlockBytes != 0 || length%fileBlockBytes != 0 {
		return fmt.Errorf("not a multiple of %d bytes: %w", fileBlockBytes, ErrInvalid)
	}
	if off > d.sizeBytes || length > d.sizeBytes-off {
		return fmt.Errorf("beyond the device end %d: %w", d.sizeBytes, ErrInvalid)
	}
	return nil
}

// zero makes [off, off+length) read as zeros: with keepAllocated by
// FALLOC_FL_ZERO_RANGE first, then by punching a hole, then by writing
// zeros, as far as the filesystem supports each.
func (d *File) zero(off, length uint64, keepAllocated bool) error {
	if length == 0 {
		return nil
	}
	if keepAllocated {
		err := syscall.Fallocate(d.fd, fallocZeroRange|fallocKeepSize, int64(off), int64(length))
		if err == nil {
			return nil
		}
		if !unsupported(err) {
			return fmt.Errorf("fallocate zero range: %w", classify(err))
		}
	}
	err := syscall.Fallocate(d.fd, fallocPunchHole|fallocKeepSize, int64(off), int64(length))
	if err == nil {
		return nil
	}
	if !unsupported(err) {
		return fmt.Errorf("fallocate punch hole: %w", classify(err))
	}
	return d.writeZeros(off, length)
}

func (d *File) writeZeros(off, length uint64) error {
	buf := make([]byte, min(length, zeroChunkBytes))
	for length > 0 {
		n := min(length, uint64(len(buf)))
		if _, err := d.f.WriteAt(buf[:n], int64(off)); err != nil {
			return fmt.Errorf("write zeros: %w", classify(err))
		}
		off += n
		length -= n
	}
	return nil
}

func unsupported(err error) bool {
	return errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS)
}

// classify adds the Device error a frontend maps to a protocol code.
func classify(err error) error {
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return fmt.Errorf("%w: %w", ErrNoSpace, err)
	case errors.Is(err, syscall.EROFS), errors.Is(err, syscall.EPERM):
		return fmt.Errorf("%w: %w", ErrReadOnly, err)
	default:
		return fmt.Errorf("%w: %w", ErrIO, err)
	}
}
