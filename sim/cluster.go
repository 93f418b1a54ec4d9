package sim

import (
	"fmt"
	"os"
	"sort"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/memstore"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/core/store"
)

// replicaNode is one replica process on its simulated disk.
type replicaNode struct {
	s      *Sim
	idx    int
	id     proto.ReplicaID
	st     *memstore.Store
	r      *replica.Replica
	inc    uint64 // incarnation: bumps at every crash, so stale completions are dropped
	up     bool
	failed bool // stopped by a fatal disk error; the sim restarts it
	spare  bool // offered to engines as a spare (not an initial member)
	lost   bool // its disk is gone for good: never restarts
	// backing: created on the run's backing image (initial replicas of
	// some seeds, see backing.go).
	backing *replica.Backing
	// metaID, when set, is the name a replica created on a new disk
	// records (the address, n.id, stays): an operator who replaced a
	// drive under another name.
	metaID proto.ReplicaID
	// damaged: the simulator damaged its metadata or index (disk.go).
	// Once the replica finds it and stops, the watchdog gives it a new
	// disk, as an operator would; production never wipes by itself.
	damaged bool
	// amnesiaGen: it lost what it knew (wipe, damage, stale restore) when
	// the membership was at this generation; 0 once it is rebuilt.
	amnesiaGen uint64
	// oldCopy is a copy of its disk taken earlier, for restoreStale.
	oldCopy *memstore.Store
}

// link is the connection between one engine incarnation and one replica.
// Messages on it are delivered in order (as on TCP); a break loses what
// is in flight in both directions.
type link struct {
	gen         uint64
	lastToRep   int64
	lastToEng   int64
	partitioned bool
}

// engineNode is one engine incarnation.
type engineNode struct {
	s      *Sim
	inc    uint64
	e      *engine.Engine
	alive  bool
	links  []*link
	waits  map[uint64]func(engine.Reply)
	admins map[uint64]func(engine.AdminReply)
	nextID uint64
	// writeData holds each write's Data until its reply, on seeds that
	// recycle buffers (Sim.recycle).
	writeData map[uint64][]byte

	served       bool   // it has served once (era boundaries start then)
	openedAt     int64  // when it finished opening (-1: not yet)
	faultedSince int64  // when the watchdog saw it faulted (-1: not)
	lastDesc     string // for Options.Log
}

const idSpace = 1 << 40 // request ids per engine incarnation

func (s *Sim) setup() {
	k := s.knobs
	for i := 0; i < k.Replicas; i++ {
		n := &replicaNode{s: s, idx: i, id: proto.ReplicaID(fmt.Sprintf("r%d", i+1)), st: memstore.New()}
		s.replicas = append(s.replicas, n)
	}
	s.backingSetup(s.replicas)
	for _, n := range s.replicas {
		n.start()
	}
	for i := 0; i < k.Spares; i++ {
		n := &replicaNode{s: s, idx: len(s.replicas), id: proto.ReplicaID(fmt.Sprintf("s%d", i+1)), st: memstore.New(), spare: true}
		s.replicas = append(s.replicas, n)
		n.start()
	}
	s.startEngine()
	for i := 0; i < k.Clients; i++ {
		c := &client{s: s, id: i}
		s.clients = append(s.clients, c)
		s.after(s.uniform(0, 1000), c.next)
	}
	s.scheduleFaults()
}

func (n *replicaNode) start() {
	if n.lost {
		return
	}
	n.inc++
	n.up, n.failed = true, false
	id := n.id
	if n.metaID != "" {
		id = n.metaID
	}
	n.r = replica.New(replica.Config{ID: id, CreateSizeBytes: n.s.knobs.SizeBlocks * proto.BlockSize,
		Backing: n.backing, Bugs: n.s.opt.Bugs.Replica})
	n.s.note("replica-start", uint64(n.idx), n.inc)
	n.pump()
}

