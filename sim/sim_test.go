package sim

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/replica"
)

// seedCount is how many swarm seeds TestSeeds runs: SIM_SEEDS, default
// 1000 (make test); make sim-long sets 10000.
func seedCount(t *testing.T) uint64 {
	if v := os.Getenv("SIM_SEEDS"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("SIM_SEEDS=%q: %v", v, err)
		}
		return n
	}
	if testing.Short() {
		return 100
	}
	return 1000
}

// seedWindow returns the first of 200 more swarm seeds for TestSeeds to
// run, drawn from SIM_SEED_WINDOW (make test sets it to the commit hash),
// so every commit explores seeds no earlier one ran.
func seedWindow(t *testing.T) (uint64, bool) {
	v := os.Getenv("SIM_SEED_WINDOW")
	if v == "" {
		return 0, false
	}
	if len(v) > 15 {
		v = v[:15]
	}
	h, err := strconv.ParseUint(v, 16, 64)
	if err != nil {
		t.Fatalf("SIM_SEED_WINDOW=%q: want a hex commit hash: %v", v, err)
	}
	from := 1_000_000 + h%1_000_000_000
	t.Logf("seed window: swarm seeds %d..%d (SIM_SEED_WINDOW=%s)", from, from+199, v)
	return from, true
}

// TestSeeds runs many swarm seeds (every fault knob drawn from the seed)
// and a slice of every named profile; every checker must pass on each.
func TestSeeds(t *testing.T) {
	n := seedCount(t)
	dir := t.TempDir()
	check := func(profile string, from, to uint64) {
		var failed []string
		RunSeeds(from, to, 0, Options{Profile: profile, TraceDir: dir}, func(r *Result) {
			if !r.OK() && len(failed) < 10 {
				failed = append(failed, fmt.Sprintf("%s\n    knobs: %s\n    %s\n    reproduce: go run ./cmd/drover sim --seed %d --faults %s",
					r.Describe(), r.Knobs, strings.Join(r.Failures, "\n    "), r.Seed, r.Profile))
			}
		})
		for _, f := range failed {
			t.Error(f)
		}
	}
	check("swarm", 1, 1+n)
	if from, ok := seedWindow(t); ok {
		check("swarm", from, from+200)
	}
	for _, p := range Profiles {
		if p != "swarm" {
			check(p, 1, 1+n/20)
		}
	}
}

// TestTraceHashStable: the same seed gives the same trace, run after run.
func TestTraceHashStable(t *testing.T) {
	for seed := uint64(1); seed <= 10; seed++ {
		a := Run(Options{Seed: seed, Profile: "all", Ops: 500})
		b := Run(Options{Seed: seed, Profile: "all", Ops: 500})
		if a.TraceHash != b.TraceHash || a.Events != b.Events {
			t.Errorf("seed %d: trace %016x (%d events) then %016x (%d events)", seed, a.TraceHash, a.Events, b.TraceHash, b.Events)
		}
	}
	if Run(Options{Seed: 1, Profile: "all", Ops: 500}).TraceHash == Run(Options{Seed: 2, Profile: "all", Ops: 500}).TraceHash {
		t.Error("seeds 1 and 2 gave the same trace")
	}
}

