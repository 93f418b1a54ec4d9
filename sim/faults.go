package sim

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"

	"github.com/drover-io/drover/core/engine"
)

// Knobs are the parameters of one run: cluster shape, workload and the
// fault mix. Profiles fix some of them; "swarm" draws them from the seed,
// so different seeds explore different fault mixes.
type Knobs struct {
	Replicas   int
	MinHealthy int
	SizeBlocks uint64
	HotBlocks  uint64 // clients touch blocks [0, HotBlocks)
	Clients    int
	MaxBlocks  uint32 // blocks per client request, at most
	ThinkUs    int64  // a client waits up to this between requests

	TickUs        int64 // engine tick
	TimeoutTicks  int64
	NetLatencyUs  int64 // one-way base latency
	NetJitterUs   int64
	DiskLatencyUs int64
	SlowReplica   int // index of a replica whose disk is 20x slower; -1 none

	DropPerMillion   int // a dropped message breaks its connection
	DupPerMillion    int
	SpikePerMillion  int
	SpikeUs          int64
	PartitionEveryUs int64 // mean gap between partitions (0: none)
	PartitionLenUs   int64

	ReadEIOPerMillion  int
	WriteEIOPerMillion int // a failed write or sync stops the replica
	NoSpacePerMillion  int

	ReplicaCrashEveryUs int64
	EngineCrashEveryUs  int64
	TakeoverEveryUs     int64 // a new engine while the old one still runs
	CrashAllEveryUs     int64 // power loss: every replica and the engine
	BitRotEveryUs       int64
	SnapshotEveryUs     int64
	ExpandEveryUs       int64
	RevertEveryUs       int64
	RestartAfterUs      int64
	// Spares are extra replicas the engine may rebuild in place of failed
	// members (under new IDs); LoseEveryUs destroys a member for good (its
	// disk is gone) while a spare is free, so it must be replaced.
	Spares      int
	LoseEveryUs int64
	// IdleEveryUs: mean gap between idle windows, in which clients stop
	// and a member dies with no IO flowing (idle.go).
	IdleEveryUs int64
	// Disk and operator faults (disk.go): a member's disk comes back
	// empty, its metadata or index is damaged, it is restored from an
	// old copy; a data write the disk acknowledged is lost.
	WipeEveryUs         int64
	DamageEveryUs       int64
	StaleEveryUs        int64
	LostWritePerMillion int
	// Copy shapes the engine's rebuild and resync copying (zero fields:
	// production's, under which a simulated volume is one window and
	// one run): small windows, runs and in-flight bounds make a rebuild
	// list window after window while copying, many runs at a time.
	Copy     engine.CopyShape
	FaultsUs int64 // faults stop (heal) at this virtual time at the latest
}

// Profiles lists the fault profiles by name.
var Profiles = []string{"none", "net", "disk", "crash", "split", "snap", "replace", "idle", "wipe", "damage", "stale", "lostwrite", "rotcrash", "all", "swarm"}

func baseKnobs() Knobs {
	return Knobs{Replicas: 3, MinHealthy: 1, SizeBlocks: 256, HotBlocks: 32, Clients: 4, MaxBlocks: 4, ThinkUs: 2000,
		TickUs: 1000, TimeoutTicks: 50, NetLatencyUs: 50, NetJitterUs: 100, DiskLatencyUs: 30,
		SlowReplica: -1, SpikeUs: 20_000, PartitionLenUs: 200_000, RestartAfterUs: 100_000,
		FaultsUs: 3_000_000}
}