// crash stops the process: IOs in flight are lost, the disk keeps a
// random part of what was not synced, block by block.
func (n *replicaNode) crash() {
	if !n.up {
		return
	}
	n.inc++
	n.up = false
	keepPct := n.s.rng.IntN(101)
	n.st.Crash(func(store.LayerID, uint64, bool) bool { return n.s.rng.IntN(100) < keepPct })
	n.s.note("replica-crash", uint64(n.idx), uint64(keepPct))
	n.s.count("replica-crash")
	n.s.hist.lastCrashAt = n.s.now
	// A crash while an era boundary is being read may lose what was read
	// (unflushed): read the boundary again.
	n.s.hist.boundaryReading = false
	n.s.hist.boundaryGen++
}

func (n *replicaNode) diskLatency() int64 {
	lat := n.s.knobs.DiskLatencyUs + n.s.uniform(0, n.s.knobs.DiskLatencyUs)
	if n.idx == n.s.knobs.SlowReplica && !n.s.healed {
		lat *= 20
	}
	return lat
}

// pump takes the replica's effects: IOs complete after a disk latency
// (or fail, as the fault knobs say); replies go back over the link of the
// engine that sent the request.
func (n *replicaNode) pump() {
	for n.up && n.r.HasReady() {
		rd := n.r.Ready()
		for _, io := range rd.IOs {
			io, inc := io, n.inc
			n.s.after(n.diskLatency(), func() {
				if n.inc != inc || !n.up {
					return
				}
				n.r.Complete(n.execute(io))
				n.pump()
			})
		}
		for _, rep := range rd.Replies {
			n.s.replyToEngine(n, rep)
		}
		if n.s.recycle {
			n.r.Release(rd) // every value was copied out
		}
	}
}

// execute runs one IO on the memstore, or fails it per the fault knobs.
func (n *replicaNode) execute(io store.IO) store.Completion {
	s, k := n.s, n.s.knobs
	// Disk errors, like crashes, wait while a struck replica is pending:
	// each takes a replica out of the set.
	if !s.healed && !s.amnesiaPending() {
		switch io.Kind {
		case store.ReadData, store.ReadIndex:
			if s.chance(k.ReadEIOPerMillion) {
				s.count("disk-read-eio")
				return store.Completion{ID: io.ID, Err: store.ErrIO, Detail: "simulated read EIO"}
			}
		case store.WriteData:
			if s.chance(k.NoSpacePerMillion) {
				s.count("disk-enospc")
				return store.Completion{ID: io.ID, Err: store.ErrNoSpace, Detail: "simulated ENOSPC"}
			}
			fallthrough
		case store.SyncData, store.SyncIndex, store.WriteIndex:
			if s.chance(k.WriteEIOPerMillion) {
				s.count("disk-write-eio")
				n.failed = true
				return store.Completion{ID: io.ID, Err: store.ErrIO, Detail: "simulated write EIO"}
			}
		}
	}
	if s.loseWrite(n, io) {
		return store.Completion{ID: io.ID}
	}
	s.note("io", uint64(n.idx), uint64(io.Kind), io.BlockIndex)
	return n.st.Execute(io)
}

func (s *Sim) current() *engineNode { return s.engines[len(s.engines)-1] }

