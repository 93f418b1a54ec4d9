package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/drover-io/drover/transports/control/controlpb"
)

// rebuildSizeBytes holds more than rebuildFlushBytes (32 MiB) several times, so a
// target killed after 100 MiB copied has had at least two flushes.
const rebuildSizeBytes = 160 << 20

// volumeInfo fetches the engine's volume info.
func (c *volumeClient) volumeInfo() (*controlpb.VolumeInfoResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.client.VolumeInfo(ctx, &controlpb.VolumeInfoRequest{})
}

// wantRemoved checks that the engine lists id as a removed member.
func (c *volumeClient) wantRemoved(id string) {
	c.t.Helper()
	info, err := c.volumeInfo()
	if err != nil {
		c.t.Fatal(err)
	}
	if !slices.Contains(info.GetRemoved(), id) {
		c.t.Errorf("%s not recorded as removed: %v", id, info.GetRemoved())
	}
}

// waitMembers waits until the engine serves with exactly the members in
// want, each in its mode.
func (c *volumeClient) waitMembers(what string, want map[string]string) {
	c.t.Helper()
	eventually(c.t, what, func() (bool, string) {
		phase, m, err := c.modes()
		if err != nil {
			return false, err.Error()
		}
		if phase != "serving" || len(m) != len(want) {
			return false, fmt.Sprint(phase, m)
		}
		for id, mode := range want {
			if m[id] != mode {
				return false, fmt.Sprint(m)
			}
		}
		return true, ""
	})
}

// waitCopied waits until the rebuild of target has copied at least n
// bytes and returns its progress; it fails if the rebuild ends first.
func (c *volumeClient) waitCopied(target string, n uint64) *controlpb.RebuildProgress {
	c.t.Helper()
	var got *controlpb.RebuildProgress
	eventually(c.t, fmt.Sprintf("rebuild of %s past %d bytes copied", target, n), func() (bool, string) {
		info, err := c.volumeInfo()
		if err != nil {
			return false, err.Error()
		}
		if lr := info.GetLastRebuild(); lr != nil && lr.GetTarget() == target && lr.GetStage() == "done" {
			c.t.Fatalf("the rebuild of %s finished (%d bytes copied) before reaching %d bytes", target, lr.GetBytesCopied(), n)
		}
		rb := info.GetRebuild()
		if rb == nil || rb.GetTarget() != target || rb.GetBytesCopied() < n {
			return false, fmt.Sprint(rb)
		}
		got = rb
		return true, ""
	})
	return got
}

// lastRebuildDone waits for the last rebuild to be target's, done.
func (c *volumeClient) lastRebuildDone(target string) *controlpb.RebuildProgress {
	c.t.Helper()
	var got *controlpb.RebuildProgress
	eventually(c.t, "the rebuild of "+target+" done", func() (bool, string) {
		info, err := c.volumeInfo()
		if err != nil {
			return false, err.Error()
		}
		lr := info.GetLastRebuild()
		if info.GetRebuild() != nil || lr == nil || lr.GetTarget() != target || lr.GetStage() != "done" {
			return false, fmt.Sprint(info.GetRebuild(), lr)
		}
		got = lr
		return true, ""
	})
	return got
}

// fillAll writes the whole volume once, 4 MiB at a time.
func (l *load) fillAll() {
	l.c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for off := uint64(0); off < l.c.size; off += 4 << 20 {
		p := make([]byte, min(4<<20, l.c.size-off))
		for i := range p {
			p[i] = byte(l.rng.Uint32())
		}
		if _, err := l.c.client.Write(ctx, &controlpb.WriteRequest{Offset: off, Data: p}); err != nil {
			l.c.t.Fatalf("fill at %d: %v", off, err)
		}
		copy(l.want[off:], p)
	}
}

