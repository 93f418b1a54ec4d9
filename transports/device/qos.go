package device

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// QoSLimits are a volume's IO limits; zero means no limit.
type QoSLimits struct {
	IOPS           uint64
	BytesPerSecond uint64
}

// QoSStats count what a Limiter did under its current limits (they
// restart at every SetLimits).
type QoSStats struct {
	Limits QoSLimits
	// Generation counts SetLimits calls.
	Generation uint64
	// Admitted and AdmittedBytes are the IOs (and their bytes) let
	// through; Delayed counts those that waited for a refill.
	Admitted, AdmittedBytes, Delayed uint64
	// Refills counts refill periods that passed.
	Refills uint64
	// MaxIOsPerRefill and MaxBytesPerRefill are the most IOs and bytes
	// admitted between two refills: the limiter keeps them at or below
	// IOsPerRefill and BytesPerRefill plus one IO's bytes.
	MaxIOsPerRefill, MaxBytesPerRefill uint64
	// IOsPerRefill and BytesPerRefill are the bucket sizes: what one
	// refill period may admit (at least one IO).
	IOsPerRefill, BytesPerRefill uint64
}

// QoSRefillPeriod is how often a Limiter's buckets are refilled.
const QoSRefillPeriod = 100 * time.Millisecond

// Limiter is a token bucket of IOs and one of bytes, refilled every
// QoSRefillPeriod with the limit's share of a second and holding at most
// one period's worth, so no burst passes the limit of one period. An IO
// takes one IO token and its bytes; a byte bucket that is not empty
// admits an IO bigger than what is left (its debt delays the next ones),
// so IOs bigger than a period's bytes still pass. Its limits change at
// any time (SetLimits), for the IOs waiting too: a volume's QoS changes
// without restarting anything. It reads the clock, so it lives here in
// the IO shell, never in core.
type Limiter struct {
	active atomic.Bool // limits are not both zero: the fast path skips the lock

	mu         sync.Mutex
	limits     QoSLimits
	ioMilli    int64 // IO tokens, in thousandths of an IO
	ioCapMilli int64
	bytes      int64 // byte tokens; negative is debt
	bytesCap   int64
	lastRefill time.Time
	window     struct{ ios, bytes uint64 } // admitted since the last refill
	stats      QoSStats
	changed    chan struct{} // closed by SetLimits: waiters look again
}

// NewLimiter returns a Limiter with no limits.
func NewLimiter() *Limiter {
	return &Limiter{changed: make(chan struct{})}
}

// SetLimits replaces the limits (and starts new stats); the buckets
// start full.
func (l *Limiter) SetLimits(lim QoSLimits) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.limits = lim
	l.ioCapMilli = max(int64(lim.IOPS)*QoSRefillPeriod.Milliseconds(), 1000)
	l.bytesCap = max(int64(lim.BytesPerSecond)/int64(time.Second/QoSRefillPeriod), 1)
	l.ioMilli, l.bytes = l.ioCapMilli, l.bytesCap
	l.lastRefill = time.Now()
	l.window.ios, l.window.bytes = 0, 0
	l.stats = QoSStats{Limits: lim, Generation: l.stats.Generation + 1,
		IOsPerRefill: uint64(l.ioCapMilli / 1000), BytesPerRefill: uint64(l.bytesCap)}
	if lim.BytesPerSecond == 0 {
		l.stats.BytesPerRefill = 0
	}
	l.active.Store(lim.IOPS != 0 || lim.BytesPerSecond != 0)
	close(l.changed)
	l.changed = make(chan struct{})
}

// Limits returns the limits now.
func (l *Limiter) Limits() QoSLimits {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.limits
}

// Stats returns the counters of the current limits.
func (l *Limiter) Stats() QoSStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stats
}

// refill adds the tokens of the periods passed since the last refill.
func (l *Limiter) refill(now time.Time) {
	periods := int64(now.Sub(l.lastRefill) / QoSRefillPeriod)
	if periods <= 0 {
		return
	}
	l.lastRefill = l.lastRefill.Add(time.Duration(periods) * QoSRefillPeriod)
	l.stats.Refills += uint64(periods)
	l.window.ios, l.window.bytes = 0, 0
	l.ioMilli = min(l.ioMilli+periods*int64(l.limits.IOPS)*QoSRefillPeriod.Milliseconds(), l.ioCapMilli)
	perPeriod := int64(l.limits.BytesPerSecond) / int64(time.Second/QoSRefillPeriod)
	if periods > l.bytesCap/max(perPeriod, 1)+1 { // enough periods to fill it from any debt
		l.bytes = l.bytesCap
	} else {
		l.bytes = min(l.bytes+periods*perPeriod, l.bytesCap)
	}
}

