// Package schedule places a volume's replicas on nodes' disks. It is pure:
// its inputs are the nodes with their disks, the volume's wants and the
// cluster's settings, and its outputs are placements or the reasons none
// fits; the same input always gives the same output, whatever order the
// nodes and disks come in. The manager's replica controller turns CRs into
// these inputs and writes the results back.
//
// The rules, in the order they are applied:
//
//   - A strict-local volume's replica goes only to the node its engine
//     runs on (Request.OnlyNode).
//   - Node anti-affinity is hard: two replicas of a volume never share a
//     node, unless Settings.NodeSoftAntiAffinity allows it as a last
//     resort (and then never on one disk unless disk anti-affinity is soft).
//   - A node must be ready, allow scheduling and hold every tag of the
//     volume's node selector; a disk must allow scheduling and hold every
//     tag of its disk selector.
//   - Minimal available: a disk whose free bytes are at or below
//     MinimalAvailablePct of its size takes no new replica.
//   - Over-provisioning: the sizes of the replicas scheduled on a disk plus
//     the new one may add up to OverProvisioningPct of the disk's size less
//     its reserved bytes.
//   - Zone and disk anti-affinity are soft by default: a node in a zone
//     with no replica of the volume is preferred, then a disk with none;
//     with ZoneSoftAntiAffinity (DiskSoftAntiAffinity) false, sharing is
//     refused instead.
//   - Among the disks that remain equally preferred, the least used one
//     wins: most free bytes, then node and disk name.
package schedule

import (
	"fmt"
	"math/bits"
	"sort"
	"strings"
)

// Disk is one disk of a node as the scheduler sees it.
type Disk struct {
	Name            string
	AllowScheduling bool
	Tags            []string
	// StorageMaximumBytes is the disk filesystem's size.
	StorageMaximumBytes int64
	// StorageAvailableBytes is what is free on it now.
	StorageAvailableBytes int64
	// StorageReservedBytes is what Drover must leave to others.
	StorageReservedBytes int64
	// StorageScheduledBytes is the sum of the sizes of the replicas
	// already scheduled on it.
	StorageScheduledBytes int64
}

// Node is one node as the scheduler sees it.
type Node struct {
	Name            string
	Zone            string // "" means the node's zone is unknown: no zone rule applies
	Ready           bool
	AllowScheduling bool
	Tags            []string
	Disks           []Disk
}

// Settings are the cluster settings the rules read.
type Settings struct {
	MinimalAvailablePct  int64
	OverProvisioningPct  int64
	NodeSoftAntiAffinity bool
	ZoneSoftAntiAffinity bool
	DiskSoftAntiAffinity bool
}

// DefaultSettings are the defaults of the manager's Settings.
var DefaultSettings = Settings{MinimalAvailablePct: 25, OverProvisioningPct: 100,
	ZoneSoftAntiAffinity: true, DiskSoftAntiAffinity: true}

// Placement is a replica's node and disk.
type Placement struct {
	Node string
	Disk string
}

// Request is one volume's wants.
type Request struct {
	SizeBytes    int64
	NodeSelector []string
	DiskSelector []string
	// Existing are the placements of the volume's replicas that count
	// for anti-affinity (every replica not being replaced).
	Existing []Placement
	// OnlyNode, when set, is the one node the replica may go to: a
	// strict-local volume's replica goes where its engine runs.
	OnlyNode string
}

// UnschedulableError says why no disk fits a replica. Reasons holds one
// line per node, sorted by node name.
type UnschedulableError struct {
	Reasons []string
}

func (e *UnschedulableError) Error() string {
	if len(e.Reasons) == 0 {
		return "no node is registered"
	}
	return "no disk fits: " + strings.Join(e.Reasons, "; ")
}

// candidate is a disk that fits, with its preference class (lower is better).
type candidate struct {
	node  *Node
	disk  *Disk
	class int
}

// Place chooses a disk for one new replica, or returns an
// *UnschedulableError saying why each node cannot take it.
func Place(nodes []Node, req Request, s Settings) (Placement, error) {
	if req.SizeBytes <= 0 {
		return Placement{}, fmt.Errorf("schedule: size %d is not positive", req.SizeBytes)
	}
	sorted := sortedNodes(nodes)
	if err := checkNames(sorted); err != nil {
		return Placement{}, err
	}
	occ := occupancy(sorted, req.Existing)
	var best *candidate
	var reasons []string
	for i := range sorted {
		n := &sorted[i]
		cands, why := nodeCandidates(n, req, s, occ)
		if len(cands) == 0 {
			reasons = append(reasons, fmt.Sprintf("node %s: %s", n.Name, why))
			continue
		}
		for j := range cands {
			if best == nil || better(&cands[j], best) {
				c := cands[j]
				best = &c
			}
		}
	}
	if best == nil {
		return Placement{}, &UnschedulableError{Reasons: reasons}
	}
	return Placement{Node: best.node.Name, Disk: best.disk.Name}, nil
}

