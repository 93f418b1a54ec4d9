package filestore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	iofs "io"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
)

// The write-intent file ("intents") holds the checksums writes are about
// to put in the head's blocks (store.WriteIntents), so that a replica
// settling a crash can tell a write that landed before its index entry
// from rot. Records are 32 bytes: layer, block, tag (little-endian u64s),
// the block's CRC32C, and a CRC32C of the record's first 28 bytes (a torn
// or zeroed record fails it and is skipped). Records are written from
// offset 0 again whenever the (layer, tag) pair changes: the replica asks
// only for the newest tag, and older records left beyond the new end fail
// the tag filter. The file is kept written (zeros) ahead of the records
// in 1 MiB steps, so a record's fdatasync flushes data only: no size or
// extent change for the file system to journal.
const (
	intentsName        = "intents"
	intentRecordBytes  = 32
	intentGrowBytes    = 1 << 20
	maxIntentReadBytes = 1 << 30
)

type intentLog struct {
	mu    sync.Mutex
	f     *os.File
	layer store.LayerID
	tag   uint64
	off   int64 // end of the current (layer, tag)'s records
	size  int64 // bytes written (zeros or records) and synced
	buf   []byte
}

// intents returns the store's intent file, opened on first use.
func (s *Store) intents() (*intentLog, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("store is closed")
	}
	if s.intentLog != nil {
		return s.intentLog, nil
	}
	f, err := os.OpenFile(s.path(intentsName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	s.intentLog = &intentLog{f: f, size: st.Size(), off: -1}
	return s.intentLog, nil
}

func (s *Store) executeIntents(io store.IO, c *store.Completion) error {
	log, err := s.intents()
	if err != nil {
		return fmt.Errorf("open intents: %w", err)
	}
	if io.Kind == store.ReadIntents {
		c.Entries, err = log.read(io.Layer, io.FlushedSeq)
		return err
	}
	return log.write(io.Layer, io.FlushedSeq, io.Entries)
}

// write appends records for entries and makes them durable.
func (l *intentLog) write(layer store.LayerID, tag uint64, entries []proto.BlockState) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.off < 0 || l.layer != layer || l.tag != tag {
		l.layer, l.tag, l.off = layer, tag, 0
	}
	n := len(entries) * intentRecordBytes
	if cap(l.buf) < n {
		l.buf = make([]byte, n)
	}
	buf := l.buf[:n]
	for i, e := range entries {
		putIntent(buf[i*intentRecordBytes:], layer, tag, e)
	}
	end := l.off + int64(len(buf))
	if end > l.size {
		if err := l.grow(end); err != nil {
			return err
		}
	}
	if _, err := l.f.WriteAt(buf, l.off); err != nil {
		return fmt.Errorf("write intents: %w", err)
	}
	if err := unix.Fdatasync(int(l.f.Fd())); err != nil {
		return fmt.Errorf("fdatasync intents: %w", err)
	}
	l.off = end
	return nil
}

// grow writes zeros up to a 1 MiB step past end and syncs them (with the
// size), so that later records overwrite written blocks.
func (l *intentLog) grow(end int64) error {
	target := (end + intentGrowBytes - 1) / intentGrowBytes * intentGrowBytes
	zeros := make([]byte, target-l.size)
	if _, err := l.f.WriteAt(zeros, l.size); err != nil {
		return fmt.Errorf("grow intents: %w", err)
	}
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("sync grown intents: %w", err)
	}
	l.size = target
	return nil
}

// read returns the valid records of (layer, tag).
func (l *intentLog) read(layer store.LayerID, tag uint64) ([]proto.BlockState, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.size > maxIntentReadBytes {
		return nil, fmt.Errorf("intents file is %d bytes, more than %d", l.size, maxIntentReadBytes)
	}
	buf := make([]byte, l.size)
	n, err := l.f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, iofs.EOF) {
		return nil, fmt.Errorf("read intents: %w", err)
	}
	var out []proto.BlockState
	for off := 0; off+intentRecordBytes <= n; off += intentRecordBytes {
		if e, ok := getIntent(buf[off:off+intentRecordBytes], layer, tag); ok {
			out = append(out, e)
		}
	}
	return out, nil
}

func (l *intentLog) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Close()
}

var castagnoliTable = crc32.MakeTable(crc32.Castagnoli)

func putIntent(b []byte, layer store.LayerID, tag uint64, e proto.BlockState) {
	binary.LittleEndian.PutUint64(b[0:], uint64(layer))
	binary.LittleEndian.PutUint64(b[8:], e.BlockIndex)
	binary.LittleEndian.PutUint64(b[16:], tag)
	binary.LittleEndian.PutUint32(b[24:], e.CRC)
	binary.LittleEndian.PutUint32(b[28:], crc32.Checksum(b[:28], castagnoliTable))
}

func getIntent(b []byte, layer store.LayerID, tag uint64) (proto.BlockState, bool) {
	if binary.LittleEndian.Uint32(b[28:]) != crc32.Checksum(b[:28], castagnoliTable) {
		return proto.BlockState{}, false
	}
	if store.LayerID(binary.LittleEndian.Uint64(b[0:])) != layer || binary.LittleEndian.Uint64(b[16:]) != tag {
		return proto.BlockState{}, false
	}
	return proto.BlockState{BlockIndex: binary.LittleEndian.Uint64(b[8:]), Kind: proto.BlockData,
		CRC: binary.LittleEndian.Uint32(b[24:])}, true
}
