package filestore

import (
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
	"github.com/drover-io/drover/transports/bufpool"
)

// Index format version 2 (see the package doc for the why).
const (
	// pageBytes is the unit the index file is laid out in.
	pageBytes = 4096
	// pageEntries is how many 8-byte slots one page holds.
	pageEntries = pageBytes / entryBytes
	// groupPages is how many entry pages follow each directory page; the
	// directory page's first slot is its own marker.
	groupPages = pageEntries - 1
	// groupBlocks is how many blocks one group's entry pages describe.
	groupBlocks = groupPages * pageEntries
	// headerV2Bytes is the written part of a version 2 header: less than
	// a sector, so it is rewritten whole or not at all.
	headerV2Bytes = 64

	// Slot tags (a slot's first byte). Every written slot's tag has the
	// top bit set, so no written slot is all zeros.
	tagEntry = 0x80 // | proto.BlockKind: a block's entry
	tagDir   = 0xC0 // a directory page's marker
	tagPage  = 0xC1 // a directory slot: this entry page was written and synced
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// dirOffset is the file offset of group g's directory page.
func dirOffset(g uint64) int64 { return indexHeaderBytes + int64(g)*pageEntries*pageBytes }

// pageOffset is the file offset of entry page p.
func pageOffset(p uint64) int64 {
	return dirOffset(p/groupPages) + int64(1+p%groupPages)*pageBytes
}

// slotOffset is the file offset of entry page p's slot in its directory.
func slotOffset(p uint64) int64 {
	return dirOffset(p/groupPages) + int64(1+p%groupPages)*entryBytes
}

func entryOffsetV2(blockIndex uint64) int64 {
	return pageOffset(blockIndex/pageEntries) + int64(blockIndex%pageEntries)*entryBytes
}

// slotCodec encodes and checks the 8-byte slots of a version 2 index:
// tag, a 24-bit check, then a 32-bit word (a block's CRC32C, or zero).
// The check is CRC32C of (index, tag, word) seeded with the layer's
// identity (its nonce and id), where index is the slot's place — block
// index for entries, page number for directory slots, group number for
// markers — so a slot copied to another place or another layer's file
// fails too.
type slotCodec struct{ seed uint32 }

func newSlotCodec(nonce uint64, id store.LayerID) slotCodec {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:], nonce)
	binary.LittleEndian.PutUint64(b[8:], uint64(id))
	return slotCodec{seed: crc32.Checksum(b[:], castagnoli)}
}

// check is crc32.Update(seed, castagnoli, index as 8 little-endian
// bytes, tag, word as 4) cut to 24 bits, computed here by slicing-by-8
// tables: crc32.Update reaches its assembly through a function value, so
// the bytes it is given escape (a heap allocation per slot on the read
// and write paths), and for 13 bytes its call costs more than these 13
// independent table lookups.
func (c slotCodec) check(index uint64, tag byte, word uint32) uint32 {
	t := &slicing8
	crc := ^c.seed ^ uint32(index)
	hi := uint32(index >> 32)
	crc = t[0][hi>>24] ^ t[1][byte(hi>>16)] ^ t[2][byte(hi>>8)] ^ t[3][byte(hi)] ^
		t[4][crc>>24] ^ t[5][byte(crc>>16)] ^ t[6][byte(crc>>8)] ^ t[7][byte(crc)]
	crc = t[0][byte(crc)^tag] ^ crc>>8
	crc ^= word
	crc = t[0][crc>>24] ^ t[1][byte(crc>>16)] ^ t[2][byte(crc>>8)] ^ t[3][byte(crc)]
	return ^crc & 0xFFFFFF
}

// slicing8 holds CRC32C tables for 1 to 8 bytes at a step: slicing8[k][b]
// is the CRC of byte b followed by k zero bytes.
var slicing8 = func() (t [8][256]uint32) {
	t[0] = *castagnoli
	for k := 1; k < 8; k++ {
		for i := range 256 {
			t[k][i] = t[k-1][i]>>8 ^ t[0][byte(t[k-1][i])]
		}
	}
	return t
}()