// PlaceMany chooses disks for count new replicas, one after another, each
// seeing the ones before it. It returns the placements it found and, when
// fewer than count fit, the error for the first that did not.
func PlaceMany(nodes []Node, req Request, count int, s Settings) ([]Placement, error) {
	nodes = cloneNodes(nodes)
	existing := append([]Placement(nil), req.Existing...)
	var out []Placement
	for i := 0; i < count; i++ {
		r := req
		r.Existing = existing
		p, err := Place(nodes, r, s)
		if err != nil {
			return out, err
		}
		out = append(out, p)
		existing = append(existing, p)
		chargeDisk(nodes, p, req.SizeBytes)
	}
	return out, nil
}

// occupancyInfo counts the volume's replicas per node, zone and disk.
type occupancyInfo struct {
	nodes map[string]int
	zones map[string]int
	disks map[Placement]int
}

func occupancy(nodes []Node, existing []Placement) occupancyInfo {
	zoneOf := make(map[string]string, len(nodes))
	for _, n := range nodes {
		zoneOf[n.Name] = n.Zone
	}
	o := occupancyInfo{nodes: map[string]int{}, zones: map[string]int{}, disks: map[Placement]int{}}
	for _, p := range existing {
		o.nodes[p.Node]++
		o.disks[p]++
		if z := zoneOf[p.Node]; z != "" {
			o.zones[z]++
		}
	}
	return o
}

// nodeCandidates returns the disks of n that fit, or why none does.
func nodeCandidates(n *Node, req Request, s Settings, occ occupancyInfo) ([]candidate, string) {
	switch {
	case req.OnlyNode != "" && n.Name != req.OnlyNode:
		return nil, fmt.Sprintf("not %s, where the strict-local volume's engine runs", req.OnlyNode)
	case !n.Ready:
		return nil, "not ready"
	case !n.AllowScheduling:
		return nil, "scheduling disabled"
	case !hasAll(n.Tags, req.NodeSelector):
		return nil, fmt.Sprintf("lacks node tags %v", missing(n.Tags, req.NodeSelector))
	case occ.nodes[n.Name] > 0 && !s.NodeSoftAntiAffinity:
		return nil, "already holds a replica of the volume"
	case n.Zone != "" && occ.zones[n.Zone] > 0 && !s.ZoneSoftAntiAffinity:
		return nil, fmt.Sprintf("zone %s already holds a replica of the volume", n.Zone)
	}
	if len(n.Disks) == 0 {
		return nil, "has no disks"
	}
	var cands []candidate
	var whys []string
	for j := range n.Disks {
		d := &n.Disks[j]
		if why := diskMisfit(n, d, req, s, occ); why != "" {
			whys = append(whys, fmt.Sprintf("disk %s %s", d.Name, why))
			continue
		}
		class := 0
		if occ.nodes[n.Name] > 0 {
			class += 4
		}
		if n.Zone != "" && occ.zones[n.Zone] > 0 {
			class += 2
		}
		if occ.disks[Placement{n.Name, d.Name}] > 0 {
			class++
		}
		cands = append(cands, candidate{node: n, disk: d, class: class})
	}
	return cands, strings.Join(whys, ", ")
}

// diskMisfit says why d cannot take the replica, or "" when it can.
func diskMisfit(n *Node, d *Disk, req Request, s Settings, occ occupancyInfo) string {
	switch {
	case !d.AllowScheduling:
		return "has scheduling disabled"
	case !hasAll(d.Tags, req.DiskSelector):
		return fmt.Sprintf("lacks disk tags %v", missing(d.Tags, req.DiskSelector))
	case occ.disks[Placement{n.Name, d.Name}] > 0 && !s.DiskSoftAntiAffinity:
		return "already holds a replica of the volume"
	}
	if floor := mulDiv(d.StorageMaximumBytes, s.MinimalAvailablePct, 100); d.StorageAvailableBytes <= floor {
		return fmt.Sprintf("has %s free, at or below the minimal %d%% (%s)",
			bytesString(d.StorageAvailableBytes), s.MinimalAvailablePct, bytesString(floor))
	}
	usable := d.StorageMaximumBytes - d.StorageReservedBytes
	if usable < 0 {
		usable = 0
	}
	limit := mulDiv(usable, s.OverProvisioningPct, 100)
	if d.StorageScheduledBytes > limit || req.SizeBytes > limit-d.StorageScheduledBytes {
		return fmt.Sprintf("has %s left to schedule (%d%% over-provisioning), needs %s",
			bytesString(max(limit-d.StorageScheduledBytes, 0)), s.OverProvisioningPct, bytesString(req.SizeBytes))
	}
	return ""
}

