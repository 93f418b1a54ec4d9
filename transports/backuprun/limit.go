package backuprun

import (
	"context"
	"sync"
	"time"
)

// limiter is a token bucket on bytes per second (nil: no limit).
type limiter struct {
	mu          sync.Mutex
	bytesPerSec float64
	tokens      float64
	last        time.Time
}

func newLimiter(bytesPerSec int64) *limiter {
	if bytesPerSec <= 0 {
		return nil
	}
	return &limiter{bytesPerSec: float64(bytesPerSec), last: time.Now()}
}

// wait blocks until n bytes may go. The bucket holds at most one second
// of tokens, so a burst never exceeds the rate by more than that.
func (l *limiter) wait(ctx context.Context, n int) error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	now := time.Now()
	l.tokens = min(l.tokens+now.Sub(l.last).Seconds()*l.bytesPerSec, l.bytesPerSec)
	l.last = now
	l.tokens -= float64(n)
	debt := -l.tokens
	l.mu.Unlock()
	if debt <= 0 {
		return nil
	}
	t := time.NewTimer(time.Duration(debt / l.bytesPerSec * float64(time.Second)))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
