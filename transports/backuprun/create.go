package backuprun

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/drover-io/drover/core/backup"
)

// snapshotPrefix names the snapshots backups take. The newest stays after
// a backup (the next incremental diffs against it); older ones go.
const snapshotPrefix = "backup-"

// Progress is reported while a backup or restore runs (from one
// goroutine at a time).
type Progress struct {
	ChunksDone, ChunksTotal int
	BytesRead               uint64 // read from the volume or the store
	BytesStored             uint64 // written to the store or the volume
}

// CreateOptions tune a backup.
type CreateOptions struct {
	ChunkBytes  uint32            // default backup.DefaultChunkBytes (only for a full backup)
	Parallel    int               // chunks in flight (default 4, at most 64)
	RateBytes   int64             // upload limit in bytes per second (0: none)
	Labels      map[string]string // kept in the manifest
	Full        bool              // ignore the previous backup
	ID          string            // default: a time-ordered id
	Progress    func(Progress)    // called after each chunk
	AfterChunks func(n int)       // tests: called after n chunks are stored
}

// Stats says what a backup did.
type Stats struct {
	Chunks        int    // chunks in the manifest
	ChunksRead    int    // read from the volume
	ChunksZero    int    // of those, all zeros (not stored)
	ChunksStored  int    // uploaded
	ChunksDeduped int    // read, but already stored (this or another volume)
	BytesRead     uint64 // from the volume
	BytesStored   uint64 // compressed bytes uploaded
	Parent        string // the backup it was incremental to
}

// Create backs up a volume: snapshot it, read the chunks that changed
// since the last backup (all of them for the first), store those not
// stored yet, and write the manifest last. A rerun after a failure or a
// kill reads again but uploads only the chunks still missing. The
// snapshot stays as the base of the next backup; DropOldSnapshots then
// removes the older ones.
func (r *Repo) Create(ctx context.Context, src Source, opt CreateOptions) (*backup.Manifest, Stats, error) {
	var st Stats
	volume, _, chain, err := src.Info(ctx)
	if err != nil {
		return nil, st, err
	}
	if opt.ID == "" {
		opt.ID = r.newID()
	}
	if err := checkName("backup id", opt.ID); err != nil {
		return nil, st, err
	}
	if opt.Parallel <= 0 {
		opt.Parallel = 4
	}
	opt.Parallel = min(opt.Parallel, 64)
	l, err := r.startBackup(ctx, volume, opt.ID)
	if err != nil {
		return nil, st, err
	}
	defer l.release(context.WithoutCancel(ctx))
	snap := snapshotPrefix + opt.ID
	if err := src.Snapshot(ctx, snap); err != nil {
		return nil, st, err
	}
	plan, parent, err := r.plan(ctx, src, volume, snap, chain, opt)
	if err != nil {
		return nil, st, err
	}
	if parent != nil {
		st.Parent = parent.ID
	}
	m := &backup.Manifest{Volume: volume, ID: opt.ID, Snapshot: snap, CreatedUnix: r.Now().Unix(), SizeBytes: plan.SizeBytes,
		BlockBytes: backup.BlockSize, ChunkBytes: plan.ChunkBytes, Labels: opt.Labels, Chunks: plan.Chunks}
	if parent != nil {
		m.Parent = parent.ID
	}
	if err := r.storeChunks(ctx, src, snap, m, plan.Read, opt, &st); err != nil {
		return nil, st, err
	}
	if err := r.commit(ctx, l, m); err != nil {
		return nil, st, err
	}
	st.Chunks = len(m.Chunks)
	return m, st, nil
}