// better reports whether a is preferred over b.
func better(a, b *candidate) bool {
	if a.class != b.class {
		return a.class < b.class
	}
	fa, fb := freeBytes(a.disk), freeBytes(b.disk)
	if fa != fb {
		return fa > fb
	}
	if a.node.Name != b.node.Name {
		return a.node.Name < b.node.Name
	}
	return a.disk.Name < b.disk.Name
}

// freeBytes is what a disk has free for Drover: available less reserved.
func freeBytes(d *Disk) int64 { return d.StorageAvailableBytes - d.StorageReservedBytes }

// mulDiv returns a*b/c without overflowing for non-negative a, b and
// positive c, saturating at the largest int64.
func mulDiv(a, b, c int64) int64 {
	if a <= 0 || b <= 0 {
		return 0
	}
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	if hi >= uint64(c) {
		return 1<<63 - 1
	}
	q, _ := bits.Div64(hi, lo, uint64(c))
	if q > 1<<63-1 {
		return 1<<63 - 1
	}
	return int64(q)
}

func hasAll(have, want []string) bool { return len(missing(have, want)) == 0 }

func missing(have, want []string) []string {
	var out []string
	for _, w := range want {
		found := false
		for _, h := range have {
			if h == w {
				found = true
				break
			}
		}
		if !found {
			out = append(out, w)
		}
	}
	return out
}

// checkNames refuses sorted nodes with repeated node names, or a node
// with repeated disk names: placements name them, so they must be unique.
func checkNames(sorted []Node) error {
	for i := range sorted {
		if i > 0 && sorted[i].Name == sorted[i-1].Name {
			return fmt.Errorf("schedule: node %q is listed twice", sorted[i].Name)
		}
		for j := 1; j < len(sorted[i].Disks); j++ {
			if sorted[i].Disks[j].Name == sorted[i].Disks[j-1].Name {
				return fmt.Errorf("schedule: node %q lists disk %q twice", sorted[i].Name, sorted[i].Disks[j].Name)
			}
		}
	}
	return nil
}

// sortedNodes copies nodes sorted by name, each node's disks by name.
func sortedNodes(nodes []Node) []Node {
	out := cloneNodes(nodes)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	for i := range out {
		sort.Slice(out[i].Disks, func(a, b int) bool { return out[i].Disks[a].Name < out[i].Disks[b].Name })
	}
	return out
}

func cloneNodes(nodes []Node) []Node {
	out := make([]Node, len(nodes))
	for i, n := range nodes {
		out[i] = n
		out[i].Disks = append([]Disk(nil), n.Disks...)
	}
	return out
}

// chargeDisk adds size to the scheduled bytes of p's disk.
func chargeDisk(nodes []Node, p Placement, size int64) {
	for i := range nodes {
		if nodes[i].Name != p.Node {
			continue
		}
		for j := range nodes[i].Disks {
			if nodes[i].Disks[j].Name == p.Disk {
				nodes[i].Disks[j].StorageScheduledBytes += size
			}
		}
	}
}

// bytesString prints a byte count in binary units.
func bytesString(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// Farthest picks, among a volume's replicas, the one to drop once a
// replica beside the engine exists (best-effort data locality): never the
// one on the engine's node; first one in another zone than the engine's
// node (when zones are known), then one sharing a node with another
// replica, then the last by node and disk name. ok is false when every
// replica is on the engine's node.
func Farthest(nodes []Node, engineNode string, replicas []Placement) (p Placement, ok bool) {
	zoneOf := map[string]string{}
	for _, n := range nodes {
		zoneOf[n.Name] = n.Zone
	}
	perNode := map[string]int{}
	for _, r := range replicas {
		perNode[r.Node]++
	}
	rank := func(r Placement) int {
		score := 0
		if z := zoneOf[engineNode]; z != "" && zoneOf[r.Node] != "" && zoneOf[r.Node] != z {
			score += 2
		}
		if perNode[r.Node] > 1 {
			score++
		}
		return score
	}
	for _, r := range replicas {
		if r.Node == engineNode {
			continue
		}
		switch {
		case !ok:
			p, ok = r, true
		case rank(r) != rank(p):
			if rank(r) > rank(p) {
				p = r
			}
		case r.Node > p.Node || (r.Node == p.Node && r.Disk > p.Disk):
			p = r
		}
	}
	return p, ok
}
