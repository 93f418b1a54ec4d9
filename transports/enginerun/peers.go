package enginerun

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/link"
)

// peer is the loop's record of one replica's link. gen counts link
// incarnations, so that replies and down reports from an old link (which
// may arrive after a new one is up) are ignored.
type peer struct {
	id      proto.ReplicaID
	addr    string
	gen     uint64
	lnk     link.Link // nil while not connected
	dialing bool
	removed atomic.Bool     // set when removed, to stop its dial loop
	out     []proto.Request // this round's messages
	// dialErr is the last failed dial's error, set by the dial loop and
	// cleared when a dial succeeds; lastErr (the loop's) the last error
	// the replica answered with on the current link.
	dialErr atomic.Pointer[string]
	lastErr string
}

// trouble says what last went wrong with p (see Info.LinkErr).
func (p *peer) trouble() string {
	if p.lnk == nil {
		if e := p.dialErr.Load(); e != nil {
			return "dial: " + *e
		}
		return ""
	}
	return p.lastErr
}

// addPeer registers a replica; the caller starts its dialLoop.
func (d *Driver) addPeer(r Replica) *peer {
	d.lastGen++
	p := &peer{id: r.ID, addr: r.Addr, gen: d.lastGen, dialing: true}
	d.peers[r.ID] = p
	return p
}

// handler returns the link callbacks for incarnation gen of p. OnReply
// and OnDown only post to the inbox, so they are safe from any goroutine,
// including the loop itself (an in-process link may answer inside Send).
// A link with a reader goroutine of its own (TCP) calls OnBatch after a
// batch of replies: that goroutine then drives the engine itself, as a
// Submit caller does, instead of waking the loop — one goroutine handoff
// less per request. Once a link has called OnBatch, its OnReply only
// enqueues (no wake-up of the loop): OnBatch follows.
func (d *Driver) handler(id proto.ReplicaID, gen uint64) link.Handler {
	var batched atomic.Bool
	return link.Handler{
		OnReply: func(rep proto.Reply) {
			in := input{kind: inReply, from: id, gen: gen, rep: rep}
			if batched.Load() {
				d.enqueue(in)
			} else {
				d.post(in)
			}
		},
		OnDown: func(err error) { d.post(input{kind: inDown, from: id, gen: gen, err: err}) },
		OnBatch: func() {
			batched.Store(true)
			d.Run()
		},
	}
}

// dialLoop dials p until it succeeds or the driver closes, sleeping
// between attempts with exponential backoff, and posts the link to the
// loop. It runs on its own goroutine and reads only p's immutable fields.
func (d *Driver) dialLoop(p *peer, gen uint64, delay time.Duration) {
	backoff := d.cfg.RedialMin
	for attempt := 0; !p.removed.Load(); attempt++ {
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-d.stopDial:
				return
			}
		}
		lnk, err := d.cfg.Dial(p.addr, d.handler(p.id, gen))
		if err == nil {
			p.dialErr.Store(nil)
			if !d.post(input{kind: inLinkUp, from: p.id, gen: gen, lnk: lnk}) {
				_ = lnk.Close()
			}
			return
		}
		msg := err.Error()
		p.dialErr.Store(&msg)
		if attempt == 0 || attempt%20 == 0 {
			d.log.Warn("dial replica", "replica", p.id, "addr", p.addr, "attempt", attempt+1, "err", err)
		}
		delay = backoff
		backoff = min(2*backoff, d.cfg.RedialMax)
	}
}

func (d *Driver) linkUp(id proto.ReplicaID, gen uint64, lnk link.Link) {
	p := d.peers[id]
	if p == nil || p.gen != gen || p.lnk != nil {
		_ = lnk.Close()
		return
	}
	p.lnk, p.dialing, p.lastErr = lnk, false, ""
	d.log.Info("replica link up", "replica", id, "addr", p.addr)
}

// linkDown reports the loss to the engine (every call outstanding to the
// replica fails at once) and starts redialing.
func (d *Driver) linkDown(id proto.ReplicaID, gen uint64, err error) {
	p := d.peers[id]
	if p == nil || p.gen != gen {
		return
	}
	d.eng.ReplicaDown(id)
	if p.lnk == nil {
		return // not connected yet: the dial loop is already running
	}
	d.log.Warn("replica link down", "replica", id, "addr", p.addr, "err", err)
	_ = p.lnk.Close()
	p.lnk = nil
	d.lastGen++
	p.gen = d.lastGen
	p.dialing = true
	go d.dialLoop(p, p.gen, d.cfg.RedialMin)
}

