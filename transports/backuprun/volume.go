package backuprun

import (
	"context"
	"os"

	"github.com/drover-io/drover/core/proto"
)

// Source is a volume backups read from.
type Source interface {
	// Info returns the volume's name, size and snapshot chain.
	Info(ctx context.Context) (name string, sizeBytes uint64, chain []string, err error)
	Snapshot(ctx context.Context, name string) error
	DeleteSnapshot(ctx context.Context, name string) error
	// ChangedExtents lists blocks changed after snapshot from up to to.
	ChangedExtents(ctx context.Context, from, to string) ([]proto.Extent, error)
	// ReadSnapshot fills p from snapshot name at byte offset off.
	ReadSnapshot(ctx context.Context, name string, off uint64, p []byte) error
}

// Target is what a restore writes to: a volume or an image file.
type Target interface {
	SizeBytes(ctx context.Context) (uint64, error)
	// Grow makes the target at least sizeBytes long.
	Grow(ctx context.Context, sizeBytes uint64) error
	WriteAt(ctx context.Context, p []byte, off uint64) error
	WriteZeroes(ctx context.Context, off, length uint64) error
	Flush(ctx context.Context) error
}

// File is a raw image file as a restore target.
type File struct {
	F *os.File
}

// SizeBytes implements Target.
func (f File) SizeBytes(context.Context) (uint64, error) {
	st, err := f.F.Stat()
	if err != nil {
		return 0, err
	}
	return uint64(st.Size()), nil
}

// Grow implements Target.
func (f File) Grow(ctx context.Context, sizeBytes uint64) error {
	size, err := f.SizeBytes(ctx)
	if err != nil || size >= sizeBytes {
		return err
	}
	return f.F.Truncate(int64(sizeBytes))
}

// WriteAt implements Target.
func (f File) WriteAt(_ context.Context, p []byte, off uint64) error {
	_, err := f.F.WriteAt(p, int64(off))
	return err
}

// WriteZeroes implements Target.
func (f File) WriteZeroes(_ context.Context, off, length uint64) error {
	_, err := f.F.WriteAt(make([]byte, length), int64(off))
	return err
}

// Flush implements Target.
func (f File) Flush(context.Context) error { return f.F.Sync() }
