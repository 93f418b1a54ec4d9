// Package bufpool recycles the data buffers of the data path, in
// power-of-two size classes from 4 KiB to 4 MiB, so that a steady stream
// of reads and writes allocates nothing.
//
// Ownership is the whole rule: Put a buffer only when nothing else holds
// it or any slice of its backing array, and never use it after. The data
// path hands buffers along with that ownership (docs/ARCHITECTURE.md,
// "The production shell"): a volume's write copy until every
// replica acknowledged it, a store's read buffer until the frontend copied
// it out, a TCP reply's data copy likewise.
package bufpool

import "sync"

const (
	minBytes = 4096
	classes  = 11 // 4 KiB << 0..10: up to 4 MiB
)

var (
	pools [classes]sync.Pool // *[]byte of exactly minBytes<<class capacity
	// holders are empty *[]byte boxes: Put wraps a []byte in one (a
	// sync.Pool holds interfaces, and boxing a slice header allocates),
	// Get returns it after unwrapping, so both allocate nothing in steady
	// state.
	holders sync.Pool
)

// classOf returns the smallest class holding n bytes, false above 4 MiB.
func classOf(n int) (int, bool) {
	c := 0
	for minBytes<<c < n {
		c++
	}
	return c, c < classes
}

// Get returns a buffer of n bytes. Its content is whatever it last held.
func Get(n int) []byte {
	c, ok := classOf(n)
	if !ok {
		return make([]byte, n)
	}
	if h, _ := pools[c].Get().(*[]byte); h != nil {
		b := *h
		*h = nil
		holders.Put(h)
		return b[:n]
	}
	return make([]byte, n, minBytes<<c)
}

// Put hands b back for reuse; the caller must own its whole backing
// array (see the package comment). Buffers whose capacity is not a class
// size (not from Get, or a slice at an offset) are left to the GC.
func Put(b []byte) {
	c, ok := classOf(cap(b))
	if !ok || cap(b) != minBytes<<c {
		return
	}
	h, _ := holders.Get().(*[]byte)
	if h == nil {
		h = new([]byte)
	}
	*h = b[:cap(b)]
	pools[c].Put(h)
}
