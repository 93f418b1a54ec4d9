package enginerun

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/drover-io/drover/transports/device"
)

// TestDataPathAllocatesNothing fails if a steady-state 4 KiB read or
// write through Volume allocates (issue 5: no per-IO heap allocation on
// the data path). It covers one and three filestore replicas over
// in-process links, one over loopback TCP, and the async path at queue
// depth 32 as the NBD and iSCSI frontends drive it; reads of written and
// of never-written blocks.
//
// Tolerance: testing.AllocsPerRun floors the average, so fewer than one
// allocation per IO passes. That absorbs what is not per IO: the loop's
// ticks (every 10 ms; a tick lists the calls in flight), the lease
// heartbeat, and sync.Pools refilled after a GC. An allocation made by
// every IO counts at least 1. Each case first runs the same IOs (warming
// the pools, free lists and maps to their steady-state size).
func TestDataPathAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector drops sync.Pool items at random")
	}
	if testing.Short() {
		t.Skip("short")
	}
	const blocks, runs = 256, 2000
	for _, tc := range []struct {
		replicas int
		tcp      bool
	}{{1, false}, {3, false}, {1, true}} {
		via := map[bool]string{false: "local", true: "tcp"}[tc.tcp]
		t.Run(fmt.Sprintf("%s-replicas=%d", via, tc.replicas), func(t *testing.T) {
			v := newFileVolume(t, tc.replicas, 16<<20, tc.tcp)
			ctx := context.Background()
			if err := v.WriteAt(ctx, make([]byte, blocks*4096), 0, false); err != nil {
				t.Fatal(err)
			}
			p := make([]byte, 4096)
			i := 0
			write := func() {
				i++
				if err := v.WriteAt(ctx, p, uint64(i*7919%blocks)*4096, false); err != nil {
					t.Fatal(err)
				}
			}
			read := func() {
				i++
				if err := v.ReadAt(ctx, p, uint64(i*7919%blocks)*4096); err != nil {
					t.Fatal(err)
				}
			}
			readHole := func() { // blocks never written: the replica makes the zeros
				i++
				if err := v.ReadAt(ctx, p, uint64(blocks+i*7919%blocks)*4096); err != nil {
					t.Fatal(err)
				}
			}
			for range runs {
				write()
				read()
				readHole()
			}
			if n := testing.AllocsPerRun(runs, write); n > 0 {
				t.Errorf("4 KiB write: %v allocations per IO", n)
			}
			if n := testing.AllocsPerRun(runs, read); n > 0 {
				t.Errorf("4 KiB read: %v allocations per IO", n)
			}
			if n := testing.AllocsPerRun(runs, readHole); n > 0 {
				t.Errorf("4 KiB read of unwritten blocks: %v allocations per IO", n)
			}
			if tc.replicas == 1 && !tc.tcp {
				// A FUA write syncs twice (data, then index), each on a
				// goroutine of the Runner's: a go statement with an
				// argument allocates its closure. Nothing else may.
				fua := func() {
					i++
					if err := v.WriteAt(ctx, p, uint64(i*7919%blocks)*4096, true); err != nil {
						t.Fatal(err)
					}
				}
				for range 100 {
					fua()
				}
				if n := testing.AllocsPerRun(200, fua); n > 2 {
					t.Errorf("4 KiB FUA write: %v allocations per IO, want at most 2", n)
				}
			}
		})
	}
	t.Run("async-qd32-local-replicas=1", func(t *testing.T) {
		v := newFileVolume(t, 1, 16<<20, false)
		if err := v.WriteAt(context.Background(), make([]byte, blocks*4096), 0, false); err != nil {
			t.Fatal(err)
		}
		const depth = 32
		var wg sync.WaitGroup
		var failed error
		done := func(r *device.Request, err error) {
			if err != nil {
				failed = err
			}
			wg.Done()
		}
		reqs := make([]device.Request, depth)
		for j := range reqs {
			reqs[j].Data = make([]byte, 4096)
		}
		i := 0
		batch := func(op device.Op) func() {
			return func() {
				wg.Add(depth)
				for j := range reqs {
					i++
					r := &reqs[j]
					r.Op, r.Offset, r.Done = op, uint64(i*7919%blocks)*4096, done
					v.Start(r)
				}
				v.Run()
				wg.Wait()
			}
		}
		for _, op := range []device.Op{device.OpWrite, device.OpRead} {
			run := batch(op)
			for range runs / depth * 4 {
				run()
			}
			// Per batch of 32 IOs: fewer than one allocation per 32 IOs
			// passes, which is still far from one per IO.
			if n := testing.AllocsPerRun(runs/depth*4, run); n > 0 {
				t.Errorf("4 KiB %v at depth %d: %v allocations per batch of %d", op, depth, n, depth)
			}
			if failed != nil {
				t.Fatal(failed)
			}
		}
	})
}
