// Package enginerun is the production driver of core/engine: it owns one
// engine.Engine on one goroutine and connects it to real time, real links
// to replicas, and its callers (a frontend through Volume, the control
// plane through Admin).
//
// The engine is not safe for concurrent use, so exactly one goroutine, the
// loop, ever calls it. Everything else reaches the loop through a
// mutex-protected inbox: frontend requests, admin requests, replies and
// lost-connection reports from links, link (re)connections, and ticks from
// a time.Ticker. The loop drains the whole inbox, feeds it to the engine,
// and executes the engine's Ready in its documented order: Messages first
// (one link.Send per replica per round, carrying every message for that
// replica, in order), then frontend Replies and AdminReplies to their
// waiting callers. Under load one round carries many requests, so the
// per-request cost of the handoff to the loop is shared.
//
// Links are dialed with a link.Dialer (in-process or TCP), one per replica
// address. When a link goes down the loop tells the engine
// (ReplicaDown), and a background dialer redials with exponential backoff;
// the engine itself decides when to reopen and rebuild the replica.
package enginerun

import (
	"context"
	cryptorand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/bufpool"
	"github.com/drover-io/drover/transports/link"
)

// ErrClosed is returned for requests made after, or outstanding at, Close.
var ErrClosed = errors.New("engine driver is closed")

// ErrSameAddress refuses a replica whose address another member of the
// volume already has.
var ErrSameAddress = errors.New("replica address already in the volume")

const (
	defaultTick         = 10 * time.Millisecond
	defaultTimeout      = 5 * time.Second
	defaultRetry        = time.Second
	defaultRebuildAfter = 2 * time.Second
	defaultRedialMin    = 50 * time.Millisecond
	defaultRedialMax    = 2 * time.Second
	defaultDialWait     = 2 * time.Second
	// maxInflight bounds frontend requests handed to the engine and not
	// yet answered; the engine itself refuses more than 4096 waiting.
	maxInflight = 2048
)

// Replica names one replica of the volume and where to reach it.
type Replica struct {
	// ID is the replica's name in the volume's membership. It must stay the
	// same for the life of the replica's data.
	ID proto.ReplicaID
	// Addr is what the Dialer is given (host:port for TCP).
	Addr string
}

// Config sets up a Driver. Durations are converted to engine ticks.
type Config struct {
	// Volume names the volume.
	Volume string
	// Replicas are the replicas the engine opens.
	Replicas []Replica
	// Dial opens links; required.
	Dial link.Dialer
	// MinHealthy is the fewest RW replicas with which writes are still
	// acknowledged (default 1).
	MinHealthy int
	// Tick is the engine's clock period (default 10ms).
	Tick time.Duration
	// Timeout is how long a replica may take to answer before it goes ERR
	// (default 5s).
	Timeout time.Duration
	// Retry is how long to wait before retrying a failed open (default 1s).
	Retry time.Duration
	// RebuildAfter is how long an ERR replica waits before the engine
	// reopens and rebuilds it (default 2s; negative: never).
	RebuildAfter time.Duration
	// RedialMin and RedialMax bound the backoff between dial attempts
	// (defaults 50ms and 2s).
	RedialMin, RedialMax time.Duration
	// DialWait is how long New waits for the first dial of every replica
	// before starting the engine, so it does not open against links that
	// are still connecting (default 2s).
	DialWait time.Duration
	// MinEpoch is a floor for the epoch the engine takes.
	MinEpoch uint64
	// Logger receives link and phase changes (default slog.Default()).
	Logger *slog.Logger
	// IOGoroutines run other replicas' staged in-process IO beside the
	// goroutine driving the engine (iopool.go): 0 (the default) none,
	// negative one per spare CPU (GOMAXPROCS-1). Off by default: measured
	// through NBD on 2 CPUs, it doubled the CPU per IO of a 3-replica
	// volume (its completions reach the frontend outside the reader's
	// batch, so every reply is flushed on its own).
	IOGoroutines int
	// Spares are replicas the engine may rebuild in place of a member that
	// stays ERR for ReplaceAfter: fresh replicas on other disks or hosts,
	// each with an ID of its own. They are dialed like the replicas.
	Spares []Replica
	// ReplaceAfter is how long a member may stay ERR before a spare
	// replaces it (default 60s; negative: never).
	ReplaceAfter time.Duration
	// RebuildRate caps every rebuild's copying, in bytes per second (0: no
	// cap); AddReplicaWith may set its own.
	RebuildRate uint64
	// BackingImage and BackingSHA256 declare the backing image the volume
	// is on (engine.Config has what they check).
	BackingImage, BackingSHA256 string
}