func (c slotCodec) put(b []byte, index uint64, tag byte, word uint32) {
	ck := c.check(index, tag, word)
	b[0], b[1], b[2], b[3] = tag, byte(ck), byte(ck>>8), byte(ck>>16)
	binary.LittleEndian.PutUint32(b[4:], word)
}

// slotState is what one slot of a version 2 index holds.
type slotState uint8

const (
	slotZero slotState = iota // all zeros: never written
	slotOK                    // passes its check
	slotBad                   // neither: damage
)

// get decodes the slot in b at index, whose tag must be one of tags.
func (c slotCodec) get(b []byte, index uint64, isTag func(byte) bool) (tag byte, word uint32, s slotState) {
	if binary.LittleEndian.Uint64(b) == 0 {
		return 0, 0, slotZero
	}
	tag, word = b[0], binary.LittleEndian.Uint32(b[4:])
	ck := uint32(b[1]) | uint32(b[2])<<8 | uint32(b[3])<<16
	if !isTag(tag) || ck != c.check(index, tag, word) {
		return tag, word, slotBad
	}
	return tag, word, slotOK
}

func isEntryTag(t byte) bool { return t&^3 == tagEntry && proto.BlockKind(t&3) <= proto.BlockZero }
func isDirTag(t byte) bool   { return t == tagDir }
func isPageTag(t byte) bool  { return t == tagPage }

// putEntryV2 encodes e; absent entries are written too (tag and check,
// no CRC), so a zeroed entry in a written page is told from an absent one.
func (c slotCodec) putEntry(b []byte, e proto.BlockState) {
	if e.Kind == proto.BlockAbsent {
		e.CRC = 0
	}
	c.put(b, e.BlockIndex, tagEntry|byte(e.Kind), e.CRC)
}

// entry decodes block blockIndex's entry in b: get, without the call
// through a function value (ReadIndex decodes every entry of a layer).
func (c slotCodec) entry(b []byte, blockIndex uint64) (proto.BlockState, slotState) {
	v := binary.LittleEndian.Uint64(b)
	tag, word := byte(v), uint32(v>>32)
	e := proto.BlockState{BlockIndex: blockIndex, Kind: proto.BlockKind(tag & 3), CRC: word}
	switch {
	case v == 0:
		return e, slotZero
	case !isEntryTag(tag) || uint32(v>>8)&0xFFFFFF != c.check(blockIndex, tag, word):
		return e, slotBad
	}
	return e, slotOK
}

// DamageError reports bytes of a layer's index file that fail their
// checks: damage to the index itself, which is never read as absent.
type DamageError struct {
	File   string // the index file's name, e.g. layer-3.index
	Offset int64  // byte offset of the damaged page (a multiple of 4096)
	Page   string // which page: the header, a directory or an entry page
	Reason string
}

func (e *DamageError) Error() string {
	return fmt.Sprintf("index file %s is damaged: %s (file page %d, offset %d): %s",
		e.File, e.Page, e.Offset/pageBytes, e.Offset, e.Reason)
}

func (l *layer) damage(off int64, page, format string, args ...any) error {
	return &DamageError{File: filepath.Base(l.index.Name()), Offset: off, Page: page, Reason: fmt.Sprintf(format, args...)}
}

func (l *layer) headerDamage(format string, args ...any) error {
	return l.damage(0, "header", format, args...)
}

func (l *layer) dirDamage(g uint64, format string, args ...any) error {
	what := fmt.Sprintf("directory page of group %d (entry pages %d..%d)", g, g*groupPages, g*groupPages+groupPages-1)
	return l.damage(dirOffset(g), what, format, args...)
}

func (l *layer) pageDamage(p uint64, format string, args ...any) error {
	what := fmt.Sprintf("entry page %d (blocks [%d,+%d))", p, p*pageEntries, pageEntries)
	return l.damage(pageOffset(p), what, format, args...)
}

