// Package filestore is the file-backed layer store: it executes the IOs of
// core/store on a directory, with the durability the store contract
// defines.
//
// Layout of a store directory:
//
//	meta                 the metadata blob, replaced atomically (write
//	                     meta.tmp, fsync, rename, fsync the directory)
//	layer-<id>.data      a sparse file, block i at offset i*BlockSize
//	layer-<id>.index     the layer's index: a header page, then groups of
//	                     one directory page and 511 entry pages
//	                     (format version 2, below)
//
// # Index format version 2
//
// Every 8-byte slot of the index file checks itself: a tag byte (top bit
// set, so no written slot is zeros), a 24-bit check and a 32-bit word.
// The check is CRC32C, seeded with the layer's identity (a random nonce
// drawn at CreateLayer, and the layer id), of the slot's place (block
// index, page or group number), tag and word.
//
//   - The header (the first 64 bytes of page 0, inside one sector): magic,
//     version, FlushedSeq, nonce, layer id, extent (how many directory
//     pages the file holds), FUASeq, and a CRC32C of the rest.
//   - Entry page p holds the slots of blocks [512p, +512): tag 0x80|kind,
//     word the block's CRC32C. A page is initialized whole before its
//     first entry is written: absent blocks get a slot too (tag 0x80).
//   - Group g is a directory page followed by entry pages [511g, +511).
//     Directory slot 0 is the page's marker; slot 1+i records that entry
//     page 511g+i was initialized and synced. Directory pages are written
//     dense from 0, a group at a time (4 KiB of directory per 1 GiB of
//     layer address space up to the highest block written; a first write
//     far past the last one checks the disk has room for them, and fails
//     with ENOSPC, changing nothing, if not).
//
// What is detected, as a *DamageError naming the file and the page, from
// ReadIndex and from ReadData of an affected block, never as absent: an
// entry changed (every single-byte change fails the 24-bit check, CRC32C
// being linear; other damage escapes with odds of 2^-24 per slot), an
// entry zeroed or a page zeroed, punched or cut off by truncation in a
// page its directory records, a slot or page copied to another place or
// from another layer's file (the check binds place and identity), a
// directory page zeroed or damaged below the header's extent, a file
// shorter than the extent, a header zeroed or changed (its CRC; version 1
// headers must have nothing past their 16 bytes, so a flipped version
// byte is caught too). Not detected: a slot or page that is stale but
// valid (a lost write: the replica's data checksum then disagrees with
// the entry and reports the block corrupt), and a recorded page zeroed
// together with its directory slot (two pages damaged in concert). A
// ReadData checks the entries it returns, and the directory slot and
// marker of a page only when an entry it needs is zeros; ReadIndex
// checks every page it reads.
//
// Why a check per slot and not a checksum per page. A page checksum
// needs a read-modify-write of the page for every entry written (a FUA
// write writes one), under a lock, since the store runs one layer's
// WriteIndex IOs concurrently; and a page torn by a crash fails its
// checksum: a 4 KiB write is atomic on the page cache's side, but a disk
// promises only its atomic write unit, often one 512-byte sector, so
// every power loss during a flush could turn into a damaged replica.
// With a check per slot an entry write is a pwrite of its own 8 bytes
// with no lock, and a page torn at sector boundaries holds old and new
// slots, each whole: what the store contract allows (a crash keeps any
// subset of unsynced writes, block by block). The assumption is only
// that a sector is written whole or not at all; a slot torn inside a
// sector fails its check and is damage, never accepted.
//
// Crash safety of the directory. A page is initialized at its first use
// in an open layer (the index reservation of a data write, or an index
// write), under the layer's mutex, so IOs of that page wait for it; its
// directory slot is set only by the next SyncIndex, after an fdatasync
// made the page durable, and followed by a second fdatasync (raising the
// header's extent to the directory pages written). So after any crash a
// recorded page is whole and a zero in it is damage, while a page not
// yet recorded may be half initialized and its zeros read as absent
// (they were). ReadIndex finds unrecorded pages that are whole (a crash
// between the two fdatasyncs) and records them at the next SyncIndex.
// Only a SyncIndex after the first use of a 2 MiB region pays the second
// fdatasync; overwrites cost what they did.
//
// Cost (BenchmarkStore against BenchmarkStoreFormat1 and BenchmarkSlotCheck
// in one run): checking a slot is 13 table lookups, about a twentieth of
// a 4 KiB CRC32C, and a ReadData checks one slot per block it returns (a
// block never written: two directory slots more, through the mapping, so
// no system call), so 4 KiB reads and overwriting FUA writes cost within
// the noise of version 1; ReadIndex checks every slot it reads; the first
// write into a 2 MiB region initializes its page (512 slots) and pays the
// second fdatasync, about 13 us more CPU on tmpfs. The file grows by the
// directory pages, 1/512.
//
// Version 1 (a 16-byte header — magic, version, FlushedSeq — then 8
// bytes per block from offset 4096: kind, 3 zero bytes, CRC32C; all zeros
// absent; no checks; builds since FUASeq keep it in header bytes 16-24,
// which older builds leave zero and ignore) is still read, and a
// version 1 layer takes writes in version 1: a layer keeps the format it
// was created in. Upgrading at open would rewrite every index of an
// existing data dir (its size in IO and space, crash-safely through a
// copy and a rename) and would write into backing image indexes, which
// replicas share read-only through symlinks; instead layers become
// version 2 as they are created: the next snapshot starts a version 2
// head, and a rebuild writes version 2 layers.
//
// WriteData, PunchHole and WriteIndex are pwrite/fallocate calls, made
// durable by SyncData/SyncIndex (fdatasync). CreateLayer and RemoveLayer
// sync the files and the directory before completing. A write that finds
// the disk full (ENOSPC) changes nothing: its blocks are allocated with
// fallocate, and the index pages that will describe them initialized
// (version 1: allocated with fallocate), before any byte of data is
// written (once per block: an open layer remembers the blocks it has
// reserved or written, whose overwrite needs no new space on file systems
// that write in place, such as ext4, xfs and tmpfs).
package filestore

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	iofs "io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/drover-io/drover/core/blockset"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
	"github.com/drover-io/drover/transports/bufpool"
)