// TestRegressionSeeds pins every seed that once found a bug in the core.
// The fixed code takes other paths through them now; they stay anyway.
func TestRegressionSeeds(t *testing.T) {
	cases := []struct {
		seed    uint64
		profile string
		ops     int
		bug     string
	}{
		{1, "net", 1000, "a replica failing a membership change went on being rebuilt and was promoted stale"},
		{57, "swarm", 1500, "rebuild used the engine's chain, missing a snapshot layer; a request waited forever for a replica a rebuild abort had marked ERR"},
		{99, "swarm", 1500, "era boundary stuck when its engine died (simulator)"},
		{133, "swarm", 1500, "engine opened from an uncommitted membership: split brain on a 2-replica volume"},
		{109, "swarm", 1500, "one-sided ENOSPC left replicas diverged"},
		{27, "swarm", 1500, "trim during rebuild skipped its zero entry on the target"},
		{132, "swarm", 1500, "durability oracle ignored what a crash may bring back from an earlier era (simulator)"},
		{190, "swarm", 2000, "a membership without an RW replica was recorded; every later open failed"},
		{355, "swarm", 2000, "a rebuild target larger than the volume (interrupted expansion) failed every attempt"},
		{551, "swarm", 2000, "two engines took the same epoch and both served"},
		{642, "swarm", 2000, "era boundary missed when a replica restarted after the new engine started (simulator)"},
		{670, "swarm", 2000, "a replica that failed to load was never restarted (simulator watchdog)"},
		{72, "swarm", 2000, "bit rot in an active region settled into garbage (head: suspect blocks; snapshot layers: not settled)"},
		{942, "swarm", 2000, "a stale engine served a read older than a write the new engine acknowledged (read lease)"},
		{8, "crash", 2000, "the newest membership was chosen by generation alone; two engines had each recorded one"},
		{16, "crash", 2000, "a replica crash after a boundary's engine opened did not start another era (simulator)"},
		{448, "swarm", 2000, "a rebuild's OpSetChain cut a target an expand in flight had grown back to the old size; it stayed smaller than the volume"},
		{4, "replace", 2000, "a restarted engine forgot a failed spare member (ERR members were not recorded in the membership) and never replaced it"},
		{48, "replace", 2000, "the watchdog waited for a lost replica to come back before replacing a faulted engine (simulator)"},
		{14, "replace", 2000, "a replica lost right after a membership change dropped another: no engine could open again (the simulator now avoids the quorum rule's availability cost)"},
		{178, "swarm", 2000, "the lost replica became the lowest-named of a two-member membership after the engine dropped another first: no engine could open (the simulator now loses the highest-named)"},
		{784, "swarm", 2000, "a takeover fenced an engine with a revert in flight; the revert's outcome had no era boundary (simulator)"},
		{867, "swarm", 2000, "a revert task whose engine died during its shrink waited forever for the revert it then sent to the dead engine (simulator)"},
		{989, "swarm", 2000, "bit rot in an active region and a crash: every current replica settled block 1, and the source's rotted copy was kept; a copy another replica holds byte for byte is now preferred"},
		{110, "all", 2000, "as 989: the source's rotted block 7 was copied over a current replica's good one, which a stale replica held too"},
		{923, "swarm", 2000, "a revert was acknowledged while the replica that failed it was still RW in the committed membership; the change failed and the next engine opened from that replica (admin successes now wait for the commit)"},
		{1, "idle", 2000, "an idle volume never noticed a dead replica (heartbeat failures ignored)"},
		{324, "snap", 2000, "a revert that failed (volume faulted) after one replica took it: the engine died before the read deciding the outcome, and the next boundary did not allow the snapshot's values (simulator)"},
		{264, "swarm", 2000, "r1 wiped while r2 was partitioned; the engine then dropped r2, and its membership needed r1's vote, which a wiped replica no longer has: no engine could open (the simulator now strikes only the highest-named where the network may drop a member)"},
		{362, "swarm", 2000, "a replica crash struck an idle window's victim while it was down, and its restart came before the window's end (simulator)"},
		{177, "damage", 2000, "the final scrub found an index page damaged while the replica ran; convergence was checked while it was being rebuilt (simulator)"},
		{643, "swarm", 2000, "a boundary's engine died after the next engine had served: nothing read the boundary and the clients paused for good (simulator)"},
		{760, "swarm", 2000, "a layer write refused as corrupt named block 0, not the rotted block 3: the rebuild's splice repaired the wrong block and gave up"},
		{2969, "swarm", 2000, "a write lost on its way to a hole, flushed, then a crash: the settle took the zeros for a trim and lost the flushed write (trims now record intents)"},
		{1526, "swarm", 2000, "two members, r2's index damaged while r1 was partitioned: the engine dropped r1, then found r2 damaged, and no copy was left (the simulator no longer strikes two-member volumes where the network may drop one)"},
		{297, "swarm", 2000, "a lost write on r3 that no read reached: the final scrub read each range from the same replica every pass (simulator)"},
		{1088, "swarm", 2000, "a membership adopted at open was recorded on as Prev of the next, hiding that it was never committed: two engines opened disjoint memberships and acknowledged writes were lost"},
		{2148, "swarm", 2000, "damage found only when read: ENOSPC took four replicas out while the fifth held undiscovered damage, and no copy was left (the simulator now holds every fault until damage is found)"},
		{2319, "all", 5000, "an engine died with a write on two of three replicas; the next open's resync found the source's copy of that run rotted, copied the run to the targets from another replica and left the source on the old version: reads alternated between them (a run taken from another replica now repairs the source too)"},
		{234, "all", 5000, "r1's head rotted while r2 held the same block in its head; r2 missed the next snapshot, and a rebuild froze its head under the rebuild snapshot's name: the splice looked for the block only in the snapshot's layer and every rebuild stopped (the splice now reads every snapshot layer of every member)"},
		{1289, "swarm", 2000, "a takeover partitioned r2 for long while lost r3 was still a member, the engine replaced r2, and r1's rotted block had no copy left: three faults on one block (takeovers now partition nothing while faults are held; rot and lost writes strike only where another member holds the same bytes, and losses spare the last good copy)"},
		{3231, "swarm", 2000, "a new 2-replica volume's first membership reached only r2: r1, with no record, could not vote, and no engine could open again (a replica whose store the record names by its creation epoch now votes without a record of its own)"},
		{7953, "swarm", 2000, "as 3231"},
		{4084, "all", 5000, "an open's resync copied a block absent from the source's head over a target's written one: the target punched the block, a crash came before its absent entry was durable, and the settle took the zeros for a trim's (zeros' intent): block 0 read zeros where the snapshot below held flushed data (a block leaving the head is no longer punched)"},
		{3542, "all", 5000, "rot struck r2's copy of a write r1 and r3 held only in their page caches; a crash took theirs and r2, the only current replica left, could not be rebuilt from (simulator: rot needs a durable copy elsewhere)"},
		{4129, "all", 5000, "as 3542"},
		{51, "all", 5000, "r2 had missed block 20 when rot struck r1's copy; r3's copy, the only other, was overwritten by a write that was never acknowledged, and r1, opened alone as the lowest-named of two, held the only (rotted) copy of the current content: no rebuild got past it (simulator: rot needs every other member to hold the block durably)"},
		{896153250, "swarm", 2000, "an open adopted a record that removed r1, retried, and adopted a newer one that had added r1 back: r1 stayed tombstoned while a member, the next record listed it as both, and a later open found a current replica that was no member (nil member; a record's members now lift the engine's tombstones)"},
		{1628, "all", 5000, "a rebuild started while a user snapshot was in flight (r2 slow): the engine's chain took the rebuild snapshot first, the replicas the other way round; a revert to the user snapshot dropped the rebuild snapshot from the replicas but not the engine, and its merge failed for good (rebuilds now wait for chain operations)"},
		{5040, "all", 5000, "rot struck r3's head copy of block 7 while r1 and r2 held it; later r3 alone was current, and rebuilding r1 and r2 from it changed their chains, dropping the layers that held their good copies: every rebuild stopped at block 7 and rebuild snapshots piled up (a chain change now retires such layers, read by the splice, until the replica is RW again)"},
		{300005183, "swarm", 2000, "r3's disk was restored from a copy taken mid-rebuild (its own record had it WO; its durable marks matched the others', as no flush came after): the next open took it as current with half its data copied (a replica whose own record does not have it RW is rebuilt)"},
		{3413, "swarm", 2000, "bit rot in a snapshot layer on two replicas failed both when a delete merged it; the third then held the only copy of a block that rotted there too, and every rebuild stopped at it (merges now repair a rotted snapshot block from another replica)"},
	}
	for _, c := range cases {
		r := Run(Options{Seed: c.seed, Profile: c.profile, Ops: c.ops})
		if !r.OK() {
			t.Errorf("seed %d (%s; once: %s): %s\n  %s", c.seed, c.profile, c.bug, r.Describe(), strings.Join(r.Failures, "\n  "))
		}
	}
}