// headerV2 is the part of a version 2 index header past magic and version.
type headerV2 struct {
	flushedSeq uint64
	fuaSeq     uint64
	nonce      uint64
	id         store.LayerID
	// extent is how many directory pages (groups, dense from 0) the file
	// holds for certain: a shorter file, or a missing or damaged one of
	// them, is damage.
	extent uint64
}

func (h headerV2) encode(b *[headerV2Bytes]byte) {
	clear(b[:])
	copy(b[:4], indexMagic)
	binary.LittleEndian.PutUint32(b[4:], indexVersion)
	binary.LittleEndian.PutUint64(b[8:], h.flushedSeq)
	binary.LittleEndian.PutUint64(b[16:], h.nonce)
	binary.LittleEndian.PutUint64(b[24:], uint64(h.id))
	binary.LittleEndian.PutUint64(b[32:], h.extent)
	binary.LittleEndian.PutUint64(b[40:], h.fuaSeq)
	binary.LittleEndian.PutUint32(b[60:], crc32.Checksum(b[:60], castagnoli))
}

func decodeHeaderV2(b []byte) (headerV2, bool) {
	if binary.LittleEndian.Uint32(b[60:]) != crc32.Checksum(b[:60], castagnoli) {
		return headerV2{}, false
	}
	return headerV2{
		flushedSeq: binary.LittleEndian.Uint64(b[8:]),
		nonce:      binary.LittleEndian.Uint64(b[16:]),
		id:         store.LayerID(binary.LittleEndian.Uint64(b[24:])),
		extent:     binary.LittleEndian.Uint64(b[32:]),
		fuaSeq:     binary.LittleEndian.Uint64(b[40:]),
	}, true
}

// newNonce returns the random part of a new layer's identity.
func newNonce() uint64 {
	var b [8]byte
	_, _ = crand.Read(b[:]) // never fails (crypto/rand crashes instead)
	return binary.LittleEndian.Uint64(b[:])
}

// writeHeaderV2 rewrites the header from the layer's state; l.mu held.
func (l *layer) writeHeaderV2() error {
	b := &l.header // the layer's: a local array would escape, an allocation per FUA write
	headerV2{flushedSeq: l.flushedSeq, fuaSeq: l.fuaSeq, nonce: l.nonce, id: l.id, extent: l.extent.Load()}.encode(b)
	if _, err := l.index.WriteAt(b[:], 0); err != nil {
		return fmt.Errorf("write index header: %w", err)
	}
	l.imap.grew(int64(len(b)))
	return nil
}

// loadV2 takes in the version 2 header h of an opened layer and checks
// what the header vouches for: the file holds every directory page below
// the extent. Directory pages past the extent with a valid marker (a
// crash between writing them and the header) count as written, and are
// put under the extent at the next SyncIndex.
func (l *layer) loadV2(h headerV2, sizeBytes int64) error {
	if h.id != l.id {
		return l.headerDamage("it belongs to layer %d", h.id)
	}
	l.nonce, l.codec = h.nonce, newSlotCodec(h.nonce, l.id)
	l.extent.Store(h.extent)
	if h.extent > 0 && sizeBytes < dirOffset(h.extent-1)+pageBytes {
		return l.headerDamage("the file is %d bytes, but its header records %d directory pages (%d bytes): truncated",
			sizeBytes, h.extent, dirOffset(h.extent-1)+pageBytes)
	}
	l.dirs = h.extent
	var marker [entryBytes]byte
	for dirOffset(l.dirs) < sizeBytes {
		if err := readFull(l.index, marker[:], dirOffset(l.dirs)); err != nil {
			return fmt.Errorf("read index directory: %w", err)
		}
		if _, _, s := l.codec.get(marker[:], l.dirs, isDirTag); s != slotOK {
			break
		}
		l.dirs++
	}
	return nil
}