const (
	metaName    = "meta"
	metaTmpName = "meta.tmp"
	// indexHeaderBytes is the index file's header; entries start after it,
	// page aligned, so SEEK_DATA finds pages of entries.
	indexHeaderBytes = 4096
	entryBytes       = 8
	indexMagic       = "DRVI"
	// indexVersion is the index format this build writes; it reads
	// indexVersion1 too.
	indexVersion  = 2
	indexVersion1 = 1
	// indexPageEntries is how many entries share one 4 KiB page of a
	// version 1 index file: the unit of its space allocation.
	indexPageEntries = 4096 / entryBytes
	// readIndexChunkBytes bounds one read of index entries (1 MiB).
	readIndexChunkBytes = 1 << 20
	// maxIOBlocks bounds one ReadData (64 MiB); the replica asks far less.
	maxIOBlocks = 1 << 14
)

// Store is a layer store on one directory. It is safe for concurrent use;
// the replica never issues conflicting IOs concurrently.
type Store struct {
	dir string
	// writeChunkBytes bounds one buffered pwrite of data (0: no bound);
	// see bufferedChunkBytes.
	writeChunkBytes int

	mu     sync.RWMutex
	closed bool
	layers map[store.LayerID]*layer
	// intentLog is the write-intent file (intents.go), opened on first
	// use.
	intentLog *intentLog
}

type layer struct {
	id    store.LayerID
	data  *os.File
	index *os.File

	// version is the index file's format: indexVersion1 or indexVersion.
	// It is set when the layer is opened or created, before any IO.
	version uint32
	// Version 2 state (indexv2.go): the layer's identity, the header's
	// FlushedSeq and extent, the directory pages written (dense from 0),
	// and the entry pages initialized but not yet recorded in their
	// directory (done at the next SyncIndex). extent is read without mu.
	// flushedSeq and fuaSeq (both versions) are the header's, under mu.
	flushedSeq uint64
	fuaSeq     uint64
	header     [headerV2Bytes]byte // the header being written, under mu
	codec      slotCodec
	nonce      uint64
	extent     atomic.Uint64
	dirs       uint64
	pending    []uint64

	// allocated records index pages known to be allocated (version 1) or
	// initialized (version 2), so WriteData reserves index space once per
	// page (see reserveIndex); dataHeld the
	// data blocks this open layer has reserved or written (and not
	// punched since), whose overwrite needs no new space, so it skips the
	// fallocate. (On file systems that write in place — ext4, xfs, tmpfs;
	// a copy-on-write file system cannot promise the space anyway.)
	mu        sync.Mutex
	allocated map[uint64]struct{}
	dataHeld  blockset.Set
	// imap maps the index file for reads (indexmap.go).
	imap indexMap
	// direct is the data file opened with O_DIRECT for uncached reads
	// and writes, opened at the first one; noDirect records that it
	// cannot be (the file system refuses O_DIRECT) or that a direct read
	// or write was refused.
	direct   *os.File
	noDirect bool
	// writeChunkBytes is the store's (set at open).
	writeChunkBytes int
}

