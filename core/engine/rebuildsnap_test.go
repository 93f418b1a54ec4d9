package engine_test

import (
	"strings"
	"testing"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
)

// rebuildSnapshots lists the rebuild snapshots the engine's chain and
// every replica's chain still hold.
func (c *tc) rebuildSnapshots() []string {
	var left []string
	add := func(who string, chain []string) {
		for _, n := range chain {
			if strings.HasPrefix(n, "rebuild-") {
				left = append(left, who+":"+n)
			}
		}
	}
	add("engine", c.Engine().Info().Chain)
	for _, id := range c.Order {
		if nd := c.Nodes[id]; nd != nil {
			add(string(id), nd.Replica.Info().Chain)
		}
	}
	return left
}

// requireNoRebuildSnapshot settles the cluster and requires every replica
// RW and no rebuild snapshot left anywhere.
func (c *tc) requireNoRebuildSnapshot() {
	c.t.Helper()
	c.settle()
	info := c.adminDo(engine.AdminRequest{Op: engine.AdminInfo}).Info
	for _, r := range info.Replicas {
		if r.Mode != engine.ModeRW {
			c.t.Fatalf("%s is %v (%s), want RW", r.ID, r.Mode, r.Why)
		}
	}
	if left := c.rebuildSnapshots(); len(left) > 0 {
		c.t.Fatalf("every replica is RW, but rebuild snapshots are left: %v (chain %v)", left, info.Chain)
	}
}

// rebuildDone reports whether the last rebuild finished.
func (c *tc) rebuildDone() bool {
	lr := c.Engine().Info().LastRebuild
	return lr != nil && lr.Stage == "done"
}

// An engine that dies after a rebuild finished, before the merge of its
// snapshot did, left the snapshot for good: only the end of a rebuild
// queued the merge, and the next engine had no rebuild to end.
func TestRebuildSnapshotMergedAfterEngineRestart(t *testing.T) {
	c := newCluster(t, 2, 64*proto.BlockSize, engine.Config{Volume: "v", RebuildAfterTicks: 5, TimeoutTicks: 20})
	c.write(1, 1)
	c.SetDown("r2", true)
	c.write(2, 2) // r2 times out and goes ERR
	c.SetDown("r2", false)
	if !c.RunUntil(c.rebuildDone, 2000) {
		t.Fatalf("r2 was not rebuilt: %+v", c.Engine().Info())
	}
	if len(c.rebuildSnapshots()) == 0 {
		t.Fatal("the rebuild took no snapshot: the scenario does not test anything")
	}
	c.RestartEngine() // the merge windows queued for the replicas are lost
	c.requireNoRebuildSnapshot()
	c.expect(1, 1)
	c.expect(2, 2)
}

// A rebuild that ends while another member is not RW keeps its snapshot
// (the other member's rebuild will want it), but once that member leaves
// by request the rest are all RW and the snapshot must go: nothing
// queued its merge then.
func TestRebuildSnapshotMergedAfterLastNonRWMemberRemoved(t *testing.T) {
	c := newCluster(t, 3, 64*proto.BlockSize, engine.Config{Volume: "v", RebuildAfterTicks: -1, TimeoutTicks: 20})
	c.write(1, 1)
	c.SetDown("r3", true)
	c.write(2, 2) // r3 goes ERR
	c.SetDown("r2", true)
	c.write(3, 3) // r2 goes ERR: r1 alone serves
	c.SetDown("r2", false)
	// Heartbeats sent to r2 while it was down time out only now; were r2
	// RW by then, they would take it out again.
	c.settle()
	if r := c.adminDo(engine.AdminRequest{Op: engine.AdminAddReplica, Replica: "r2"}); r.Err != nil {
		t.Fatalf("add r2: %v", r.Err)
	}
	c.settle()
	if len(c.rebuildSnapshots()) == 0 {
		t.Fatal("no rebuild snapshot while r3 is ERR: the scenario does not test anything")
	}
	if r := c.adminDo(engine.AdminRequest{Op: engine.AdminRemoveReplica, Replica: "r3"}); r.Err != nil {
		t.Fatalf("remove r3: %v", r.Err)
	}
	c.requireNoRebuildSnapshot()
	c.expect(3, 3)
}

// A snapshot delete syncs each merge window before it merges the next,
// so the final OpDeleteSnapshot has at most one window to sync. Before,
// the merged entries stayed unsynced until that one call synced them all:
// for the rebuild snapshot of a 2 GiB volume on disk, 2 GiB on every
// replica at once, which under disk load outlasted the call timeout on
// both replicas; the engine failed both, and the snapshot stayed. Seen
// here: a replica that loses power after three windows were merged comes
// back with at least the first two merged (each synced before the next).
func TestDeleteSyncsEachMergeWindow(t *testing.T) {
	const sizeBlocks = 256 // merge windows of 32 blocks (an eighth)
	c := newCluster(t, 2, sizeBlocks*proto.BlockSize, engine.Config{Volume: "v", RebuildAfterTicks: -1})
	for b := uint64(0); b < sizeBlocks; b++ {
		c.write(b, b+1)
	}
	if r := c.adminDo(engine.AdminRequest{Op: engine.AdminSnapshot, Name: "s"}); r.Err != nil {
		t.Fatal(r.Err)
	}
	r2 := c.Nodes["r2"]              // not r1: losing the lowest of two replicas faults the volume
	snap, _ := r2.Replica.Resolve(0) // the head is empty: every block is the snapshot's
	merged := func() (n uint64) {
		for b := uint64(0); b < sizeBlocks; b++ {
			if l, _ := r2.Replica.Resolve(b); l != snap {
				n++
			}
		}
		return n
	}
	c.SubmitAdmin(engine.AdminRequest{Op: engine.AdminDeleteSnapshot, Name: "s"})
	for merged() < 3*32 {
		if !c.Step() {
			c.Tick()
		}
		if c.Ticks > 1000 {
			t.Fatalf("three merge windows did not complete on r2 (%d blocks merged)", merged())
		}
	}
	c.Crash("r2", func(store.LayerID, uint64, bool) bool { return false }) // unsynced changes are lost
	for c.Step() {                                                         // r2 reloads (no tick: nothing times out)
	}
	if got := merged(); got < 2*32 {
		t.Fatalf("after a power loss r2 holds %d merged blocks of the 96 merged: windows were not synced one by one", got)
	}
	for b := uint64(0); b < sizeBlocks; b += 37 {
		c.expect(b, b+1)
	}
}
