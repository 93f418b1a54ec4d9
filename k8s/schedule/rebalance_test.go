package schedule

import (
	"fmt"
	"testing"

	"pgregory.net/rapid"
)

// genReplicas draws a volume's replicas on the cluster's disks, often
// sharing nodes and zones.
func genReplicas(t *rapid.T, nodes []Node) []Placement {
	var out []Placement
	for i := rapid.IntRange(1, 4).Draw(t, "replicas"); i > 0; i-- {
		n := nodes[rapid.IntRange(0, len(nodes)-1).Draw(t, "rnode")]
		if len(n.Disks) == 0 {
			continue
		}
		out = append(out, Placement{n.Name, n.Disks[rapid.IntRange(0, len(n.Disks)-1).Draw(t, "rdisk")].Name})
	}
	return out
}

// TestRebalanceImprovesAndConverges: a move takes a replica the volume
// has to where Place puts a new replica once that one is gone (so every
// placement rule holds), strictly improves the spread, and repeated moves
// stop (at most one per replica and node or zone gained). The same input
// in another order gives the same move.
func TestRebalanceImprovesAndConverges(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		nodes := genCluster(t)
		if len(nodes) == 0 {
			return
		}
		if rapid.Float64Range(0, 1).Draw(t, "roomy") < 0.7 {
			// Mostly healthy clusters with room, where moves happen.
			for i := range nodes {
				nodes[i].Ready, nodes[i].AllowScheduling, nodes[i].Tags = true, true, []string{"ssd", "fast"}
				for j := range nodes[i].Disks {
					d := &nodes[i].Disks[j]
					d.AllowScheduling, d.Tags = true, []string{"ssd", "hdd"}
					d.StorageAvailableBytes, d.StorageReservedBytes, d.StorageScheduledBytes = d.StorageMaximumBytes, 0, 0
				}
			}
		}
		s := genSettings(t)
		req := genRequest(t, nodes)
		req.OnlyNode = "" // strict-local volumes are never balanced
		zones := rapid.Bool().Draw(t, "zones")
		replicas := genReplicas(t, nodes)
		for step := 0; ; step++ {
			if step > 2*len(nodes)+len(replicas) {
				t.Fatalf("no end to moves: %v", replicas)
			}
			m, ok := Rebalance(nodes, req, replicas, s, zones)
			shuffled := cloneNodes(nodes)
			perm := rapid.Permutation(shuffled).Draw(t, "perm")
			m2, ok2 := Rebalance(perm, req, rapid.Permutation(replicas).Draw(t, "rperm"), s, zones)
			if m != m2 || ok != ok2 {
				t.Fatalf("input order changed the move: %v %v vs %v %v", m, ok, m2, ok2)
			}
			if !ok {
				return
			}
			others := withoutOne(replicas, m.From)
			if len(others) == len(replicas) {
				t.Fatalf("move from %v, which holds no replica of %v", m.From, replicas)
			}
			r := req
			r.Existing = others
			s2 := s
			s2.NodeSoftAntiAffinity = false
			if want, err := Place(nodes, r, s2); err != nil || want != m.To {
				t.Fatalf("move to %v, Place says %v %v", m.To, want, err)
			}
			after := append(others, m.To)
			if !SpreadOf(nodes, replicas).less(SpreadOf(nodes, after), zones) {
				t.Fatalf("move %v does not improve the spread: %+v -> %+v", m, SpreadOf(nodes, replicas), SpreadOf(nodes, after))
			}
			replicas = after
		}
	})
}

func TestRebalanceExamples(t *testing.T) {
	disk := func(name string) Disk {
		return Disk{Name: name, AllowScheduling: true, StorageMaximumBytes: 100 * gib, StorageAvailableBytes: 100 * gib}
	}
	node := func(name, zone string) Node {
		return Node{Name: name, Zone: zone, Ready: true, AllowScheduling: true, Disks: []Disk{disk("d0"), disk("d1")}}
	}
	req := Request{SizeBytes: gib}
	cases := []struct {
		nodes    []Node
		replicas []Placement
		zones    bool
		want     string
	}{
		{[]Node{node("a", ""), node("b", "")}, []Placement{{"a", "d0"}, {"a", "d1"}}, false, "{{a d0} {b d0}} true"},
		{[]Node{node("a", ""), node("b", "")}, []Placement{{"a", "d0"}, {"b", "d1"}}, false, "{{ } { }} false"},
		// Zones count only in best-effort.
		{[]Node{node("a", "z1"), node("b", "z1"), node("c", "z2")}, []Placement{{"a", "d0"}, {"b", "d0"}}, false, "{{ } { }} false"},
		{[]Node{node("a", "z1"), node("b", "z1"), node("c", "z2")}, []Placement{{"a", "d0"}, {"b", "d0"}}, true, "{{a d0} {c d0}} true"},
		// A node that is not ready takes nothing.
		{[]Node{node("a", ""), {Name: "b", AllowScheduling: true, Disks: []Disk{disk("d0")}}}, []Placement{{"a", "d0"}, {"a", "d1"}}, false, "{{ } { }} false"},
	}
	for i, c := range cases {
		m, ok := Rebalance(c.nodes, req, c.replicas, DefaultSettings, c.zones)
		if got := fmt.Sprint(m, " ", ok); got != c.want {
			t.Errorf("case %d: %s, want %s", i, got, c.want)
		}
	}
}
