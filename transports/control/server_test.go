package control

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/drover-io/drover/core/memstore"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/transports/control/controlpb"
	"github.com/drover-io/drover/transports/enginerun"
	"github.com/drover-io/drover/transports/replicarun"
)

// newTestServer runs a volume on three in-memory replicas and serves its
// control API on a loopback port.
func newTestServer(t *testing.T) controlpb.ControlClient {
	t.Helper()
	d := newTestDriver(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serve(t, d, lis, ServerConfig{})
	c, conn, err := Dial(lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return c
}

// newTestDriver runs a volume on three in-memory replicas.
func newTestDriver(t *testing.T) *enginerun.Driver {
	t.Helper()
	runners := map[string]*replicarun.Runner{}
	cfg := enginerun.Config{Volume: "ctl", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("r%d", i)
		r, err := replicarun.Open(replica.Config{ID: proto.ReplicaID(id), CreateSizeBytes: 4 << 20},
			replicarun.NewLockedExecutor(memstore.New()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Close() })
		runners[id] = r
		cfg.Replicas = append(cfg.Replicas, enginerun.Replica{ID: proto.ReplicaID(id), Addr: id})
	}
	cfg.Dial = replicarun.LocalDialer(runners)
	d, err := enginerun.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}
	return d
}

// serve serves d's control API on lis until the test ends.
func serve(t *testing.T, d *enginerun.Driver, lis net.Listener, cfg ServerConfig) {
	t.Helper()
	gs := grpc.NewServer(ServerOptions(cfg)...)
	NewServer(enginerun.NewVolume(d)).Register(gs)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
}

func TestControlAPI(t *testing.T) {
	c := newTestServer(t)
	ctx := context.Background()
	info, err := c.VolumeInfo(ctx, &controlpb.VolumeInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.GetPhase() != "serving" || info.GetSizeBytes() != 4<<20 || len(info.GetReplicas()) != 3 {
		t.Fatalf("volume info = %v", info)
	}
	for _, r := range info.GetReplicas() {
		if r.GetMode() != "RW" || !r.GetConnected() {
			t.Errorf("replica %s: mode %s connected %v", r.GetId(), r.GetMode(), r.GetConnected())
		}
	}
	data := make([]byte, 8192)
	data[0], data[8191] = 1, 2
	if _, err := c.Write(ctx, &controlpb.WriteRequest{Offset: 4096, Data: data}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SnapshotCreate(ctx, &controlpb.SnapshotRequest{Name: "s1"}); err != nil {
		t.Fatal(err)
	}
	_, err = c.SnapshotCreate(ctx, &controlpb.SnapshotRequest{Name: "s1"})
	if status.Code(err) != codes.AlreadyExists {
		t.Errorf("second snapshot s1: %v, want AlreadyExists", err)
	}
	ext, err := c.ChangedExtents(ctx, &controlpb.ChangedExtentsRequest{To: "s1"})
	if err != nil || len(ext.GetExtents()) == 0 {
		t.Errorf("changed extents up to s1: %v, %v", ext, err)
	}
	if _, err := c.Write(ctx, &controlpb.WriteRequest{Offset: 4096, Data: make([]byte, 4096)}); err != nil {
		t.Fatal(err)
	}
	_, err = c.SnapshotRevert(ctx, &controlpb.SnapshotRequest{Name: "s1"})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("revert while attached: %v, want FailedPrecondition", err)
	}
	for _, call := range []func() error{
		func() error { _, err := c.Detach(ctx, &controlpb.Empty{}); return err },
		func() error { _, err := c.SnapshotRevert(ctx, &controlpb.SnapshotRequest{Name: "s1"}); return err },
		func() error { _, err := c.Attach(ctx, &controlpb.Empty{}); return err },
	} {
		if err := call(); err != nil {
			t.Fatalf("detach/revert/attach: %v", err)
		}
	}
	rd, err := c.Read(ctx, &controlpb.ReadRequest{Offset: 4096, Length: 8192})
	if err != nil || rd.GetData()[0] != 1 || rd.GetData()[8191] != 2 {
		t.Fatalf("read after revert: %v (want the snapshot's content)", err)
	}
	if _, err := c.Expand(ctx, &controlpb.ExpandRequest{SizeBytes: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Expand(ctx, &controlpb.ExpandRequest{SizeBytes: 4 << 20}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("shrink: %v, want InvalidArgument", err)
	}
	if _, err := c.Read(ctx, &controlpb.ReadRequest{Offset: 100, Length: 512}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("misaligned read: %v, want InvalidArgument", err)
	}
	if _, err := c.SnapshotDelete(ctx, &controlpb.SnapshotRequest{Name: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("delete missing snapshot: %v, want NotFound", err)
	}
	if _, err := c.ReplicaRemove(ctx, &controlpb.ReplicaRemoveRequest{Id: "r3"}); err != nil {
		t.Fatalf("remove r3: %v", err)
	}
	ls, err := c.ReplicaList(ctx, &controlpb.Empty{})
	if err != nil || len(ls.GetReplicas()) != 2 {
		t.Fatalf("replica list after remove: %v, %v", ls, err)
	}
	if _, err := c.Flush(ctx, &controlpb.Empty{}); err != nil {
		t.Fatal(err)
	}
}
