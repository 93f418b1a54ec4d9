package schedule

import (
	"errors"
	"fmt"
	"math/big"
	"strings"
	"testing"

	"pgregory.net/rapid"
)

const gib = int64(1) << 30

// genCluster draws a small cluster: few nodes, zones, tags and disks, so
// that collisions (shared zones, full disks, missing tags) are common.
func genCluster(t *rapid.T) []Node {
	tags := []string{"ssd", "hdd", "fast"}
	nodeCount := rapid.IntRange(0, 6).Draw(t, "nodes")
	nodes := make([]Node, nodeCount)
	for i := range nodes {
		n := &nodes[i]
		n.Name = fmt.Sprintf("n%d", i)
		n.Zone = rapid.SampledFrom([]string{"", "z1", "z2", "z3"}).Draw(t, "zone")
		n.Ready = rapid.Float64Range(0, 1).Draw(t, "ready") < 0.85
		n.AllowScheduling = rapid.Float64Range(0, 1).Draw(t, "allow") < 0.9
		n.Tags = rapid.SliceOfDistinct(rapid.SampledFrom(tags), rapid.ID[string]).Draw(t, "ntags")
		diskCount := rapid.IntRange(0, 3).Draw(t, "disks")
		for j := 0; j < diskCount; j++ {
			max := rapid.Int64Range(1, 64).Draw(t, "max") * gib
			d := Disk{
				Name:                  fmt.Sprintf("d%d", j),
				AllowScheduling:       rapid.Float64Range(0, 1).Draw(t, "dallow") < 0.9,
				Tags:                  rapid.SliceOfDistinct(rapid.SampledFrom(tags), rapid.ID[string]).Draw(t, "dtags"),
				StorageMaximumBytes:   max,
				StorageAvailableBytes: rapid.Int64Range(0, max).Draw(t, "avail"),
				StorageReservedBytes:  rapid.Int64Range(0, max/2).Draw(t, "reserved"),
				StorageScheduledBytes: rapid.Int64Range(0, 2*max).Draw(t, "scheduled"),
			}
			n.Disks = append(n.Disks, d)
		}
	}
	return nodes
}

func genSettings(t *rapid.T) Settings {
	return Settings{
		MinimalAvailablePct:  rapid.Int64Range(0, 100).Draw(t, "minpct"),
		OverProvisioningPct:  rapid.Int64Range(0, 500).Draw(t, "overpct"),
		NodeSoftAntiAffinity: rapid.Bool().Draw(t, "nodesoft"),
		ZoneSoftAntiAffinity: rapid.Bool().Draw(t, "zonesoft"),
		DiskSoftAntiAffinity: rapid.Bool().Draw(t, "disksoft"),
	}
}

func genRequest(t *rapid.T, nodes []Node) Request {
	req := Request{
		SizeBytes:    rapid.Int64Range(1, 16).Draw(t, "size") * gib / 4,
		NodeSelector: rapid.SliceOfNDistinct(rapid.SampledFrom([]string{"ssd", "fast"}), 0, 1, rapid.ID[string]).Draw(t, "nsel"),
		DiskSelector: rapid.SliceOfNDistinct(rapid.SampledFrom([]string{"ssd", "hdd"}), 0, 1, rapid.ID[string]).Draw(t, "dsel"),
	}
	if len(nodes) > 0 && rapid.Float64Range(0, 1).Draw(t, "strict") < 0.2 {
		req.OnlyNode = nodes[rapid.IntRange(0, len(nodes)-1).Draw(t, "only")].Name
	}
	if len(nodes) > 0 {
		for i := rapid.IntRange(0, 2).Draw(t, "existing"); i > 0; i-- {
			n := nodes[rapid.IntRange(0, len(nodes)-1).Draw(t, "enode")]
			disk := "gone"
			if len(n.Disks) > 0 {
				disk = n.Disks[rapid.IntRange(0, len(n.Disks)-1).Draw(t, "edisk")].Name
			}
			req.Existing = append(req.Existing, Placement{n.Name, disk})
		}
	}
	return req
}

