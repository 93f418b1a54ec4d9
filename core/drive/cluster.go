package drive

import (
	"fmt"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/memstore"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/core/store"
)

// Cluster runs engines and their replicas (each on a memstore)
// synchronously, one event at a time. The pending events are: delivering
// the next message on an engine→replica link (FIFO per link), completing
// one of a replica's issued IOs (any order), and delivering the next reply
// on a replica→engine link (FIFO per link). A chooser picks which runs
// next; when none is pending, engines tick.
//
// The cluster gives every message it delivers a fresh cluster-wide request
// id and maps replies back, so that engines (several at once, or one
// restarted) whose ids collide never see each other's replies. Messages
// and replies on a link that is down, or to or from a crashed node, are
// lost; the engine notices only by timing out.
type Cluster struct {
	// Nodes are the replicas by id; Order lists their ids as created.
	Nodes map[proto.ReplicaID]*Node
	Order []proto.ReplicaID
	// Hosts are the engines started, oldest first; the last is current.
	Hosts []*Host
	// Ticks counts the ticks delivered so far.
	Ticks int64

	cfg    engine.Config
	choose func(n int) int
	wireID uint64
	nextID uint64
}

// Node is one replica process.
type Node struct {
	ID      proto.ReplicaID
	Store   *memstore.Store
	Replica *replica.Replica
	// Down makes the node unreachable: messages to and from it are lost
	// (its IOs still complete). Set it with Cluster.SetDown.
	Down bool

	cfg     replica.Config
	ios     []store.IO
	origin  map[uint64]origin // wire id -> who asked
	direct  map[uint64]*proto.Reply
	crashes int
}

type origin struct {
	host *Host
	id   uint64
}

// Host is one engine and what it answered.
type Host struct {
	Engine       *engine.Engine
	Replies      map[uint64]engine.Reply
	AdminReplies map[uint64]engine.AdminReply
	// Dead hosts get nothing delivered (a crashed engine process).
	Dead bool

	cut map[proto.ReplicaID]bool
	out map[proto.ReplicaID][]proto.Request // to replicas, FIFO
	in  map[proto.ReplicaID][]proto.Reply   // from replicas, FIFO
}

// NewCluster creates n replicas r1..rn of sizeBytes on empty memstores and
// an engine over them (cfg.Replicas is filled in), and runs until the
// engine is serving or gives up. choose(n) picks the next of n pending
// events (nil: the first, FIFO-like).
func NewCluster(n int, sizeBytes uint64, cfg engine.Config, choose func(n int) int) *Cluster {
	c := &Cluster{Nodes: map[proto.ReplicaID]*Node{}, choose: choose}
	cfg.Replicas = nil
	for i := 0; i < n; i++ {
		id := proto.ReplicaID(fmt.Sprintf("r%d", i+1))
		nd := &Node{ID: id, Store: memstore.New(), origin: map[uint64]origin{}, direct: map[uint64]*proto.Reply{},
			cfg: replica.Config{ID: id, CreateSizeBytes: sizeBytes}}
		c.Nodes[id] = nd
		c.Order = append(c.Order, id)
		c.startReplica(nd)
		cfg.Replicas = append(cfg.Replicas, id)
	}
	for c.Step() { // the replicas load before the engine starts
	}
	c.cfg = cfg
	c.StartEngine(cfg)
	return c
}

// Config returns the engine config the cluster was created with.
func (c *Cluster) Config() engine.Config { return c.cfg }

// Engine returns the current (newest) engine.
func (c *Cluster) Engine() *engine.Engine { return c.Host().Engine }

// Host returns the current (newest) host.
func (c *Cluster) Host() *Host { return c.Hosts[len(c.Hosts)-1] }

// StartEngine starts another engine over the replicas in cfg.Replicas
// (older hosts keep running) and runs until it is serving or idle.
func (c *Cluster) StartEngine(cfg engine.Config) *Host {
	h := &Host{Replies: map[uint64]engine.Reply{}, AdminReplies: map[uint64]engine.AdminReply{},
		cut: map[proto.ReplicaID]bool{}, out: map[proto.ReplicaID][]proto.Request{}, in: map[proto.ReplicaID][]proto.Reply{}}
	if cfg.Nonce == 0 {
		cfg.Nonce = uint64(len(c.Hosts) + 1) // distinct epochs per engine
	}
	h.Engine = engine.New(cfg)
	c.Hosts = append(c.Hosts, h)
	c.collect(h)
	c.RunUntil(func() bool { return h.Engine.Serving() }, 2000)
	return h
}

// RestartEngine kills every running engine (messages in flight to and from
// them are lost; replicas finish what they had started) and starts a new
// one with the cluster's config. It must open at a higher epoch.
func (c *Cluster) RestartEngine() *Host {
	for _, h := range c.Hosts {
		c.Kill(h)
	}
	return c.StartEngine(c.cfg)
}

// Kill stops host h: nothing more is delivered to or from it.
func (c *Cluster) Kill(h *Host) {
	h.Dead = true
	clear(h.out)
	clear(h.in)
}