func (c *Config) setDefaults() {
	if c.Tick <= 0 {
		c.Tick = defaultTick
	}
	if c.Timeout <= 0 {
		c.Timeout = defaultTimeout
	}
	if c.Retry <= 0 {
		c.Retry = defaultRetry
	}
	if c.RebuildAfter == 0 {
		c.RebuildAfter = defaultRebuildAfter
	}
	if c.RedialMin <= 0 {
		c.RedialMin = defaultRedialMin
	}
	if c.RedialMax < c.RedialMin {
		c.RedialMax = max(defaultRedialMax, c.RedialMin)
	}
	if c.DialWait <= 0 {
		c.DialWait = defaultDialWait
	}
	if c.ReplaceAfter == 0 {
		c.ReplaceAfter = defaultReplaceAfter
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// ticks converts d to engine ticks, at least 1.
func (c *Config) ticks(d time.Duration) int64 {
	return max(1, int64((d+c.Tick-1)/c.Tick))
}

func (c *Config) engineConfig() engine.Config {
	ec := engine.Config{Volume: c.Volume, MinHealthy: c.MinHealthy, MinEpoch: c.MinEpoch,
		TimeoutTicks: c.ticks(c.Timeout), RetryTicks: c.ticks(c.Retry), RebuildAfterTicks: -1,
		Nonce: randomNonce(), BackingImage: c.BackingImage, BackingSHA256: c.BackingSHA256}
	if c.RebuildAfter > 0 {
		ec.RebuildAfterTicks = c.ticks(c.RebuildAfter)
	}
	for _, r := range c.Replicas {
		ec.Replicas = append(ec.Replicas, r.ID)
	}
	c.rebuildConfig(&ec)
	return ec
}

// Driver runs one engine. Create it with New; it is safe for concurrent
// use.
type Driver struct {
	cfg Config
	log *slog.Logger
	// snapGuard, when set, may refuse snapshots (SetSnapshotGuard).
	snapGuard atomic.Pointer[func() error]

	mu     sync.Mutex
	inbox  []input
	closed bool
	wake   chan struct{}
	done   chan struct{} // closed when the loop has exited

	// role is held by whichever goroutine drives the engine: a Submit
	// caller (see drive) or the loop. holders counts goroutines that took
	// the role and have not yet made their final check of the inbox;
	// while it is non-zero a post needs no wake-up of the loop.
	role    sync.Mutex
	holders atomic.Int32
	pool    *ioPool // runs a round's other replicas' staged work beside it
	recent  eventLog

	nextID   atomic.Uint64
	inflight chan struct{}
	size     atomic.Uint64
	serving  atomic.Bool
	ready    chan struct{} // closed the first time the engine serves

	// Owned by the loop goroutine.
	eng      *engine.Engine
	peers    map[proto.ReplicaID]*peer
	lastGen  uint64
	waiters  map[uint64]*waiter
	admins   map[uint64]chan engine.AdminReply
	spare    []input
	work     *[]link.Work // staged link work of this round, run after the role is released
	phase    engine.Phase
	phased   bool // phase was logged once
	isReady  bool
	stopDial chan struct{}
}

type inputKind uint8

const (
	inSubmit inputKind = iota + 1
	inReply
	inDown
	inLinkUp
	inTick
	inAdmin
	inFunc
)

// input is one thing for the loop to feed the engine. It is a value type
// so that the inbox, a reused slice, costs no allocation per request.
type input struct {
	kind  inputKind
	req   engine.Request
	w     *waiter
	from  proto.ReplicaID
	gen   uint64
	rep   proto.Reply
	err   error
	lnk   link.Link
	admin engine.AdminRequest
	ach   chan engine.AdminReply
	fn    func(*engine.Engine)
}

// waiter is where a frontend request's reply is delivered: its channel
// (Submit) or its Completer (Start).
type waiter struct {
	ch chan engine.Reply
	c  Completer
}

// Completer takes the reply of a request handed to Start. Complete runs
// on whichever goroutine drives the engine when the reply comes, with the
// engine held: it must be quick and must not wait for other requests.
type Completer interface {
	Complete(engine.Reply)
}

var waiterPool = sync.Pool{New: func() any { return &waiter{ch: make(chan engine.Reply, 1)} }}

// New dials every replica (waiting up to cfg.DialWait for the first
// attempts), starts the engine and its loop, and returns. The engine opens
// its replicas in the background; WaitServing waits for it.
func New(cfg Config) (*Driver, error) {
	if cfg.Dial == nil {
		return nil, fmt.Errorf("enginerun: volume %q: no Dialer", cfg.Volume)
	}
	if len(cfg.Replicas) == 0 {
		return nil, fmt.Errorf("enginerun: volume %q: no replicas", cfg.Volume)
	}
	seen := map[proto.ReplicaID]bool{}
	byAddr := map[string]proto.ReplicaID{}
	for _, r := range cfg.allReplicas() {
		if r.ID == "" || seen[r.ID] {
			return nil, fmt.Errorf("enginerun: volume %q: replica ID %q empty or repeated", cfg.Volume, r.ID)
		}
		seen[r.ID] = true
		// One replica under two ids would take every write twice, and
		// its epoch fence and membership record would fight themselves.
		if other, ok := byAddr[r.Addr]; ok {
			return nil, fmt.Errorf("enginerun: volume %q: %w: replicas %s and %s have the same address %s (one replica cannot be two members)",
				cfg.Volume, ErrSameAddress, other, r.ID, r.Addr)
		}
		byAddr[r.Addr] = r.ID
	}
	cfg.setDefaults()
	d := &Driver{cfg: cfg, log: cfg.Logger.With("volume", cfg.Volume),
		wake: make(chan struct{}, 1), done: make(chan struct{}), inflight: make(chan struct{}, maxInflight),
		ready: make(chan struct{}), peers: map[proto.ReplicaID]*peer{}, waiters: map[uint64]*waiter{},
		admins: map[uint64]chan engine.AdminReply{}, stopDial: make(chan struct{})}
	var wg sync.WaitGroup
	for _, r := range cfg.allReplicas() {
		p := d.addPeer(r)
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.dialLoop(p, p.gen, 0)
		}()
	}
	waitTimeout(&wg, cfg.DialWait)
	d.eng = engine.New(cfg.engineConfig())
	d.pool = newIOPool(d, cfg.IOGoroutines)
	go d.loop()
	return d, nil
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) {
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(d):
	}
}