// startEngine starts a new engine incarnation on every replica.
func (s *Sim) startEngine() *engineNode {
	inc := uint64(len(s.engines) + 1)
	cfg := engine.Config{Volume: "sim", MinHealthy: s.knobs.MinHealthy, TimeoutTicks: s.knobs.TimeoutTicks,
		RetryTicks: 20, RebuildAfterTicks: 30, FirstRequestID: inc * idSpace, Nonce: inc, CopyShape: s.knobs.Copy, Bugs: s.opt.Bugs.Engine}
	for _, n := range s.replicas {
		if n.spare {
			cfg.Spares = append(cfg.Spares, n.id)
		} else {
			cfg.Replicas = append(cfg.Replicas, n.id)
		}
	}
	if len(cfg.Spares) > 0 {
		cfg.ReplaceAfterTicks = replaceAfterTicks
	}
	if s.onBacking() {
		cfg.BackingImage, cfg.BackingSHA256 = "sim", simImageSHA256
	}
	en := &engineNode{s: s, inc: inc, e: engine.New(cfg), alive: true, openedAt: -1, faultedSince: -1,
		waits: map[uint64]func(engine.Reply){}, admins: map[uint64]func(engine.AdminReply){},
		writeData: map[uint64][]byte{}}
	for range s.replicas {
		en.links = append(en.links, &link{})
	}
	s.engines = append(s.engines, en)
	s.note("engine-start", inc)
	en.tick()
	en.pump()
	return en
}

func (en *engineNode) tick() {
	en.s.after(en.s.knobs.TickUs, func() {
		if !en.alive || en.s.stopped {
			return
		}
		en.e.Tick()
		en.pump()
		if _, n := en.e.ChainLen(); n > en.s.stats["rebuild-snaps-max"] {
			en.s.stats["rebuild-snaps-max"] = n
		}
		en.tick()
	})
}

// kill stops an engine process: its in-flight requests are never answered.
func (en *engineNode) kill() {
	if !en.alive {
		return
	}
	en.alive = false
	en.s.note("engine-kill", en.inc)
	// In id order: callbacks draw from the PRNG.
	for _, id := range sortedKeys(en.waits) {
		w := en.waits[id]
		delete(en.waits, id)
		w(engine.Reply{ID: id, Err: errEngineDied})
	}
	for _, id := range sortedKeys(en.admins) {
		w := en.admins[id]
		delete(en.admins, id)
		w(engine.AdminReply{ID: id, Err: errEngineDied})
	}
}

var errEngineDied = fmt.Errorf("engine process died")