// SetCut cuts (or heals) the link between host h and node id in both
// directions; messages on it in flight are lost.
func (c *Cluster) SetCut(h *Host, id proto.ReplicaID, cut bool) {
	h.cut[id] = cut
	if cut {
		delete(h.out, id)
		delete(h.in, id)
	}
}

// SetDown makes node id unreachable from every host (or reachable again).
func (c *Cluster) SetDown(id proto.ReplicaID, down bool) {
	nd := c.Nodes[id]
	nd.Down = down
	if down {
		for _, h := range c.Hosts {
			delete(h.out, id)
			delete(h.in, id)
		}
	}
}

// Crash power-cycles node id: IOs not yet executed and messages in flight
// to and from it are lost, the store drops unsynced changes except those
// keep keeps (memstore.Store.Crash), and a new replica starts loading on
// the same store. Loading IOs are ordinary pending events.
func (c *Cluster) Crash(id proto.ReplicaID, keep func(layer store.LayerID, blockIndex uint64, isIndex bool) bool) {
	nd := c.Nodes[id]
	nd.ios = nil
	clear(nd.origin)
	clear(nd.direct)
	for _, h := range c.Hosts {
		delete(h.out, id)
		delete(h.in, id)
	}
	nd.Store.Crash(keep)
	nd.crashes++
	c.startReplica(nd)
}

// AddNode creates another replica, id, of sizeBytes on an empty memstore
// (a spare, or one to add by request) and lets it load. No engine knows
// it until told (Config.Spares, AdminAddReplica).
func (c *Cluster) AddNode(id proto.ReplicaID, sizeBytes uint64) *Node {
	nd := &Node{ID: id, Store: memstore.New(), origin: map[uint64]origin{}, direct: map[uint64]*proto.Reply{},
		cfg: replica.Config{ID: id, CreateSizeBytes: sizeBytes}}
	c.Nodes[id] = nd
	c.Order = append(c.Order, id)
	c.startReplica(nd)
	return nd
}

// SetConfig replaces the config RestartEngine starts engines with.
func (c *Cluster) SetConfig(cfg engine.Config) { c.cfg = cfg }

func (c *Cluster) startReplica(nd *Node) {
	nd.Replica = replica.New(nd.cfg)
	c.collectNode(nd)
}

// Collect takes effects host h produced outside the cluster's calls (a
// test that steps h.Engine directly).
func (c *Cluster) Collect(h *Host) { c.collect(h) }

// collect moves a host's effects onto its links and into its reply maps.
func (c *Cluster) collect(h *Host) {
	rd := h.Engine.Ready()
	for _, m := range rd.Messages {
		if h.Dead || h.cut[m.To] || c.Nodes[m.To] == nil || c.Nodes[m.To].Down {
			continue
		}
		h.out[m.To] = append(h.out[m.To], m.Req)
	}
	for _, r := range rd.Replies {
		h.Replies[r.ID] = r
	}
	for _, r := range rd.AdminReplies {
		h.AdminReplies[r.ID] = r
	}
	h.Engine.Release(rd) // every value was copied out
}

// collectNode takes a replica's effects: IOs join its pool, replies go
// back on the link they came from, or are lost.
func (c *Cluster) collectNode(nd *Node) {
	rd := nd.Replica.Ready()
	nd.ios = append(nd.ios, rd.IOs...)
	for _, rep := range rd.Replies {
		if p, ok := nd.direct[rep.ID]; ok {
			r := rep
			*p = r
			delete(nd.direct, rep.ID)
			continue
		}
		o, ok := nd.origin[rep.ID]
		if !ok {
			continue
		}
		delete(nd.origin, rep.ID)
		if nd.Down || o.host.Dead || o.host.cut[nd.ID] {
			continue
		}
		rep.ID = o.id
		o.host.in[nd.ID] = append(o.host.in[nd.ID], rep)
	}
}

type event struct {
	kind uint8 // 0 deliver message, 1 complete IO, 2 deliver reply
	host *Host
	node *Node
	io   int
}

func (c *Cluster) events() []event {
	var evs []event
	for _, h := range c.Hosts {
		for _, id := range c.Order {
			if len(h.out[id]) > 0 {
				evs = append(evs, event{kind: 0, host: h, node: c.Nodes[id]})
			}
			if len(h.in[id]) > 0 {
				evs = append(evs, event{kind: 2, host: h, node: c.Nodes[id]})
			}
		}
	}
	for _, id := range c.Order {
		nd := c.Nodes[id]
		for i := range nd.ios {
			evs = append(evs, event{kind: 1, node: nd, io: i})
		}
	}
	return evs
}

// Pending returns how many events could run now.
func (c *Cluster) Pending() int { return len(c.events()) }