// TestCanaries plants each known bug and requires the checkers to catch
// it within a bounded number of seeds.
func TestCanaries(t *testing.T) {
	cases := []struct {
		name     string
		profile  string
		bugs     Bugs
		maxSeeds uint64
	}{
		{"ack after first replica", "crash", Bugs{Engine: engine.Bugs{AckAfterFirst: true}}, 30},
		{"flush skips sync", "crash", Bugs{Replica: replica.Bugs{SkipFlushSync: true}}, 30},
		// About 6% of split seeds catch it (11-12 of 200, with one or eight
		// rebuild copies in flight): 30 seeds missed it one time in six.
		{"replica accepts stale epochs", "split", Bugs{Replica: replica.Bugs{AcceptStaleEpochs: true}}, 60},
		{"rebuild skips the last run", "crash", Bugs{Engine: engine.Bugs{RebuildSkipLast: true}}, 30},
		{"open without quorum", "split", Bugs{Engine: engine.Bugs{NoQuorumOpen: true}}, 60},
		{"reads from rebuilding replicas", "crash", Bugs{Engine: engine.Bugs{ReadStaleReplicas: true}}, 30},
		{"no resync of crashed regions on reopen", "crash", Bugs{Engine: engine.Bugs{SkipResyncOnReopen: true}}, 60},
		{"heartbeat failures ignored (idle volume)", "idle", Bugs{Engine: engine.Bugs{IgnoreHeartbeats: true}}, 10},
		// Odd seeds recycle reply buffers as a production frontend does;
		// a repair still writing the reply's buffer then spreads garbage
		// (65 of 200 disk seeds caught it).
		{"read repair writes the reply's buffer", "disk", Bugs{Engine: engine.Bugs{RepairWritesReply: true}}, 30},
		// The disk and operator faults (disk.go): each must be caught
		// when the defence against it is taken away.
		{"open trusts a wiped replica", "wipe", Bugs{Engine: engine.Bugs{TrustEmptyReplicas: true, IgnoreDurableMark: true}}, 60},
		{"open trusts a replica restored from an old copy", "stale", Bugs{Engine: engine.Bugs{IgnoreDurableMark: true}}, 60},
		{"damaged index read as never written", "damage", Bugs{Replica: replica.Bugs{IgnoreIndexDamage: true}}, 60},
		{"reads skip checksums (lost writes served)", "lostwrite", Bugs{Replica: replica.Bugs{SkipReadChecksums: true}}, 60},
		// The activity log's limitation before intents: a settle that
		// takes any checksum keeps rot that a crash left in an active
		// region.
		{"settle keeps rot (no write intents)", "rotcrash", Bugs{Replica: replica.Bugs{SettleAnyChecksum: true}}, 60},
	}
	for _, c := range cases {
		caught := uint64(0)
		var why string
		for seed := uint64(1); seed <= c.maxSeeds && caught == 0; seed++ {
			r := Run(Options{Seed: seed, Profile: c.profile, Bugs: c.bugs})
			if !r.OK() {
				caught, why = seed, r.Failures[0]
			}
		}
		if caught == 0 {
			t.Errorf("canary %q (%s profile) was not caught in %d seeds", c.name, c.profile, c.maxSeeds)
			continue
		}
		t.Logf("canary %q caught at seed %d: %s", c.name, caught, why)
	}
}
