package enginerun

import (
	"context"
	"sync"
)

// rangeLock excludes overlapping block ranges. Waiters wait on a channel
// that is closed and replaced whenever a range is released, so waiting
// respects ctx; an uncontended lock allocates nothing.
type rangeLock struct {
	mu      sync.Mutex
	held    []blockRange
	changed chan struct{} // closed on the next unlock; nil when no one waits
}

type blockRange struct{ lo, hi uint64 }

func (r *rangeLock) overlapsLocked(lo, hi uint64) bool {
	for _, h := range r.held {
		if lo < h.hi && h.lo < hi {
			return true
		}
	}
	return false
}

// lock takes blocks [lo, hi), waiting for overlapping holders, or returns
// ctx.Err() without taking anything.
func (r *rangeLock) lock(ctx context.Context, lo, hi uint64) error {
	r.mu.Lock()
	for r.overlapsLocked(lo, hi) {
		if r.changed == nil {
			r.changed = make(chan struct{})
		}
		ch := r.changed
		r.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		r.mu.Lock()
	}
	r.held = append(r.held, blockRange{lo, hi})
	r.mu.Unlock()
	return nil
}

// tryLock takes blocks [lo, hi) if no holder overlaps them.
func (r *rangeLock) tryLock(lo, hi uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.overlapsLocked(lo, hi) {
		return false
	}
	r.held = append(r.held, blockRange{lo, hi})
	return true
}

// unlock releases blocks [lo, hi), taken by lock or tryLock.
func (r *rangeLock) unlock(lo, hi uint64) {
	r.mu.Lock()
	for i, h := range r.held {
		if h.lo == lo && h.hi == hi {
			last := len(r.held) - 1
			r.held[i] = r.held[last]
			r.held = r.held[:last]
			break
		}
	}
	if r.changed != nil {
		close(r.changed)
		r.changed = nil
	}
	r.mu.Unlock()
}
