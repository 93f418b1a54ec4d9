package device

import (
	"context"
	"sync"
	"testing"
)

// TestLimiterBoundsEachRefill runs IOs from several goroutines through a
// Limiter on the real clock and checks its own counters, not timings: no
// refill period admits more than its bucket, IOs did wait, and limits
// changed while IOs wait take effect for them.
func TestLimiterBoundsEachRefill(t *testing.T) {
	l := NewLimiter()
	if err := l.Wait(context.Background(), 4096); err != nil || l.Stats().Admitted != 0 {
		t.Fatalf("no limits: %v %+v", err, l.Stats()) // the fast path counts nothing
	}
	run := func(ios, workers, size int) {
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < ios/workers; i++ {
					if err := l.Wait(context.Background(), size); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
	}
	l.SetLimits(QoSLimits{IOPS: 200})
	run(100, 4, 4096)
	s := l.Stats()
	if s.IOsPerRefill != 20 || s.Admitted != 100 || s.MaxIOsPerRefill > 20 || s.Delayed == 0 || s.Refills < 4 {
		t.Errorf("200 IOPS: %+v; want at most 20 IOs per refill, 100 admitted, some delayed, 4 refills or more", s)
	}

	l.SetLimits(QoSLimits{BytesPerSecond: 1 << 20})
	run(24, 3, 64<<10)
	s = l.Stats()
	if s.BytesPerRefill != (1<<20)/10 || s.MaxBytesPerRefill > s.BytesPerRefill+64<<10 || s.Delayed == 0 || s.AdmittedBytes != 24*64<<10 {
		t.Errorf("1 MiB/s: %+v; want at most one bucket and one IO per refill", s)
	}

	// Lower the limit while IOs wait: they finish under the new one.
	l.SetLimits(QoSLimits{IOPS: 10})
	done := make(chan struct{})
	go func() { run(6, 2, 512); close(done) }()
	l.SetLimits(QoSLimits{IOPS: 50})
	<-done
	s = l.Stats()
	if s.Generation < 4 || s.Limits.IOPS != 50 || s.MaxIOsPerRefill > 5 {
		t.Errorf("after the change: %+v; want generation 4 or later at 50 IOPS, at most 5 per refill", s)
	}
	l.SetLimits(QoSLimits{})
	run(1000, 2, 4096) // unlimited again: nothing waits
	if s := l.Stats(); s.Admitted != 0 || s.Delayed != 0 {
		t.Errorf("unlimited: %+v", s)
	}
}

// TestLimitedDevice: the wrapper limits reads and writes of a real File
// device and keeps it usable.
func TestLimitedDevice(t *testing.T) {
	f, err := OpenFile(t.TempDir()+"/d", FileConfig{SizeBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	l := NewLimiter()
	l.SetLimits(QoSLimits{IOPS: 100})
	d := NewLimited(f, l)
	if _, ok := d.(Async); ok {
		t.Error("a Limited over a synchronous device claims to be Async")
	}
	buf := make([]byte, 4096)
	ctx := context.Background()
	for i := range 25 {
		buf[0] = byte(i)
		if err := d.WriteAt(ctx, buf, uint64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.ReadAt(ctx, buf, 24*4096); err != nil || buf[0] != 24 {
		t.Fatalf("read back %d, %v", buf[0], err)
	}
	if s := l.Stats(); s.Admitted != 26 || s.MaxIOsPerRefill > 10 || s.Delayed == 0 {
		t.Errorf("%+v", s)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	l.SetLimits(QoSLimits{IOPS: 1})
	_ = d.ReadAt(ctx, buf, 0) // takes the one token
	if err := d.ReadAt(cctx, buf, 0); err == nil {
		t.Error("a canceled read waiting for a token succeeded")
	}
}

// TestCeiling: the size clients see is the ceiling; IO within the real
// size works, past it fails, and space the device gains is reachable.
func TestCeiling(t *testing.T) {
	path := t.TempDir() + "/d"
	f, err := OpenFile(path, FileConfig{SizeBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := NewCeiling(f, 1<<40)
	ctx := context.Background()
	buf := make([]byte, 4096)
	if d.SizeBytes() != 1<<40 || !d.TrimZeroes() {
		t.Errorf("size %d, trim zeroes %v", d.SizeBytes(), d.TrimZeroes())
	}
	if err := d.WriteAt(ctx, buf, 60<<10, false); err != nil {
		t.Errorf("write within: %v", err)
	}
	if err := d.WriteAt(ctx, buf, 64<<10, false); err != ErrNoSpace {
		t.Errorf("write past the end: %v, want ErrNoSpace", err)
	}
	if err := d.ReadAt(ctx, buf, 1<<30); err != ErrInvalid {
		t.Errorf("read past the end: %v, want ErrInvalid", err)
	}
	done := make(chan error, 1)
	d.Start(&Request{Op: OpRead, Offset: 64 << 10, Data: buf, Done: func(_ *Request, err error) { done <- err }})
	d.Run()
	if err := <-done; err != ErrInvalid {
		t.Errorf("async read past the end: %v", err)
	}
	d.Start(&Request{Op: OpRead, Offset: 0, Data: buf, Done: func(_ *Request, err error) { done <- err }})
	d.Run()
	if err := <-done; err != nil {
		t.Errorf("async read within: %v", err)
	}
}