// checkDir verifies group g's directory page in b and returns which of
// its entry pages are recorded as written.
func (l *layer) checkDir(b []byte, g uint64, recorded *[groupPages]bool) error {
	_, _, ms := l.codec.get(b, g, isDirTag)
	switch {
	case ms == slotBad:
		return l.dirDamage(g, "its marker fails its check")
	case ms == slotZero && g < l.extent.Load():
		return l.dirDamage(g, "its marker is zeroed, but the header records the page as written")
	}
	for i := range groupPages {
		p := g*groupPages + uint64(i)
		_, _, s := l.codec.get(b[(i+1)*entryBytes:], p, isPageTag)
		if s == slotBad {
			return l.dirDamage(g, "the slot of entry page %d fails its check", p)
		}
		if s == slotOK && ms == slotZero {
			return l.dirDamage(g, "it records entry page %d, but its marker is zeroed", p)
		}
		recorded[i] = s == slotOK
	}
	return nil
}

// checkPage verifies entry page p in b (recorded: its directory slot
// says it was written and synced) and calls add for each entry that is
// not absent. It reports whether every entry is written (the page was
// initialized whole).
func (l *layer) checkPage(b []byte, p uint64, recorded bool, add func(proto.BlockState)) (bool, error) {
	whole := true
	for i := range pageEntries {
		e, s := l.codec.entry(b[i*entryBytes:], p*pageEntries+uint64(i))
		switch s {
		case slotBad:
			return false, l.pageDamage(p, "the entry of block %d fails its check", e.BlockIndex)
		case slotZero:
			if recorded {
				return false, l.pageDamage(p, "the entry of block %d is zeroed in a page recorded as written", e.BlockIndex)
			}
			whole = false
		case slotOK:
			if e.Kind != proto.BlockAbsent {
				add(e)
			}
		}
	}
	return whole, nil
}

// initPages makes sure entry pages [first, last] are initialized: every
// entry written (absent ones as absent), so that once the page's
// directory slot is set a zeroed entry is damage. It is the version 2
// index space reservation too: the page's bytes are allocated before a
// data write they will describe. Done once per page for the life of the
// open layer, under l.mu, so concurrent IOs of one page wait for it and
// never race its read-modify-write; entry writes after it touch only
// their own slots.
func (l *layer) initPages(first, last uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for p := first; p <= last; p++ {
		if _, ok := l.allocated[p]; ok {
			continue
		}
		if err := l.initPage(p); err != nil {
			return err
		}
		l.allocated[p] = struct{}{}
	}
	return nil
}

// initPage initializes entry page p (and the directory pages up to its
// group, dense from 0, so a zeroed directory below the header's extent is
// damage); l.mu held. Entries already written are kept, after checking
// them: a page another life of this layer initialized, or a crash left
// half initialized (a torn initialization leaves zeros only in a page not
// yet recorded, which read as absent).
func (l *layer) initPage(p uint64) error {
	if err := l.initDirs(p / groupPages); err != nil {
		return err
	}
	var slot [entryBytes]byte
	if err := readFull(l.index, slot[:], slotOffset(p)); err != nil {
		return fmt.Errorf("read index directory: %w", err)
	}
	_, _, s := l.codec.get(slot[:], p, isPageTag)
	if s == slotBad {
		return l.dirDamage(p/groupPages, "the slot of entry page %d fails its check", p)
	}
	page := bufpool.Get(pageBytes)
	defer bufpool.Put(page)
	if err := readFull(l.index, page, pageOffset(p)); err != nil {
		return fmt.Errorf("read index page: %w", err)
	}
	if _, err := l.checkPage(page, p, s == slotOK, func(proto.BlockState) {}); err != nil {
		return err
	}
	changed := false
	for i := range pageEntries {
		if binary.LittleEndian.Uint64(page[i*entryBytes:]) == 0 {
			l.codec.putEntry(page[i*entryBytes:], proto.BlockState{BlockIndex: p*pageEntries + uint64(i)})
			changed = true
		}
	}
	if changed {
		if _, err := l.index.WriteAt(page, pageOffset(p)); err != nil {
			return fmt.Errorf("initialize index page %d: %w", p, err)
		}
	}
	l.imap.grew(pageOffset(p) + pageBytes)
	if s != slotOK {
		l.pending = append(l.pending, p)
	}
	return nil
}

