package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/drover-io/drover/model"
	"github.com/drover-io/drover/transports/control"
	"github.com/drover-io/drover/transports/control/controlpb"
)

// snapVolume is a drover dev process and a client of its control API.
type snapVolume struct {
	*volumeClient
	dataDir string
	proc    *proc
	conn    interface{ Close() error }
	// mergedInto: a snapshot delete was interrupted, and this child may
	// list more than its own writes (merge windows synced before the
	// kill hold blocks its parent still provides too: same views).
	mergedInto string
}

// startSnapVolume runs drover dev on dataDir (a fresh volume of size bytes
// when empty) and waits until it serves.
func startSnapVolume(t *testing.T, dataDir string, size uint64, ctlAddr string) *snapVolume {
	t.Helper()
	if ctlAddr == "" {
		ctlAddr = freeAddr(t)
	}
	client, conn, err := control.Dial(ctlAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	v := &snapVolume{volumeClient: &volumeClient{t: t, ctlAddr: ctlAddr, size: size, client: client}, dataDir: dataDir, conn: conn}
	v.proc = start(t, "dev "+dataDir, nil, "dev", "--data-dir", dataDir, "--size", fmt.Sprint(size), "--control", ctlAddr,
		"--frontend", "none")
	v.waitModes("drover dev serving", "", "", "")
	return v
}

// drover runs a CLI command against v and returns its output and error.
func (v *snapVolume) drover(args ...string) (string, error) {
	out, err := exec.Command(droverBin, append(args, "--control", v.ctlAddr)...).CombinedOutput()
	return string(out), err
}

func (v *snapVolume) mustDrover(args ...string) string {
	v.t.Helper()
	out, err := v.drover(args...)
	if err != nil {
		v.t.Fatalf("drover %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// content reads the whole volume (snapshot "" ) or a snapshot's content.
func (v *snapVolume) content(snapshot string) []byte {
	v.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out := make([]byte, 0, v.size)
	if snapshot == "" {
		for off := uint64(0); off < v.size; off += 1 << 20 {
			rep, err := v.client.Read(ctx, &controlpb.ReadRequest{Offset: off, Length: min(1<<20, v.size-off)})
			if err != nil {
				v.t.Fatalf("read at %d: %v", off, err)
			}
			out = append(out, rep.GetData()...)
		}
		return out
	}
	stream, err := v.client.ReadSnapshot(ctx, &controlpb.ReadSnapshotRequest{Name: snapshot, Offset: 0, Length: v.size})
	if err != nil {
		v.t.Fatalf("read snapshot %s: %v", snapshot, err)
	}
	for {
		ch, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			v.t.Fatalf("read snapshot %s: %v", snapshot, err)
		}
		out = append(out, ch.GetData()...)
	}
}

func (v *snapVolume) list() []*controlpb.SnapshotInfo {
	v.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rep, err := v.client.SnapshotList(ctx, &controlpb.Empty{})
	if err != nil {
		v.t.Fatalf("snapshot list: %v", err)
	}
	return rep.GetSnapshots()
}

// modelWrite writes n random blocks at block b through the engine and
// into m.
func (v *snapVolume) modelWrite(m *model.Device, rng *rand.Rand, b uint64, n int) {
	v.t.Helper()
	p := make([]byte, n*model.BlockSize)
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := v.client.Write(ctx, &controlpb.WriteRequest{Offset: b * model.BlockSize, Data: p}); err != nil {
		v.t.Fatalf("write [%d, +%d): %v", b, n, err)
	}
	if err := m.Write(b, p); err != nil {
		v.t.Fatal(err)
	}
}

// checkModel requires the volume, every snapshot's content, the chain and
// the listed sizes to match the model.
func (v *snapVolume) checkModel(m *model.Device, what string) {
	v.t.Helper()
	want, _ := m.Read(0, uint32(v.size/model.BlockSize))
	if !bytes.Equal(v.content(""), want) {
		v.t.Fatalf("%s: the volume differs from the model", what)
	}
	chain := m.Snapshots()
	list := v.list()
	var names []string
	for _, s := range list {
		names = append(names, s.GetName())
	}
	if !slices.Equal(names, append(slices.Clone(chain), "")) {
		v.t.Fatalf("%s: chain %q, model %q", what, names, chain)
	}
	for i, name := range chain {
		want, _ := m.ReadSnapshot(name, 0, uint32(v.size/model.BlockSize))
		if !bytes.Equal(v.content(name), want) {
			v.t.Fatalf("%s: snapshot %s differs from the model", what, name)
		}
		from := ""
		if i > 0 {
			from = chain[i-1]
		}
		touched, _ := m.ChangedBlocks(from, name)
		got, own := list[i].GetSizeBytes(), uint64(len(touched))*model.BlockSize
		if name == v.mergedInto && got >= own {
			continue
		}
		if got != own {
			v.t.Fatalf("%s: snapshot %s lists %d bytes, the model's layer holds %d blocks", what, name, got, len(touched))
		}
	}
}

// TestProcessSnapshots runs a seeded sequence of writes, snapshots (with
// labels), deletes and reverts against drover dev through the CLI, and
// after each step compares the volume, every snapshot's content, the chain
// and the listed sizes with model.Device. It checks the errors users meet,
// then clones a snapshot into a new volume and serves it.
func TestProcessSnapshots(t *testing.T) {
	const size = 8 << 20
	v := startSnapVolume(t, t.TempDir(), size, "")
	m := model.NewDevice(size)
	rng := rand.New(rand.NewPCG(8, 8))
	blocks := uint64(size / model.BlockSize)
	next := 0
	for step := 0; step < 40; step++ {
		chain := m.Snapshots()
		switch k := rng.IntN(10); {
		case k < 4:
			for i := 0; i < 1+rng.IntN(4); i++ {
				n := 1 + rng.IntN(64)
				v.modelWrite(m, rng, rng.Uint64N(blocks-uint64(n)), n)
			}
		case k < 6 || len(chain) == 0:
			next++
			name := fmt.Sprintf("s%d", next)
			v.mustDrover("snapshot", "create", name, "--label", "step="+fmt.Sprint(step))
			mustNil(t, m.Snapshot(name))
		case k < 8:
			name := chain[rng.IntN(len(chain))]
			v.mustDrover("snapshot", "rm", name)
			mustNil(t, m.DeleteSnapshot(name))
		default:
			name := chain[rng.IntN(len(chain))]
			v.mustDrover("snapshot", "revert", name, "--detach")
			mustNil(t, m.Revert(name))
		}
		v.checkModel(m, fmt.Sprintf("step %d", step))
	}
	t.Logf("chain after the sequence: %q", m.Snapshots())
	if len(m.Snapshots()) == 0 {
		v.mustDrover("snapshot", "create", "last")
		mustNil(t, m.Snapshot("last"))
	}
	name := m.Snapshots()[0]
	ls := v.mustDrover("snapshot", "ls")
	for _, want := range []string{name, "(head)", "step=", "RECLAIM"} {
		if !strings.Contains(ls, want) {
			t.Errorf("snapshot ls lacks %q:\n%s", want, ls)
		}
	}
	for _, l := range v.list() {
		if l.GetName() != "" && (l.GetCreatedUnixNano() < time.Now().Add(-time.Hour).UnixNano() || l.GetLabels()["step"] == "") {
			t.Errorf("snapshot %s: created %d, labels %v", l.GetName(), l.GetCreatedUnixNano(), l.GetLabels())
		}
	}
	errorCases := []struct {
		args []string
		want string
	}{
		{[]string{"snapshot", "create", name}, "already exists"},
		{[]string{"snapshot", "create", "head"}, "names the volume head"},
		{[]string{"snapshot", "rm", "no-such"}, `no snapshot "no-such"`},
		{[]string{"snapshot", "rm", "head"}, "cannot delete the volume head"},
		{[]string{"snapshot", "revert", "no-such", "--detach"}, `no snapshot "no-such"`},
		{[]string{"snapshot", "revert", name}, "revert needs the volume detached"},
		{[]string{"snapshot", "create", "x", "--label", "novalue"}, "want KEY=VALUE"},
	}
	for _, c := range errorCases {
		out, err := v.drover(c.args...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("drover %s: err %v, output %q; want an error saying %q", strings.Join(c.args, " "), err, out, c.want)
		}
	}
	v.checkModel(m, "after the refused commands")

	// Clone the oldest snapshot into a new volume and serve it.
	want, _ := m.ReadSnapshot(name, 0, uint32(blocks))
	cloneDir := t.TempDir()
	var dirs []string
	for i := 1; i <= 3; i++ {
		dirs = append(dirs, filepath.Join(cloneDir, fmt.Sprintf("dev-%d", i)))
	}
	out := v.mustDrover("snapshot", "clone", name, "--dir", strings.Join(dirs, ","))
	t.Logf("clone: %s", out)
	if out, err := v.drover("snapshot", "clone", name, "--dir", dirs[0]); err == nil || !strings.Contains(out, "already exists") {
		t.Errorf("clone into an existing directory: %v %s", err, out)
	}
	clone := startSnapVolume(t, cloneDir, size, "")
	if !bytes.Equal(clone.content(""), want) {
		t.Fatal("the clone differs from the snapshot it was cloned from")
	}
	v.checkModel(m, "source after the clone")
	clone.proc.stop()
	v.proc.stop()
}

func mustNil(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestProcessSnapshotDeleteKill9 kills drover dev with kill -9 while it
// merges a 40 MiB snapshot into its child (seen by the child's listed size
// growing), restarts it, and requires a valid chain (the snapshot either
// still there or gone), every view equal to the model, the delete to
// finish when run again, and all replicas' offline checksums equal.
func TestProcessSnapshotDeleteKill9(t *testing.T) {
	const size = 64 << 20
	dataDir := t.TempDir()
	ctlAddr := freeAddr(t)
	v := startSnapVolume(t, dataDir, size, ctlAddr)
	m := model.NewDevice(size)
	rng := rand.New(rand.NewPCG(9, 9))
	for b := uint64(0); b < 48<<20/model.BlockSize; b += 256 {
		v.modelWrite(m, rng, b, 256)
	}
	v.mustDrover("snapshot", "create", "s1")
	mustNil(t, m.Snapshot("s1"))
	for b := uint64(0); b < 8<<20/model.BlockSize; b += 256 {
		v.modelWrite(m, rng, b+uint64(rng.IntN(4))*(8<<20/model.BlockSize), 256)
	}
	v.mustDrover("snapshot", "create", "s2")
	mustNil(t, m.Snapshot("s2"))
	for b := uint64(0); b < 4<<20/model.BlockSize; b += 256 {
		v.modelWrite(m, rng, rng.Uint64N(size/model.BlockSize-256), 256)
	}
	v.mustDrover("volume", "flush")
	before := v.list()[1].GetSizeBytes()
	rm := start(t, "snapshot rm", nil, "snapshot", "rm", "s1", "--control", ctlAddr)
	for {
		l := v.list()
		if len(l) == 3 && l[1].GetSizeBytes() > before {
			t.Logf("kill -9 with s2 at %d of %d bytes merged in", l[1].GetSizeBytes()-before, l[0].GetSizeBytes())
			break
		}
		if len(l) != 3 {
			t.Logf("the delete finished before the kill")
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	v.proc.kill()
	<-rm.done
	v = startSnapVolume(t, dataDir, size, ctlAddr)
	chain := v.list()
	if len(chain) == 3 {
		t.Logf("after restart the chain still holds s1; deleting it again")
		v.mergedInto = "s2"
		v.checkModel(m, "after kill -9 during the delete")
		v.mergedInto = ""
		v.mustDrover("snapshot", "rm", "s1")
	}
	mustNil(t, m.DeleteSnapshot("s1"))
	v.checkModel(m, "after the delete finished")
	v.proc.stop()
	want, _ := m.Read(0, uint32(size/model.BlockSize))
	for i := 1; i <= 3; i++ {
		out := runDrover(t, "replica", "checksum", "--dir", filepath.Join(dataDir, fmt.Sprintf("dev-%d", i)))
		if !strings.HasPrefix(out, sha(want)) {
			t.Errorf("replica dev-%d checksum %s, want %s", i, out, sha(want))
		}
	}
}
