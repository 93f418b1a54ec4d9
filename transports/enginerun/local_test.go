package enginerun

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/drover-io/drover/core/memstore"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/transports/replicarun"
)

// newLocalVolume runs a volume on n in-memory replicas reached through
// replicarun's in-process links, the way drover dev runs.
func newLocalVolume(tb testing.TB, n int, sizeBytes uint64) *Volume {
	tb.Helper()
	runners := map[string]*replicarun.Runner{}
	cfg := Config{Volume: "local", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("r%d", i)
		r, err := replicarun.Open(replica.Config{ID: proto.ReplicaID(id), CreateSizeBytes: sizeBytes},
			replicarun.NewLockedExecutor(memstore.New()))
		if err != nil {
			tb.Fatalf("open replica: %v", err)
		}
		tb.Cleanup(func() { _ = r.Close() })
		runners[id] = r
		cfg.Replicas = append(cfg.Replicas, Replica{ID: proto.ReplicaID(id), Addr: id})
	}
	cfg.Dial = replicarun.LocalDialer(runners)
	d, err := New(cfg)
	if err != nil {
		tb.Fatalf("new driver: %v", err)
	}
	tb.Cleanup(func() { _ = d.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.WaitServing(ctx); err != nil {
		tb.Fatalf("wait serving: %v", err)
	}
	return NewVolume(d)
}

func TestLocalLinksRoundTrip(t *testing.T) {
	v := newLocalVolume(t, 3, 8<<20)
	ctx := context.Background()
	p := make([]byte, 3*4096+512)
	for i := range p {
		p[i] = byte(i * 7)
	}
	if err := v.WriteAt(ctx, p, 4096-512, true); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
	got := make([]byte, len(p))
	if err := v.ReadAt(ctx, got, 4096-512); err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(got) != string(p) {
		t.Fatalf("read back differs from what was written")
	}
}

// BenchmarkVolume measures 4 KiB writes and reads at queue depth 1
// through the engine to 1 and 3 in-memory replicas on in-process links:
// the driver's own cost, with no disk and no socket. Compare with
// BenchmarkMemstoreDirect, which runs the same replica without an engine.
func BenchmarkVolume(b *testing.B) {
	for _, n := range []int{1, 3} {
		for _, op := range []string{"write", "read"} {
			b.Run(fmt.Sprintf("%s-4KiB-qd1-replicas=%d", op, n), func(b *testing.B) {
				v := newLocalVolume(b, n, 64<<20)
				ctx := context.Background()
				p := make([]byte, 4096)
				b.ReportAllocs()
				b.SetBytes(4096)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					off := uint64(i*7919%16384) * 4096
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

// BenchmarkMemstoreDirect is the reference for BenchmarkVolume: 4 KiB
// writes stepped straight into one replicarun.Runner, no engine.
func BenchmarkMemstoreDirect(b *testing.B) {
	r, err := replicarun.Open(replica.Config{ID: "ref", CreateSizeBytes: 64 << 20}, replicarun.NewLockedExecutor(memstore.New()))
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	if rep := r.Do(proto.Request{ID: 1, Epoch: 1, Op: proto.OpOpen}); rep.Status != proto.StatusOK {
		b.Fatal(rep.Err)
	}
	p := make([]byte, 4096)
	b.ReportAllocs()
	b.SetBytes(4096)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rep := r.Do(proto.Request{ID: uint64(i + 2), Epoch: 1, Op: proto.OpWrite, BlockIndex: uint64(i * 7919 % 16384), BlockCount: 1, Data: p, Seq: uint64(i + 1)})
		if rep.Status != proto.StatusOK {
			b.Fatal(rep.Err)
		}
	}
}
