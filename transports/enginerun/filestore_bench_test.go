package enginerun

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/device"
	"github.com/drover-io/drover/transports/replicadir"
	"github.com/drover-io/drover/transports/replicarun"
	"github.com/drover-io/drover/transports/tcp"
)

// benchStoreDir is a directory on tmpfs when there is one (the software's
// ceiling, as DESIGN.md asks benchmarks to report), else a temp dir.
func benchStoreDir(b testing.TB) string {
	dir, err := os.MkdirTemp("/dev/shm", "drover-enginerun-bench-")
	if err != nil {
		return b.TempDir()
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// openFileReplicas opens n replicas r1..rn on filestore directories.
func openFileReplicas(b testing.TB, n int, sizeBytes uint64) map[string]*replicarun.Runner {
	runners := map[string]*replicarun.Runner{}
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("r%d", i)
		rd, err := replicadir.Open(replicadir.Config{Dir: benchStoreDir(b), ID: proto.ReplicaID(id), CreateSizeBytes: sizeBytes})
		if err != nil {
			b.Fatal(err)
		}
		r := rd.Runner
		b.Cleanup(func() { _ = rd.Close() })
		runners[id] = r
	}
	return runners
}

// newFileVolume runs a volume on n filestore replicas, reached through
// in-process links (as drover dev does) or, with overTCP, through
// loopback TCP (as drover engine does).
func newFileVolume(b testing.TB, n int, sizeBytes uint64, overTCP bool, tweak ...func(*Config)) *Volume {
	runners := openFileReplicas(b, n, sizeBytes)
	cfg := Config{Volume: "bench", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, f := range tweak {
		f(&cfg)
	}
	addrs := map[string]string{}
	for id, r := range runners {
		addr := id
		if overTCP {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			srv := tcp.NewServer(r, b.Logf)
			go func() { _ = srv.Serve(ln) }()
			b.Cleanup(func() { srv.Close() })
			addr = ln.Addr().String()
		}
		addrs[addr] = id
		cfg.Replicas = append(cfg.Replicas, Replica{ID: proto.ReplicaID(id), Addr: addr})
	}
	cfg.Dial = replicarun.LocalDialer(runners)
	if overTCP {
		cfg.Dial = tcp.Dial
	}
	d, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = d.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.WaitServing(ctx); err != nil {
		b.Fatal(err)
	}
	return NewVolume(d)
}

// BenchmarkFileVolume measures 4 KiB writes and reads at queue depth 1
// through Volume → engine → 1 or 3 replicas on filestore (tmpfs), over
// in-process links and over loopback TCP, reporting allocs/op: the data
// path should allocate nothing per IO in steady state. The blocks are
// written once before timing, so reads find data and writes overwrite.
func BenchmarkFileVolume(b *testing.B) {
	const blocks = 4096
	for _, via := range []string{"local", "tcp"} {
		for _, n := range []int{1, 3} {
			for _, op := range []string{"write", "read"} {
				b.Run(fmt.Sprintf("%s-4KiB-qd1-%s-replicas=%d", op, via, n), func(b *testing.B) {
					v := newFileVolume(b, n, 64<<20, via == "tcp")
					ctx := context.Background()
					p := make([]byte, 4096)
					for i := 0; i < blocks; i += 256 {
						if err := v.WriteAt(ctx, make([]byte, 256*4096), uint64(i)*4096, false); err != nil {
							b.Fatal(err)
						}
					}
					b.ReportAllocs()
					b.SetBytes(4096)
					b.ResetTimer()
					for i := 0; i < b.N; i++ {
						off := uint64(i*7919%blocks) * 4096
						var err error
						if op == "write" {
							err = v.WriteAt(ctx, p, off, false)
						} else {
							err = v.ReadAt(ctx, p, off)
						}
						if err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		}
	}
}

// BenchmarkFileVolumeAsync measures 4 KiB random writes and reads at
// queue depth 32 through Volume's async path (Start a batch, Run, wait),
// as the NBD and iSCSI frontends drive it, to 1 or 3 filestore replicas
// over in-process links; with 3, with and without the IO pool that runs
// other replicas' IO beside the driving goroutine.
func BenchmarkFileVolumeAsync(b *testing.B) {
	const blocks, depth = 4096, 32
	for _, n := range []int{1, 3} {
		for _, op := range []string{"write", "read"} {
			for _, pool := range []int{-1, 0} {
				if n == 1 && pool != 0 {
					continue
				}
				name := fmt.Sprintf("%s-4KiB-qd%d-replicas=%d", op, depth, n)
				if n > 1 {
					name += map[int]string{-1: "-pool", 0: "-nopool"}[pool]
				}
				b.Run(name, func(b *testing.B) { benchAsync(b, n, op, blocks, depth, pool) })
			}
		}
	}
}

func benchAsync(b *testing.B, n int, op string, blocks, depth, ioGoroutines int) {
	v := newFileVolume(b, n, 64<<20, false, func(c *Config) { c.IOGoroutines = ioGoroutines })
	ctx := context.Background()
	for i := 0; i < blocks; i += 256 {
		if err := v.WriteAt(ctx, make([]byte, 256*4096), uint64(i)*4096, false); err != nil {
			b.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	var failed atomic.Value
	done := func(r *device.Request, err error) {
		if err != nil {
			failed.Store(err)
		}
		wg.Done()
	}
	reqs := make([]device.Request, depth)
	for i := range reqs {
		reqs[i].Data = make([]byte, 4096)
	}
	kind := device.OpRead
	if op == "write" {
		kind = device.OpWrite
	}
	b.ReportAllocs()
	b.SetBytes(4096)
	b.ResetTimer()
	for i := 0; i < b.N; i += depth {
		k := min(depth, b.N-i)
		wg.Add(k)
		for j := 0; j < k; j++ {
			r := &reqs[j]
			r.Op, r.Offset, r.Done = kind, uint64((i+j)*7919%blocks)*4096, done
			v.Start(r)
		}
		v.Run()
		wg.Wait()
	}
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
}