// post appends an input to the inbox and, unless a goroutine driving the
// engine will see it, wakes the loop. It returns false after Close.
func (d *Driver) post(in input) bool {
	if !d.enqueue(in) {
		return false
	}
	if d.holders.Load() == 0 {
		d.wakeLoop()
	}
	return true
}

// enqueue appends an input to the inbox; false after Close.
func (d *Driver) enqueue(in input) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	d.inbox = append(d.inbox, in)
	return true
}

func (d *Driver) wakeLoop() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *Driver) hasInput() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.inbox) > 0 || d.closed
}

// loop drives the engine on ticks, for inputs no other goroutine drives
// (replies from TCP links, admin requests), and shuts it down on Close.
func (d *Driver) loop() {
	defer close(d.done)
	t := time.NewTicker(d.cfg.Tick)
	defer t.Stop()
	d.drive(true, false) // the engine's first messages (open)
	for {
		tick := false
		select {
		case <-d.wake:
		case <-t.C:
			tick = true
		}
		if !d.drive(tick, tick) {
			d.role.Lock()
			d.shutdown()
			d.role.Unlock()
			return
		}
	}
}

// drive runs the engine on the calling goroutine, as DESIGN.md's
// data-path budget asks: a Submit caller feeds its own request to the
// engine, sends it to in-process replicas and runs their IOs itself, and
// takes in their replies, with no goroutine handoff. When another
// goroutine holds the role, drive returns at once: that holder sees the
// new input when, after releasing the role and running its staged work,
// it checks the inbox once more (holders orders that check after every
// post that skipped waking the loop). wait waits for the role (ticks);
// tick ticks the engine first. It returns false once the driver is closed.
func (d *Driver) drive(wait, tick bool) bool {
	if wait {
		d.role.Lock()
	} else if !d.role.TryLock() {
		return true
	}
	for {
		d.holders.Add(1)
		if tick {
			d.eng.Tick()
			tick = false
		}
		open := d.round()
		work := d.work
		d.work = nil
		d.role.Unlock()
		if work != nil {
			// Every item but the first goes to an idle pool goroutine if
			// there is one; what is left runs here.
			for i := 1; i < len(*work); i++ {
				if d.pool.handOff((*work)[i]) {
					(*work)[i] = nil
				}
			}
			for i, w := range *work {
				if w != nil {
					w.Run()
					(*work)[i] = nil
				}
			}
			*work = (*work)[:0]
			workPool.Put(work)
		}
		d.holders.Add(-1)
		if !open {
			d.wakeLoop() // the loop shuts down
			return false
		}
		if !d.hasInput() || !d.role.TryLock() {
			return true
		}
	}
}