// dirsCheckedForSpace is how many directory pages one IO may add before
// initDirs checks the free space for them (1 MiB of them, for 256 GiB of
// layer).
const dirsCheckedForSpace = 256

// initDirs makes sure the directory pages of groups [0, g] are written;
// l.mu held. Far past the last one (a first write near the end of a huge
// layer) it first checks the file system has room for them, so such a
// write fails at once with ENOSPC instead of writing pages until the
// disk is full.
func (l *layer) initDirs(g uint64) error {
	if n := g + 1 - min(g+1, l.dirs); n > dirsCheckedForSpace {
		var st unix.Statfs_t
		if err := unix.Fstatfs(int(l.index.Fd()), &st); err == nil && st.Blocks > 0 &&
			st.Bavail*uint64(st.Bsize)/pageBytes < n {
			return fmt.Errorf("index directory pages for blocks up to %d need %d MiB: %w",
				(g+1)*groupBlocks, n*pageBytes>>20, unix.ENOSPC)
		}
	}
	for ; l.dirs <= g; l.dirs++ {
		if err := l.initDir(l.dirs); err != nil {
			return err
		}
	}
	return nil
}

// initDir writes group g's directory marker (past the header's extent,
// so a crash may have left it half written: zeros or valid slots only).
func (l *layer) initDir(g uint64) error {
	page := bufpool.Get(pageBytes)
	defer bufpool.Put(page)
	if err := readFull(l.index, page, dirOffset(g)); err != nil {
		return fmt.Errorf("read index directory: %w", err)
	}
	var recorded [groupPages]bool
	if err := l.checkDir(page, g, &recorded); err != nil {
		return err
	}
	var marker [entryBytes]byte
	l.codec.put(marker[:], g, tagDir, 0)
	if _, err := l.index.WriteAt(marker[:], dirOffset(g)); err != nil {
		return fmt.Errorf("write index directory %d: %w", g, err)
	}
	l.imap.grew(dirOffset(g) + pageBytes)
	return nil
}

// syncIndexV2 makes the layer's index writes durable, then records the
// pages initialized before it in their directory slots (and the directory
// pages in the header's extent) and makes that durable too. The order is
// what keeps a crash from looking like damage: a slot is set only once
// its page is durably initialized. A flush that initialized no page
// (every overwrite of a written region) costs one fdatasync, as before.
func (l *layer) syncIndexV2() error {
	l.mu.Lock()
	var err error
	for _, p := range l.pending { // adopted pages' directories (see adopt)
		if err = l.initDirs(p / groupPages); err != nil {
			break
		}
	}
	pending, dirs := l.pending, l.dirs
	l.pending = nil
	l.mu.Unlock()
	if err == nil {
		err = l.sync(l.index)
	}
	if err == nil && (len(pending) > 0 || dirs > l.extent.Load()) {
		if err = l.recordPages(pending, dirs); err == nil {
			err = l.sync(l.index)
		}
	}
	if err != nil {
		l.mu.Lock()
		l.pending = append(l.pending, pending...) // not recorded: try again
		l.mu.Unlock()
	}
	return err
}

