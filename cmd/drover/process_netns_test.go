package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/drover-io/drover/transports/testenv"
)

// netnsLab puts each replica in a network namespace of its own, joined to
// the root namespace (where the engine runs) by a veth pair on a /24 of
// its own. Everything is removed at cleanup.
type netnsLab struct {
	t      *testing.T
	names  []string // namespaces
	hosts  []string // root-side veth of each
	addrs  []string // replica listen addresses, inside the namespaces
	prefix [][]string
}

func newNetnsLab(t *testing.T, n int) *netnsLab {
	t.Helper()
	testenv.NeedRoot(t, "network namespaces (ip netns, veth)")
	testenv.NeedTools(t, "ip")
	l := &netnsLab{t: t}
	tag := os.Getpid() % 100000
	// 198.18.0.0/15 is reserved for benchmarking networks (RFC 2544), so
	// these routes cannot shadow a real network of the host.
	subnet := (os.Getpid() % 60) * 4 // 198.18.<subnet+i>.0/24
	for i := 1; i <= n; i++ {
		ns := fmt.Sprintf("drover-t%d-r%d", tag, i)
		host, peer := fmt.Sprintf("dv%dh%d", tag, i), fmt.Sprintf("dv%dp%d", tag, i)
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			testenv.Unavailable(t, "cannot create network namespaces here (%v: %s)", err, out)
		}
		t.Cleanup(func() {
			exec.Command("ip", "netns", "del", ns).Run() // takes the veth pair with it
			exec.Command("ip", "link", "del", host).Run()
		})
		hostIP, peerIP := fmt.Sprintf("198.18.%d.1", subnet+i), fmt.Sprintf("198.18.%d.2", subnet+i)
		l.ip("link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns)
		l.ip("addr", "add", hostIP+"/24", "dev", host)
		l.ip("link", "set", host, "up")
		l.ip("-n", ns, "link", "set", "lo", "up")
		l.ip("-n", ns, "addr", "add", peerIP+"/24", "dev", peer)
		l.ip("-n", ns, "link", "set", peer, "up")
		l.names = append(l.names, ns)
		l.hosts = append(l.hosts, host)
		l.addrs = append(l.addrs, peerIP+":7400")
		l.prefix = append(l.prefix, []string{"ip", "netns", "exec", ns})
	}
	return l
}

func (l *netnsLab) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// TestProcessNetnsPartition runs three `drover replica` processes in
// network namespaces of their own and the engine in the root namespace.
// Under a write load, replica 3's link goes down: it goes ERR and the
// volume keeps serving. Once the link is up again it is rebuilt to RW, and
// every replica ends with the content written.
func TestProcessNetnsPartition(t *testing.T) {
	lab := newNetnsLab(t, 3)
	c := newCluster(t, testSizeBytes, lab.addrs, lab.prefix)
	c.startEngine()
	l := newLoad(c.volumeClient, 3)
	for i := 0; i < 40; i++ {
		l.write()
	}
	l.flush()
	l.during(func() {
		time.Sleep(200 * time.Millisecond)
		lab.ip("link", "set", lab.hosts[2], "down")
		down := time.Now()
		c.waitModes("replica 3 ERR with its link down", "RW", "RW", "ERR")
		t.Logf("replica 3 ERR %v after its link went down", time.Since(down).Round(time.Millisecond))
		time.Sleep(500 * time.Millisecond)
	})
	l.flush()
	l.during(func() {
		lab.ip("link", "set", lab.hosts[2], "up")
		up := time.Now()
		c.waitModes("replica 3 rebuilt after the link came back", "RW", "RW", "RW")
		t.Logf("replica 3 RW %v after its link came back", time.Since(up).Round(time.Millisecond))
	})
	c.requireReplicaLs("RW", "RW", "RW")
	l.flush()
	l.verify("after the partition healed")
	c.checkIdentical(l)
}