// tryAdmit takes an IO of n bytes if the buckets allow it now; else it
// returns when the next refill is due.
func (l *Limiter) tryAdmit(n int) (ok bool, next time.Time, changed <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.limits.IOPS == 0 && l.limits.BytesPerSecond == 0 {
		return true, time.Time{}, nil
	}
	l.refill(time.Now())
	ioOK := l.limits.IOPS == 0 || l.ioMilli >= 1000
	bytesOK := l.limits.BytesPerSecond == 0 || n == 0 || l.bytes > 0
	if !ioOK || !bytesOK {
		return false, l.lastRefill.Add(QoSRefillPeriod), l.changed
	}
	if l.limits.IOPS != 0 {
		l.ioMilli -= 1000
	}
	if l.limits.BytesPerSecond != 0 {
		l.bytes -= int64(n)
	}
	l.window.ios++
	l.window.bytes += uint64(n)
	l.stats.Admitted++
	l.stats.AdmittedBytes += uint64(n)
	l.stats.MaxIOsPerRefill = max(l.stats.MaxIOsPerRefill, l.window.ios)
	l.stats.MaxBytesPerRefill = max(l.stats.MaxBytesPerRefill, l.window.bytes)
	return true, time.Time{}, nil
}

// Wait blocks until an IO of n bytes may go, or ctx ends.
func (l *Limiter) Wait(ctx context.Context, n int) error {
	if !l.active.Load() {
		return nil
	}
	return l.wait(ctx, n, false)
}

// wait is Wait for an IO that was already refused once when delayed.
func (l *Limiter) wait(ctx context.Context, n int, delayed bool) error {
	for {
		ok, next, changed := l.tryAdmit(n)
		if ok {
			if delayed {
				l.mu.Lock()
				l.stats.Delayed++
				l.mu.Unlock()
			}
			return nil
		}
		delayed = true
		t := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-changed:
		case <-t.C:
		}
		t.Stop()
	}
}

// Limited is a Device whose IOs pass a Limiter first (flushes are not
// limited: they carry no data and only make earlier writes durable).
type Limited struct {
	Device
	L *Limiter
}

// limitedAsync is a Limited over an Async device, and Async itself: an
// IO the limiter admits at once keeps the wrapped device's fast path;
// one that must wait waits on a goroutine of its own and then runs with
// the synchronous methods.
type limitedAsync struct {
	*Limited
	async Async
}

// NewLimited wraps dev with l; the result is Async when dev is.
func NewLimited(dev Device, l *Limiter) Device {
	d := &Limited{Device: dev, L: l}
	if a, ok := dev.(Async); ok {
		return &limitedAsync{Limited: d, async: a}
	}
	return d
}

func (d *Limited) ReadAt(ctx context.Context, p []byte, off uint64) error {
	if err := d.L.Wait(ctx, len(p)); err != nil {
		return err
	}
	return d.Device.ReadAt(ctx, p, off)
}

func (d *Limited) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	if err := d.L.Wait(ctx, len(p)); err != nil {
		return err
	}
	return d.Device.WriteAt(ctx, p, off, fua)
}

// Trim and WriteZeroes count as one IO of no bytes: they move no data.
func (d *Limited) Trim(ctx context.Context, off, length uint64, fua bool) error {
	if err := d.L.Wait(ctx, 0); err != nil {
		return err
	}
	return d.Device.Trim(ctx, off, length, fua)
}

func (d *Limited) WriteZeroes(ctx context.Context, off, length uint64, fua bool) error {
	if err := d.L.Wait(ctx, 0); err != nil {
		return err
	}
	return d.Device.WriteZeroes(ctx, off, length, fua)
}

// Start admits r at once when the limiter lets it (then the wrapped
// device's own Start runs it), else waits for it on a goroutine.
func (d *limitedAsync) Start(r *Request) {
	n := 0
	if r.Op == OpRead || r.Op == OpWrite {
		n = len(r.Data)
	}
	ok := r.Op == OpFlush || !d.L.active.Load()
	if !ok {
		ok, _, _ = d.L.tryAdmit(n)
	}
	if ok {
		d.async.Start(r)
		return
	}
	go func() {
		ctx := context.Background()
		if err := d.L.wait(ctx, n, true); err != nil {
			r.Done(r, err)
			return
		}
		r.Done(r, Do(ctx, d.Device, r))
	}()
}

// Run runs the wrapped device's queued work.
func (d *limitedAsync) Run() { d.async.Run() }

// TrimZeroes passes on whether the wrapped device's trims read as zeros.
func (d *Limited) TrimZeroes() bool {
	tz, ok := d.Device.(interface{ TrimZeroes() bool })
	return ok && tz.TrimZeroes()
}
