package tcp

import (
	"math/rand/v2"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
	"github.com/drover-io/drover/transports/filestore"
	"github.com/drover-io/drover/transports/link"
)

const benchBlocks = 128 << 20 / proto.BlockSize // the replica's volume is 256 MiB; write in its first half

func benchDir(b *testing.B) string {
	dir, err := os.MkdirTemp("/dev/shm", "drover-bench-")
	if err != nil {
		return b.TempDir()
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// BenchmarkTCPWrite4K measures random 4 KiB writes through a TCP link →
// replicarun → filestore on /dev/shm at queue depth 1 and 32, against
// the same writes issued straight to a filestore (pwrite) in the same run,
// and reports the ratio (1.0: the stack costs nothing).
func BenchmarkTCPWrite4K(b *testing.B) {
	for _, qd := range []int{1, 32} {
		b.Run(map[int]string{1: "qd1", 32: "qd32"}[qd], func(b *testing.B) {
			direct := directWrites(b, qd, b.N)
			b.ResetTimer()
			start := time.Now()
			tcpWrites(b, qd, b.N, false)
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(direct.Nanoseconds())/float64(b.N), "direct-ns/op")
			b.ReportMetric(direct.Seconds()/elapsed.Seconds(), "iops-ratio-vs-direct")
		})
	}
}

func directWrites(b *testing.B, qd, n int) time.Duration {
	st, err := filestore.Open(benchDir(b))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	st.Execute(store.IO{Kind: store.CreateLayer, Layer: 1})
	data := make([]byte, proto.BlockSize)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range qd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for i := w; i < n; i += qd {
				c := st.Execute(store.IO{Kind: store.WriteData, Layer: 1, BlockIndex: rng.Uint64N(benchBlocks), Data: data})
				if c.Err != store.OK {
					b.Error(c.Detail)
					return
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(start)
}

// BenchmarkTLSWrite4K is BenchmarkTCPWrite4K's TCP writes over mutual
// TLS, against the same writes over plain TCP in the same run: the ratio
// of IOPS and of CPU time (user+system of this process, which runs both
// ends) per write.
func BenchmarkTLSWrite4K(b *testing.B) {
	for _, qd := range []int{1, 32} {
		b.Run(map[int]string{1: "qd1", 32: "qd32"}[qd], func(b *testing.B) {
			start, cpu0 := time.Now(), processCPU(b)
			tcpWrites(b, qd, b.N, false)
			plain, plainCPU := time.Since(start), processCPU(b)-cpu0
			b.ResetTimer()
			start, cpu0 = time.Now(), processCPU(b)
			tcpWrites(b, qd, b.N, true)
			elapsed, tlsCPU := time.Since(start), processCPU(b)-cpu0
			b.StopTimer()
			b.ReportMetric(float64(plain.Nanoseconds())/float64(b.N), "tcp-ns/op")
			b.ReportMetric(plain.Seconds()/elapsed.Seconds(), "iops-ratio-vs-tcp")
			b.ReportMetric(float64(tlsCPU.Nanoseconds())/float64(b.N), "cpu-ns/op")
			b.ReportMetric(tlsCPU.Seconds()/plainCPU.Seconds(), "cpu-ratio-vs-tcp")
		})
	}
}

// processCPU is the user+system CPU time this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func tcpWrites(b *testing.B, qd, n int, withTLS bool) {
	b.StopTimer()
	var dc DialConfig
	var ts *testServer
	if withTLS {
		pki := testPKI(b, "bench", "replica", "engine")
		scfg, err := pki["replica"].ServerConfig()
		if err != nil {
			b.Fatal(err)
		}
		if dc.TLS, err = pki["engine"].ClientConfig(); err != nil {
			b.Fatal(err)
		}
		ts = startServerTLS(b, benchDir(b), scfg)
	} else {
		ts = startServer(b, benchDir(b))
	}
	slots := make(chan struct{}, qd)
	var failed sync.Once
	l, err := NewDialer(dc)(ts.addr, link.Handler{OnReply: func(rep proto.Reply) {
		if rep.Status != proto.StatusOK {
			failed.Do(func() { b.Errorf("request %d: %v %s", rep.ID, rep.Status, rep.Err) })
		}
		<-slots
	}})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	slots <- struct{}{}
	l.Send(proto.Request{ID: 1, Epoch: 1, Op: proto.OpOpen})
	data := make([]byte, proto.BlockSize)
	rng := rand.New(rand.NewPCG(7, 1))
	// Warm the activity log so the timed writes need no metadata writes.
	for i := uint64(0); i < benchBlocks; i += 1024 {
		slots <- struct{}{}
		l.Send(proto.Request{ID: 2 + i/1024, Epoch: 1, Op: proto.OpWrite, BlockIndex: i, BlockCount: 1, Data: data})
	}
	id := uint64(1 << 20)
	b.StartTimer()
	for range n {
		slots <- struct{}{}
		id++
		l.Send(proto.Request{ID: id, Epoch: 1, Op: proto.OpWrite, BlockIndex: rng.Uint64N(benchBlocks), BlockCount: 1, Data: data})
	}
	for range qd {
		slots <- struct{}{}
	}
}
