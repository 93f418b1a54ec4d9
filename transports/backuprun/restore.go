package backuprun

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/drover-io/drover/core/backup"
)

// RestoreOptions tune a restore.
type RestoreOptions struct {
	Parallel int // chunks in flight (default 4, at most 64)
	Progress func(Progress)
	// From is the backup the target already holds (DR: only the chunks
	// that differ are written, zeros included). Nil: the target is new
	// and reads as zeros, so zero chunks are skipped.
	From *backup.Manifest
	// All writes every chunk, zeros included (the target's content is
	// unknown).
	All bool
}

// Restore writes backup m to target: every chunk is fetched, decompressed
// and checked against its hash before it is written (a corrupt or missing
// chunk fails the restore with ErrCorrupt), then the target is flushed.
func (r *Repo) Restore(ctx context.Context, m *backup.Manifest, target Target, opt RestoreOptions) error {
	if err := target.Grow(ctx, m.SizeBytes); err != nil {
		return err
	}
	var list []int
	switch {
	case opt.All:
		for i := range m.Chunks {
			list = append(list, i)
		}
	default:
		var err error
		if list, err = backup.Apply(opt.From, m); err != nil {
			return err
		}
	}
	err := r.forChunks(ctx, m, list, opt.Parallel, opt.Progress, func(ctx context.Context, i int, data []byte) error {
		off, n := backup.ChunkRange(i, m.SizeBytes, m.ChunkBytes)
		if data == nil {
			return target.WriteZeroes(ctx, off, n)
		}
		return target.WriteAt(ctx, data, off)
	})
	if err != nil {
		return err
	}
	return target.Flush(ctx)
}

// Verify fetches every chunk of backup m and checks its hash. It returns
// an error wrapping ErrCorrupt naming the bad chunks, if any.
func (r *Repo) Verify(ctx context.Context, m *backup.Manifest, parallel int, progress func(Progress)) error {
	seen := map[backup.Hash]bool{}
	var list []int
	for i, c := range m.Chunks {
		if !c.Zero && !seen[c.Hash] {
			seen[c.Hash] = true
			list = append(list, i)
		}
	}
	var mu sync.Mutex
	var bad []error
	err := r.forChunksKeepGoing(ctx, m, list, parallel, progress, func(i int, err error) {
		mu.Lock()
		bad = append(bad, fmt.Errorf("chunk %d: %w", i, err))
		mu.Unlock()
	})
	if err != nil {
		return err
	}
	if len(bad) > 0 {
		return fmt.Errorf("backup %s/%s: %d of %d chunks bad: %w", m.Volume, m.ID, len(bad), len(list), errors.Join(bad...))
	}
	return nil
}

// forChunks fetches the listed chunks (nil data for zero chunks) with
// parallel workers and calls write for each; the first error stops it.
func (r *Repo) forChunks(ctx context.Context, m *backup.Manifest, list []int, parallel int, progress func(Progress),
	write func(ctx context.Context, i int, data []byte) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var firstErr error
	var mu sync.Mutex
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
		cancel()
	}
	r.run(ctx, m, list, parallel, progress, func(ctx context.Context, i int) (uint64, error) {
		c := m.Chunks[i]
		_, n := backup.ChunkRange(i, m.SizeBytes, m.ChunkBytes)
		var data []byte
		if !c.Zero {
			var err error
			if data, err = r.getChunk(ctx, c.Hash, n); err != nil {
				fail(fmt.Errorf("chunk %d: %w", i, err))
				return 0, err
			}
		}
		if err := write(ctx, i, data); err != nil {
			fail(fmt.Errorf("chunk %d: %w", i, err))
			return 0, err
		}
		return n, nil
	})
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

// forChunksKeepGoing fetches and checks every listed chunk, reporting
// each bad one to bad; only a cancelled context stops it early.
func (r *Repo) forChunksKeepGoing(ctx context.Context, m *backup.Manifest, list []int, parallel int, progress func(Progress),
	bad func(i int, err error)) error {
	r.run(ctx, m, list, parallel, progress, func(ctx context.Context, i int) (uint64, error) {
		_, n := backup.ChunkRange(i, m.SizeBytes, m.ChunkBytes)
		if _, err := r.getChunk(ctx, m.Chunks[i].Hash, n); err != nil {
			if errors.Is(err, ErrCorrupt) {
				bad(i, err)
				return n, nil
			}
			bad(i, err)
			return 0, err
		}
		return n, nil
	})
	return ctx.Err()
}

// run calls do for every listed chunk with parallel workers and reports
// progress after each.
func (r *Repo) run(ctx context.Context, m *backup.Manifest, list []int, parallel int, progress func(Progress),
	do func(ctx context.Context, i int) (uint64, error)) {
	if parallel <= 0 {
		parallel = 4
	}
	parallel = min(parallel, 64)
	work := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var p Progress
	p.ChunksTotal = len(list)
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				n, err := do(ctx, i)
				if err != nil {
					continue
				}
				mu.Lock()
				p.ChunksDone++
				p.BytesRead += uint64(m.Chunks[i].StoredBytes)
				p.BytesStored += n
				if progress != nil {
					progress(p)
				}
				mu.Unlock()
			}
		}()
	}
	for _, i := range list {
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
}
