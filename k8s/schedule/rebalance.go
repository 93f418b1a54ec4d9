package schedule

import "sort"

// Move is one step of replica auto-balance: create a replica at To, and
// once it is rebuilt, drop the one at From.
type Move struct {
	From, To Placement
}

// Spread measures how a volume's replicas are spread: the nodes and the
// known zones they are on.
type Spread struct {
	Nodes, Zones int
}

// less orders spreads for a balance mode: nodes first; zones too when
// zones counts (best-effort).
func (a Spread) less(b Spread, zones bool) bool {
	if a.Nodes != b.Nodes {
		return a.Nodes < b.Nodes
	}
	return zones && a.Zones < b.Zones
}

// SpreadOf returns the spread of replicas over nodes.
func SpreadOf(nodes []Node, replicas []Placement) Spread {
	zoneOf := make(map[string]string, len(nodes))
	for _, n := range nodes {
		zoneOf[n.Name] = n.Zone
	}
	ns, zs := map[string]bool{}, map[string]bool{}
	for _, r := range replicas {
		ns[r.Node] = true
		if z := zoneOf[r.Node]; z != "" {
			zs[z] = true
		}
	}
	return Spread{Nodes: len(ns), Zones: len(zs)}
}

// Rebalance finds one move that spreads a volume's replicas better
// (replica auto-balance): a replica is moved to where Place would put a
// new replica if that one were gone, when the spread improves — more
// nodes (least-effort and best-effort), or as many nodes and more zones
// (best-effort, zones true). Place's rules all hold for the new
// placement (node anti-affinity hard: a move never adds a shared node).
// Replicas sharing a node are tried first, then those sharing a zone,
// each by node and disk name, so the result depends only on the input.
// ok is false when no move improves the spread.
func Rebalance(nodes []Node, req Request, replicas []Placement, s Settings, zones bool) (m Move, ok bool) {
	before := SpreadOf(nodes, replicas)
	s.NodeSoftAntiAffinity = false
	zoneOf := map[string]string{}
	for _, n := range nodes {
		zoneOf[n.Name] = n.Zone
	}
	perNode, perZone := map[string]int{}, map[string]int{}
	for _, r := range replicas {
		perNode[r.Node]++
		if z := zoneOf[r.Node]; z != "" {
			perZone[z]++
		}
	}
	order := append([]Placement(nil), replicas...)
	rank := func(p Placement) int {
		switch {
		case perNode[p.Node] > 1:
			return 0
		case zoneOf[p.Node] != "" && perZone[zoneOf[p.Node]] > 1:
			return 1
		}
		return 2
	}
	sort.SliceStable(order, func(i, j int) bool {
		a, b := order[i], order[j]
		if rank(a) != rank(b) {
			return rank(a) < rank(b)
		}
		if a.Node != b.Node {
			return a.Node < b.Node
		}
		return a.Disk < b.Disk
	})
	for i, from := range order {
		if rank(from) == 2 || (rank(from) == 1 && !zones) {
			break
		}
		if i > 0 && order[i-1] == from {
			continue // the same placement twice: one try is enough
		}
		others := withoutOne(replicas, from)
		r := req
		r.Existing = others
		to, err := Place(nodes, r, s)
		if err != nil {
			continue
		}
		if before.less(SpreadOf(nodes, append(others, to)), zones) {
			return Move{From: from, To: to}, true
		}
	}
	return Move{}, false
}

// withoutOne returns replicas less one occurrence of p (a new slice).
func withoutOne(replicas []Placement, p Placement) []Placement {
	out := make([]Placement, 0, len(replicas))
	dropped := false
	for _, r := range replicas {
		if r == p && !dropped {
			dropped = true
			continue
		}
		out = append(out, r)
	}
	return out
}

// Surplus picks the replica to drop from one too many (the end of a
// Rebalance move): the one whose absence leaves the best spread, the
// last by node and disk name among equals.
func Surplus(nodes []Node, replicas []Placement, zones bool) Placement {
	var best Placement
	var bestSpread Spread
	for i, p := range replicas {
		sp := SpreadOf(nodes, withoutOne(replicas, p))
		if i == 0 || bestSpread.less(sp, zones) ||
			!sp.less(bestSpread, zones) && (p.Node > best.Node || p.Node == best.Node && p.Disk > best.Disk) {
			best, bestSpread = p, sp
		}
	}
	return best
}
