package enginerun

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/device"
)

const testSize = 8 << 20

var testIDs = []string{"r1", "r2", "r3"}

// newTestVolume starts a driver on three in-memory replicas.
func newTestVolume(t *testing.T, mr *memReplicas) *Volume {
	t.Helper()
	cfg := Config{Volume: "test", Dial: mr.dial, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		RebuildAfter: 20 * time.Millisecond, Retry: 20 * time.Millisecond, Tick: 2 * time.Millisecond}
	for _, id := range testIDs {
		cfg.Replicas = append(cfg.Replicas, Replica{ID: engineID(id), Addr: id})
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatalf("new driver: %v", err)
	}
	t.Cleanup(func() { _ = d.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.WaitServing(ctx); err != nil {
		t.Fatalf("wait serving: %v", err)
	}
	return NewVolume(d)
}

func engineID(s string) proto.ReplicaID { return proto.ReplicaID(s) }

// TestVolumeMatchesReference runs random reads, writes, trims and
// write-zeroes with 512-byte granularity (so many are read-modify-write)
// and compares every read with a flat reference.
func TestVolumeMatchesReference(t *testing.T) {
	mr := newMemReplicas(testSize, testIDs...)
	v := newTestVolume(t, mr)
	ctx := context.Background()
	ref := make([]byte, testSize)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 300; i++ {
		off := uint64(rng.IntN(testSize/512)) * 512
		n := min(uint64(1+rng.IntN(40))*512, testSize-off)
		if rng.IntN(20) == 0 {
			n = min(5<<20, testSize-off) // crosses the 4 MiB chunk limit
		}
		switch rng.IntN(5) {
		case 0, 1:
			p := make([]byte, n)
			for j := range p {
				p[j] = byte(rng.Uint32())
			}
			if err := v.WriteAt(ctx, p, off, rng.IntN(4) == 0); err != nil {
				t.Fatalf("op %d: write [%d,+%d): %v", i, off, n, err)
			}
			copy(ref[off:], p)
		case 2:
			if err := v.Trim(ctx, off, n, false); err != nil {
				t.Fatalf("op %d: trim [%d,+%d): %v", i, off, n, err)
			}
			clear(ref[off : off+n])
		case 3:
			if err := v.WriteZeroes(ctx, off, n, false); err != nil {
				t.Fatalf("op %d: write-zeroes [%d,+%d): %v", i, off, n, err)
			}
			clear(ref[off : off+n])
		case 4:
			p := make([]byte, n)
			if err := v.ReadAt(ctx, p, off); err != nil {
				t.Fatalf("op %d: read [%d,+%d): %v", i, off, n, err)
			}
			if !bytes.Equal(p, ref[off:off+n]) {
				t.Fatalf("op %d: read [%d,+%d) differs from the reference", i, off, n)
			}
		}
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
	all := make([]byte, testSize)
	if err := v.ReadAt(ctx, all, 0); err != nil {
		t.Fatalf("read all: %v", err)
	}
	if !bytes.Equal(all, ref) {
		t.Fatalf("final volume differs from the reference")
	}
	_ = v.Driver().Close()
	assertReplicasEqual(t, mr, ref)
}

// assertReplicasEqual reads every replica directly (the driver must be
// closed and the volume flushed) and compares it with want.
func assertReplicasEqual(t *testing.T, mr *memReplicas, want []byte) {
	t.Helper()
	for _, id := range testIDs {
		got := make([]byte, 0, len(want))
		for b := uint64(0); b < uint64(len(want))/4096; b += 1024 {
			data, err := mr.reopenRead(id, b, uint32(min(1024, uint64(len(want))/4096-b)))
			if err != nil {
				t.Fatalf("replica %s: %v", id, err)
			}
			got = append(got, data...)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("replica %s differs from the expected content", id)
		}
	}
}

// TestConcurrentUnalignedWritesKeepEverySector has goroutines write
// distinct 512-byte sectors of the same 4 KiB blocks at once: the range
// lock must keep the read-modify-writes from losing any of them.
func TestConcurrentUnalignedWritesKeepEverySector(t *testing.T) {
	mr := newMemReplicas(testSize, testIDs...)
	v := newTestVolume(t, mr)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := 0; round < 20; round++ {
				p := bytes.Repeat([]byte{byte(g*20 + round + 1)}, 512)
				for blk := uint64(0); blk < 4; blk++ {
					if err := v.WriteAt(ctx, p, blk*4096+uint64(g)*512, false); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, 4*4096)
	if err := v.ReadAt(ctx, got, 0); err != nil {
		t.Fatalf("read: %v", err)
	}
	for blk := 0; blk < 4; blk++ {
		for g := 0; g < 8; g++ {
			want := bytes.Repeat([]byte{byte(g*20 + 20)}, 512)
			at := blk*4096 + g*512
			if !bytes.Equal(got[at:at+512], want) {
				t.Errorf("block %d sector %d lost its last write: got byte %d", blk, g, got[at])
			}
		}
	}
}

func TestVolumeErrors(t *testing.T) {
	mr := newMemReplicas(testSize, testIDs...)
	v := newTestVolume(t, mr)
	ctx := context.Background()
	cases := []struct {
		name string
		err  error
	}{
		{"misaligned offset", v.WriteAt(ctx, make([]byte, 512), 100, false)},
		{"misaligned length", v.ReadAt(ctx, make([]byte, 100), 0)},
		{"beyond the end", v.ReadAt(ctx, make([]byte, 4096), testSize)},
		{"trim beyond the end", v.Trim(ctx, testSize-4096, 8192, false)},
	}
	for _, c := range cases {
		if !errors.Is(c.err, device.ErrInvalid) {
			t.Errorf("%s: got %v, want device.ErrInvalid", c.name, c.err)
		}
	}
	if err := v.ReadAt(ctx, nil, 0); err != nil {
		t.Errorf("empty read: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := v.WriteAt(cctx, make([]byte, 4096), 0, false); !errors.Is(err, context.Canceled) {
		t.Errorf("write with a canceled context: got %v, want context.Canceled", err)
	}
	if err := mapErr("write", 0, 1, fmt.Errorf("x: %w", engine.ErrNoSpace)); !errors.Is(err, device.ErrNoSpace) || !errors.Is(err, engine.ErrNoSpace) {
		t.Errorf("mapErr(ErrNoSpace) = %v", err)
	}
	if err := mapErr("write", 0, 1, engine.ErrFaulted); !errors.Is(err, device.ErrIO) {
		t.Errorf("mapErr(ErrFaulted) = %v", err)
	}
}

// TestLostLinkReplicaIsRebuilt cuts one replica's link under writes: the
// volume keeps serving, the replica goes ERR, and once the link heals it
// is rebuilt to RW and ends identical to the others.
//
// The volume is 4 MiB because core/engine's rebuild lists layer blocks in
// extents of up to 65,536 blocks while core/replica refuses more than
// 1,024 per request, so rebuilding a larger volume fails (reported).
func TestLostLinkReplicaIsRebuilt(t *testing.T) {
	const size = 4 << 20
	mr := newMemReplicas(size, testIDs...)
	v := newTestVolume(t, mr)
	ctx := context.Background()
	ref := make([]byte, size)
	rng := rand.New(rand.NewPCG(3, 4))
	write := func(i int) {
		off := uint64(rng.IntN(size/4096-8)) * 4096
		p := make([]byte, 4096*(1+rng.IntN(8)))
		for j := range p {
			p[j] = byte(i + j)
		}
		if err := v.WriteAt(ctx, p, off, false); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		copy(ref[off:], p)
	}
	for i := 0; i < 50; i++ {
		write(i)
	}
	mr.cut("r2")
	for i := 50; i < 100; i++ {
		write(i)
	}
	waitModes(t, v.Driver(), func(m map[string]engine.Mode) bool { return m["r2"] == engine.ModeERR })
	mr.heal("r2")
	for i := 100; i < 150; i++ {
		write(i)
	}
	waitModes(t, v.Driver(), func(m map[string]engine.Mode) bool {
		return m["r1"] == engine.ModeRW && m["r2"] == engine.ModeRW && m["r3"] == engine.ModeRW
	})
	if err := v.Flush(ctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
	_ = v.Driver().Close()
	assertReplicasEqual(t, mr, ref)
}

// waitModes polls the volume info until ok holds for the replica modes,
// failing after a generous deadline (it asserts on an outcome, not on a
// timing).
func waitModes(t *testing.T, d *Driver, ok func(map[string]engine.Mode) bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last map[string]engine.Mode
	for time.Now().Before(deadline) {
		info, err := d.Info(context.Background())
		if err != nil {
			t.Fatalf("info: %v", err)
		}
		last = map[string]engine.Mode{}
		for _, r := range info.Replicas {
			last[string(r.ID)] = r.Mode
		}
		if ok(last) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	info, _ := d.Info(context.Background())
	t.Fatalf("replica modes never reached the wanted state; last %v; info %+v", last, info)
}

// TestVolumeStatsCount checks that IOStats counts what went through
// Volume on both paths (synchronous and Start), bytes and buckets
// included, and nothing that failed its range check.
func TestVolumeStatsCount(t *testing.T) {
	v := newFileVolume(t, 1, 1<<20, false)
	ctx := context.Background()
	p := make([]byte, 8192)
	for i := range 3 {
		if err := v.WriteAt(ctx, p, uint64(i)*8192, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.ReadAt(ctx, p[:4096], 0); err != nil {
		t.Fatal(err)
	}
	if err := v.ReadAt(ctx, p, 1<<20); err == nil {
		t.Fatal("a read beyond the end succeeded")
	}
	done := make(chan error, 1)
	v.Start(&device.Request{Op: device.OpWrite, Offset: 0, Data: p[:4096], Done: func(_ *device.Request, err error) { done <- err }})
	v.Run()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := v.Trim(ctx, 0, 4096, false); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		op         IOOp
		ops, bytes uint64
	}{{IOWrite, 4, 3*8192 + 4096}, {IORead, 1, 4096}, {IOFlush, 1, 0}, {IODiscard, 1, 4096}} {
		st := v.Stats().Op(c.op)
		if st.Ops != c.ops || st.Bytes != c.bytes || st.Errors != 0 || st.Latency <= 0 {
			t.Errorf("%v: %d ops, %d bytes, %d errors, latency %v; want %d ops, %d bytes, no errors", c.op, st.Ops, st.Bytes, st.Errors, st.Latency, c.ops, c.bytes)
		}
	}
}

// TestSnapshotGuard: while the guard returns an error a snapshot is
// refused with engine.ErrBusy and its reason; without it the same
// snapshot is taken.
func TestSnapshotGuard(t *testing.T) {
	v := newTestVolume(t, newMemReplicas(testSize, testIDs...))
	d := v.Driver()
	ctx := context.Background()
	d.SetSnapshotGuard(func() error { return errors.New("rekey under way") })
	_, err := d.Admin(ctx, engine.AdminRequest{Op: engine.AdminSnapshot, Name: "s1"})
	if !errors.Is(err, engine.ErrBusy) || !strings.Contains(err.Error(), "rekey under way") {
		t.Fatalf("snapshot under the guard: %v, want ErrBusy with the guard's reason", err)
	}
	d.SetSnapshotGuard(func() error { return nil })
	if _, err := d.Admin(ctx, engine.AdminRequest{Op: engine.AdminSnapshot, Name: "s1"}); err != nil {
		t.Fatalf("snapshot with the guard passing: %v", err)
	}
	d.SetSnapshotGuard(nil)
	if _, err := d.Admin(ctx, engine.AdminRequest{Op: engine.AdminSnapshot, Name: "s2"}); err != nil {
		t.Fatalf("snapshot without a guard: %v", err)
	}
}
