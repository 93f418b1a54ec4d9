package device

import (
	"testing"
	"time"
)

func TestBudgetAdmission(t *testing.T) {
	const mib = 1 << 20
	b := NewBudget(8*mib, 1*mib)
	a, c := b.NewShare(4*mib), b.NewShare(4*mib)
	steps := []struct {
		name  string
		s     *Share
		n     int64
		taken bool
	}{
		{"a alone may exceed its max once", a, 6 * mib, true},
		{"a over its max", a, 4096, false},
		{"c within its max and the total", c, 2 * mib, true},
		{"c over the total", c, 1 * mib, false},
		{"c within its max but over the total", c, 2 * mib, false},
	}
	for _, st := range steps {
		if got := st.s.TryAcquire(st.n); got != st.taken {
			t.Fatalf("%s: TryAcquire(%d) = %v, want %v", st.name, st.n, got, st.taken)
		}
	}
	// A new share takes up to the floor though the total is spent.
	d := b.NewShare(4 * mib)
	if !d.TryAcquire(mib) {
		t.Fatal("a share holding nothing could not take its floor")
	}
	if d.TryAcquire(4096) {
		t.Fatal("a share took more than its floor with the total spent")
	}
	if got := b.HeldBytes(); got != 9*mib {
		t.Fatalf("held %d, want %d", got, 9*mib)
	}
	a.Release(6 * mib)
	if !c.TryAcquire(2 * mib) {
		t.Fatal("c could not take bytes a gave back")
	}
	c.Release(4 * mib)
	d.Release(mib)
	if got := b.HeldBytes(); got != 0 {
		t.Fatalf("held %d after every release, want 0", got)
	}
}

func TestBudgetUnbounded(t *testing.T) {
	b := NewBudget(0, 0)
	for range 100 {
		if !b.NewShare(64 << 20).TryAcquire(64 << 20) {
			t.Fatal("an unbounded budget refused a share its maximum")
		}
	}
}

// TestBudgetWaitsAndCancels checks that Acquire waits for bytes other
// shares hold, runs beforeWait first, takes them once released, and that
// Cancel ends a wait with nothing taken.
func TestBudgetWaitsAndCancels(t *testing.T) {
	b := NewBudget(100, 10)
	holder, waiter := b.NewShare(100), b.NewShare(100)
	if !holder.TryAcquire(100) {
		t.Fatal("first acquire refused")
	}
	before := make(chan struct{})
	got := make(chan bool)
	go func() {
		got <- waiter.Acquire(50, func() { close(before) })
	}()
	<-before
	waitFor(t, func() bool { return b.Waiting() == 1 })
	holder.Release(60)
	if !<-got {
		t.Fatal("Acquire returned false after bytes were released")
	}
	if waiter.HeldBytes() != 50 {
		t.Fatalf("waiter holds %d, want 50", waiter.HeldBytes())
	}
	go func() { got <- waiter.Acquire(100, nil) }()
	waitFor(t, func() bool { return b.Waiting() == 1 })
	waiter.Cancel()
	if <-got {
		t.Fatal("a canceled Acquire took bytes")
	}
	if waiter.HeldBytes() != 50 || waiter.TryAcquire(1) {
		t.Fatal("a canceled share took bytes")
	}
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10 s")
		}
		time.Sleep(time.Millisecond)
	}
}
