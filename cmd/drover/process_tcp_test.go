package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drover-io/drover/transports/control"
)

// cluster is a volume run as separate processes: replicas and an engine.
type cluster struct {
	dirs     []string
	addrs    []string
	prefix   [][]string // per replica: command prefix (netns)
	replicas []*proc
	engine   *proc
	*volumeClient
}

func (c *cluster) startReplica(i int) {
	c.replicas[i] = start(c.t, fmt.Sprintf("replica %d", i+1), c.prefix[i], "replica", "--dir", c.dirs[i],
		"--listen", c.addrs[i], "--size", fmt.Sprint(c.size))
}

func (c *cluster) startEngine(extra ...string) {
	var reps []string
	for i, a := range c.addrs {
		reps = append(reps, fmt.Sprintf("r%d=%s", i+1, a))
	}
	args := append([]string{"engine", "--volume", "test", "--replicas", strings.Join(reps, ","),
		"--control", c.ctlAddr, "--replica-timeout", "1s"}, extra...)
	c.engine = start(c.t, "engine", nil, args...)
	c.waitModes("the engine serving with every replica RW", "RW", "RW", "RW")
}

func newCluster(t *testing.T, size uint64, addrs []string, prefix [][]string) *cluster {
	c := &cluster{volumeClient: &volumeClient{t: t, size: size, ctlAddr: freeAddr(t)}, addrs: addrs, prefix: prefix,
		replicas: make([]*proc, len(addrs))}
	for i := range addrs {
		c.dirs = append(c.dirs, filepath.Join(t.TempDir(), fmt.Sprintf("r%d", i+1)))
	}
	client, conn, err := control.Dial(c.ctlAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c.client = client
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
	c.replicas[1].kill()
	for i := 0; i < 40; i++ {
		l.write()
	}
	c.waitModes("replica 2 ERR after kill -9", "RW", "ERR", "RW")
	c.startReplica(1)
	for i := 0; i < 40; i++ {
		l.write()
	}
	c.waitModes("replica 2 rebuilt after restart", "RW", "RW", "RW")
	l.flush()
	l.verify("after the replica rebuild")

	c.engine.kill()
	c.startEngine()
	l.verify("after kill -9 of the engine")
	for i := 0; i < 20; i++ {
		l.write()
	}
	l.flush()
	want := sha(l.want)
	for i, s := range c.checksums() {
		if s != want {
			t.Errorf("replica %d checksum %s, want %s (the written content)", i+1, s, want)
		}
	}
}
