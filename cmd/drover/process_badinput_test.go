package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drover-io/drover/transports/control/controlpb"
)

// droverBounded runs drover to completion, failing the test if it has
// not returned within a generous bound (a hang, such as a dial retried
// forever, is the failure these tests look for), and returns its output
// and whether it succeeded.
func droverBounded(t *testing.T, args ...string) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, droverBin, args...).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("drover %s did not return:\n%s", strings.Join(args, " "), out)
	}
	return string(out), err == nil
}

// wantFail runs drover expecting a failure whose output holds every one
// of want.
func wantFail(t *testing.T, want []string, args ...string) string {
	t.Helper()
	out, ok := droverBounded(t, args...)
	if ok {
		t.Fatalf("drover %s succeeded; want a failure:\n%s", strings.Join(args, " "), out)
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("drover %s: output lacks %q:\n%s", strings.Join(args, " "), w, out)
		}
	}
	return out
}

// diskBytes is the size of the file system holding dir.
func diskBytes(t *testing.T, dir string) uint64 {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	return fs.Blocks * uint64(fs.Bsize)
}

// TestProcessSizeLimits: a size no file system can address, or over the
// over-provisioning limit, is refused at create (no data dir is left) and
// at expand (the size stays); a volume far larger than the disk, allowed
// by the flag, takes a write to its last block and reopens after kill -9
// with the block there.
func TestProcessSizeLimits(t *testing.T) {
	root := t.TempDir()
	dataDir := filepath.Join(root, "d")
	huge := "18446744073709547520" // 2^64 - 4096
	wantFail(t, []string{"cannot hold a volume of 16.0 EiB", "no file system addresses files past 8 EiB", "nothing was written"},
		"dev", "--data-dir", dataDir, "--size", huge, "--control", freeAddr(t), "--frontend", "none")
	over := (diskBytes(t, root)/4096 + 1) * 4096
	wantFail(t, []string{"over-provisioning limit, 100%", "--over-provisioning-percent"},
		"dev", "--data-dir", dataDir, "--size", strconv.FormatUint(over, 10), "--control", freeAddr(t), "--frontend", "none")
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Fatalf("a refused create left the data dir behind: %v", err)
	}

	c := newVolumeClient(t, freeAddr(t), 1<<20)
	startDev := func(size ...string) *proc {
		p := start(t, "dev", nil, append([]string{"dev", "--data-dir", dataDir, "--control", c.ctlAddr,
			"--frontend", "none", "--over-provisioning-percent", "1000000"}, size...)...)
		c.waitServing()
		return p
	}
	dev := startDev("--size", "1MiB")
	for _, size := range []string{huge, "9223372036854775808"} {
		out := wantFail(t, []string{"expand refused", "no file system addresses files past 8 EiB"},
			"volume", "expand", "--size", size, "--control", c.ctlAddr)
		t.Logf("expand to %s: %s", size, out)
	}
	if got := c.sizeBytes(); got != 1<<20 {
		t.Fatalf("volume size after refused expands = %d, want %d", got, 1<<20)
	}
	// Far beyond the disk, yet addressable everywhere (ext4 stops at
	// 16 TiB): the flag allows it, sparse files hold it.
	const bigBytes = 4 << 40
	runDrover(t, "volume", "expand", "--size", strconv.FormatUint(bigBytes, 10), "--control", c.ctlAddr)
	block := make([]byte, 4096)
	for i := range block {
		block[i] = byte(i*7 + 3)
	}
	ctx := context.Background()
	if _, err := c.client.Write(ctx, &controlpb.WriteRequest{Offset: bigBytes - 4096, Data: block}); err != nil {
		t.Fatalf("write the last block: %v", err)
	}
	if _, err := c.client.Flush(ctx, &controlpb.Empty{}); err != nil {
		t.Fatal(err)
	}
	dev.kill()
	dev = startDev()
	rep, err := c.client.Read(ctx, &controlpb.ReadRequest{Offset: bigBytes - 4096, Length: 4096})
	if err != nil || string(rep.GetData()) != string(block) {
		t.Fatalf("last block after kill -9 and reopen: err %v, same bytes %v", err, err == nil && string(rep.GetData()) == string(block))
	}
	// A refused expand of the over-provisioning kind says so, by replica.
	wantFail(t, []string{"expand refused", "over-provisioning limit"},
		"volume", "expand", "--size", strconv.FormatUint(diskBytes(t, root)*20000, 10), "--control", c.ctlAddr)
	dev.stop()
}

