package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// cluster is a volume run as separate processes: replicas and an engine.
type cluster struct {
	// replicaArgs are more flags for every replica (TLS, say).
	replicaArgs []string
	dirs        []string
	addrs       []string
	prefix      [][]string // per replica: command prefix (netns)
	replicas    []*proc
	engine      *proc
	*volumeClient
}

func (c *cluster) startReplica(i int) {
	args := append([]string{"replica", "--dir", c.dirs[i], "--listen", c.addrs[i], "--size", fmt.Sprint(c.size)}, c.replicaArgs...)
	if host, _, _ := net.SplitHostPort(c.addrs[i]); !isLoopbackHost(host) && len(c.replicaArgs) == 0 {
		args = append(args, "--insecure-listen") // a test network of its own (netns)
	}
	c.replicas[i] = start(c.t, fmt.Sprintf("replica %d", i+1), c.prefix[i], args...)
}

func (c *cluster) startEngine(extra ...string) {
	var reps []string
	for i, a := range c.addrs {
		reps = append(reps, fmt.Sprintf("r%d=%s", i+1, a))
	}
	args := append([]string{"engine", "--volume", "test", "--replicas", strings.Join(reps, ","),
		"--control", c.ctlAddr, "--replica-timeout", "3s"}, extra...)
	c.engine = start(c.t, "engine", nil, args...)
	c.waitModes("the engine serving with every replica RW", "RW", "RW", "RW")
	// The control API says serving before the frontends have bound
	// their listeners; the stop line comes after they have.
	eventually(c.t, "the engine's frontends listening", func() (bool, string) {
		return strings.Contains(c.engine.output(), "stop with Ctrl-C"), "no stop line yet"
	})
}

func newCluster(t *testing.T, size uint64, addrs []string, prefix [][]string, replicaArgs ...string) *cluster {
	c := &cluster{volumeClient: newVolumeClient(t, freeAddr(t), size), addrs: addrs, prefix: prefix,
		replicas: make([]*proc, len(addrs)), replicaArgs: replicaArgs}
	for i := range addrs {
		c.dirs = append(c.dirs, filepath.Join(t.TempDir(), fmt.Sprintf("r%d", i+1)))
	}
	for i := range addrs {
		c.startReplica(i)
	}
	return c
}

// checksums stops every process and checksums each replica directory.
func (c *cluster) checksums() []string {
	c.engine.stop()
	var sums []string
	for i, r := range c.replicas {
		r.stop()
		out := runDrover(c.t, "replica", "checksum", "--dir", c.dirs[i])
		sums = append(sums, strings.Fields(out)[0])
	}
	return sums
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// killAndRebuild kills replica i with SIGKILL under a write load; the
// volume keeps serving and the replica goes ERR; restarted (still under
// load), it is rebuilt to RW.
func (c *cluster) killAndRebuild(l *load, i int) {
	c.t.Helper()
	modes := func(mode string) []string {
		m := []string{"RW", "RW", "RW"}
		m[i] = mode
		return m
	}
	l.during(func() {
		time.Sleep(200 * time.Millisecond)
		c.replicas[i].kill()
		c.waitModes(fmt.Sprintf("replica %d ERR after kill -9", i+1), modes("ERR")...)
		time.Sleep(200 * time.Millisecond)
	})
	l.during(func() {
		c.startReplica(i)
		c.waitModes(fmt.Sprintf("replica %d rebuilt after restart", i+1), modes("RW")...)
	})
	c.requireReplicaLs("RW", "RW", "RW")
}

// requireReplicaLs runs `drover replica ls` and requires replica i's line
// to show mode want[i].
func (c *cluster) requireReplicaLs(want ...string) {
	c.t.Helper()
	out := runDrover(c.t, "replica", "ls", "--control", c.ctlAddr)
	got := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 2 {
			got[f[0]] = f[1]
		}
	}
	for i, w := range want {
		if id := fmt.Sprintf("r%d", i+1); got[id] != w {
			c.t.Errorf("drover replica ls shows %s as %q, want %s:\n%s", id, got[id], w, out)
		}
	}
}

// checkIdentical stops every process and requires each replica's offline
// checksum to equal the SHA-256 of what was written.
func (c *cluster) checkIdentical(l *load) {
	c.t.Helper()
	want := sha(l.want)
	for i, s := range c.checksums() {
		if s != want {
			c.t.Errorf("replica %d checksum %s, want %s (the written content)", i+1, s, want)
		}
	}
}

// TestProcessKillReplicaAndEngine: kill -9 a replica under writes; the
// volume keeps serving; restarted, the replica is rebuilt to RW. Then
// kill -9 the engine; restarted, every flushed write is there. At the end
// all replicas hold identical content, equal to what was written.
func TestProcessKillReplicaAndEngine(t *testing.T) {
	addrs := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	c := newCluster(t, testSizeBytes, addrs, make([][]string, 3))
	c.startEngine()
	l := newLoad(c.volumeClient, 1)
	for i := 0; i < 40; i++ {
		l.write()
	}
	c.killAndRebuild(l, 1)
	l.flush()
	l.verify("after the replica rebuild")

	l.during(func() { time.Sleep(200 * time.Millisecond) })
	l.flush()
	c.engine.kill()
	c.startEngine()
	l.verify("after kill -9 of the engine")
	for i := 0; i < 20; i++ {
		l.write()
	}
	l.flush()
	c.checkIdentical(l)
}

// bigSizeBytes spans more than one rebuild listing (65,536 blocks), and
// far more than the 1,024 blocks of one data request.
const bigSizeBytes = 272 << 20

// TestProcessRebuildBigVolume: the kill -9 and rebuild of
// TestProcessKillReplicaAndEngine on a volume over 256 MiB, with writes
// spread over all of it.
func TestProcessRebuildBigVolume(t *testing.T) {
	addrs := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	c := newCluster(t, bigSizeBytes, addrs, make([][]string, 3))
	c.startEngine()
	l := newLoad(c.volumeClient, 2)
	for i := 0; i < 100; i++ {
		l.write()
	}
	c.killAndRebuild(l, 0)
	l.flush()
	l.verify("after the replica rebuild")
	c.checkIdentical(l)
}