// TestProcessRebuildResumeAndReplace, on real processes and files:
//   - a replica whose disk was replaced (same ID, empty directory) is
//     rebuilt; killed with SIGKILL after 100 MiB copied and restarted, the
//     next attempt copies only what the first had not flushed;
//   - a replica killed for good is replaced by the engine's spare s1 (a
//     new ID); the engine is killed midway through s1's rebuild and
//     restarted with the same flags: it finds s1 in the recorded
//     membership, keeps r3 out, and the rebuild continues;
//   - drover replica add --wait --replaces swaps r2 for s2 by command with
//     a progress bar.
//
// The volume reads back what was written after each step, the chain is
// the user's snapshot alone once rebuild snapshots are merged, and every
// replica left holds the written content.
func TestProcessRebuildResumeAndReplace(t *testing.T) {
	addrs := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	c := newCluster(t, rebuildSizeBytes, addrs, make([][]string, 3))
	spareDir := func(id string) string { return filepath.Join(t.TempDir(), id) }
	s1Addr, s2Addr := freeAddr(t), freeAddr(t)
	s1Dir, s2Dir := spareDir("s1"), spareDir("s2")
	startSpare := func(id, dir, addr string) *proc {
		p := start(t, id, nil, "replica", "--dir", dir, "--listen", addr, "--id", id, "--size", fmt.Sprint(c.size))
		// replica add dials it once at once: wait until it listens (on a
		// loaded machine the process can take a while to get there).
		eventually(t, id+" serving", func() (bool, string) {
			return strings.Contains(p.output(), "serving on "+addr), p.output()
		})
		return p
	}
	s1 := startSpare("s1", s1Dir, s1Addr)
	engineArgs := []string{"--spares", "s1=" + s1Addr, "--replace-after", "1s", "--rebuild-rate", "48MiB"}
	c.startEngine(engineArgs...)
	l := newLoad(c.volumeClient, 3)
	l.fillAll()
	l.flush()
	runDrover(t, "snapshot", "create", "base", "--control", c.ctlAddr)
	for i := 0; i < 50; i++ {
		l.write()
	}
	l.flush()

	// 1. r2's disk is replaced: a full rebuild, killed midway, resumes.
	c.replicas[1].kill()
	l.write() // noticed at once (heartbeats would take the replica timeout)
	c.waitModes("r2 ERR after kill -9", "RW", "ERR", "RW")
	if err := os.RemoveAll(c.dirs[1]); err != nil {
		t.Fatal(err)
	}
	c.startReplica(1)
	at := c.waitCopied("r2", 100<<20)
	c.replicas[1].kill()
	c.startReplica(1)
	c.waitModes("r2 rebuilt after the second kill", "RW", "RW", "RW")
	resumed := c.lastRebuildDone("r2")
	full := uint64(rebuildSizeBytes)
	t.Logf("resume: the killed attempt had copied %d MiB (a flush every 32 MiB); the next copied %d MiB of the %d MiB the first would have",
		at.GetBytesCopied()>>20, resumed.GetBytesCopied()>>20, full>>20)
	if resumed.GetBytesCopied()+32<<20 > full {
		t.Errorf("the attempt after the kill copied %d bytes: not a resume (the volume holds %d)", resumed.GetBytesCopied(), full)
	}
	l.verify("after the resumed rebuild of r2")

	// 2. r3 is gone for good: the spare s1 replaces it; the engine dies
	// midway through s1's rebuild and is restarted with the same flags.
	c.replicas[2].kill()
	l.write()
	c.waitCopied("s1", 40<<20)
	c.engine.kill()
	c.engine = start(t, "engine", nil, append([]string{"engine", "--volume", "test", "--replicas",
		fmt.Sprintf("r1=%s,r2=%s,r3=%s", addrs[0], addrs[1], addrs[2]), "--control", c.ctlAddr, "--replica-timeout", "3s"}, engineArgs...)...)
	c.waitMembers("s1 in r3's place after the engine restart", map[string]string{"r1": "RW", "r2": "RW", "s1": "RW"})
	afterKill := c.lastRebuildDone("s1")
	t.Logf("replace: s1's rebuild after the engine restart copied %d MiB of %d", afterKill.GetBytesCopied()>>20, full>>20)
	if afterKill.GetBytesCopied()+32<<20 > full {
		t.Errorf("s1's rebuild after the engine restart copied %d bytes: it restarted rather than continued", afterKill.GetBytesCopied())
	}
	c.wantRemoved("r3")
	l.verify("after s1 replaced r3")

	// 3. By command: s2 replaces r2, with a progress bar.
	s2 := startSpare("s2", s2Dir, s2Addr)
	out := runDrover(t, "replica", "add", s2Addr, "--id", "s2", "--replaces", "r2", "--wait", "--rate", "64MiB", "--control", c.ctlAddr)
	if !strings.Contains(out, "replica s2 is RW") || !strings.Contains(out, "ETA") {
		t.Errorf("replica add --wait output lacks the result or a progress line:\n%s", out)
	}
	c.waitMembers("s2 in r2's place", map[string]string{"r1": "RW", "s1": "RW", "s2": "RW"})
	l.write()
	l.flush()
	l.verify("after s2 replaced r2")
	eventually(t, "rebuild snapshots merged away", func() (bool, string) {
		info, err := c.volumeInfo()
		if err != nil {
			return false, err.Error()
		}
		return slices.Equal(info.GetChain(), []string{"base"}), fmt.Sprint(info.GetChain())
	})
	ls := runDrover(t, "replica", "ls", "--control", c.ctlAddr)
	if !strings.Contains(ls, "removed: r3, r2") {
		t.Errorf("replica ls does not list r3 and r2 as removed:\n%s", ls)
	}

	// Every replica left holds the written content.
	c.engine.stop()
	want := sha(l.want)
	for _, r := range []struct {
		p   *proc
		dir string
	}{{c.replicas[0], c.dirs[0]}, {s1, s1Dir}, {s2, s2Dir}} {
		r.p.stop()
		if sum := strings.Fields(runDrover(t, "replica", "checksum", "--dir", r.dir))[0]; sum != want {
			t.Errorf("replica in %s: checksum %s, want %s (the written content)", r.dir, sum, want)
		}
	}
	c.replicas[1].stop()
}