// round drains the inbox into the engine and executes Ready until both
// are empty. It returns false once the driver is closed.
func (d *Driver) round() bool {
	for {
		d.mu.Lock()
		batch, closed := d.inbox, d.closed
		d.inbox, d.spare = d.spare[:0], nil
		d.mu.Unlock()
		if closed {
			return false
		}
		for i := range batch {
			d.feed(&batch[i])
			batch[i] = input{} // drop references for the GC
		}
		d.spare = batch[:0]
		if !d.eng.HasReady() {
			d.observe()
			return true
		}
		rd := d.eng.Ready()
		d.execute(rd)
		d.logEvents(rd.Events)
		for _, b := range rd.Free {
			bufpool.Put(b) // a rebuild's run, from the TCP link's pool
		}
		d.eng.Release(rd)
	}
}

func (d *Driver) feed(in *input) {
	switch in.kind {
	case inSubmit:
		d.waiters[in.req.ID] = in.w
		d.eng.Submit(in.req)
	case inReply:
		if p := d.peers[in.from]; p != nil && p.gen == in.gen {
			if st := in.rep.Status; st != proto.StatusOK && st != proto.StatusStaleEpoch && in.rep.Err != "" {
				p.lastErr = in.rep.Err // kept for Info: the engine's own why may be vaguer
			}
			d.eng.Step(in.from, in.rep)
		}
	case inDown:
		d.linkDown(in.from, in.gen, in.err)
	case inLinkUp:
		d.linkUp(in.from, in.gen, in.lnk)
	case inAdmin:
		d.admins[in.admin.ID] = in.ach
		d.eng.Admin(in.admin)
	case inFunc:
		in.fn(d.eng)
	}
}