// Open returns the store on dir, which must exist and be writable.
func Open(dir string) (*Store, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("open store: %s is not a directory", dir)
	}
	if err := unix.Access(dir, unix.W_OK|unix.X_OK); err != nil {
		return nil, fmt.Errorf("open store: directory %s is not writable: %w", dir, err)
	}
	// A crash during WriteMeta can leave the temporary file; it never
	// holds the current metadata.
	if err := os.Remove(filepath.Join(dir, metaTmpName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("open store: remove stale %s: %w", metaTmpName, err)
	}
	if err := tightenModes(dir); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	s := &Store{dir: dir, layers: map[store.LayerID]*layer{}}
	var fs unix.Statfs_t
	if unix.Statfs(dir, &fs) == nil && fs.Type == unix.EXT4_SUPER_MAGIC {
		s.writeChunkBytes = bufferedChunkBytes
	}
	return s, nil
}

// tightenModes makes the store's files readable by their owner only:
// they hold the volume's data. Files are created 0600; stores made when
// they were created 0644 are fixed here.
func tightenModes(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() || (name != metaName && !strings.HasPrefix(name, "layer-")) {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		if perm := info.Mode().Perm(); perm&0o077 != 0 {
			if err := os.Chmod(filepath.Join(dir, name), perm&^0o077); err != nil {
				return fmt.Errorf("make %s private: %w", name, err)
			}
		}
	}
	return nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

// Close closes every open layer file. IOs after Close fail with ErrIO.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	var first error
	for id, l := range s.layers {
		if err := l.close(); err != nil && first == nil {
			first = fmt.Errorf("close layer %d: %w", id, err)
		}
		delete(s.layers, id)
	}
	if s.intentLog != nil {
		if err := s.intentLog.close(); err != nil && first == nil {
			first = fmt.Errorf("close intents: %w", err)
		}
		s.intentLog = nil
	}
	return first
}

// Execute performs io and returns its completion.
func (s *Store) Execute(io store.IO) store.Completion {
	c := store.Completion{ID: io.ID}
	var err error
	switch io.Kind {
	case store.ReadMeta:
		c.Meta, err = s.readMeta()
	case store.WriteMeta:
		err = s.writeMeta(io.Meta)
	case store.CreateLayer:
		err = s.createLayer(io.Layer)
	case store.RemoveLayer:
		err = s.removeLayer(io.Layer)
	case store.WriteIntents, store.ReadIntents:
		err = s.executeIntents(io, &c)
	default:
		var l *layer
		if l, err = s.layer(io.Layer); err == nil {
			err = l.execute(io, &c)
		}
	}
	if err != nil {
		c.Err, c.Detail = classify(err), fmt.Sprintf("%v %s in %s: %v", io.Kind, describe(io), s.dir, err)
	}
	return c
}

// errMissing marks a layer or file that does not exist.
var errMissing = errors.New("does not exist")

func classify(err error) store.Err {
	switch {
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
		return store.ErrNoSpace
	case errors.Is(err, errMissing):
		return store.ErrMissing
	case errors.As(err, new(*DamageError)):
		return store.ErrDamaged
	}
	return store.ErrIO
}

func describe(io store.IO) string {
	switch io.Kind {
	case store.ReadMeta, store.WriteMeta:
		return "metadata"
	case store.CreateLayer, store.RemoveLayer, store.SyncData, store.SyncIndex:
		return fmt.Sprintf("layer %d", io.Layer)
	case store.WriteData:
		return fmt.Sprintf("layer %d blocks [%d,+%d)", io.Layer, io.BlockIndex, len(io.Data)/proto.BlockSize)
	case store.WriteIndex:
		return fmt.Sprintf("layer %d (%d entries)", io.Layer, len(io.Entries))
	}
	return fmt.Sprintf("layer %d blocks [%d,+%d)", io.Layer, io.BlockIndex, io.BlockCount)
}

func (s *Store) path(name string) string { return filepath.Join(s.dir, name) }

func dataName(id store.LayerID) string  { return fmt.Sprintf("layer-%d.data", id) }
func indexName(id store.LayerID) string { return fmt.Sprintf("layer-%d.index", id) }

func (s *Store) readMeta() ([]byte, error) {
	b, err := os.ReadFile(s.path(metaName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil // never written: a new replica
	}
	if err != nil {
		return nil, err
	}
	if b == nil {
		b = []byte{}
	}
	return b, nil
}

func (s *Store) writeMeta(meta []byte) error {
	tmp := s.path(metaTmpName)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(meta)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.path(metaName))
	}
	if err == nil {
		return s.syncDir()
	}
	_ = os.Remove(tmp) // free the space a failed write took; the old blob stands
	return err
}