// ProfileKnobs returns the knobs of a profile, drawing any random ones
// from rng.
func ProfileKnobs(name string, rng *rand.Rand) (Knobs, error) {
	k := baseKnobs()
	switch name {
	case "none":
	case "net":
		k.DropPerMillion, k.DupPerMillion, k.SpikePerMillion = 500, 2000, 2000
		k.PartitionEveryUs = 150_000
	case "disk":
		k.SlowReplica = 1
		k.ReadEIOPerMillion, k.WriteEIOPerMillion, k.NoSpacePerMillion = 300, 100, 300
		k.BitRotEveryUs = 50_000
	case "crash":
		k.ReplicaCrashEveryUs, k.EngineCrashEveryUs, k.CrashAllEveryUs = 100_000, 250_000, 300_000
	case "split":
		k.TakeoverEveryUs, k.PartitionEveryUs, k.DropPerMillion = 150_000, 150_000, 200
	case "snap":
		k.SnapshotEveryUs, k.ExpandEveryUs, k.ReplicaCrashEveryUs, k.RevertEveryUs = 30_000, 200_000, 200_000, 150_000
	case "all":
		k.DropPerMillion, k.DupPerMillion, k.SpikePerMillion, k.PartitionEveryUs = 200, 1000, 1000, 200_000
		k.ReadEIOPerMillion, k.WriteEIOPerMillion, k.NoSpacePerMillion, k.BitRotEveryUs = 100, 50, 100, 150_000
		k.ReplicaCrashEveryUs, k.EngineCrashEveryUs, k.CrashAllEveryUs, k.TakeoverEveryUs = 200_000, 400_000, 500_000, 450_000
		k.SnapshotEveryUs, k.ExpandEveryUs, k.RevertEveryUs = 80_000, 350_000, 300_000
	case "replace":
		k.Spares, k.LoseEveryUs, k.ReplicaCrashEveryUs, k.DropPerMillion = 2, 100_000, 400_000, 200
		k.SnapshotEveryUs, k.EngineCrashEveryUs = 200_000, 600_000
	case "idle":
		k.Spares, k.IdleEveryUs = 1, 300_000
	case "wipe":
		// No snapshots: a wiped replica's empty chain would lose the
		// chain vote at open, hiding whether the open trusts it.
		k.WipeEveryUs, k.EngineCrashEveryUs = 150_000, 500_000
	case "damage":
		k.DamageEveryUs, k.SnapshotEveryUs, k.ReplicaCrashEveryUs = 150_000, 150_000, 400_000
	case "stale":
		k.StaleEveryUs, k.ReplicaCrashEveryUs = 150_000, 400_000
	case "rotcrash":
		// Rot and power loss together, with one current copy often: what
		// a settle must tell apart from writes that landed.
		k.BitRotEveryUs, k.CrashAllEveryUs, k.ReplicaCrashEveryUs, k.IdleEveryUs, k.Spares = 40_000, 200_000, 250_000, 300_000, 1
	case "lostwrite":
		k.LostWritePerMillion, k.ReplicaCrashEveryUs, k.CrashAllEveryUs, k.SnapshotEveryUs = 3000, 300_000, 600_000, 200_000
	case "swarm":
		k = swarm(rng)
	default:
		return k, fmt.Errorf("unknown fault profile %q (known: %s)", name, strings.Join(Profiles, ", "))
	}
	return k, nil
}

// swarm draws every knob from the seed: each fault is on with some
// probability, at a random intensity.
func swarm(rng *rand.Rand) Knobs {
	k := baseKnobs()
	k.Replicas = 1 + rng.IntN(5)
	k.Clients = 1 + rng.IntN(6)
	k.HotBlocks = uint64(4 << rng.IntN(5))
	k.MaxBlocks = uint32(1 + rng.IntN(4))
	k.NetLatencyUs = int64(10 + rng.IntN(200))
	k.NetJitterUs = int64(rng.IntN(400))
	k.DiskLatencyUs = int64(5 + rng.IntN(200))
	on := func(pct int) bool { return rng.IntN(100) < pct }
	every := func(lo, hi int) int64 { return int64(lo+rng.IntN(hi-lo)) / 2 }
	if k.Replicas > 1 && on(30) {
		k.SlowReplica = rng.IntN(k.Replicas)
	}
	if on(50) {
		k.DropPerMillion = rng.IntN(1000)
	}
	if on(40) {
		k.DupPerMillion = rng.IntN(5000)
	}
	if on(40) {
		k.SpikePerMillion = rng.IntN(5000)
	}
	if on(40) {
		k.PartitionEveryUs = every(100_000, 1_000_000)
	}
	if on(40) {
		k.ReadEIOPerMillion = rng.IntN(1000)
	}
	if on(30) {
		k.WriteEIOPerMillion = rng.IntN(300)
	}
	if on(30) {
		k.NoSpacePerMillion = rng.IntN(1000)
	}
	if on(40) {
		k.ReplicaCrashEveryUs = every(100_000, 1_000_000)
	}
	if on(30) {
		k.EngineCrashEveryUs = every(200_000, 2_000_000)
	}
	if on(30) {
		k.TakeoverEveryUs = every(200_000, 2_000_000)
	}
	if on(30) {
		k.CrashAllEveryUs = every(300_000, 2_000_000)
	}
	if on(30) {
		k.BitRotEveryUs = every(50_000, 500_000)
	}
	if on(40) {
		k.SnapshotEveryUs = every(50_000, 500_000)
	}
	if on(20) {
		k.ExpandEveryUs = every(200_000, 1_000_000)
	}
	if on(20) {
		k.RevertEveryUs = every(200_000, 1_000_000)
	}
	return k
}