// oracleFits is the rules written out again, plainly and with big
// integers, to check Place against.
func oracleFits(n Node, d Disk, req Request, s Settings, nodes []Node) bool {
	zoneOf := map[string]string{}
	for _, m := range nodes {
		zoneOf[m.Name] = m.Zone
	}
	onNode, inZone, onDisk := false, false, false
	for _, p := range req.Existing {
		onNode = onNode || p.Node == n.Name
		inZone = inZone || (n.Zone != "" && zoneOf[p.Node] == n.Zone)
		onDisk = onDisk || (p.Node == n.Name && p.Disk == d.Name)
	}
	for _, w := range req.NodeSelector {
		if !strings.Contains(" "+strings.Join(n.Tags, " ")+" ", " "+w+" ") {
			return false
		}
	}
	for _, w := range req.DiskSelector {
		if !strings.Contains(" "+strings.Join(d.Tags, " ")+" ", " "+w+" ") {
			return false
		}
	}
	if !n.Ready || !n.AllowScheduling || !d.AllowScheduling || (req.OnlyNode != "" && n.Name != req.OnlyNode) {
		return false
	}
	if (onNode && !s.NodeSoftAntiAffinity) || (inZone && !s.ZoneSoftAntiAffinity) || (onDisk && !s.DiskSoftAntiAffinity) {
		return false
	}
	floor := new(big.Int).Mul(big.NewInt(d.StorageMaximumBytes), big.NewInt(s.MinimalAvailablePct))
	floor.Div(floor, big.NewInt(100))
	if big.NewInt(d.StorageAvailableBytes).Cmp(floor) <= 0 {
		return false
	}
	usable := max(d.StorageMaximumBytes-d.StorageReservedBytes, 0)
	limit := new(big.Int).Mul(big.NewInt(usable), big.NewInt(s.OverProvisioningPct))
	limit.Div(limit, big.NewInt(100))
	need := big.NewInt(d.StorageScheduledBytes + req.SizeBytes)
	return need.Cmp(limit) <= 0
}

// class is the oracle's preference class (lower is better).
func class(n Node, d Disk, req Request, nodes []Node) int {
	zoneOf := map[string]string{}
	for _, m := range nodes {
		zoneOf[m.Name] = m.Zone
	}
	c := 0
	for _, p := range req.Existing {
		if p.Node == n.Name {
			c |= 4
		}
		if n.Zone != "" && zoneOf[p.Node] == n.Zone {
			c |= 2
		}
		if p.Node == n.Name && p.Disk == d.Name {
			c |= 1
		}
	}
	return c
}

// TestPlaceObeysRulesAndPrefersLeastUsed checks Place against the oracle:
// what it picks fits every hard rule, nothing fitting is in a better
// class or has more free bytes in the same class, and when it finds
// nothing, nothing fits.
func TestPlaceObeysRulesAndPrefersLeastUsed(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		nodes := genCluster(t)
		s := genSettings(t)
		req := genRequest(t, nodes)
		p, err := Place(nodes, req, s)
		var bestClass = 8
		var fitting []Placement
		for _, n := range nodes {
			for _, d := range n.Disks {
				if oracleFits(n, d, req, s, nodes) {
					fitting = append(fitting, Placement{n.Name, d.Name})
					bestClass = min(bestClass, class(n, d, req, nodes))
				}
			}
		}
		if err != nil {
			var ue *UnschedulableError
			if !errors.As(err, &ue) {
				t.Fatalf("Place: %v", err)
			}
			if len(fitting) > 0 {
				t.Fatalf("Place found nothing (%v) but %v fit", err, fitting)
			}
			return
		}
		n, d := find(nodes, p)
		if !oracleFits(n, d, req, s, nodes) {
			t.Fatalf("Place chose %v, which breaks a rule", p)
		}
		if c := class(n, d, req, nodes); c != bestClass {
			t.Fatalf("Place chose %v in class %d, but class %d fits", p, c, bestClass)
		}
		for _, m := range nodes {
			for _, e := range m.Disks {
				if oracleFits(m, e, req, s, nodes) && class(m, e, req, nodes) == bestClass && freeBytes(&e) > freeBytes(&d) {
					t.Fatalf("Place chose %v with %d free, but %s/%s has %d", p, freeBytes(&d), m.Name, e.Name, freeBytes(&e))
				}
			}
		}
	})
}

// TestPlaceManyNeverSharesANode places whole volumes with node
// anti-affinity hard: every replica lands on its own node, and no disk
// is scheduled past its over-provisioning limit.
func TestPlaceManyNeverSharesANode(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		nodes := genCluster(t)
		s := genSettings(t)
		s.NodeSoftAntiAffinity = false
		req := genRequest(t, nodes)
		req.Existing = nil
		count := rapid.IntRange(1, 5).Draw(t, "count")
		ps, err := PlaceMany(nodes, req, count, s)
		if len(ps) < count && err == nil {
			t.Fatalf("PlaceMany placed %d of %d without an error", len(ps), count)
		}
		seen := map[string]bool{}
		added := map[Placement]int64{}
		for _, p := range ps {
			if seen[p.Node] {
				t.Fatalf("two replicas on node %s: %v", p.Node, ps)
			}
			seen[p.Node] = true
			added[p] += req.SizeBytes
		}
		for p, bytes := range added {
			_, d := find(nodes, p)
			limit := mulDiv(max(d.StorageMaximumBytes-d.StorageReservedBytes, 0), s.OverProvisioningPct, 100)
			if d.StorageScheduledBytes+bytes > limit {
				t.Fatalf("disk %v scheduled to %d, past its limit %d", p, d.StorageScheduledBytes+bytes, limit)
			}
		}
	})
}