func sortedKeys[V any](m map[uint64]V) []uint64 {
	keys := make([]uint64, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	return keys
}

func (en *engineNode) pump() {
	for en.alive && en.e.HasReady() {
		rd := en.e.Ready()
		for _, m := range rd.Messages {
			en.s.sendToReplica(en, m)
		}
		for _, r := range rd.Replies {
			if w := en.waits[r.ID]; w != nil {
				delete(en.waits, r.ID)
				w(r)
			}
			en.recycle(r)
		}
		if en.s.opt.Log != nil {
			for _, ev := range rd.Events {
				en.s.opt.Log(fmt.Sprintf("%8d engine %d event: %s %s block %d: %s", en.s.now, en.inc, ev.Kind, ev.Replica, ev.Block, ev.Why))
			}
		}
		for _, r := range rd.AdminReplies {
			if w := en.admins[r.ID]; w != nil {
				delete(en.admins, r.ID)
				w(r)
			}
		}
		if en.s.recycle {
			for _, b := range rd.Free {
				scribble(b) // as if reused for another run
			}
			en.e.Release(rd)
		}
	}
	en.s.hist.enginePumped(en)
	if en.s.opt.Log != nil {
		if desc := describeInfo(en.e.Info()); desc != en.lastDesc {
			en.lastDesc = desc
			en.s.opt.Log(fmt.Sprintf("%8d engine %d: %s", en.s.now, en.inc, describeEngine(en.e)))
		}
	}
}

// recycle plays a production frontend that reuses its buffers, on seeds
// that do (Sim.recycle): once a reply was consumed, a read's Data, and a
// write's Data if no replica may still read it (not DataHeld), are
// overwritten with garbage. A buffer the core still used would then show
// as corruption to the checkers.
func (en *engineNode) recycle(r engine.Reply) {
	if !en.s.recycle {
		return
	}
	if d, ok := en.writeData[r.ID]; ok {
		delete(en.writeData, r.ID)
		if r.Err == nil && !r.DataHeld {
			scribble(d)
		}
	}
	scribble(r.Data)
}

// scribble overwrites a buffer a production driver would reuse.
func scribble(b []byte) {
	for len(b) > 0 {
		b = b[copy(b, garbageBlock[:]):]
	}
}

var garbageBlock = func() (g [proto.BlockSize]byte) {
	for i := range g {
		g[i] = 0xdb
	}
	return g
}()

func (en *engineNode) submit(req engine.Request, then func(engine.Reply)) {
	en.nextID++
	req.ID = en.nextID
	en.waits[req.ID] = then
	if en.s.recycle && req.Op == proto.OpWrite {
		en.writeData[req.ID] = req.Data
	}
	en.e.Submit(req)
	en.pump()
}

func (en *engineNode) admin(req engine.AdminRequest, then func(engine.AdminReply)) {
	en.nextID++
	req.ID = en.nextID
	en.admins[req.ID] = then
	en.e.Admin(req)
	en.pump()
}

func (s *Sim) netDelay() int64 {
	d := s.knobs.NetLatencyUs + s.uniform(0, s.knobs.NetJitterUs)
	if !s.healed && s.chance(s.knobs.SpikePerMillion) {
		s.count("net-spike")
		d += s.uniform(0, s.knobs.SpikeUs)
	}
	return d
}

// sendToReplica carries one engine message over its link.
func (s *Sim) sendToReplica(en *engineNode, m engine.Message) {
	var n *replicaNode
	for _, r := range s.replicas {
		if r.id == m.To {
			n = r
		}
	}
	if n == nil {
		return
	}
	l := en.links[n.idx]
	if l.partitioned {
		return // lost; the engine times out
	}
	if !s.healed && s.chance(s.knobs.DropPerMillion) {
		s.breakLink(en, n)
		return
	}
	copies := 1
	if !s.healed && s.chance(s.knobs.DupPerMillion) {
		copies = 2
		s.count("net-dup")
	}
	for i := 0; i < copies; i++ {
		at := max(s.now+s.netDelay(), l.lastToRep)
		l.lastToRep = at
		gen, req := l.gen, m.Req
		s.at(at, func() {
			if l.gen != gen || !n.up {
				return
			}
			s.note("deliver-req", uint64(n.idx), req.ID, uint64(req.Op))
			if dbgMembership && req.Op == proto.OpSetMembership && req.Membership != nil {
				fmt.Printf("%d DBG setmem to %s epoch %d gen %d members %v prev %v\n", s.now, n.id, req.Epoch, req.Membership.Gen, req.Membership.Members, req.Membership.Prev)
			}
			n.r.Step(req)
			n.pump()
		})
	}
}

var dbgMembership = os.Getenv("DBG_MEM") != ""

// replyToEngine carries a replica's reply back to the engine that sent
// the request (its incarnation is in the request id).
func (s *Sim) replyToEngine(n *replicaNode, rep proto.Reply) {
	inc := rep.ID / idSpace
	if inc == 0 || inc > uint64(len(s.engines)) {
		return
	}
	en := s.engines[inc-1]
	l := en.links[n.idx]
	if l.partitioned {
		return
	}
	at := max(s.now+s.netDelay(), l.lastToEng)
	l.lastToEng = at
	gen := l.gen
	s.at(at, func() {
		if l.gen != gen || !en.alive {
			return
		}
		s.note("deliver-rep", uint64(n.idx), rep.ID, uint64(rep.Status))
		en.e.Step(n.id, rep)
		en.pump()
	})
}

// breakLink drops a connection: everything in flight on it is lost, and
// the engine learns of it shortly after (a reset).
func (s *Sim) breakLink(en *engineNode, n *replicaNode) {
	l := en.links[n.idx]
	l.gen++
	s.count("net-break")
	s.note("link-break", en.inc, uint64(n.idx))
	s.after(s.uniform(100, 2000), func() {
		if en.alive {
			en.e.ReplicaDown(n.id)
			en.pump()
		}
	})
}
