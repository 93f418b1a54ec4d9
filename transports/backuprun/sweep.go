package backuprun

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/drover-io/drover/core/backup"
)

// SweepStats says what a sweep did.
type SweepStats struct {
	Chunks    int // stored before the sweep
	Deleted   int // unreferenced chunks deleted
	Remaining int // unreferenced chunks left (the sweep stopped early)
	Deferred  error
}

// Delete removes a backup: its manifest goes at once (the backup no longer
// exists), then a sweep removes the chunks no other backup references. If
// a backup is running the sweep is deferred (SweepStats.Deferred says why):
// the chunks stay until a later delete or `drover backup gc`.
func (r *Repo) Delete(ctx context.Context, volume, id string) (SweepStats, error) {
	if _, err := r.Store.Get(ctx, manifestKey(volume, id)); err != nil {
		return SweepStats{}, fmt.Errorf("%w: %s/%s: %v", ErrNoBackup, volume, id, err)
	}
	if err := r.Store.Delete(ctx, manifestKey(volume, id)); err != nil {
		return SweepStats{}, err
	}
	return r.Sweep(ctx)
}

// Sweep deletes unreferenced chunks unless a backup is running (see the
// protocol in core/backup). A manifest that cannot be read stops it
// before anything is deleted: its chunks might be in use.
func (r *Repo) Sweep(ctx context.Context) (SweepStats, error) {
	var st SweepStats
	l, err := r.acquire(ctx, marker{Kind: backup.MarkerSweep, ID: r.newID()})
	if err != nil {
		return st, err
	}
	defer l.release(context.WithoutCancel(ctx))
	stale := int64(r.StaleAfter.Seconds())
	ms, err := r.markers(ctx)
	if err != nil {
		return st, err
	}
	if err := backup.SweepMayProceed(coreMarkers(ms), r.Now().Unix(), stale); err != nil {
		st.Deferred = err
		return st, nil
	}
	refs, err := r.List(ctx, "")
	if err != nil {
		return st, err
	}
	var manifests []*backup.Manifest
	for _, ref := range refs {
		m, err := r.Manifest(ctx, ref.Volume, ref.ID)
		if errors.Is(err, ErrNoBackup) {
			continue // deleted meanwhile: its chunks are candidates anyway
		}
		if err != nil {
			return st, fmt.Errorf("sweep stopped, nothing deleted: %w", err)
		}
		manifests = append(manifests, m)
	}
	have, err := r.chunks(ctx)
	if err != nil {
		return st, err
	}
	all := make([]backup.Hash, 0, len(have))
	for h := range have {
		all = append(all, h)
	}
	sort.Slice(all, func(i, j int) bool { return string(all[i][:]) < string(all[j][:]) })
	st.Chunks = len(all)
	dead := backup.Unreferenced(all, manifests)
	for i, h := range dead {
		if gap := l.gap(); !backup.SweepMayDelete(int64(gap.Seconds()), stale) {
			st.Remaining = len(dead) - i
			return st, fmt.Errorf("sweep stopped after %d chunks: its marker once went %s unrefreshed (a backup may have started meanwhile); run it again", i, gap.Round(time.Second))
		}
		if err := r.Store.Delete(ctx, chunkKey(h)); err != nil {
			st.Remaining = len(dead) - i
			return st, err
		}
		st.Deleted++
	}
	r.dropStaleMarkers(ctx, ms)
	return st, nil
}

// dropStaleMarkers removes markers of processes that died long ago.
func (r *Repo) dropStaleMarkers(ctx context.Context, ms []marker) {
	now := r.Now().Unix()
	for _, m := range ms {
		if now-m.RefreshedUnix > 2*int64(r.StaleAfter.Seconds()) {
			_ = r.Store.Delete(ctx, "locks/"+m.Kind+"-"+m.ID)
		}
	}
}