// execute carries out one Ready in the engine's documented order:
// messages, then replies.
func (d *Driver) execute(rd engine.Ready) {
	for _, m := range rd.Messages {
		p := d.peers[m.To]
		if p == nil {
			continue // removed; the engine times the call out
		}
		p.out = append(p.out, m.Req)
	}
	for id, p := range d.peers {
		if len(p.out) == 0 {
			continue
		}
		if sl, ok := p.lnk.(stagedLink); ok {
			// Stepped now, in order; its IOs run once the role is released.
			if w := sl.SendStaged(p.out...); w != nil {
				if d.work == nil {
					d.work = workPool.Get().(*[]link.Work)
				}
				*d.work = append(*d.work, w)
			}
		} else if p.lnk != nil {
			p.lnk.Send(p.out...) // links do not keep the slice
		} else {
			// Not connected: fail the calls now rather than at timeout.
			d.post(input{kind: inDown, from: id, gen: p.gen, err: errNotConnected})
		}
		clear(p.out)
		p.out = p.out[:0]
	}
	for _, r := range rd.Replies {
		w := d.waiters[r.ID]
		if w == nil {
			continue
		}
		delete(d.waiters, r.ID)
		w.deliver(r)
	}
	for _, r := range rd.AdminReplies {
		if ch := d.admins[r.ID]; ch != nil {
			delete(d.admins, r.ID)
			ch <- r
		}
	}
}

var errNotConnected = errors.New("not connected")

// stagedLink is a link (replicarun's in-process one) whose Send splits in
// two: SendStaged takes reqs in order, as Send does, and returns the work
// they need (nil if none), which the driver runs after releasing the
// engine, so that the next round can start meanwhile.
type stagedLink interface {
	link.Link
	SendStaged(reqs ...proto.Request) link.Work
}

// workPool holds the slices a round gathers staged work in: a round's
// work runs after the role is released, while the next round may already
// gather its own, so each round takes a slice of its own.
var workPool = sync.Pool{New: func() any { return new([]link.Work) }}

// observe publishes what callers may read without the loop: size, phase,
// and a volume info snapshot, and logs phase changes.
func (d *Driver) observe() {
	d.size.Store(d.eng.SizeBytes())
	serving := d.eng.Serving()
	d.serving.Store(serving)
	if serving && !d.isReady {
		d.isReady = true
		close(d.ready)
	}
	ph, why := d.eng.Phase()
	if ph != d.phase || !d.phased {
		d.log.Info("engine phase", "phase", ph.String(), "why", why, "epoch", d.eng.Epoch())
		d.phase, d.phased = ph, true
	}
}

// logEvents writes what the engine reports happened as structured log
// lines: detected corruption and failed replicas as warnings, the rest
// as information (VolumeInfo.Counters counts them).
func (d *Driver) logEvents(evs []engine.Event) {
	if len(evs) > 0 {
		d.recent.add(time.Now(), evs)
	}
	for _, ev := range evs {
		level := slog.LevelInfo
		if ev.Kind == engine.EventCorrupt || ev.Kind == engine.EventReplicaFailed || ev.Kind == engine.EventRebuildFailed || ev.Kind == engine.EventInternalFailed {
			level = slog.LevelWarn
		}
		attrs := []any{"event", ev.Kind.String(), "replica", string(ev.Replica)}
		if ev.Kind == engine.EventCorrupt || ev.Kind == engine.EventRepaired {
			attrs = append(attrs, "block", ev.Block)
		}
		if ev.Why != "" {
			attrs = append(attrs, "why", ev.Why)
		}
		d.log.Log(context.Background(), level, "volume event", attrs...)
	}
}

func (d *Driver) shutdown() {
	close(d.stopDial)
	for _, p := range d.peers {
		if p.lnk != nil {
			_ = p.lnk.Close()
			p.lnk = nil
		}
	}
	for id, w := range d.waiters {
		w.deliver(engine.Reply{ID: id, Err: ErrClosed})
	}
	for id, ch := range d.admins {
		ch <- engine.AdminReply{ID: id, Err: ErrClosed}
	}
	d.waiters, d.admins = nil, nil
	d.mu.Lock()
	rest := d.inbox
	d.inbox = nil
	d.mu.Unlock()
	for _, in := range rest {
		switch in.kind {
		case inSubmit:
			in.w.deliver(engine.Reply{ID: in.req.ID, Err: ErrClosed})
		case inAdmin:
			in.ach <- engine.AdminReply{ID: in.admin.ID, Err: ErrClosed}
		case inLinkUp:
			_ = in.lnk.Close()
		}
	}
}

