package filestore

import (
	"runtime/debug"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// indexMapBytes is the address space mapped per layer index file: 8 GiB of
// entries, 8 bytes per 4 KiB block, covers a 4 TiB layer. Entries beyond
// it are read with pread.
const indexMapBytes = 8 << 30

// indexMap is a read-only shared mapping of a layer's index file, so a
// data read gets its blocks' index entries without a second system call.
// The mapping sees every pwrite to the file at once (one page cache). Only
// bytes below size — what the file is known to hold: its size at open,
// grown by every reservation and write this process makes — are read
// through it; the file is never truncated while open, so those bytes stay
// mapped. Reads hold mu shared and unmapping takes it exclusively, so a
// read racing a close fails over to pread (and its error) instead of
// faulting.
type indexMap struct {
	mu   sync.RWMutex
	mem  []byte // nil: not mapped
	size atomic.Int64
}

// open maps fd, whose size is size; without a mapping reads use pread.
func (m *indexMap) open(fd int, size int64) {
	m.size.Store(size)
	mem, err := unix.Mmap(fd, 0, indexMapBytes, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return
	}
	m.mu.Lock()
	m.mem = mem
	m.mu.Unlock()
}

// grew records that the file now holds at least end bytes.
func (m *indexMap) grew(end int64) {
	for {
		cur := m.size.Load()
		if end <= cur || m.size.CompareAndSwap(cur, end) {
			return
		}
	}
}

// known returns how many bytes the file is known to hold.
func (m *indexMap) known() int64 { return m.size.Load() }

// read copies [off, off+len(b)) of the file into b and reports whether it
// could (the range is mapped and known to exist). A file cut shorter
// behind the store's back (damage while running) makes the copy fault:
// that is recovered as a failed read, so the caller's pread sees the
// damage and reports it, rather than the fault stopping the process.
func (m *indexMap) read(b []byte, off int64) (ok bool) {
	end := off + int64(len(b))
	if end > m.size.Load() || end > indexMapBytes {
		return false
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.mem == nil {
		return false
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	copy(b, m.mem[off:end])
	return true
}

func (m *indexMap) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mem != nil {
		_ = unix.Munmap(m.mem)
		m.mem = nil
	}
}
