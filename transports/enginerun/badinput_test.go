package enginerun

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/memstore"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/transports/link"
	"github.com/drover-io/drover/transports/replicarun"
)

// TestNewRefusesOneAddressTwice: two ids at one address (a replica that
// would be two members) is refused before anything is dialed.
func TestNewRefusesOneAddressTwice(t *testing.T) {
	dialed := 0
	cfg := Config{Volume: "v", Replicas: []Replica{{ID: "a", Addr: "x"}, {ID: "b", Addr: "y"}},
		Spares: []Replica{{ID: "s", Addr: "x"}},
		Dial:   replicarun.LocalDialer(nil), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	inner := cfg.Dial
	cfg.Dial = func(addr string, h link.Handler) (link.Link, error) { dialed++; return inner(addr, h) }
	_, err := New(cfg)
	if !errors.Is(err, ErrSameAddress) || !strings.Contains(err.Error(), "a and s") {
		t.Fatalf("New = %v, want ErrSameAddress naming a and s", err)
	}
	if dialed != 0 {
		t.Fatalf("%d dials before the refusal", dialed)
	}
}

// localDriver runs a driver on in-memory replicas. The volume is first
// opened with every replica healthy (a new volume needs them all); then
// the replicas in failed are swapped for replicarun.NewFailed ones
// answering with the given reason, and a second driver opens it.
func localDriver(t *testing.T, ids []string, failed map[string]string) *Driver {
	t.Helper()
	runners := map[string]*replicarun.Runner{}
	cfg := Config{Volume: "v", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), RebuildAfter: -1}
	for _, id := range ids {
		r, err := replicarun.Open(replica.Config{ID: proto.ReplicaID(id), CreateSizeBytes: 1 << 20},
			replicarun.NewLockedExecutor(memstore.New()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Close() })
		runners[id] = r
		cfg.Replicas = append(cfg.Replicas, Replica{ID: proto.ReplicaID(id), Addr: id})
	}
	cfg.Dial = replicarun.LocalDialer(runners)
	serve := func() *Driver {
		d, err := New(cfg)
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
	if len(failed) == 0 {
		return serve()
	}
	_ = serve().Close()
	for id, why := range failed {
		runners[id] = replicarun.NewFailed(proto.ReplicaID(id), why)
	}
	return serve()
}

// TestFailedReplicaReason: a replica that answers with why it cannot
// serve is ERR, and Info carries its answer for the operator.
func TestFailedReplicaReason(t *testing.T) {
	d := localDriver(t, []string{"a", "b", "c"}, map[string]string{"a": "bad metadata in /x/meta"})
	info, err := d.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range info.Replicas {
		if r.ID == "a" && r.Mode != engine.ModeERR {
			t.Fatalf("a is %v, want ERR", r.Mode)
		}
	}
	if got := info.LinkErr["a"]; !strings.Contains(got, "bad metadata in /x/meta") {
		t.Fatalf("LinkErr[a] = %q, want the replica's answer", got)
	}
	if got := info.LinkErr["b"]; got != "" {
		t.Fatalf("LinkErr[b] = %q for a healthy replica", got)
	}
}

// TestAddReplicaRefusals: adding an address nothing answers on fails at
// once and registers nothing; adding a member's address under another ID
// is refused.
func TestAddReplicaRefusals(t *testing.T) {
	d := localDriver(t, []string{"a", "b", "c"}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := d.AddReplica(ctx, Replica{ID: "n", Addr: "nowhere"})
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "nothing was added") {
		t.Fatalf("add unreachable = %v, want ErrUnreachable", err)
	}
	if ctx.Err() != nil {
		t.Fatal("the add waited for the test's deadline")
	}
	err = d.AddReplica(ctx, Replica{ID: "n", Addr: "b"})
	if !errors.Is(err, ErrSameAddress) {
		t.Fatalf("add b's address as n = %v, want ErrSameAddress", err)
	}
	info, err := d.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := info.Addrs["n"]; ok {
		t.Fatalf("the refused replica n is registered: %v", info.Addrs)
	}
}
