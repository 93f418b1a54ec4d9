package enginerun

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/drover-io/drover/transports/device"
)

// asyncBatch starts requests on v and waits for all of them, calling Run
// as a frontend does after a batch of Starts.
type asyncBatch struct {
	wg   sync.WaitGroup
	mu   sync.Mutex
	errs map[*device.Request]error
}

func (b *asyncBatch) start(v *Volume, r *device.Request) {
	b.wg.Add(1)
	r.Done = func(r *device.Request, err error) {
		b.mu.Lock()
		b.errs[r] = err
		b.mu.Unlock()
		b.wg.Done()
	}
	v.Start(r)
}

func (b *asyncBatch) wait(v *Volume) {
	v.Run()
	b.wg.Wait()
}

// TestAsyncMatchesReference drives the volume through Start/Run in
// batches: aligned requests take the engine fast path, unaligned ones
// and those whose blocks are locked fall back to the synchronous path.
// Requests of one batch touch disjoint ranges (as concurrent requests on
// a disk must, to be deterministic); every batch's reads are checked
// against a flat reference.
func TestAsyncMatchesReference(t *testing.T) {
	mr := newMemReplicas(testSize, testIDs...)
	v := newTestVolume(t, mr)
	ref := make([]byte, testSize)
	rng := rand.New(rand.NewPCG(3, 4))
	for round := 0; round < 60; round++ {
		b := &asyncBatch{errs: map[*device.Request]error{}}
		type read struct {
			r    *device.Request
			want []byte
		}
		var reads []read
		// Split the volume into 32 slots of 256 KiB; each request of the
		// batch gets its own slot.
		for _, slot := range rng.Perm(32)[:12] {
			base := uint64(slot) * (testSize / 32)
			gran := uint64(4096)
			if rng.IntN(3) == 0 {
				gran = 512 // unaligned: the synchronous fallback
			}
			off := base + uint64(rng.IntN(16))*gran
			n := uint64(1+rng.IntN(16)) * gran
			r := &device.Request{Offset: off}
			switch rng.IntN(5) {
			case 0, 1:
				r.Op, r.Data = device.OpWrite, make([]byte, n)
				for i := range r.Data {
					r.Data[i] = byte(rng.Uint32())
				}
				r.FUA = rng.IntN(4) == 0
				copy(ref[off:], r.Data)
			case 2:
				r.Op, r.Length = device.OpTrim, n
				clear(ref[off : off+n])
			case 3:
				r.Op, r.Length = device.OpWriteZeroes, n
				clear(ref[off : off+n])
			default:
				r.Op, r.Data = device.OpRead, make([]byte, n)
				reads = append(reads, read{r, append([]byte(nil), ref[off:off+n]...)})
			}
			b.start(v, r)
		}
		if rng.IntN(5) == 0 {
			b.start(v, &device.Request{Op: device.OpFlush})
		}
		b.wait(v)
		for r, err := range b.errs {
			if err != nil {
				t.Fatalf("round %d: %v [%d, +%d): %v", round, r.Op, r.Offset, max(r.Length, uint64(len(r.Data))), err)
			}
		}
		for _, rd := range reads {
			if !bytes.Equal(rd.r.Data, rd.want) {
				t.Fatalf("round %d: read [%d, +%d) differs from the reference", round, rd.r.Offset, len(rd.r.Data))
			}
		}
	}
	if err := v.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	all := make([]byte, testSize)
	if err := v.ReadAt(t.Context(), all, 0); err != nil {
		t.Fatalf("read all: %v", err)
	}
	if !bytes.Equal(all, ref) {
		t.Fatalf("final volume differs from the reference")
	}
	_ = v.Driver().Close()
	assertReplicasEqual(t, mr, ref)
}

// TestAsyncErrors: bad requests complete with the same typed errors as
// the synchronous methods, inside Start.
func TestAsyncErrors(t *testing.T) {
	mr := newMemReplicas(testSize, testIDs...)
	v := newTestVolume(t, mr)
	for _, r := range []*device.Request{
		{Op: device.OpRead, Offset: testSize - 4096, Data: make([]byte, 8192)},
		{Op: device.OpWrite, Offset: 100, Data: make([]byte, 4096)},
		{Op: device.OpTrim, Offset: testSize, Length: 4096},
	} {
		b := &asyncBatch{errs: map[*device.Request]error{}}
		b.start(v, r)
		b.wait(v)
		if err := b.errs[r]; !errors.Is(err, device.ErrInvalid) {
			t.Errorf("%v at %d: got %v, want ErrInvalid", r.Op, r.Offset, err)
		}
	}
}

// TestAsyncWriteWaitsForReadModifyWrite: an aligned write to a block a
// read-modify-write holds does not slip between its read and its write
// (which would lose the aligned write's other bytes).
func TestAsyncWriteWaitsForReadModifyWrite(t *testing.T) {
	mr := newMemReplicas(testSize, testIDs...)
	v := newTestVolume(t, mr)
	rng := rand.New(rand.NewPCG(5, 6))
	for i := 0; i < 300; i++ {
		b := &asyncBatch{errs: map[*device.Request]error{}}
		patch := &device.Request{Op: device.OpWrite, Offset: 512, Data: bytes.Repeat([]byte{1}, 512)}
		whole := &device.Request{Op: device.OpWrite, Offset: 0, Data: bytes.Repeat([]byte{2}, 4096)}
		if i%3 == 0 {
			b.start(v, whole)
			b.start(v, patch)
		} else {
			// The patch's read-modify-write runs on its own goroutine;
			// start the whole write at some point of it.
			b.start(v, patch)
			time.Sleep(time.Duration(rng.IntN(200)) * time.Microsecond)
			b.start(v, whole)
		}
		b.wait(v)
		got := make([]byte, 4096)
		if err := v.ReadAt(t.Context(), got, 0); err != nil {
			t.Fatal(err)
		}
		// Either order is fine; a mix of the old block and either write
		// outside [512, 1024) is not.
		outside := append(append([]byte(nil), got[:512]...), got[1024:]...)
		if !bytes.Equal(outside, bytes.Repeat([]byte{2}, len(outside))) {
			t.Fatalf("iteration %d: bytes outside the patch are not the whole write's", i)
		}
		if p := got[512:1024]; !bytes.Equal(p, bytes.Repeat([]byte{1}, 512)) && !bytes.Equal(p, bytes.Repeat([]byte{2}, 512)) {
			t.Fatalf("iteration %d: the patched sector is neither write's", i)
		}
		// Reset for the next round.
		if err := v.WriteZeroes(t.Context(), 0, 4096, false); err != nil {
			t.Fatal(err)
		}
	}
}
