package backuprun

import (
	"context"
	"testing"
	"time"
)

// TestLimiter: 3 MiB through a 10 MiB/s bucket that starts empty takes at
// least 0.3 s; no limit takes no time.
func TestLimiter(t *testing.T) {
	l := newLimiter(10 << 20)
	start := time.Now()
	for range 3 {
		if err := l.wait(context.Background(), 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d < 290*time.Millisecond || d > 3*time.Second {
		t.Fatalf("3 MiB at 10 MiB/s took %v", d)
	}
	var none *limiter
	if err := none.wait(context.Background(), 1<<30); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := newLimiter(1).wait(ctx, 1<<20); err == nil {
		t.Fatal("a cancelled wait returned nil")
	}
}
