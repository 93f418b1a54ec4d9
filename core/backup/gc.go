package backup

import (
	"errors"
	"fmt"
)

// Deleting backups: mark-and-sweep with exclusion markers.
//
// Chunks are shared between backups and volumes, and an object store has
// no atomic reference counts, so a delete removes the manifest only; a
// sweep later removes the chunks no manifest references. The danger is a
// backup running beside a sweep: it decides to reuse a chunk it saw
// (from its parent, or found by hash) that the sweep, not seeing a
// manifest referencing it yet, deletes. The protocol excludes that:
//
//   - A backup writes its marker (locks/backup-ID), then lists markers; if
//     a live sweep marker exists it removes its own and fails (retry
//     later). Only then does it list existing chunks, upload, write its
//     manifest, and remove its marker.
//   - A sweep writes its marker (locks/sweep-ID), then lists markers; if a
//     live backup marker exists it removes its own and defers (the
//     deleted manifests are gone already; their chunks wait for a later
//     sweep). Only then does it list manifests and chunks and delete the
//     unreferenced chunks.
//
// Each writes its own marker before reading the other's (Dekker), so with
// a store whose listings see every completed write (a directory; S3 since
// 2020) at least one of them sees the other. A marker is live while it was
// refreshed within StaleAfter: a crashed process's marker stops blocking
// the other side then. So a live process refreshes its marker well inside
// StaleAfter, a sweep deletes only while its own marker is fresh
// (SweepMayDelete), and a backup whose marker may have gone stale
// re-checks that every chunk it references exists before it writes its
// manifest (MustRecheck). Gaps count from the last check: a later refresh
// does not undo one. TestProtocolKeepsReferencedChunks interleaves
// backups, deletes, sweeps, crashes and stalls at random and checks that
// every manifest's chunks exist after every step.

// Marker kinds.
const (
	MarkerBackup = "backup"
	MarkerSweep  = "sweep"
)

// Marker is a running backup or sweep as its object in locks/ says.
type Marker struct {
	Kind          string
	ID            string
	RefreshedUnix int64
}

// Name returns the marker's object name under locks/.
func (m Marker) Name() string { return m.Kind + "-" + m.ID }

// ErrSweepRunning: a backup may not start while a sweep runs.
var ErrSweepRunning = errors.New("a chunk sweep is running on this target")

// ErrBackupRunning: a sweep defers while a backup runs.
var ErrBackupRunning = errors.New("a backup is running on this target")

// Live reports whether m was refreshed within staleAfter of now.
func (m Marker) Live(nowUnix, staleAfterSec int64) bool {
	return nowUnix-m.RefreshedUnix < staleAfterSec
}

// BackupMayProceed is a backup's check after writing its own marker.
func BackupMayProceed(markers []Marker, nowUnix, staleAfterSec int64) error {
	for _, m := range markers {
		if m.Kind == MarkerSweep && m.Live(nowUnix, staleAfterSec) {
			return fmt.Errorf("%w (sweep %s)", ErrSweepRunning, m.ID)
		}
	}
	return nil
}

// SweepMayProceed is a sweep's check after writing its own marker.
func SweepMayProceed(markers []Marker, nowUnix, staleAfterSec int64) error {
	for _, m := range markers {
		if m.Kind == MarkerBackup && m.Live(nowUnix, staleAfterSec) {
			return fmt.Errorf("%w (backup %s)", ErrBackupRunning, m.ID)
		}
	}
	return nil
}

// SweepMayDelete reports whether a sweep whose marker once went maxGapSec
// without a refresh (the longest gap since it checked the markers, up to
// now) may still delete: only while a backup could never have taken that
// marker for stale, with a margin of half of staleAfter. A refresh does
// not undo a gap: a backup may have started during it (rapid found a
// sweep that refreshed its marker after such a gap and deleted a chunk
// that backup had just uploaded).
func SweepMayDelete(maxGapSec, staleAfterSec int64) bool {
	return maxGapSec < staleAfterSec/2
}

// MustRecheck reports whether a backup whose marker once went maxGapSec
// without a refresh (the longest gap since its last check, up to now)
// must check that its chunks still exist before writing its manifest: a
// sweep may have taken its marker for stale meanwhile. It refreshes its
// marker and lists markers again first (BackupMayProceed), so no sweep
// deletes during the check, and asks again right before the manifest
// write, redoing the check if it stalled since.
func MustRecheck(maxGapSec, staleAfterSec int64) bool {
	return maxGapSec >= staleAfterSec/2
}

// Unreferenced returns the chunks no manifest references, in the order
// given.
func Unreferenced(chunks []Hash, manifests []*Manifest) []Hash {
	refs := map[Hash]bool{}
	for _, m := range manifests {
		for h := range m.Refs() {
			refs[h] = true
		}
	}
	var out []Hash
	for _, h := range chunks {
		if !refs[h] {
			out = append(out, h)
		}
	}
	return out
}
