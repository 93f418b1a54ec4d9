package enginerun

import (
	"runtime"
	"sync"

	"github.com/drover-io/drover/transports/link"
)

// ioPool runs staged replica work beside the goroutine that staged it: a
// round that staged work for several in-process replicas (a write to three
// replicas, reads spread over them) runs the first itself and hands the
// rest to idle pool goroutines, so replicas' IOs proceed on several cores
// at once. A hand-off never waits: with no idle goroutine the work runs
// where it was staged. Work must always run (a Runner counts its IOs and
// Close waits for them), so the pool stops taking work before its
// goroutines exit, and they drain what they took.
type ioPool struct {
	d    *Driver
	work chan link.Work

	mu     sync.Mutex
	closed bool
}

// newIOPool starts n goroutines (n < 0: one per spare CPU); none for 0.
// The pool is off by default (Config.IOGoroutines).
func newIOPool(d *Driver, n int) *ioPool {
	if n < 0 {
		n = runtime.GOMAXPROCS(0) - 1
	}
	if n <= 0 {
		return nil
	}
	p := &ioPool{d: d, work: make(chan link.Work)}
	for range n {
		go p.run()
	}
	return p
}

// handOff gives w to an idle pool goroutine; false when none is idle.
func (p *ioPool) handOff(w link.Work) bool {
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	select {
	case p.work <- w:
		return true
	default:
		return false
	}
}

// run executes handed-off work until the driver is done. While it runs
// work it counts as a holder, as drive does: replies the work posts then
// need no wake-up of the loop, and it drives the engine itself afterwards
// if they are waiting.
func (p *ioPool) run() {
	for {
		select {
		case w := <-p.work:
			p.d.holders.Add(1)
			w.Run()
			p.d.holders.Add(-1)
			if p.d.hasInput() {
				p.d.drive(false, false)
			}
		case <-p.d.done:
			p.mu.Lock()
			p.closed = true
			p.mu.Unlock()
			return
		}
	}
}