func (s *Store) syncDir() error {
	d, err := os.Open(s.dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	return nil
}

// layer returns the open layer id, opening its files on first use.
func (s *Store) layer(id store.LayerID) (*layer, error) {
	s.mu.RLock()
	l, closed := s.layers[id], s.closed
	s.mu.RUnlock()
	if closed {
		return nil, errors.New("store is closed")
	}
	if l != nil {
		return l, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if l = s.layers[id]; l != nil {
		return l, nil
	}
	l, err := s.openLayer(id, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("layer %d %w", id, errMissing)
	}
	if err != nil {
		return nil, err
	}
	if err := l.checkHeader(); err != nil {
		l.close()
		return nil, err
	}
	s.layers[id] = l
	return l, nil
}

func (s *Store) openLayer(id store.LayerID, flags int) (*layer, error) {
	data, err := os.OpenFile(s.path(dataName(id)), os.O_RDWR|flags, 0o600)
	if err != nil {
		return nil, err
	}
	index, err := os.OpenFile(s.path(indexName(id)), os.O_RDWR|flags, 0o600)
	if err != nil {
		data.Close()
		return nil, err
	}
	l := &layer{id: id, data: data, index: index, allocated: map[uint64]struct{}{}, writeChunkBytes: s.writeChunkBytes}
	var size int64
	if st, err := index.Stat(); err == nil {
		size = st.Size()
	}
	l.imap.open(int(index.Fd()), size)
	return l, nil
}

// createLayer makes an empty layer, emptying files of that id a crash left
// behind (the id is reused), and makes that durable.
func (s *Store) createLayer(id store.LayerID) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("store is closed")
	}
	if old := s.layers[id]; old != nil {
		old.close()
		delete(s.layers, id)
	}
	l, err := s.openLayer(id, os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return err
	}
	if err := l.create(); err != nil {
		l.close()
		return err
	}
	if err := s.syncDir(); err != nil {
		l.close()
		return err
	}
	s.layers[id] = l
	return nil
}

