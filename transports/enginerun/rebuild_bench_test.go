package enginerun

import (
	"context"
	"fmt"
	"net"
	"testing"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/replicadir"
	"github.com/drover-io/drover/transports/tcp"
)

// BenchmarkRebuildTCP measures a full rebuild of a 256 MiB volume into a
// fresh filestore replica over loopback TCP, all in this process (tmpfs
// when there is one): the rebuild path's CPU cost without disks.
func BenchmarkRebuildTCP(b *testing.B) {
	const sizeBytes = 256 << 20
	v := newFileVolume(b, 1, sizeBytes, true)
	ctx := context.Background()
	p := make([]byte, 4<<20)
	for i := range p {
		p[i] = byte(i * 131)
	}
	for off := uint64(0); off < sizeBytes; off += uint64(len(p)) {
		if err := v.WriteAt(ctx, p, off, false); err != nil {
			b.Fatal(err)
		}
	}
	if err := v.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	d := v.Driver()
	b.SetBytes(sizeBytes)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		id := proto.ReplicaID(fmt.Sprintf("t%d", i))
		rd, err := replicadir.Open(replicadir.Config{Dir: benchStoreDir(b), ID: id, CreateSizeBytes: sizeBytes})
		if err != nil {
			b.Fatal(err)
		}
		r, st := rd.Runner, rd.Store
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		srv := tcp.NewServer(r, b.Logf)
		go func() { _ = srv.Serve(ln) }()
		b.StartTimer()
		if err := d.AddReplica(ctx, Replica{ID: id, Addr: ln.Addr().String()}); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := d.RemoveReplica(ctx, id); err != nil {
			b.Fatal(err)
		}
		srv.Close()
		_ = r.Close()
		_ = st.Close()
		b.StartTimer()
	}
}