// startBackup writes the backup marker and checks that no sweep and no
// other backup of the volume runs. A running sweep is waited out (it
// removes its own marker when done): the backup takes its marker back,
// so the sweep is not blocked, and tries again, backing off up to 5 s,
// for at most StaleAfter.
func (r *Repo) startBackup(ctx context.Context, volume, id string) (*lease, error) {
	deadline := r.Now().Add(r.StaleAfter)
	backoff := 100 * time.Millisecond
	for {
		l, err := r.tryStartBackup(ctx, volume, id)
		if err == nil || !errors.Is(err, backup.ErrSweepRunning) || r.Now().After(deadline) {
			return l, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (r *Repo) tryStartBackup(ctx context.Context, volume, id string) (*lease, error) {
	l, err := r.acquire(ctx, marker{Kind: backup.MarkerBackup, ID: id, Volume: volume})
	if err != nil {
		return nil, err
	}
	ms, err := r.markers(ctx)
	if err == nil {
		now, stale := r.Now().Unix(), int64(r.StaleAfter.Seconds())
		err = backup.BackupMayProceed(coreMarkers(ms), now, stale)
		for _, m := range ms {
			if err == nil && m.Kind == backup.MarkerBackup && m.Volume == volume && m.ID != id && now-m.RefreshedUnix < stale {
				err = fmt.Errorf("%w: backup %s of volume %s is running", ErrBusy, m.ID, volume)
			}
		}
		if errors.Is(err, backup.ErrSweepRunning) {
			err = fmt.Errorf("%w: %w; retry when it ends", ErrBusy, err)
		}
	}
	if err != nil {
		l.release(context.WithoutCancel(ctx))
		return nil, err
	}
	return l, nil
}

// plan finds the parent backup (the newest of the volume whose snapshot
// the volume still has) and plans an incremental backup from it, or a
// full one.
func (r *Repo) plan(ctx context.Context, src Source, volume, snap string, chain []string, opt CreateOptions) (*backup.Plan, *backup.Manifest, error) {
	_, size, _, err := src.Info(ctx)
	if err != nil {
		return nil, nil, err
	}
	chunkBytes := opt.ChunkBytes
	if chunkBytes == 0 {
		chunkBytes = backup.DefaultChunkBytes
	}
	parent, err := r.Latest(ctx, volume)
	if err != nil && !errors.Is(err, backup.ErrBadManifest) {
		return nil, nil, err
	}
	if opt.Full || parent == nil || !contains(chain, parent.Snapshot) || parent.SizeBytes > size ||
		(opt.ChunkBytes != 0 && opt.ChunkBytes != parent.ChunkBytes) {
		p, err := backup.PlanFull(size, chunkBytes)
		return p, nil, err
	}
	changed, err := src.ChangedExtents(ctx, parent.Snapshot, snap)
	if err != nil {
		return nil, nil, err
	}
	p, err := backup.PlanIncremental(parent, size, changed)
	return p, parent, err
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// storeChunks reads the planned chunks with opt.Parallel workers and
// stores those not stored yet; it fills m.Chunks.
func (r *Repo) storeChunks(ctx context.Context, src Source, snap string, m *backup.Manifest, read []int, opt CreateOptions, st *Stats) error {
	have, err := r.chunks(ctx)
	if err != nil {
		return fmt.Errorf("list stored chunks: %w", err)
	}
	var (
		mu       sync.Mutex
		firstErr error
		done     int
		lim      = newLimiter(opt.RateBytes)
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan int)
	var wg sync.WaitGroup
	for range opt.Parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, m.ChunkBytes)
			zbuf := make([]byte, 0, m.ChunkBytes+m.ChunkBytes/64+1024)
			for i := range work {
				off, n := backup.ChunkRange(i, m.SizeBytes, m.ChunkBytes)
				c, stored, err := r.storeChunk(ctx, src, snap, off, buf[:n], zbuf, have, &mu, lim)
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = fmt.Errorf("chunk %d (bytes %d..%d): %w", i, off, off+n, err)
					}
					cancel()
					mu.Unlock()
					continue
				}
				m.Chunks[i] = c
				st.ChunksRead++
				st.BytesRead += n
				switch {
				case c.Zero:
					st.ChunksZero++
				case stored:
					st.ChunksStored++
					st.BytesStored += uint64(c.StoredBytes)
				default:
					st.ChunksDeduped++
				}
				done++
				if opt.Progress != nil {
					opt.Progress(Progress{ChunksDone: done, ChunksTotal: len(read), BytesRead: st.BytesRead, BytesStored: st.BytesStored})
				}
				if opt.AfterChunks != nil {
					opt.AfterChunks(done)
				}
				mu.Unlock()
			}
		}()
	}
	for _, i := range read {
		select {
		case work <- i:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

// storeChunk reads one chunk, and stores it unless it is zero or stored.
func (r *Repo) storeChunk(ctx context.Context, src Source, snap string, off uint64, buf, zbuf []byte, have map[backup.Hash]bool,
	mu *sync.Mutex, lim *limiter) (backup.Chunk, bool, error) {
	if err := src.ReadSnapshot(ctx, snap, off, buf); err != nil {
		return backup.Chunk{}, false, err
	}
	if backup.IsZero(buf) {
		return backup.Chunk{Zero: true}, false, nil
	}
	h := backup.HashOf(buf)
	mu.Lock()
	dup := have[h]
	mu.Unlock()
	if dup {
		return backup.Chunk{Hash: h}, false, nil // StoredBytes unknown: not compressed again
	}
	enc, _ := r.codec()
	z := enc.EncodeAll(buf, zbuf[:0])
	c := backup.Chunk{Hash: h, StoredBytes: uint32(len(z))}
	if err := lim.wait(ctx, len(z)); err != nil {
		return c, false, err
	}
	if err := r.Store.Put(ctx, chunkKey(h), z); err != nil {
		return c, false, err
	}
	mu.Lock()
	have[h] = true
	mu.Unlock()
	return c, true, nil
}

// commit writes the manifest, first making sure (when the marker may have
// gone stale) that no chunk it names was swept meanwhile.
func (r *Repo) commit(ctx context.Context, l *lease, m *backup.Manifest) error {
	stale := int64(r.StaleAfter.Seconds())
	b, err := m.Encode()
	if err != nil {
		return err
	}
	// Gaps count from the last check, so a stall anywhere (even in this
	// loop) means checking again before the manifest goes out.
	for backup.MustRecheck(int64(l.gap().Seconds()), stale) {
		if err := r.putMarker(ctx, l.m); err != nil {
			return fmt.Errorf("refresh the backup marker: %w", err)
		}
		l.resetGap()
		ms, err := r.markers(ctx)
		if err != nil {
			return err
		}
		if err := backup.BackupMayProceed(coreMarkers(ms), r.Now().Unix(), stale); err != nil {
			return fmt.Errorf("%w: %w (this backup stalled; rerun it)", ErrBusy, err)
		}
		have, err := r.chunks(ctx)
		if err != nil {
			return err
		}
		for h := range m.Refs() {
			if !have[h] {
				return fmt.Errorf("%w: chunk %s was swept while this backup stalled; rerun it", ErrBusy, h)
			}
		}
	}
	if err := r.Store.Put(ctx, manifestKey(m.Volume, m.ID), b); err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	return nil
}

// DropOldSnapshots deletes the backup snapshots other than m's (earlier
// backups', and those of backups that failed), which the volume no longer
// needs once m is written. Run it after Create: a delete merges a layer
// into its child, which copies what the child lacks (for the first
// backup's snapshot, most of the volume).
func DropOldSnapshots(ctx context.Context, src Source, m *backup.Manifest) ([]string, error) {
	_, _, chain, err := src.Info(ctx)
	if err != nil {
		return nil, err
	}
	var dropped []string
	for _, s := range chain {
		if strings.HasPrefix(s, snapshotPrefix) && s != m.Snapshot {
			if err := src.DeleteSnapshot(ctx, s); err != nil {
				return dropped, err
			}
			dropped = append(dropped, s)
		}
	}
	return dropped, nil
}
