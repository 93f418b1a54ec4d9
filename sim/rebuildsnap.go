package sim

import (
	"fmt"
	"strings"
)

// rebuildSnapshotPrefix is how the engine names the snapshots rebuilds
// take (rebuild-<epoch>-<n>); it is reserved, so no user snapshot has it.
const rebuildSnapshotPrefix = "rebuild-"

// rebuildSnapshotsLeft lists, as "who:name", the rebuild snapshots that
// the engine's chain or a member replica's chain still holds. Once every
// replica is RW the engine merges them away (engine.dropRebuildSnapshots),
// so convergence waits until none is left: a volume that keeps one holds
// a second full copy of its data for good.
func (s *Sim) rebuildSnapshotsLeft(en *engineNode) []string {
	var left []string
	add := func(who string, chain []string) {
		for _, n := range chain {
			if strings.HasPrefix(n, rebuildSnapshotPrefix) {
				left = append(left, who+":"+n)
			}
		}
	}
	add("engine", en.e.Info().Chain)
	for _, n := range s.memberNodes() {
		if n.r != nil {
			add(string(n.id), n.r.Info().Chain)
		}
	}
	return left
}

// describeRebuildSnapshots says which rebuild snapshots are left, for a
// liveness failure ("" when none is).
func (s *Sim) describeRebuildSnapshots(en *engineNode) string {
	left := s.rebuildSnapshotsLeft(en)
	if len(left) == 0 {
		return ""
	}
	if len(left) > 6 {
		// A rebuild failing over and over leaves one per attempt.
		return fmt.Sprintf("; %d rebuild snapshots left with every replica RW: %s ... %s", len(left),
			strings.Join(left[:3], " "), strings.Join(left[len(left)-3:], " "))
	}
	return fmt.Sprintf("; rebuild snapshots left with every replica RW: %s", strings.Join(left, " "))
}