// Close stops the loop, closes every link, and fails requests still
// outstanding with ErrClosed. Unflushed writes are not flushed.
func (d *Driver) Close() error {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
	<-d.done
	return nil
}

// WaitServing waits until the engine has opened its replicas and serves
// IO, or ctx ends.
func (d *Driver) WaitServing(ctx context.Context) error {
	select {
	case <-d.ready:
		return nil
	case <-d.done:
		return ErrClosed
	case <-ctx.Done():
		info, err := d.Info(context.Background())
		if err == nil && info.Why != "" {
			return fmt.Errorf("volume %s still %s (%s): %w", d.cfg.Volume, info.Phase, info.Why, ctx.Err())
		}
		return fmt.Errorf("volume %s not serving: %w", d.cfg.Volume, ctx.Err())
	}
}

// Config returns the driver's configuration, defaults filled in (the
// replicas and spares it started with; Info has the membership now).
func (d *Driver) Config() Config { return d.cfg }

// Serving reports whether the engine serves IO now.
func (d *Driver) Serving() bool { return d.serving.Load() }

// SizeBytes returns the volume size (0 until the engine has opened).
func (d *Driver) SizeBytes() uint64 { return d.size.Load() }

// Submit hands a frontend request to the engine and waits for its reply.
// The request's ID is assigned here. When ctx ends first, Submit returns
// ctx.Err(); the request may still take effect, and req.Data must then
// not be modified until it has, which is why Volume hands the engine
// copies it owns.
func (d *Driver) Submit(ctx context.Context, req engine.Request) (engine.Reply, error) {
	// A context already done never submits (select would pick at random
	// between it and a free in-flight slot).
	if err := ctx.Err(); err != nil {
		return engine.Reply{}, err
	}
	select {
	case d.inflight <- struct{}{}:
	case <-ctx.Done():
		return engine.Reply{}, ctx.Err()
	}
	w := waiterPool.Get().(*waiter)
	req.ID = d.nextID.Add(1)
	if !d.enqueue(input{kind: inSubmit, req: req, w: w}) {
		<-d.inflight
		waiterPool.Put(w)
		return engine.Reply{}, ErrClosed
	}
	d.drive(false, false)
	select {
	case r := <-w.ch:
		<-d.inflight
		waiterPool.Put(w)
		return r, nil
	case <-ctx.Done():
		// The waiter stays with the loop, which will deliver into its
		// buffered channel; it is garbage afterwards, never reused. The
		// in-flight slot is released when that happens.
		go func() {
			<-w.ch
			<-d.inflight
		}()
		return engine.Reply{}, ctx.Err()
	}
}

// deliver hands r to the waiter. A Completer's waiter goes back to the
// pool first; a channel's is returned by its Submit.
func (w *waiter) deliver(r engine.Reply) {
	if c := w.c; c != nil {
		w.c = nil
		waiterPool.Put(w)
		c.Complete(r)
		return
	}
	w.ch <- r
}

// Start hands a frontend request to the engine without waiting: c gets
// its reply, on whichever goroutine drives the engine then (often a later
// Run on this one). The request's ID is assigned here. req.Data must stay
// untouched until c is called. Callers bound their own requests in
// flight (a frontend's window); Start never waits.
func (d *Driver) Start(req engine.Request, c Completer) {
	w := waiterPool.Get().(*waiter)
	w.c = c
	req.ID = d.nextID.Add(1)
	if !d.enqueue(input{kind: inSubmit, req: req, w: w}) {
		w.c = nil
		waiterPool.Put(w)
		c.Complete(engine.Reply{ID: req.ID, Err: ErrClosed})
	}
}

