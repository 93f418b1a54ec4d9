package device

import "sync"

// Budget bounds the request buffer bytes that frontend connections hold
// (data read for a reply not yet sent, a write's payload not yet
// written): per connection and, across all connections of a server, in
// total. A connection whose client reads no replies keeps its buffers
// until it goes away; the budget makes that cost bounded, and makes the
// connection stop reading new requests instead of allocating for them.
//
// Every connection takes a Share. A Share may take n more bytes when
//
//   - it holds nothing, or its bytes stay within its own maximum, and
//   - the total stays within the Budget's maximum, or the Share's bytes
//     stay within the guaranteed floor, or nothing is held at all.
//
// The floor is what keeps a well-behaved client served while others pin
// the whole total: its requests up to the floor never wait for another
// connection's bytes. So the bytes held are at most
// totalMax + connections × floor.
type Budget struct {
	totalMaxBytes int64 // 0: no total bound
	floorBytes    int64

	mu        sync.Mutex
	cond      *sync.Cond
	heldBytes int64
	waiting   int
}

// NewBudget returns a Budget holding at most totalMaxBytes (0 or less:
// no total bound) beyond what each share's floorBytes guarantee.
func NewBudget(totalMaxBytes, floorBytes int64) *Budget {
	b := &Budget{totalMaxBytes: max(totalMaxBytes, 0), floorBytes: max(floorBytes, 0)}
	b.cond = sync.NewCond(&b.mu)
	return b
}

// HeldBytes is what every share holds now, in total.
func (b *Budget) HeldBytes() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.heldBytes
}

// Waiting is how many Acquire calls are waiting for bytes now.
func (b *Budget) Waiting() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.waiting
}

// Share is one connection's part of a Budget. Its methods may be called
// from any goroutine.
type Share struct {
	b         *Budget
	maxBytes  int64
	heldBytes int64 // under b.mu
	canceled  bool  // under b.mu
}

// NewShare returns a share that holds at most maxBytes (a single larger
// request is let through alone).
func (b *Budget) NewShare(maxBytes int64) *Share {
	return &Share{b: b, maxBytes: maxBytes}
}

// fits reports whether s may take n more bytes now. Under b.mu.
func (s *Share) fits(n int64) bool {
	b := s.b
	if s.heldBytes > 0 && s.heldBytes+n > s.maxBytes {
		return false
	}
	return b.totalMaxBytes == 0 || b.heldBytes+n <= b.totalMaxBytes ||
		s.heldBytes+n <= b.floorBytes || b.heldBytes == 0
}

// TryAcquire takes n bytes if they fit now, without waiting.
func (s *Share) TryAcquire(n int64) bool {
	b := s.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if s.canceled || !s.fits(n) {
		return false
	}
	s.take(n)
	return true
}

// Acquire takes n bytes, waiting until they fit. Before it first waits
// it calls beforeWait (if not nil) without holding any lock: the caller
// finishes there the work that releases its own bytes, which no other
// goroutine would do. It returns false, having taken nothing, once the
// share is canceled.
func (s *Share) Acquire(n int64, beforeWait func()) bool {
	if s.TryAcquire(n) {
		return true
	}
	if beforeWait != nil {
		beforeWait()
	}
	b := s.b
	b.mu.Lock()
	defer b.mu.Unlock()
	b.waiting++
	for !s.canceled && !s.fits(n) {
		b.cond.Wait()
	}
	b.waiting--
	if s.canceled {
		return false
	}
	s.take(n)
	return true
}

// take adds n held bytes. Under b.mu.
func (s *Share) take(n int64) {
	s.heldBytes += n
	s.b.heldBytes += n
}

// Release gives back n bytes taken by Acquire or TryAcquire.
func (s *Share) Release(n int64) {
	if n == 0 {
		return
	}
	b := s.b
	b.mu.Lock()
	s.heldBytes -= n
	b.heldBytes -= n
	wake := b.waiting > 0
	b.mu.Unlock()
	if wake {
		b.cond.Broadcast()
	}
}

// Cancel makes every Acquire of s, waiting or later, return false: the
// connection is going away and must not wait for other connections'
// bytes. Bytes already held are still given back with Release.
func (s *Share) Cancel() {
	b := s.b
	b.mu.Lock()
	s.canceled = true
	wake := b.waiting > 0
	b.mu.Unlock()
	if wake {
		b.cond.Broadcast()
	}
}

// HeldBytes is what s holds now.
func (s *Share) HeldBytes() int64 {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	return s.heldBytes
}
