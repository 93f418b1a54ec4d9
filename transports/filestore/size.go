package filestore

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"os"

	"golang.org/x/sys/unix"

	"github.com/drover-io/drover/core/proto"
)

// DefaultOverProvisioningPercent is the over-provisioning limit CheckSize
// applies when none is given: a volume may be as large as the disk.
const DefaultOverProvisioningPercent = 100

// sizeProbeName is the file CheckSize sizes (sparse, never written) to
// learn whether the file system can address a layer file; it is removed
// at once. A crash may leave it behind; the next probe reuses it.
const sizeProbeName = "size-probe.tmp"

// SizeError reports a volume size the store cannot hold. It is returned
// before anything of the volume is written.
type SizeError struct {
	Dir       string
	SizeBytes uint64
	// LimitBytes is the largest size the store would take (0 if unknown).
	LimitBytes uint64
	// OverProvisioning: the over-provisioning limit refused it (the file
	// system could address it).
	OverProvisioning bool
	Reason           string
}

func (e *SizeError) Error() string {
	return fmt.Sprintf("%s cannot hold a volume of %s (%d bytes): %s", e.Dir, iecBytes(e.SizeBytes), e.SizeBytes, e.Reason)
}

// iecBytes renders n in the largest binary unit it reaches, e.g. "16 TiB"
// or "1.5 GiB".
func iecBytes(n uint64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	i, v := 0, float64(n)
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if v == float64(uint64(v)) {
		return fmt.Sprintf("%d %s", uint64(v), units[i])
	}
	return fmt.Sprintf("%.1f %s", v, units[i])
}

// CheckSize reports whether a volume of sizeBytes fits this store: that
// the file system holding its directory can address a layer file that
// large (block i lives at offset i*BlockSize, so the data file reaches
// sizeBytes; ext4 with 4 KiB blocks stops just short of 16 TiB), and that
// sizeBytes is at most overProvisioningPercent of the file system's size
// (0: DefaultOverProvisioningPercent). Sparse files make the second limit
// a policy, not a necessity: it stops a typo (an extra zero) from
// creating a volume that fills the disk long after it was accepted.
// Callers check before creating or expanding a replica; a refusal is a
// *SizeError.
func (s *Store) CheckSize(sizeBytes uint64, overProvisioningPercent int) error {
	if overProvisioningPercent <= 0 {
		overProvisioningPercent = DefaultOverProvisioningPercent
	}
	if sizeBytes == 0 || sizeBytes%proto.BlockSize != 0 {
		return &SizeError{Dir: s.dir, SizeBytes: sizeBytes, Reason: fmt.Sprintf("want a positive multiple of %d", proto.BlockSize)}
	}
	if sizeBytes > math.MaxInt64 {
		// File offsets are signed 64-bit: no file system can address it.
		return &SizeError{Dir: s.dir, SizeBytes: sizeBytes, LimitBytes: math.MaxInt64 &^ (proto.BlockSize - 1),
			Reason: "no file system addresses files past 8 EiB (2^63 bytes)"}
	}
	if err := s.checkDiskShare(sizeBytes, overProvisioningPercent); err != nil {
		return err
	}
	return s.probeFileSize(sizeBytes)
}

// checkDiskShare applies the over-provisioning limit.
func (s *Store) checkDiskShare(sizeBytes uint64, percent int) error {
	var fs unix.Statfs_t
	if err := unix.Statfs(s.dir, &fs); err != nil {
		return fmt.Errorf("check size: statfs %s: %w", s.dir, err)
	}
	diskBytes := fs.Blocks * uint64(fs.Bsize)
	limit := uint64(math.MaxUint64)
	if hi, lo := bits.Mul64(diskBytes, uint64(percent)); hi == 0 {
		limit = lo / 100
	}
	if sizeBytes <= limit {
		return nil
	}
	return &SizeError{Dir: s.dir, SizeBytes: sizeBytes, LimitBytes: limit &^ (proto.BlockSize - 1), OverProvisioning: true,
		Reason: fmt.Sprintf("that is over the over-provisioning limit, %d%% of its %s disk (at most %s)",
			percent, iecBytes(diskBytes), iecBytes(limit&^(proto.BlockSize-1)))}
}

// probeFileSize sizes a sparse probe file to sizeBytes (nothing is
// written into it) to learn whether the file system can address a layer
// file that large; on a refusal it finds the largest size that works, for
// the error message.
func (s *Store) probeFileSize(sizeBytes uint64) error {
	path := s.path(sizeProbeName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("check size: %w", err)
	}
	defer func() {
		f.Close()
		os.Remove(path)
	}()
	err = f.Truncate(int64(sizeBytes))
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EFBIG) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("check size: size a probe file to %d bytes: %w", sizeBytes, err)
	}
	// Binary search the largest block-aligned size the file system takes.
	lo, hi := uint64(0), sizeBytes/proto.BlockSize // in blocks: lo fits, hi does not
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		if f.Truncate(int64(mid*proto.BlockSize)) == nil {
			lo = mid
		} else {
			hi = mid
		}
	}
	return &SizeError{Dir: s.dir, SizeBytes: sizeBytes, LimitBytes: lo * proto.BlockSize,
		Reason: fmt.Sprintf("its file system addresses files of at most %s (%d bytes; %v)", iecBytes(lo*proto.BlockSize), lo*proto.BlockSize, err)}
}