// AddReplica registers a replica's address, dials it, and asks the engine
// to open and rebuild it into the volume. It returns when the rebuild is
// done or failed, or ctx ends (the rebuild goes on).
func (d *Driver) AddReplica(ctx context.Context, r Replica) error {
	return d.addReplica(ctx, r, 0)
}

// addReplica adds r, its rebuild paced at rateBytesPerTick (0: the
// configured rate).
func (d *Driver) addReplica(ctx context.Context, r Replica, rateBytesPerTick uint64) error {
	if r.ID == "" || r.Addr == "" {
		return fmt.Errorf("add replica: %w: ID and address are required", engine.ErrInvalid)
	}
	errc := make(chan error, 1)
	known := false
	if !d.post(input{kind: inFunc, fn: func(*engine.Engine) {
		if p := d.peers[r.ID]; p != nil {
			if p.addr != r.Addr {
				errc <- fmt.Errorf("add replica %s: %w at address %s", r.ID, engine.ErrExists, p.addr)
				return
			}
			known = true
			errc <- nil // re-adding a known replica: the engine decides
			return
		}
		for _, p := range d.peers {
			if p.addr == r.Addr {
				errc <- fmt.Errorf("add replica %s at %s: %w: it is replica %s (one replica cannot be two members; remove %s first to add it under another ID)",
					r.ID, r.Addr, ErrSameAddress, p.id, p.id)
				return
			}
		}
		errc <- nil
	}}) {
		return ErrClosed
	}
	if err := <-errc; err != nil {
		return err
	}
	if !known {
		if err := d.registerNew(r); err != nil {
			return err
		}
	}
	if err := d.waitLinked(ctx, r.ID); err != nil {
		return fmt.Errorf("add replica %s at %s: %w", r.ID, r.Addr, err)
	}
	if _, err := d.Admin(ctx, engine.AdminRequest{Op: engine.AdminAddReplica, Replica: r.ID, RateBytesPerTick: rateBytesPerTick}); err != nil {
		return fmt.Errorf("add replica %s at %s: %w", r.ID, r.Addr, err)
	}
	return nil
}

// registerNew dials a replica not yet known once, so that an address
// nothing answers on is an error now (ErrUnreachable) rather than a dial
// loop retrying unseen forever; then registers it and hands the link to
// the loop. A replica that goes away later is redialed like any other.
func (d *Driver) registerNew(r Replica) error {
	// The probe link is closed at once: the peer's own incarnation,
	// which needs the generation the loop assigns, dials again.
	lnk, err := d.cfg.Dial(r.Addr, link.Handler{})
	if err != nil {
		return fmt.Errorf("add replica %s at %s: %w: %v (nothing was added)", r.ID, r.Addr, ErrUnreachable, err)
	}
	_ = lnk.Close()
	errc := make(chan error, 1)
	if !d.post(input{kind: inFunc, fn: func(*engine.Engine) {
		if d.peers[r.ID] != nil {
			errc <- nil // added meanwhile by a concurrent call
			return
		}
		for _, p := range d.peers {
			if p.addr == r.Addr { // taken by a concurrent call meanwhile
				errc <- fmt.Errorf("add replica %s at %s: %w: it is replica %s", r.ID, r.Addr, ErrSameAddress, p.id)
				return
			}
		}
		p := d.addPeer(r)
		go d.dialLoop(p, p.gen, 0)
		errc <- nil
	}}) {
		return ErrClosed
	}
	return <-errc
}

// ErrUnreachable refuses to add a replica that cannot be dialed.
var ErrUnreachable = errors.New("replica unreachable")

// waitLinked waits for a replica's link to come up, polling at the tick.
func (d *Driver) waitLinked(ctx context.Context, id proto.ReplicaID) error {
	for {
		info, err := d.Info(ctx)
		if err != nil {
			return err
		}
		if info.Connected[id] {
			return nil
		}
		select {
		case <-time.After(d.cfg.Tick):
		case <-ctx.Done():
			return fmt.Errorf("not connected: %w", ctx.Err())
		}
	}
}

// RemoveReplica takes a replica out of the volume and closes its link.
func (d *Driver) RemoveReplica(ctx context.Context, id proto.ReplicaID) error {
	if _, err := d.Admin(ctx, engine.AdminRequest{Op: engine.AdminRemoveReplica, Replica: id}); err != nil {
		return fmt.Errorf("remove replica %s: %w", id, err)
	}
	d.post(input{kind: inFunc, fn: func(*engine.Engine) {
		if p := d.peers[id]; p != nil {
			if p.lnk != nil {
				_ = p.lnk.Close()
			}
			p.removed.Store(true)
			delete(d.peers, id)
		}
	}})
	return nil
}