// Run drives the engine on the calling goroutine for the requests queued
// by Start (and anything else waiting), running in-process replicas' IOs
// here too, until nothing is left that this goroutine can do. If another
// goroutine is driving, Run returns at once: that one does the work.
func (d *Driver) Run() { d.drive(false, false) }

// Admin runs an admin request through the engine and waits for its reply.
func (d *Driver) Admin(ctx context.Context, req engine.AdminRequest) (engine.AdminReply, error) {
	if g := d.snapGuard.Load(); g != nil && req.Op == engine.AdminSnapshot {
		if err := (*g)(); err != nil {
			return engine.AdminReply{}, fmt.Errorf("%w: snapshot %s: %w", engine.ErrBusy, req.Name, err)
		}
	}
	ch := make(chan engine.AdminReply, 1)
	req.ID = d.nextID.Add(1)
	if !d.post(input{kind: inAdmin, admin: req, ach: ch}) {
		return engine.AdminReply{}, ErrClosed
	}
	select {
	case r := <-ch:
		return r, r.Err
	case <-ctx.Done():
		return engine.AdminReply{}, ctx.Err()
	}
}

// SetSnapshotGuard makes Admin refuse snapshots (engine.ErrBusy) while
// guard returns an error, e.g. while a rekey rewrites the volume (a
// snapshot would keep blocks under two keys); nil removes it.
func (d *Driver) SetSnapshotGuard(guard func() error) {
	if guard == nil {
		d.snapGuard.Store(nil)
		return
	}
	d.snapGuard.Store(&guard)
}

// Info returns the engine's view of the volume, with each replica's
// address and link state.
func (d *Driver) Info(ctx context.Context) (Info, error) {
	ch := make(chan Info, 1)
	if !d.post(input{kind: inFunc, fn: func(e *engine.Engine) {
		info := Info{VolumeInfo: e.Info(), Addrs: map[proto.ReplicaID]string{}, Connected: map[proto.ReplicaID]bool{},
			LinkErr: map[proto.ReplicaID]string{}, Tick: d.cfg.Tick}
		for id, p := range d.peers {
			info.Addrs[id] = p.addr
			info.Connected[id] = p.lnk != nil
			if why := p.trouble(); why != "" {
				info.LinkErr[id] = why
			}
		}
		ch <- info
	}}) {
		return Info{}, ErrClosed
	}
	select {
	case info := <-ch:
		return info, nil
	case <-ctx.Done():
		return Info{}, ctx.Err()
	}
}

// Info is the engine's VolumeInfo plus what the driver knows of links.
type Info struct {
	engine.VolumeInfo
	Addrs     map[proto.ReplicaID]string
	Connected map[proto.ReplicaID]bool
	// LinkErr is what the driver last saw go wrong with a replica: the
	// last dial error while it is not connected, else the last error it
	// answered a request with on its current link (such as "replica r1
	// serves nothing: ... bad replica metadata"). Absent when none.
	LinkErr map[proto.ReplicaID]string
	// Tick is the length of an engine tick (for RebuildStats).
	Tick time.Duration
}

// SetAttached tells the engine whether a frontend is attached (a revert
// needs the volume detached).
func (d *Driver) SetAttached(ctx context.Context, attached bool) error {
	ch := make(chan struct{})
	if !d.post(input{kind: inFunc, fn: func(e *engine.Engine) { e.SetAttached(attached); close(ch) }}) {
		return ErrClosed
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// randomNonce names this engine incarnation in the epochs it takes, so
// two engines opening the same replicas at once never share an epoch.
func randomNonce() uint64 {
	var b [8]byte
	if _, err := cryptorand.Read(b[:]); err != nil {
		return uint64(time.Now().UnixNano())
	}
	return binary.LittleEndian.Uint64(b[:])
}