// recordPages sets the directory slots of pages (synced already) and
// raises the header's extent to dirs, one pwrite per run of slots.
func (l *layer) recordPages(pages []uint64, dirs uint64) error {
	slices.Sort(pages)
	var buf [pageEntries * entryBytes]byte
	for i := 0; i < len(pages); {
		j := i + 1
		for j < len(pages) && pages[j] == pages[j-1]+1 && pages[j]%groupPages != 0 {
			j++
		}
		for k, p := range pages[i:j] {
			l.codec.put(buf[k*entryBytes:], p, tagPage, 0)
		}
		if _, err := l.index.WriteAt(buf[:(j-i)*entryBytes], slotOffset(pages[i])); err != nil {
			return fmt.Errorf("record index pages: %w", err)
		}
		i = j
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if dirs <= l.extent.Load() {
		return nil
	}
	l.extent.Store(dirs)
	return l.writeHeaderV2()
}

// readIndexV2 returns the non-absent entries in the IO's range, checking
// every page it reads: each group's directory page, then the entry pages
// of the range the file holds (SEEK_DATA skips holes, 1 MiB reads). A
// page the directory records as written must be there whole.
func (l *layer) readIndexV2(io store.IO, c *store.Completion) error {
	if io.BlockCount == 0 {
		return nil
	}
	st, err := l.index.Stat()
	if err != nil {
		return fmt.Errorf("stat index: %w", err)
	}
	size := st.Size()
	lo, hi := io.BlockIndex, io.BlockIndex+io.BlockCount
	add := func(e proto.BlockState) {
		if e.BlockIndex >= lo && e.BlockIndex < hi {
			c.Entries = append(c.Entries, e)
		}
	}
	dir := bufpool.Get(pageBytes)
	defer bufpool.Put(dir)
	buf := make([]byte, readIndexChunkBytes)
	pLo, pHi := lo/pageEntries, (hi-1)/pageEntries
	for g := pLo / groupPages; g <= pHi/groupPages; g++ {
		if dirOffset(g) >= size {
			if g < l.extent.Load() {
				return l.dirDamage(g, "the file ends at %d bytes: truncated", size)
			}
			return nil
		}
		if err := readFull(l.index, dir, dirOffset(g)); err != nil {
			return fmt.Errorf("read index directory: %w", err)
		}
		var recorded [groupPages]bool
		if err := l.checkDir(dir, g, &recorded); err != nil {
			return err
		}
		first, last := max(pLo, g*groupPages), min(pHi, g*groupPages+groupPages-1)
		if err := l.readGroup(first, last, &recorded, buf, add); err != nil {
			return err
		}
	}
	return nil
}

// readGroup checks the entry pages [first, last] of one group, which lie
// back to back in the file, visiting only the parts the file holds.
func (l *layer) readGroup(first, last uint64, recorded *[groupPages]bool, buf []byte, add func(proto.BlockState)) error {
	fd := int(l.index.Fd())
	lo, hi := pageOffset(first), pageOffset(last)+pageBytes
	next := first // the first page not yet checked
	skipped := func(upTo uint64) error {
		for ; next < upTo; next++ {
			if recorded[next%groupPages] {
				return l.pageDamage(next, "the page is recorded as written but the file does not hold it (a hole, or truncated)")
			}
		}
		return nil
	}
	for next <= last {
		off := lo + int64(next-first)*pageBytes
		dataOff, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) || err == nil && dataOff >= hi {
			break // nothing more in this group
		}
		if err != nil {
			return fmt.Errorf("seek data in index: %w", err)
		}
		holeOff, err := unix.Seek(fd, dataOff, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole in index: %w", err)
		}
		// Whole pages: a file system's blocks may be smaller than a page.
		if err := skipped(first + uint64(dataOff-lo)/pageBytes); err != nil {
			return err
		}
		end := min(hi, (holeOff+pageBytes-1)/pageBytes*pageBytes)
		for start := lo + int64(next-first)*pageBytes; start < end; {
			n := min(end-start, int64(len(buf)))
			if err := readFull(l.index, buf[:n], start); err != nil {
				return fmt.Errorf("read index at %d: %w", start, err)
			}
			for i := int64(0); i < n; i += pageBytes {
				p := first + uint64(start+i-lo)/pageBytes
				whole, err := l.checkPage(buf[i:i+pageBytes], p, recorded[p%groupPages], add)
				if err != nil {
					return err
				}
				if whole && !recorded[p%groupPages] {
					l.adopt(p)
				}
			}
			start += n
			next = first + uint64(start-lo)/pageBytes
		}
	}
	return skipped(last + 1)
}