// waitServing waits until the engine serves.
func (c *volumeClient) waitServing() {
	c.t.Helper()
	eventually(c.t, "the volume serving", func() (bool, string) {
		phase, _, err := c.modes()
		if err != nil {
			return false, err.Error()
		}
		return phase == "serving", phase
	})
}

// sizeBytes is the volume's size as the engine reports it.
func (c *volumeClient) sizeBytes() uint64 {
	c.t.Helper()
	info, err := c.volumeInfo()
	if err != nil {
		c.t.Fatal(err)
	}
	return info.GetSizeBytes()
}

// replicaWhy waits until replica id is ERR with a reason holding every
// one of want, and returns the reason.
func (c *volumeClient) waitERR(id string, want ...string) string {
	c.t.Helper()
	var why string
	eventually(c.t, id+" ERR with the reason", func() (bool, string) {
		info, err := c.volumeInfo()
		if err != nil {
			return false, err.Error()
		}
		for _, r := range info.GetReplicas() {
			if r.GetId() != id {
				continue
			}
			why = r.GetWhy()
			if r.GetMode() != "ERR" {
				return false, r.GetMode() + " " + why
			}
			for _, w := range want {
				if !strings.Contains(why, w) {
					return false, why
				}
			}
			return true, ""
		}
		return false, fmt.Sprintf("%s not listed", id)
	})
	return why
}

