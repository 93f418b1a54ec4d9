package backuprun

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/control/controlpb"
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

// Control is a volume reached through the control API (an engine).
type Control struct {
	C controlpb.ControlClient
}

// Info implements Source.
func (v Control) Info(ctx context.Context) (string, uint64, []string, error) {
	info, err := v.C.VolumeInfo(ctx, &controlpb.VolumeInfoRequest{})
	if err != nil {
		return "", 0, nil, fmt.Errorf("volume info: %w", err)
	}
	return info.GetVolume(), info.GetSizeBytes(), info.GetChain(), nil
}

// Snapshot implements Source.
func (v Control) Snapshot(ctx context.Context, name string) error {
	if _, err := v.C.SnapshotCreate(ctx, &controlpb.SnapshotRequest{Name: name}); err != nil {
		return fmt.Errorf("snapshot %s: %w", name, err)
	}
	return nil
}

// DeleteSnapshot implements Source.
func (v Control) DeleteSnapshot(ctx context.Context, name string) error {
	if _, err := v.C.SnapshotDelete(ctx, &controlpb.SnapshotRequest{Name: name}); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", name, err)
	}
	return nil
}

// ChangedExtents implements Source.
func (v Control) ChangedExtents(ctx context.Context, from, to string) ([]proto.Extent, error) {
	rep, err := v.C.ChangedExtents(ctx, &controlpb.ChangedExtentsRequest{From: from, To: to})
	if err != nil {
		return nil, fmt.Errorf("changed extents %s..%s: %w", from, to, err)
	}
	out := make([]proto.Extent, 0, len(rep.GetExtents()))
	for _, x := range rep.GetExtents() {
		out = append(out, proto.Extent{BlockIndex: x.GetBlockIndex(), BlockCount: x.GetBlockCount()})
	}
	return out, nil
}

// ReadSnapshot implements Source.
func (v Control) ReadSnapshot(ctx context.Context, name string, off uint64, p []byte) error {
	st, err := v.C.ReadSnapshot(ctx, &controlpb.ReadSnapshotRequest{Name: name, Offset: off, Length: uint64(len(p))})
	if err != nil {
		return fmt.Errorf("read snapshot %s at %d: %w", name, off, err)
	}
	n := 0
	for {
		ch, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read snapshot %s at %d: %w", name, off, err)
		}
		if ch.GetOffset() != off+uint64(n) || n+len(ch.GetData()) > len(p) {
			return fmt.Errorf("read snapshot %s: piece at %d of %d bytes, expected %d", name, ch.GetOffset(), len(ch.GetData()), off+uint64(n))
		}
		n += copy(p[n:], ch.GetData())
	}
	if n != len(p) {
		return fmt.Errorf("read snapshot %s at %d: %d of %d bytes", name, off, n, len(p))
	}
	return nil
}

// SizeBytes implements Target.
func (v Control) SizeBytes(ctx context.Context) (uint64, error) {
	_, size, _, err := v.Info(ctx)
	return size, err
}

// Grow implements Target.
func (v Control) Grow(ctx context.Context, sizeBytes uint64) error {
	size, err := v.SizeBytes(ctx)
	if err != nil || size >= sizeBytes {
		return err
	}
	if _, err := v.C.Expand(ctx, &controlpb.ExpandRequest{SizeBytes: sizeBytes}); err != nil {
		return fmt.Errorf("expand the target volume to %d bytes: %w", sizeBytes, err)
	}
	return nil
}

// WriteAt implements Target (pieces of at most 4 MiB).
func (v Control) WriteAt(ctx context.Context, p []byte, off uint64) error {
	for len(p) > 0 {
		n := min(len(p), 4<<20)
		if _, err := v.C.Write(ctx, &controlpb.WriteRequest{Offset: off, Data: p[:n]}); err != nil {
			return fmt.Errorf("write at %d: %w", off, err)
		}
		p, off = p[n:], off+uint64(n)
	}
	return nil
}

// WriteZeroes implements Target.
func (v Control) WriteZeroes(ctx context.Context, off, length uint64) error {
	if _, err := v.C.WriteZeroes(ctx, &controlpb.WriteZeroesRequest{Offset: off, Length: length}); err != nil {
		return fmt.Errorf("write zeroes at %d: %w", off, err)
	}
	return nil
}

// Flush implements Target.
func (v Control) Flush(ctx context.Context) error {
	if _, err := v.C.Flush(ctx, &controlpb.Empty{}); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	return nil
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