// TestProcessIdleReplicaReplaced: an engine with no IO at all notices a
// replica killed with SIGKILL through its heartbeats (ERR after the
// replica timeout), and replaces it with the spare s1 (--spares,
// --replace-after), rebuilt in while still nothing is written or read.
func TestProcessIdleReplicaReplaced(t *testing.T) {
	addrs := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	c := newCluster(t, 16<<20, addrs, make([][]string, 3))
	s1Addr, s1Dir := freeAddr(t), filepath.Join(t.TempDir(), "s1")
	s1 := start(t, "s1", nil, "replica", "--dir", s1Dir, "--listen", s1Addr, "--id", "s1", "--size", fmt.Sprint(c.size))
	c.startEngine("--spares", "s1="+s1Addr, "--replace-after", "1s")
	l := newLoad(c.volumeClient, 11)
	for i := 0; i < 40; i++ {
		l.write()
	}
	l.flush()

	c.replicas[2].kill() // no IO from here until s1 is RW
	c.waitMembers("s1 in r3's place with no IO", map[string]string{"r1": "RW", "r2": "RW", "s1": "RW"})
	c.wantRemoved("r3")
	l.verify("after s1 replaced r3 on an idle volume")

	c.engine.stop()
	want := sha(l.want)
	for _, r := range []struct {
		p   *proc
		dir string
	}{{c.replicas[0], c.dirs[0]}, {c.replicas[1], c.dirs[1]}, {s1, s1Dir}} {
		r.p.stop()
		if sum := strings.Fields(runDrover(t, "replica", "checksum", "--dir", r.dir))[0]; sum != want {
			t.Errorf("replica in %s: checksum %s, want %s (the written content)", r.dir, sum, want)
		}
	}
}
