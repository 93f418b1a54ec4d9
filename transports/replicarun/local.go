package replicarun

import (
	"fmt"
	"sync"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
	"github.com/drover-io/drover/transports/link"
)

// localLink is the in-process link.Link to a Runner: no socket, no
// goroutine of its own. Send steps each request into the Runner on the
// caller's goroutine, which also runs the request's quick IOs.
type localLink struct {
	r      *Runner
	h      link.Handler
	pushFn func(proto.Reply) // l.push, bound once (a method value allocates)

	mu         sync.Mutex
	closed     bool
	queue      []proto.Reply // replies not yet handed to h.OnReply
	spare      []proto.Reply // the drained queue, reused
	delivering bool          // a goroutine is draining queue
}

// NewLocalLink returns a link to r that runs in the caller's process.
//
// Replies reach h.OnReply one at a time, never concurrently, in the order
// the replica emits them; OnReply may run on the goroutine calling Send,
// before Send returns (that is the point: no handoff), so the caller must
// not hold, across Send, a lock that OnReply takes. Send called from
// within OnReply is fine: its replies are delivered after OnReply returns.
// When r is closed, h.OnDown is called once.
func NewLocalLink(r *Runner, h link.Handler) link.Link {
	l := &localLink{r: r, h: h}
	l.pushFn = l.push
	r.mu.Lock()
	closed := r.closed
	if !closed {
		r.downs[l] = struct{}{}
	}
	r.mu.Unlock()
	if closed {
		l.onDown(ErrClosed)
	}
	return l
}

// LocalDialer dials the Runners of this process by name: the link.Dialer
// of an engine whose replicas run beside it (drover dev, benches, tests).
// An address that names no Runner is an error. Runners added to the map
// later are found too; the map must not change while the engine dials.
func LocalDialer(runners map[string]*Runner) link.Dialer {
	return func(addr string, h link.Handler) (link.Link, error) {
		r := runners[addr]
		if r == nil {
			return nil, fmt.Errorf("no in-process replica %q", addr)
		}
		return NewLocalLink(r, h), nil
	}
}

// Send implements link.Link.
func (l *localLink) Send(reqs ...proto.Request) {
	for _, req := range reqs {
		l.mu.Lock()
		closed := l.closed
		l.mu.Unlock()
		if closed {
			return
		}
		l.r.Handle(req, l.pushFn)
	}
}

// SendStaged is Send split in two for a caller that serializes its
// sends (the engine driver): it steps reqs into the replica in order, as
// Send does, and returns their IOs, still to run, as a link.Work (nil when
// there are none). The caller runs it later on any goroutine, without
// holding what OnReply needs, so that the IOs of one batch run while the
// next batch is being stepped, and batches' IOs run concurrently.
func (l *localLink) SendStaged(reqs ...proto.Request) link.Work {
	w := stagedPool.Get().(*stagedIOs)
	for _, req := range reqs {
		l.mu.Lock()
		closed := l.closed
		l.mu.Unlock()
		if closed {
			break
		}
		w.ios = l.r.step(req, l.pushFn, w.ios)
	}
	if len(w.ios) == 0 {
		stagedPool.Put(w)
		return nil
	}
	w.r = l.r
	return w
}

// stagedIOs is the link.Work of a SendStaged: IOs to run on a Runner.
// They are pooled, with their slices, so a staged send allocates nothing.
type stagedIOs struct {
	r   *Runner
	ios []store.IO
}

var stagedPool = sync.Pool{New: func() any { return new(stagedIOs) }}

// Run runs the IOs (and what follows from them) and returns w to the pool.
func (w *stagedIOs) Run() {
	w.ios = w.r.run(w.ios)[:0] // run zeroes what it pops
	w.r = nil
	stagedPool.Put(w)
}

// Close implements link.Link. Replies to requests already sent are
// dropped from now on.
func (l *localLink) Close() error {
	l.mu.Lock()
	l.closed, l.queue = true, nil
	l.mu.Unlock()
	l.r.mu.Lock()
	if l.r.downs != nil {
		delete(l.r.downs, l)
	}
	l.r.mu.Unlock()
	return nil
}

// push hands rep to OnReply. Whoever finds no delivery going on becomes
// the deliverer and drains the queue; others only enqueue. So OnReply
// never runs concurrently with itself and a Send from inside OnReply
// cannot deadlock on the link.
func (l *localLink) push(rep proto.Reply) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.queue = append(l.queue, rep)
	if l.delivering {
		l.mu.Unlock()
		return
	}
	l.delivering = true
	for len(l.queue) > 0 && !l.closed {
		// Take the whole queue; pushes meanwhile go to the spare one.
		batch := l.queue
		l.queue, l.spare = l.spare[:0], nil
		l.mu.Unlock()
		for i := range batch {
			l.mu.Lock()
			closed := l.closed
			l.mu.Unlock()
			if !closed && l.h.OnReply != nil {
				l.h.OnReply(batch[i])
			}
			batch[i] = proto.Reply{} // drop references for the GC
		}
		l.mu.Lock()
		if !l.closed {
			l.spare = batch[:0]
		}
	}
	l.delivering = false
	l.mu.Unlock()
}

func (l *localLink) onDown(err error) {
	l.mu.Lock()
	was := l.closed
	l.closed, l.queue = true, nil
	l.mu.Unlock()
	if !was && l.h.OnDown != nil {
		l.h.OnDown(err)
	}
}