// damageMeta truncates a replica's metadata file to 10 bytes and returns
// what it holds then.
func damageMeta(t *testing.T, dir string) []byte {
	t.Helper()
	path := filepath.Join(dir, "meta")
	if err := os.Truncate(path, 10); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestProcessDevDamagedMeta: with one of drover dev's three replicas'
// metadata damaged, dev serves on the other two, logs the replica, file
// and damage, replica ls shows it ERR with the reason, and the damaged
// file is left as it was.
func TestProcessDevDamagedMeta(t *testing.T) {
	dataDir := t.TempDir()
	c := newVolumeClient(t, freeAddr(t), testSizeBytes)
	args := []string{"dev", "--data-dir", dataDir, "--size", "4MiB", "--control", c.ctlAddr, "--frontend", "none"}
	dev := start(t, "dev", nil, args...)
	c.waitServing()
	l := newLoad(c, 11)
	for range 20 {
		l.write()
	}
	l.flush()
	dev.stop()
	damaged := damageMeta(t, filepath.Join(dataDir, "dev-1"))

	dev = start(t, "dev", nil, args...)
	c.waitServing()
	why := c.waitERR("dev-1", "bad replica metadata", filepath.Join(dataDir, "dev-1", "meta"))
	t.Logf("dev-1: %s", why)
	ls := runDrover(t, "replica", "ls", "--control", c.ctlAddr)
	if !strings.Contains(ls, "dev-1") || !strings.Contains(ls, "ERR") || !strings.Contains(ls, "10 bytes is too short") {
		t.Errorf("replica ls does not show dev-1 ERR with the damage:\n%s", ls)
	}
	out := dev.output()
	for _, w := range []string{"REPLICA DAMAGED", "replica=dev-1", "file=" + filepath.Join(dataDir, "dev-1", "meta"), "too short"} {
		if !strings.Contains(out, w) {
			t.Errorf("dev's log lacks %q:\n%s", w, out)
		}
	}
	l.verify("served by dev-2 and dev-3")
	l.write()
	l.flush()
	dev.stop()
	if b, err := os.ReadFile(filepath.Join(dataDir, "dev-1", "meta")); err != nil || string(b) != string(damaged) {
		t.Errorf("the damaged meta file changed (never auto-wipe): %q, %v", b, err)
	}
}

// TestProcessReplicaDamagedMeta: a drover replica process whose metadata
// is damaged stays up and answers the engine with the damage, which
// replica ls shows; the volume serves on the other two.
func TestProcessReplicaDamagedMeta(t *testing.T) {
	c := newCluster(t, testSizeBytes, []string{freeAddr(t), freeAddr(t), freeAddr(t)}, make([][]string, 3))
	c.startEngine()
	l := newLoad(c.volumeClient, 12)
	for range 20 {
		l.write()
	}
	l.flush()
	c.replicas[0].stop()
	damageMeta(t, c.dirs[0])
	c.startReplica(0)
	why := c.waitERR("r1", "bad replica metadata", filepath.Join(c.dirs[0], "meta"))
	t.Logf("r1: %s", why)
	select {
	case <-c.replicas[0].done:
		t.Fatalf("the damaged replica exited:\n%s", c.replicas[0].output())
	default:
	}
	if out := c.replicas[0].output(); !strings.Contains(out, "REPLICA DAMAGED") || !strings.Contains(out, "answering engines") {
		t.Errorf("the damaged replica's output does not say so:\n%s", out)
	}
	l.verify("served by r2 and r3")
	l.write()
	l.flush()
}

// TestProcessSameReplicaTwice: one replica address under two IDs is
// refused at once, by drover engine and by replica add.
func TestProcessSameReplicaTwice(t *testing.T) {
	c := newCluster(t, testSizeBytes, []string{freeAddr(t), freeAddr(t), freeAddr(t)}, make([][]string, 3))
	a, b := c.addrs[0], c.addrs[1]
	_, port, _ := net.SplitHostPort(a)
	for _, reps := range []string{"r1=" + a + ",r2=" + a + ",r3=" + b, "r1=" + a + ",r2=localhost:" + port} {
		wantFail(t, []string{"are the same replica", "list each replica once"},
			"engine", "--volume", "test", "--replicas", reps, "--control", freeAddr(t))
	}
	c.startEngine()
	for _, addr := range []string{a, "localhost:" + port} {
		out := wantFail(t, []string{"r1", "one replica cannot be two members"},
			"replica", "add", addr, "--id", "r9", "--control", c.ctlAddr)
		t.Logf("replica add %s: %s", addr, out)
	}
	c.waitModes("the volume unchanged", "RW", "RW", "RW")
	if ls := runDrover(t, "replica", "ls", "--control", c.ctlAddr); strings.Contains(ls, "r9") {
		t.Errorf("replica ls lists the refused r9:\n%s", ls)
	}
	l := newLoad(c.volumeClient, 13)
	l.write()
	l.flush()
}

// TestProcessReplicaAddUnreachable: adding a replica nothing listens on
// fails at once with the dial error, with and without --wait, and leaves
// nothing behind in replica ls.
func TestProcessReplicaAddUnreachable(t *testing.T) {
	c := newCluster(t, testSizeBytes, []string{freeAddr(t), freeAddr(t), freeAddr(t)}, make([][]string, 3))
	c.startEngine()
	nobody := freeAddr(t)
	for _, extra := range [][]string{nil, {"--wait"}} {
		args := append([]string{"replica", "add", nobody, "--id", "r9", "--control", c.ctlAddr}, extra...)
		out := wantFail(t, []string{"replica unreachable", "connection refused", "nothing was added"}, args...)
		t.Logf("%v: %s", extra, out)
	}
	if ls := runDrover(t, "replica", "ls", "--control", c.ctlAddr); strings.Contains(ls, "r9") {
		t.Errorf("replica ls lists the unreachable r9:\n%s", ls)
	}
}

// TestProcessDevChecksFirst: drover dev refuses a listen address in use
// before it creates anything, and a later --size or --volume that differs
// from the data dir's volume, with the fix to run.
func TestProcessDevChecksFirst(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	taken := busy.Addr().String()
	dataDir := filepath.Join(t.TempDir(), "d")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--control", taken, "--nbd-listen", freeAddr(t)}, "control API on " + taken},
		{[]string{"--control", freeAddr(t), "--nbd-listen", taken}, "NBD on " + taken},
		{[]string{"--control", freeAddr(t), "--frontend", "iscsi", "--iscsi-listen", taken}, "iSCSI portal on " + taken},
	} {
		args := append([]string{"dev", "--data-dir", dataDir, "--size", "4MiB"}, tc.args...)
		wantFail(t, []string{tc.want, "address already in use"}, args...)
		if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
			t.Fatalf("%v: the refused run left the data dir: %v", tc.args, err)
		}
	}

	c := newVolumeClient(t, freeAddr(t), testSizeBytes)
	base := []string{"dev", "--data-dir", dataDir, "--control", c.ctlAddr, "--frontend", "none"}
	dev := start(t, "dev", nil, append(base, "--size", "4MiB")...)
	c.waitServing()
	dev.stop()
	wantFail(t, []string{"holds volume dev of 4MiB, not --size 8MiB", "run with --size 4MiB", "drover volume expand --size 8MiB"},
		append(base, "--size", "8MiB")...)
	wantFail(t, []string{"holds volume dev, not other", "run with --volume dev"},
		append(base, "--volume", "other")...)
	dev = start(t, "dev", nil, append(base, "--size", "4MiB")...)
	c.waitServing()
	if info, err := c.volumeInfo(); err != nil || info.GetVolume() != "dev" || info.GetSizeBytes() != 4<<20 {
		t.Fatalf("after the refusals: %v, %v", info, err)
	}
	dev.stop()
}