// Step runs one pending event, picked by the chooser, and reports whether
// there was one.
func (c *Cluster) Step() bool {
	evs := c.events()
	if len(evs) == 0 {
		return false
	}
	i := 0
	if c.choose != nil {
		i = c.choose(len(evs))
	}
	ev := evs[i]
	nd := ev.node
	switch ev.kind {
	case 0:
		req := ev.host.out[nd.ID][0]
		ev.host.out[nd.ID] = ev.host.out[nd.ID][1:]
		c.wireID++
		nd.origin[c.wireID] = origin{host: ev.host, id: req.ID}
		req.ID = c.wireID
		nd.Replica.Step(req)
		c.collectNode(nd)
	case 1:
		io := nd.ios[ev.io]
		nd.ios = append(nd.ios[:ev.io], nd.ios[ev.io+1:]...)
		nd.Replica.Complete(nd.Store.Execute(io))
		c.collectNode(nd)
	case 2:
		rep := ev.host.in[nd.ID][0]
		ev.host.in[nd.ID] = ev.host.in[nd.ID][1:]
		ev.host.Engine.Step(nd.ID, rep)
		c.collect(ev.host)
	}
	return true
}

// Tick runs every pending event, then ticks every live engine once.
func (c *Cluster) Tick() {
	for c.Step() {
	}
	c.Ticks++
	for _, h := range c.Hosts {
		if !h.Dead {
			h.Engine.Tick()
			c.collect(h)
		}
	}
}

// RunUntil runs events, ticking when none is pending, until done returns
// true (checked after every event and tick) or maxTicks ticks have passed.
// It reports whether done became true.
func (c *Cluster) RunUntil(done func() bool, maxTicks int) bool {
	for t := 0; ; t++ {
		for {
			if done() {
				return true
			}
			if !c.Step() {
				break
			}
		}
		if t >= maxTicks {
			return done()
		}
		c.Tick()
	}
}

// Run runs until no event is pending and idleTicks ticks in a row have
// produced none (timeouts, retries and automatic rebuilds get their turn),
// or maxTicks ticks have passed.
func (c *Cluster) Run(idleTicks, maxTicks int) {
	idle := 0
	for t := 0; t < maxTicks && idle < idleTicks; t++ {
		for c.Step() {
		}
		c.Tick()
		if c.Pending() == 0 {
			idle++
		} else {
			idle = 0
		}
	}
}

// Submit hands a frontend request to the current engine with a fresh id
// and returns the id; its reply lands in Host().Replies.
func (c *Cluster) Submit(req engine.Request) uint64 {
	c.nextID++
	req.ID = c.nextID
	h := c.Host()
	h.Engine.Submit(req)
	c.collect(h)
	return req.ID
}

// Do submits req and runs until it is answered (or maxTicks pass; the
// reply is then missing and ok is false).
func (c *Cluster) Do(req engine.Request, maxTicks int) (engine.Reply, bool) {
	h := c.Host()
	id := c.Submit(req)
	c.RunUntil(func() bool { _, ok := h.Replies[id]; return ok }, maxTicks)
	r, ok := h.Replies[id]
	return r, ok
}

// SubmitAdmin hands an admin request to the current engine with a fresh
// id and returns the id.
func (c *Cluster) SubmitAdmin(req engine.AdminRequest) uint64 {
	c.nextID++
	req.ID = c.nextID
	h := c.Host()
	h.Engine.Admin(req)
	c.collect(h)
	return req.ID
}

// Admin submits an admin request and runs until it is answered.
func (c *Cluster) Admin(req engine.AdminRequest, maxTicks int) (engine.AdminReply, bool) {
	h := c.Host()
	id := c.SubmitAdmin(req)
	c.RunUntil(func() bool { _, ok := h.AdminReplies[id]; return ok }, maxTicks)
	r, ok := h.AdminReplies[id]
	return r, ok
}

// Direct sends req straight to node id's replica (not through an engine,
// and regardless of Down), at the epoch the replica is fenced at unless
// req.Epoch is set, and runs that node's IOs (and no other event) until it
// answers. Use it to inspect replicas while the cluster is quiescent.
func (c *Cluster) Direct(id proto.ReplicaID, req proto.Request) proto.Reply {
	nd := c.Nodes[id]
	if req.Epoch == 0 {
		req.Epoch = nd.Replica.Info().Epoch
	}
	c.wireID++
	req.ID = c.wireID
	var rep proto.Reply
	got := false
	p := &rep
	nd.direct[req.ID] = p
	nd.Replica.Step(req)
	c.collectNode(nd)
	for {
		if _, waiting := nd.direct[req.ID]; !waiting {
			got = true
			break
		}
		if len(nd.ios) == 0 {
			break
		}
		io := nd.ios[0]
		nd.ios = nd.ios[1:]
		nd.Replica.Complete(nd.Store.Execute(io))
		c.collectNode(nd)
	}
	if !got {
		delete(nd.direct, req.ID)
		return proto.Reply{ID: req.ID, Status: proto.StatusNotReady, Err: "no reply"}
	}
	return rep
}

// CorruptBlock flips one bit of blockIndex in every layer of node id's
// store that holds data for it, and reports whether any did.
func (c *Cluster) CorruptBlock(id proto.ReplicaID, blockIndex uint64, bit uint) bool {
	st := c.Nodes[id].Store
	found := false
	for _, l := range st.LayerIDs() {
		if st.CorruptBlock(l, blockIndex, bit) {
			found = true
		}
	}
	return found
}
