package nbd_test

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover-io/drover/core/memstore"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/frontends/nbd"
	"github.com/drover-io/drover/transports/enginerun"
	"github.com/drover-io/drover/transports/replicarun"
)

// engineVolume starts an engine on three in-process replicas (memory
// stores, local links) and returns its Volume.
func engineVolume(t *testing.T, sizeBytes uint64) *enginerun.Volume {
	t.Helper()
	runners := map[string]*replicarun.Runner{}
	cfg := enginerun.Config{
		Volume: "nbd-test",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Dial:   replicarun.LocalDialer(runners),
	}
	for _, id := range []string{"r1", "r2", "r3"} {
		r, err := replicarun.Open(replica.Config{ID: proto.ReplicaID(id), CreateSizeBytes: sizeBytes},
			replicarun.NewLockedExecutor(memstore.New()))
		if err != nil {
			t.Fatal(err)
		}
		runners[id] = r
		cfg.Replicas = append(cfg.Replicas, enginerun.Replica{ID: proto.ReplicaID(id), Addr: id})
	}
	d, err := enginerun.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}
	return enginerun.NewVolume(d)
}

// TestEngineVolumeWithRealClients serves an engine-backed Volume with
// three replicas and runs qemu-io patterns, nbdcopy and fio verify on it.
func TestEngineVolumeWithRealClients(t *testing.T) {
	need(t, "qemu-io", "nbdcopy", "fio")
	const sizeBytes = 64 << 20
	s := serve(t, nbd.Export{Name: "vol", Device: engineVolume(t, sizeBytes)})
	uri := s.unixURI("vol")
	out := run(t, "qemu-io", "-f", "raw",
		"-c", "write -P 0xa5 512 3584", "-c", "write -f -P 0x5a 7680 9216",
		"-c", "write -z 16896 1024", "-c", "discard 1048576 65536", "-c", "flush",
		"-c", "read -P 0xa5 512 3584", "-c", "read -P 0x5a 7680 9216",
		"-c", "read -P 0 16896 1024", "-c", "read -P 0 1048576 65536", uri)
	if strings.Contains(out, "failed") {
		t.Fatalf("qemu-io:\n%s", out)
	}
	dir := t.TempDir()
	in, back := filepath.Join(dir, "in"), filepath.Join(dir, "back")
	writeRandomFile(t, in, sizeBytes, 2)
	run(t, "nbdcopy", in, uri)
	run(t, "nbdcopy", s.tcpURI("vol"), back)
	if a, b := sha256File(t, in), sha256File(t, back); a != b {
		t.Fatalf("sha256 in %s != out %s", a, b)
	}
	out = run(t, "fio", "--name=verify", "--ioengine=nbd", "--uri="+uri, "--rw=randwrite",
		"--bs=4k", "--iodepth=32", "--size=16M", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0")
	if !strings.Contains(out, "err= 0") {
		t.Fatalf("fio:\n%s", out)
	}
}