// TestPlaceIsDeterministic shuffles the nodes and their disks: the
// placement, or the error's text, stays the same.
func TestPlaceIsDeterministic(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		nodes := genCluster(t)
		s := genSettings(t)
		req := genRequest(t, nodes)
		p1, err1 := Place(nodes, req, s)
		shuffled := cloneNodes(nodes)
		perm := rapid.Permutation(shuffled).Draw(t, "perm")
		for i := range perm {
			perm[i].Disks = rapid.Permutation(perm[i].Disks).Draw(t, "dperm")
		}
		p2, err2 := Place(perm, req, s)
		if p1 != p2 || fmt.Sprint(err1) != fmt.Sprint(err2) {
			t.Fatalf("input order changed the result: %v %v vs %v %v", p1, err1, p2, err2)
		}
	})
}

func find(nodes []Node, p Placement) (Node, Disk) {
	for _, n := range nodes {
		for _, d := range n.Disks {
			if n.Name == p.Node && d.Name == p.Disk {
				return n, d
			}
		}
	}
	panic(fmt.Sprintf("placement %v names no disk", p))
}

// TestUnschedulableSaysWhy checks the reasons a user reads in the
// volume's Scheduled condition.
func TestUnschedulableSaysWhy(t *testing.T) {
	nodes := []Node{
		{Name: "a", Ready: true, AllowScheduling: true, Disks: []Disk{{Name: "d", AllowScheduling: true,
			StorageMaximumBytes: 100 * gib, StorageAvailableBytes: 90 * gib}}},
		{Name: "b", Ready: false, AllowScheduling: true},
		{Name: "c", Ready: true, AllowScheduling: true, Disks: []Disk{{Name: "d", AllowScheduling: true,
			StorageMaximumBytes: 10 * gib, StorageAvailableBytes: 9 * gib}}},
		{Name: "d", Ready: true, AllowScheduling: true, Tags: []string{"hdd"}},
	}
	_, err := Place(nodes, Request{SizeBytes: 20 * gib, Existing: []Placement{{"a", "d"}}}, DefaultSettings)
	want := "no disk fits: node a: already holds a replica of the volume; node b: not ready; " +
		"node c: disk d has 10.0 GiB left to schedule (100% over-provisioning), needs 20.0 GiB; node d: has no disks"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
	_, err = Place(nodes, Request{SizeBytes: 20 * gib, NodeSelector: []string{"ssd"}}, DefaultSettings)
	if err == nil || !strings.Contains(err.Error(), "node a: lacks node tags [ssd]") {
		t.Fatalf("selector: got %v", err)
	}
	if _, err := Place(nodes, Request{SizeBytes: 0}, DefaultSettings); err == nil {
		t.Fatal("size 0 was accepted")
	}
	if _, err := Place(append(nodes, nodes[0]), Request{SizeBytes: gib}, DefaultSettings); err == nil || !strings.Contains(err.Error(), "listed twice") {
		t.Fatalf("duplicate node: got %v", err)
	}
}

func TestMulDivSaturates(t *testing.T) {
	if got := mulDiv(1<<62, 1000, 100); got != 1<<63-1 {
		t.Fatalf("mulDiv overflow: %d", got)
	}
	if got := mulDiv(10*gib, 150, 100); got != 15*gib {
		t.Fatalf("mulDiv: %d", got)
	}
}

// TestFarthest checks the replica best-effort locality drops: never the
// engine's, another zone's first, then a doubled-up node's, then the
// last by name; and the same whatever the order.
func TestFarthest(t *testing.T) {
	nodes := []Node{{Name: "a", Zone: "z1"}, {Name: "b", Zone: "z1"}, {Name: "c", Zone: "z2"}, {Name: "d"}}
	cases := []struct {
		engine string
		reps   []Placement
		want   Placement
		ok     bool
	}{
		{"a", []Placement{{"a", "d"}, {"b", "d"}, {"c", "d"}}, Placement{"c", "d"}, true},
		{"a", []Placement{{"a", "d"}, {"b", "d"}, {"d", "d"}}, Placement{"d", "d"}, true},
		{"d", []Placement{{"d", "d"}, {"a", "d1"}, {"a", "d2"}, {"c", "d"}}, Placement{"a", "d2"}, true},
		{"a", []Placement{{"a", "d"}}, Placement{}, false},
	}
	for _, tc := range cases {
		for _, reps := range [][]Placement{tc.reps, reversed(tc.reps)} {
			got, ok := Farthest(nodes, tc.engine, reps)
			if got != tc.want || ok != tc.ok {
				t.Errorf("Farthest(%s, %v) = %v %v, want %v %v", tc.engine, reps, got, ok, tc.want, tc.ok)
			}
		}
	}
}

func reversed(p []Placement) []Placement {
	out := make([]Placement, len(p))
	for i := range p {
		out[len(p)-1-i] = p[i]
	}
	return out
}
