package control

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/backuprun"
	"github.com/drover-io/drover/transports/control/controlpb"
)

var (
	_ backuprun.Source = BackupVolume{}
	_ backuprun.Target = BackupVolume{}
)

// BackupVolume is a volume reached through the control API (an engine),
// as a backup source and a restore target (transports/backuprun's Source
// and Target). It lives with the control service rather than in
// backuprun so that the backup driver stays below the control API's
// schema: backuprun works on any Source and Target, and only what
// speaks the control API knows its messages.
type BackupVolume struct {
	C controlpb.ControlClient
}

// Info implements backuprun.Source.
func (v BackupVolume) Info(ctx context.Context) (string, uint64, []string, error) {
	info, err := v.C.VolumeInfo(ctx, &controlpb.VolumeInfoRequest{})
	if err != nil {
		return "", 0, nil, fmt.Errorf("volume info: %w", err)
	}
	return info.GetVolume(), info.GetSizeBytes(), info.GetChain(), nil
}

// Snapshot implements backuprun.Source.
func (v BackupVolume) Snapshot(ctx context.Context, name string) error {
	if _, err := v.C.SnapshotCreate(ctx, &controlpb.SnapshotRequest{Name: name}); err != nil {
		return fmt.Errorf("snapshot %s: %w", name, err)
	}
	return nil
}

// DeleteSnapshot implements backuprun.Source.
func (v BackupVolume) DeleteSnapshot(ctx context.Context, name string) error {
	if _, err := v.C.SnapshotDelete(ctx, &controlpb.SnapshotRequest{Name: name}); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", name, err)
	}
	return nil
}

// ChangedExtents implements backuprun.Source.
func (v BackupVolume) ChangedExtents(ctx context.Context, from, to string) ([]proto.Extent, error) {
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

// ReadSnapshot implements backuprun.Source.
func (v BackupVolume) ReadSnapshot(ctx context.Context, name string, off uint64, p []byte) error {
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

// SizeBytes implements backuprun.Target.
func (v BackupVolume) SizeBytes(ctx context.Context) (uint64, error) {
	_, size, _, err := v.Info(ctx)
	return size, err
}

// Grow implements backuprun.Target.
func (v BackupVolume) Grow(ctx context.Context, sizeBytes uint64) error {
	size, err := v.SizeBytes(ctx)
	if err != nil || size >= sizeBytes {
		return err
	}
	if _, err := v.C.Expand(ctx, &controlpb.ExpandRequest{SizeBytes: sizeBytes}); err != nil {
		return fmt.Errorf("expand the target volume to %d bytes: %w", sizeBytes, err)
	}
	return nil
}

// WriteAt implements backuprun.Target (pieces of at most 4 MiB).
func (v BackupVolume) WriteAt(ctx context.Context, p []byte, off uint64) error {
	for len(p) > 0 {
		n := min(len(p), 4<<20)
		if _, err := v.C.Write(ctx, &controlpb.WriteRequest{Offset: off, Data: p[:n]}); err != nil {
			return fmt.Errorf("write at %d: %w", off, err)
		}
		p, off = p[n:], off+uint64(n)
	}
	return nil
}

// WriteZeroes implements backuprun.Target.
func (v BackupVolume) WriteZeroes(ctx context.Context, off, length uint64) error {
	if _, err := v.C.WriteZeroes(ctx, &controlpb.WriteZeroesRequest{Offset: off, Length: length}); err != nil {
		return fmt.Errorf("write zeroes at %d: %w", off, err)
	}
	return nil
}

// Flush implements backuprun.Target.
func (v BackupVolume) Flush(ctx context.Context) error {
	if _, err := v.C.Flush(ctx, &controlpb.Empty{}); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	return nil
}