// adopt takes entry page p, found initialized whole but not recorded (a
// crash came between its initialization and the SyncIndex that would
// have recorded it), as initialized, to be recorded at the next
// SyncIndex. It writes nothing (a layer only read, such as a backing
// image shared by replicas, is never written): SyncIndex writes the
// page's directory marker if the crash took it.
func (l *layer) adopt(p uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.allocated[p]; !ok {
		l.allocated[p] = struct{}{}
		l.pending = append(l.pending, p)
	}
}

// readEntriesV2 fills entries with the index entries of io's blocks,
// copied from the mapping where it can (pread elsewhere), checking each;
// a zeroed entry is absent only if its page is not recorded as written.
func (l *layer) readEntriesV2(io store.IO, raw []byte, entries []proto.BlockState) error {
	end := io.BlockIndex + io.BlockCount
	for b := io.BlockIndex; b < end; {
		// Entries of one group lie back to back in the file.
		n := min(end-b, groupBlocks-b%groupBlocks)
		r := raw[(b-io.BlockIndex)*entryBytes : (b-io.BlockIndex+n)*entryBytes]
		if !l.imap.read(r, entryOffsetV2(b)) {
			if err := readFull(l.index, r, entryOffsetV2(b)); err != nil {
				return fmt.Errorf("read index entries: %w", err)
			}
		}
		b += n
	}
	checkedPage, recorded := ^uint64(0), false
	for i := range entries {
		blk := io.BlockIndex + uint64(i)
		e, s := l.codec.entry(raw[i*entryBytes:], blk)
		switch s {
		case slotBad:
			return l.pageDamage(blk/pageEntries, "the entry of block %d fails its check", blk)
		case slotZero:
			if p := blk / pageEntries; p != checkedPage {
				var err error
				if recorded, err = l.pageRecorded(p); err != nil {
					return err
				}
				checkedPage = p
			}
			if recorded {
				return l.pageDamage(blk/pageEntries, "the entry of block %d is zeroed in a page recorded as written", blk)
			}
			e = proto.BlockState{BlockIndex: blk}
		}
		entries[i] = e
	}
	return nil
}

// pageRecorded reports whether entry page p's directory slot records it
// as written, checking the slot and its directory's marker.
func (l *layer) pageRecorded(p uint64) (bool, error) {
	g := p / groupPages
	var marker, slot [entryBytes]byte
	if err := l.readSlot(marker[:], dirOffset(g)); err != nil {
		return false, err
	}
	if err := l.readSlot(slot[:], slotOffset(p)); err != nil {
		return false, err
	}
	_, _, ms := l.codec.get(marker[:], g, isDirTag)
	_, _, s := l.codec.get(slot[:], p, isPageTag)
	switch {
	case ms == slotBad:
		return false, l.dirDamage(g, "its marker fails its check")
	case ms == slotZero && g < l.extent.Load():
		return false, l.dirDamage(g, "its marker is zeroed, but the header records the page as written")
	case s == slotBad:
		return false, l.dirDamage(g, "the slot of entry page %d fails its check", p)
	case s == slotOK && ms == slotZero:
		return false, l.dirDamage(g, "it records entry page %d, but its marker is zeroed", p)
	}
	return s == slotOK, nil
}

// readSlot reads the 8 bytes at off: through the mapping, as zeros past
// what the file holds (no system call for a never-written region), else
// with pread.
func (l *layer) readSlot(b []byte, off int64) error {
	if off >= l.imap.known() {
		clear(b)
		return nil
	}
	if l.imap.read(b, off) {
		return nil
	}
	if err := readFull(l.index, b, off); err != nil {
		return fmt.Errorf("read index directory: %w", err)
	}
	return nil
}
