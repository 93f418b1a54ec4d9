package engine_test

import (
	"testing"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
)

// An idle volume notices a dead replica through its heartbeats: with no IO
// at all, the replica goes ERR within about a replica timeout, and a spare
// replaces it once it has stayed unreachable for ReplaceAfterTicks.
func TestHeartbeatFindsDeadReplicaWhileIdle(t *testing.T) {
	const blocks = 64
	cfg := engine.Config{Volume: "v", TimeoutTicks: 40, RebuildAfterTicks: 10, ReplaceAfterTicks: 100, Spares: []proto.ReplicaID{"s1"}}
	c := newCluster(t, 3, blocks*proto.BlockSize, cfg)
	c.AddNode("s1", blocks*proto.BlockSize)
	c.write(5, 55)
	c.settle()
	c.SetDown("r3", true)
	if !c.RunUntil(func() bool { return modes(c.Engine().Info())["r3"] == engine.ModeERR }, 2*40+10) {
		t.Fatalf("r3 down with no IO is not ERR after two timeouts: %+v", c.Engine().Info().Replicas)
	}
	if !c.RunUntil(func() bool {
		m := modes(c.Engine().Info())
		return m["s1"] == engine.ModeRW && m["r3"] == engine.ModeNone
	}, 2000) {
		t.Fatalf("r3 not replaced by s1 with no IO: %+v", c.Engine().Info().Replicas)
	}
	c.expect(5, 55)
	sameContent(t, c, "r1", "s1", blocks)
}

// A replica that restarted while the volume was idle may have lost
// unsynced writes: its heartbeat answer says it was not opened in this
// incarnation, so it goes ERR at once and is rebuilt in place.
func TestHeartbeatFindsRestartedReplica(t *testing.T) {
	const blocks = 64
	c := newCluster(t, 3, blocks*proto.BlockSize, engine.Config{Volume: "v", TimeoutTicks: 1000, RebuildAfterTicks: 5})
	c.write(7, 77) // not flushed: the crash may drop it on r2
	c.Crash("r2", func(store.LayerID, uint64, bool) bool { return false })
	if !c.RunUntil(func() bool { return modes(c.Engine().Info())["r2"] != engine.ModeRW }, 100) {
		t.Fatalf("restarted r2 still RW long after a heartbeat (the timeout is 1000 ticks): %+v", c.Engine().Info().Replicas)
	}
	if n := c.Engine().Info().Counters.HeartbeatFailures; n != 1 {
		t.Errorf("HeartbeatFailures = %d after one restarted replica's heartbeat, want 1", n)
	}
	if !c.RunUntil(func() bool { return modes(c.Engine().Info())["r2"] == engine.ModeRW }, 2000) {
		t.Fatalf("r2 not rebuilt: %+v", c.Engine().Info().Replicas)
	}
	sameContent(t, c, "r1", "r2", blocks)
	c.expect(7, 77)
}

// A heartbeat never faults the volume: a 2-replica volume whose
// lowest-named replica stops answering keeps it RW (the other alone is no
// quorum), and a 1-replica volume keeps its replica; both serve again
// once it answers, with no rebuild needed.
func TestHeartbeatNeverFaults(t *testing.T) {
	for _, n := range []int{1, 2} {
		c := newCluster(t, n, 16*proto.BlockSize, engine.Config{Volume: "v", TimeoutTicks: 20})
		c.write(1, 11)
		c.SetDown("r1", true)
		c.Run(200, 200)
		if ph, why := c.Engine().Phase(); ph != engine.PhaseServing || modes(c.Engine().Info())["r1"] != engine.ModeRW {
			t.Fatalf("%d replicas, r1 silent while idle: phase %s (%s), %+v", n, ph, why, c.Engine().Info().Replicas)
		}
		c.SetDown("r1", false)
		c.settle()
		c.expect(1, 11)
		c.write(2, 22)
	}
}