// swarmReplace draws the replacement knobs of a swarm run from their own
// PRNG (seeded from the seed), so that seeds where they are off replay
// exactly as before they existed.
func swarmReplace(k *Knobs, seed uint64) {
	rng := newRNG(seed ^ 0x7265706c616365)
	if k.Replicas < 2 || rng.IntN(100) >= 30 {
		return
	}
	k.Spares = 1 + rng.IntN(2)
	k.LoseEveryUs = int64(150_000 + rng.IntN(600_000))
}

// swarmIdle turns idle windows on for some swarm runs, drawn from their
// own PRNG for the same reason as swarmReplace.
func swarmIdle(k *Knobs, seed uint64) {
	rng := newRNG(seed ^ 0x69646c65)
	if k.Replicas < 2 || rng.IntN(100) >= 25 {
		return
	}
	k.IdleEveryUs = int64(300_000 + rng.IntN(900_000))
}

// swarmDisk turns the disk and operator faults on for some swarm runs,
// drawn from their own PRNG for the same reason as swarmReplace.
func swarmDisk(k *Knobs, seed uint64) {
	rng := newRNG(seed ^ 0x6469736b)
	on := func(pct int) bool { return rng.IntN(100) < pct }
	if k.Replicas >= 2 && on(15) {
		k.WipeEveryUs = int64(150_000 + rng.IntN(900_000))
	}
	if k.Replicas >= 2 && on(15) {
		k.DamageEveryUs = int64(150_000 + rng.IntN(900_000))
	}
	if k.Replicas >= 2 && on(15) {
		k.StaleEveryUs = int64(150_000 + rng.IntN(900_000))
	}
	if on(15) {
		k.LostWritePerMillion = rng.IntN(5000)
	}
}

// swarmCopyShape shrinks the copy shape of some swarm runs, drawn from
// its own PRNG for the same reason as swarmReplace.
func swarmCopyShape(k *Knobs, seed uint64) {
	rng := newRNG(seed ^ 0x636f7079)
	if rng.IntN(100) >= 40 {
		return
	}
	k.Copy = engine.CopyShape{WindowBlocks: uint64(4 << rng.IntN(5)), RunBlocks: uint64(1 + rng.IntN(8)),
		RunsInFlight: 1 + rng.IntN(8), FlushBytes: uint64(1+rng.IntN(16)) * 4096, FlushTicks: int64(rng.IntN(20)) - 1}
}

// String lists the knobs that are on, for failure reports.
func (k Knobs) String() string {
	parts := []string{fmt.Sprintf("replicas=%d clients=%d hot=%d maxblocks=%d net=%d±%dus disk=%dus",
		k.Replicas, k.Clients, k.HotBlocks, k.MaxBlocks, k.NetLatencyUs, k.NetJitterUs, k.DiskLatencyUs)}
	add := func(name string, v int64) {
		if v > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", name, v))
		}
	}
	if k.SlowReplica >= 0 {
		parts = append(parts, fmt.Sprintf("slow=r%d", k.SlowReplica+1))
	}
	add("drop/M", int64(k.DropPerMillion))
	add("dup/M", int64(k.DupPerMillion))
	add("spike/M", int64(k.SpikePerMillion))
	add("partition-every-us", k.PartitionEveryUs)
	add("read-eio/M", int64(k.ReadEIOPerMillion))
	add("write-eio/M", int64(k.WriteEIOPerMillion))
	add("enospc/M", int64(k.NoSpacePerMillion))
	add("replica-crash-every-us", k.ReplicaCrashEveryUs)
	add("engine-crash-every-us", k.EngineCrashEveryUs)
	add("takeover-every-us", k.TakeoverEveryUs)
	add("crash-all-every-us", k.CrashAllEveryUs)
	add("bitrot-every-us", k.BitRotEveryUs)
	add("snapshot-every-us", k.SnapshotEveryUs)
	add("expand-every-us", k.ExpandEveryUs)
	add("revert-every-us", k.RevertEveryUs)
	add("spares", int64(k.Spares))
	add("lose-every-us", k.LoseEveryUs)
	add("idle-every-us", k.IdleEveryUs)
	add("wipe-every-us", k.WipeEveryUs)
	add("damage-every-us", k.DamageEveryUs)
	add("stale-every-us", k.StaleEveryUs)
	add("lost-write/M", int64(k.LostWritePerMillion))
	add("copy-window-blocks", int64(k.Copy.WindowBlocks))
	add("copy-run-blocks", int64(k.Copy.RunBlocks))
	add("copy-runs-in-flight", int64(k.Copy.RunsInFlight))
	add("copy-flush-bytes", int64(k.Copy.FlushBytes))
	add("copy-flush-ticks", k.Copy.FlushTicks)
	sort.Strings(parts[1:])
	return strings.Join(parts, " ")
}