func (s *Store) removeLayer(id store.LayerID) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.layers[id]; l != nil {
		l.close()
		delete(s.layers, id)
	}
	for _, name := range []string{dataName(id), indexName(id)} {
		if err := os.Remove(s.path(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return s.syncDir()
}

func (l *layer) close() error {
	l.imap.close()
	if l.direct != nil {
		l.direct.Close()
	}
	err := l.data.Close()
	if ierr := l.index.Close(); err == nil {
		err = ierr
	}
	return err
}

func (l *layer) create() error {
	l.mu.Lock()
	l.version, l.nonce = indexVersion, newNonce()
	l.codec = newSlotCodec(l.nonce, l.id)
	err := l.writeHeaderV2()
	l.mu.Unlock()
	if err != nil {
		return err
	}
	if err := l.data.Sync(); err != nil {
		return fmt.Errorf("sync data file: %w", err)
	}
	if err := l.index.Sync(); err != nil {
		return fmt.Errorf("sync index file: %w", err)
	}
	return nil
}

// writeHeader records flushedSeq (if nonzero) and fuaSeq (if above the
// recorded one: concurrent FUA writes complete in any order) in the
// index header, if either changes it.
func (l *layer) writeHeader(flushedSeq, fuaSeq uint64) error {
	if flushedSeq == 0 && fuaSeq == 0 {
		return nil // most index writes: no lock taken
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if (flushedSeq == 0 || flushedSeq == l.flushedSeq) && fuaSeq <= l.fuaSeq {
		return nil
	}
	if flushedSeq != 0 {
		l.flushedSeq = flushedSeq
	}
	l.fuaSeq = max(l.fuaSeq, fuaSeq)
	if l.version != indexVersion1 {
		return l.writeHeaderV2()
	}
	h := l.header[:24]
	copy(h[:4], indexMagic)
	binary.LittleEndian.PutUint32(h[4:], indexVersion1)
	binary.LittleEndian.PutUint64(h[8:], l.flushedSeq)
	binary.LittleEndian.PutUint64(h[16:], l.fuaSeq)
	if _, err := l.index.WriteAt(h, 0); err != nil {
		return fmt.Errorf("write index header: %w", err)
	}
	return nil
}

// readHeader reads and checks the index header: its version, and for
// version 2 the rest of it.
func (l *layer) readHeader() (uint32, headerV2, error) {
	var h [headerV2Bytes]byte
	n, err := l.index.ReadAt(h[:], 0)
	if err != nil && !errors.Is(err, iofs.EOF) {
		return 0, headerV2{}, fmt.Errorf("read index header of layer %d: %w", l.id, err)
	}
	if n < 16 {
		return 0, headerV2{}, l.headerDamage("the file is %d bytes, too short for a header: truncated", n)
	}
	if string(h[:4]) != indexMagic {
		return 0, headerV2{}, l.headerDamage("bad magic %q", h[:4])
	}
	switch v := binary.LittleEndian.Uint32(h[4:]); v {
	case indexVersion1:
		// Version 1 wrote 16 bytes, and FUASeq 8 more; the rest of its
		// header page is zeros. A version 2 header with its version
		// damaged to 1 is not.
		if n > 24 && !allZero(h[24:n]) {
			return 0, headerV2{}, l.headerDamage("a version 1 header with bytes past its end: a damaged version 2 header")
		}
		var fuaSeq uint64
		if n >= 24 {
			fuaSeq = binary.LittleEndian.Uint64(h[16:])
		}
		return v, headerV2{flushedSeq: binary.LittleEndian.Uint64(h[8:]), fuaSeq: fuaSeq}, nil
	case indexVersion:
		if n < headerV2Bytes {
			return 0, headerV2{}, l.headerDamage("the file is %d bytes, too short for a header: truncated", n)
		}
		hv, ok := decodeHeaderV2(h[:])
		if !ok {
			return 0, headerV2{}, l.headerDamage("its checksum does not match")
		}
		return v, hv, nil
	default:
		return 0, headerV2{}, fmt.Errorf("index file of layer %d has version %d, this build reads %d and %d", l.id, v, indexVersion1, indexVersion)
	}
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// checkHeader reads the header of a layer being opened and takes in its
// version (and, for version 2, its state).
func (l *layer) checkHeader() error {
	v, h, err := l.readHeader()
	if err != nil {
		return err
	}
	l.version, l.flushedSeq, l.fuaSeq = v, h.flushedSeq, h.fuaSeq
	if v == indexVersion1 {
		return nil
	}
	st, err := l.index.Stat()
	if err != nil {
		return fmt.Errorf("stat index: %w", err)
	}
	return l.loadV2(h, st.Size())
}

func (l *layer) execute(io store.IO, c *store.Completion) error {
	switch io.Kind {
	case store.ReadIndex:
		return l.readIndex(io, c)
	case store.WriteIndex:
		return l.writeIndex(io.Entries, io.FlushedSeq, io.FUASeq)
	case store.SyncIndex:
		if l.version == indexVersion1 {
			return l.sync(l.index)
		}
		return l.syncIndexV2()
	case store.ReadData:
		return l.readData(io, c)
	case store.WriteData:
		return l.writeData(io.BlockIndex, io.Data, io.Uncached)
	case store.PunchHole:
		return l.punch(io.BlockIndex, io.BlockCount)
	case store.SyncData:
		return l.sync(l.data)
	}
	return fmt.Errorf("unknown io kind %v", io.Kind)
}

func (l *layer) sync(f *os.File) error {
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return fmt.Errorf("fdatasync %s: %w", filepath.Base(f.Name()), err)
	}
	return nil
}

func entryOffsetV1(blockIndex uint64) int64 {
	return indexHeaderBytes + int64(blockIndex)*entryBytes
}

func putEntryV1(b []byte, e proto.BlockState) {
	if e.Kind == proto.BlockAbsent {
		e.CRC = 0 // absent is all zeros, whatever the caller's CRC
	}
	b[0] = byte(e.Kind)
	b[1], b[2], b[3] = 0, 0, 0
	binary.LittleEndian.PutUint32(b[4:], e.CRC)
}

func getEntryV1(b []byte, blockIndex uint64) proto.BlockState {
	e := proto.BlockState{BlockIndex: blockIndex, Kind: proto.BlockKind(b[0]), CRC: binary.LittleEndian.Uint32(b[4:])}
	if e.Kind > proto.BlockZero {
		// Not a kind this store writes: report data with an impossible
		// checksum so the replica flags the block, rather than guess.
		e.Kind, e.CRC = proto.BlockData, ^e.CRC
	}
	return e
}

// writeIndex stores entries (a later entry for a block wins), one pwrite
// per run of consecutive blocks.
func (l *layer) writeIndex(entries []proto.BlockState, flushedSeq, fuaSeq uint64) error {
	for _, e := range entries {
		if e.Kind > proto.BlockZero {
			return fmt.Errorf("index entry of block %d has unknown kind %d", e.BlockIndex, e.Kind)
		}
	}
	// Entries are the replica's (an op's own, for a FUA write): sorted
	// in a copy only when they are not sorted already.
	sorted := entries
	if !slices.IsSortedFunc(entries, byBlockIndex) {
		sorted = append([]proto.BlockState(nil), entries...)
		slices.SortStableFunc(sorted, byBlockIndex)
	}
	var small [16 * entryBytes]byte // a FUA write's few entries: no allocation
	var buf []byte
	if n := min(len(sorted), readIndexChunkBytes/entryBytes) * entryBytes; n <= len(small) {
		buf = small[:0:n]
	} else {
		buf = make([]byte, 0, n)
	}
	var start uint64
	for i, e := range sorted {
		if i+1 < len(sorted) && sorted[i+1].BlockIndex == e.BlockIndex {
			continue // a later entry for the same block follows
		}
		if len(buf) > 0 && (e.BlockIndex != start+uint64(len(buf)/entryBytes) || len(buf) == cap(buf) ||
			l.version != indexVersion1 && e.BlockIndex%groupBlocks == 0) { // a directory page comes between groups
			if err := l.writeEntryRun(buf, start); err != nil {
				return err
			}
			buf = buf[:0]
		}
		if len(buf) == 0 {
			start = e.BlockIndex
		}
		buf = buf[:len(buf)+entryBytes]
		if l.version == indexVersion1 {
			putEntryV1(buf[len(buf)-entryBytes:], e)
		} else {
			l.codec.putEntry(buf[len(buf)-entryBytes:], e)
		}
	}
	if err := l.writeEntryRun(buf, start); err != nil {
		return err
	}
	return l.writeHeader(flushedSeq, fuaSeq)
}

func byBlockIndex(a, b proto.BlockState) int { return cmp.Compare(a.BlockIndex, b.BlockIndex) }

// writeEntryRun writes encoded entries for blocks from start on.
func (l *layer) writeEntryRun(buf []byte, start uint64) error {
	if len(buf) == 0 {
		return nil
	}
	off := entryOffsetV1(start)
	if l.version != indexVersion1 {
		end := start + uint64(len(buf)/entryBytes)
		if err := l.initPages(start/pageEntries, (end-1)/pageEntries); err != nil {
			return err
		}
		off = entryOffsetV2(start)
	}
	if _, err := l.index.WriteAt(buf, off); err != nil {
		return fmt.Errorf("write index entries at block %d: %w", start, err)
	}
	l.imap.grew(off + int64(len(buf)))
	return nil
}

// readIndex returns the non-absent entries in the IO's range. It visits
// only allocated parts of the index file (SEEK_DATA/SEEK_HOLE), reads them
// in 1 MiB chunks and skips all-zero (absent) entries, so a large sparse
// layer costs what it holds.
func (l *layer) readIndex(io store.IO, c *store.Completion) error {
	_, h, err := l.readHeader()
	if err != nil {
		return err
	}
	c.FlushedSeq, c.FUASeq = h.flushedSeq, h.fuaSeq
	if l.version != indexVersion1 {
		return l.readIndexV2(io, c)
	}
	if io.BlockCount == 0 {
		return nil
	}
	lo, hi := entryOffsetV1(io.BlockIndex), entryOffsetV1(io.BlockIndex+io.BlockCount)
	fd := int(l.index.Fd())
	buf := make([]byte, readIndexChunkBytes)
	for off := lo; off < hi; {
		dataOff, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // no data past off
		}
		if err != nil {
			return fmt.Errorf("seek data in index: %w", err)
		}
		holeOff, err := unix.Seek(fd, dataOff, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole in index: %w", err)
		}
		// Entries are 8-byte aligned and data extents page aligned.
		start := max(dataOff, lo)
		start -= (start - indexHeaderBytes) % entryBytes
		end := min(holeOff, hi)
		for start < end {
			n := min(end-start, int64(len(buf)))
			got, err := l.index.ReadAt(buf[:n], start)
			if err != nil && got < int(n) && !errors.Is(err, iofs.EOF) {
				return fmt.Errorf("read index at %d: %w", start, err)
			}
			appendEntries(c, buf[:got-got%entryBytes], uint64(start-indexHeaderBytes)/entryBytes)
			if got < int(n) {
				return nil // end of file
			}
			start += n
		}
		off = max(end, off+1)
	}
	return nil
}

func appendEntries(c *store.Completion, b []byte, firstBlock uint64) {
	for i := 0; i+entryBytes <= len(b); i += entryBytes {
		if binary.LittleEndian.Uint64(b[i:]) == 0 {
			continue
		}
		c.Entries = append(c.Entries, getEntryV1(b[i:i+entryBytes], firstBlock+uint64(i/entryBytes)))
	}
}

// readData returns the blocks (holes and blocks past the end of the file
// read as zeros) and their index entries, absent ones included.
func (l *layer) readData(io store.IO, c *store.Completion) error {
	if io.BlockCount > maxIOBlocks {
		return fmt.Errorf("read of %d blocks exceeds %d", io.BlockCount, maxIOBlocks)
	}
	// From the pool: whoever ends up holding a read's data alone (the
	// volume, once it copied the data out) may put it back.
	c.Data = bufpool.Get(int(io.BlockCount * proto.BlockSize))
	if err := l.readBlocks(c.Data, io); err != nil {
		return fmt.Errorf("read data: %w", err)
	}
	var small [32 * entryBytes]byte // most reads are a few blocks
	var raw []byte
	if n := io.BlockCount * entryBytes; n <= uint64(len(small)) {
		raw = small[:n]
	} else {
		raw = make([]byte, n)
	}
	if uint64(cap(io.Entries)) >= io.BlockCount {
		c.Entries = io.Entries[:io.BlockCount] // the replica's buffer (store.ReadData)
	} else {
		c.Entries = make([]proto.BlockState, io.BlockCount)
	}
	if l.version != indexVersion1 {
		return l.readEntriesV2(io, raw, c.Entries)
	}
	if !l.imap.read(raw, entryOffsetV1(io.BlockIndex)) {
		if err := readFull(l.index, raw, entryOffsetV1(io.BlockIndex)); err != nil {
			return fmt.Errorf("read index entries: %w", err)
		}
	}
	for i := range c.Entries {
		c.Entries[i] = getEntryV1(raw[i*entryBytes:(i+1)*entryBytes], io.BlockIndex+uint64(i))
	}
	return nil
}

// minDirectBytes is the smallest uncached read or write done with
// O_DIRECT: below it the page cache costs little and a direct IO's wait
// for the device would not pay.
const minDirectBytes = 64 << 10

// directable reports whether b may be read into or written from with
// O_DIRECT: large enough to be worth it, and page aligned (a block-sized
// length is aligned too).
func directable(b []byte) bool {
	return len(b) >= minDirectBytes && uintptr(unsafe.Pointer(&b[0]))%directAlign == 0
}

// readBlocks reads io's blocks into b: uncached reads of at least
// minDirectBytes into a page-aligned buffer around the page cache with
// O_DIRECT (measured on a 1 GiB rebuild from a cold cache: the source's
// CPU per byte 1.9 -> 1.2 ns), the rest through it. The kernel writes back
// dirty cached pages of the range before a direct read, so both see the
// same bytes; a file system without O_DIRECT, or a direct read that
// fails, falls back to the cache for the life of the open layer.
func (l *layer) readBlocks(b []byte, io store.IO) error {
	off := int64(io.BlockIndex) * proto.BlockSize
	if !io.Uncached || !directable(b) {
		return readFull(l.data, b, off)
	}
	f := l.directFile()
	if f == nil {
		return readFull(l.data, b, off)
	}
	if err := readFull(f, b, off); err != nil {
		l.mu.Lock()
		l.noDirect = true
		l.mu.Unlock()
		return readFull(l.data, b, off)
	}
	return nil
}

// directAlign is the buffer alignment O_DIRECT needs on every file system
// filestore runs on (the logical block size, at most a page).
const directAlign = 4096

// directFile returns the data file opened with O_DIRECT, or nil.
func (l *layer) directFile() *os.File {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.direct == nil && !l.noDirect {
		f, err := os.OpenFile(l.data.Name(), os.O_RDWR|unix.O_DIRECT, 0)
		if err != nil {
			l.noDirect = true
			return nil
		}
		l.direct = f
	}
	if l.noDirect {
		return nil
	}
	return l.direct
}

// readFull fills b from f at off; what lies past the end of f reads as
// zeros.
func readFull(f *os.File, b []byte, off int64) error {
	n, err := f.ReadAt(b, off)
	if err != nil && !errors.Is(err, iofs.EOF) {
		return err
	}
	clear(b[n:])
	return nil
}

// writeData stores data at blockIndex. It first reserves the space the
// blocks and their future index entries need, so a full disk fails the
// IO before anything changes. An uncached write (a rebuild target's) of
// a large page-aligned buffer goes around the page cache with O_DIRECT:
// the kernel drops the range's cached pages, so buffered reads after it
// see its bytes, and the layer's SyncData (fdatasync of the same file)
// makes it durable like any other write. Measured on a 2 GiB rebuild:
// the target's buffered pwrite copied every byte into the page cache
// (13% of the machine's samples) and left it to writeback.
func (l *layer) writeData(blockIndex uint64, data []byte, uncached bool) error {
	if len(data)%proto.BlockSize != 0 {
		return fmt.Errorf("%d bytes is not a whole number of blocks", len(data))
	}
	off := int64(blockIndex) * proto.BlockSize
	count := uint64(len(data) / proto.BlockSize)
	if err := l.reserveIndex(blockIndex, count); err != nil {
		return err
	}
	if !l.held(blockIndex, count) {
		if err := fallocate(l.data, 0, off, int64(len(data))); err != nil {
			return fmt.Errorf("reserve data space: %w", err)
		}
		l.mu.Lock()
		l.dataHeld.AddRange(blockIndex, count)
		l.mu.Unlock()
	}
	if uncached && directable(data) {
		if f := l.directFile(); f != nil {
			_, err := f.WriteAt(data, off)
			if !errors.Is(err, unix.EINVAL) {
				if err != nil {
					return fmt.Errorf("write data around the cache: %w", err)
				}
				return nil
			}
			// Refused (the file system's alignment is stricter than a
			// page): write through the cache from now on.
			l.mu.Lock()
			l.noDirect = true
			l.mu.Unlock()
		}
	}
	for len(data) > 0 {
		n := len(data)
		if l.writeChunkBytes > 0 {
			n = min(n, l.writeChunkBytes)
		}
		if _, err := l.data.WriteAt(data[:n], off); err != nil {
			return fmt.Errorf("write data: %w", err)
		}
		data, off = data[n:], off+int64(n)
	}
	return nil
}

// bufferedChunkBytes bounds one buffered pwrite of data. Linux (6.16 on)
// caches an ext4 file in large folios, sized by the write that filled
// them (a 1 MiB pwrite makes folios up to 1 MiB), and every later small
// write into such a folio walks all of its buffer heads
// (ext4_block_write_begin: 48% of a 1-replica volume's samples under
// 4 KiB random overwrites after a fill in 1 MiB writes). Measured with
// fio on ext4, kernel 6.18, 256 MiB file: 4 KiB random buffered writes
// run at 33k-88k IOPS in a file filled in 1 MiB writes, 130k-187k in one
// filled in 32 KiB writes; the fill itself was no slower in 32 KiB
// writes. So on ext4 large buffered writes go in 32 KiB pieces. (Other
// file systems write whole: xfs's iomap tracks a large folio's blocks in
// a bitmap, and on tmpfs the pieces only cost system calls.)
const bufferedChunkBytes = 32 << 10

// held reports whether every block of [blockIndex, +count) is reserved.
func (l *layer) held(blockIndex, count uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for b := blockIndex; b < blockIndex+count; b++ {
		if !l.dataHeld.Contains(b) {
			return false
		}
	}
	return true
}

// reserveIndex allocates the index pages holding the entries of blocks
// [blockIndex, +blockCount), once per page for the life of the open layer:
// version 2 initializes them (initPages), version 1 fallocates them.
func (l *layer) reserveIndex(blockIndex, blockCount uint64) error {
	if l.version != indexVersion1 {
		return l.initPages(blockIndex/pageEntries, (blockIndex+blockCount-1)/pageEntries)
	}
	first, last := blockIndex/indexPageEntries, (blockIndex+blockCount-1)/indexPageEntries
	l.mu.Lock()
	defer l.mu.Unlock()
	for p := first; p <= last; p++ {
		if _, ok := l.allocated[p]; ok {
			continue
		}
		off, n := entryOffsetV1(p*indexPageEntries), int64(indexPageEntries*entryBytes)
		switch err := unix.Fallocate(int(l.index.Fd()), 0, off, n); {
		case err == nil:
			l.imap.grew(off + n) // the file now holds these bytes
		case errors.Is(err, unix.EOPNOTSUPP):
			// No reservation here: a full disk fails at write time.
		default:
			return fmt.Errorf("reserve index space: %w", err)
		}
		l.allocated[p] = struct{}{}
	}
	return nil
}

func (l *layer) punch(blockIndex, blockCount uint64) error {
	if blockCount == 0 {
		return nil
	}
	// Forget the blocks first: a punch that fails midway may have freed
	// some of them.
	l.mu.Lock()
	l.dataHeld.RemoveRange(blockIndex, blockCount)
	l.mu.Unlock()
	err := unix.Fallocate(int(l.data.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE,
		int64(blockIndex)*proto.BlockSize, int64(blockCount)*proto.BlockSize)
	if errors.Is(err, unix.EOPNOTSUPP) {
		// No hole punching here: write zeros instead (they read the same).
		return l.writeData(blockIndex, make([]byte, blockCount*proto.BlockSize), false)
	}
	if err != nil {
		return fmt.Errorf("punch hole: %w", err)
	}
	return nil
}

// fallocate allocates [off, off+n) of f; file systems that cannot are
// left to fail at write time.
func fallocate(f *os.File, mode uint32, off, n int64) error {
	err := unix.Fallocate(int(f.Fd()), mode, off, n)
	if errors.Is(err, unix.EOPNOTSUPP) {
		return nil
	}
	return err
}
