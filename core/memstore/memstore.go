// Package memstore is an in-memory implementation of the core/store layer
// store, with the crash semantics of the store contract: data and index
// writes are volatile until synced, and a crash keeps a chosen subset of
// them block by block. Tests and the simulator run replicas on it.
package memstore

import (
	"fmt"
	"sort"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
)

type layer struct {
	data map[uint64][]byte // current contents (nil entry never stored)
	// owned are blocks whose current slice only data refers to (written
	// since the last sync of that block): a rewrite may reuse it. Every
	// other slice may be shared (durData, a Clone, a crash's copy) and is
	// never changed in place.
	owned      map[uint64]bool
	index      map[uint64]proto.BlockState
	flushedSeq uint64
	fuaSeq     uint64

	durData       map[uint64][]byte
	durIndex      map[uint64]proto.BlockState
	durFlushedSeq uint64
	durFUASeq     uint64

	// damaged are index pages (IndexPageEntries entries each) whose
	// bytes were changed behind the store's back (DamageIndex): their
	// checksum no longer matches, so every IO that reads or rewrites
	// them fails, as filestore's checked pages do.
	damaged map[uint64]bool

	dirtyData  map[uint64]bool // blocks whose data changed since SyncData
	dirtyIndex map[uint64]bool // blocks whose entry changed since SyncIndex
	dirtySeq   bool
}

func newLayer() *layer {
	return &layer{
		data: map[uint64][]byte{}, index: map[uint64]proto.BlockState{}, owned: map[uint64]bool{},
		durData: map[uint64][]byte{}, durIndex: map[uint64]proto.BlockState{},
		dirtyData: map[uint64]bool{}, dirtyIndex: map[uint64]bool{}, damaged: map[uint64]bool{},
	}
}

// IndexPageEntries is how many index entries share one page for damage:
// a damaged page fails every IO that touches any of its blocks. That is
// stricter than filestore, whose version 2 index checks each 8-byte slot
// (an intact entry of a damaged page still reads), so what the simulator
// proves holds for filestore too.
const IndexPageEntries = 512

// checkPages fails c when [lo, lo+n) touches a damaged index page.
func (l *layer) checkPages(id store.LayerID, lo, n uint64, c *store.Completion) bool {
	if len(l.damaged) == 0 || n == 0 {
		return true
	}
	for _, p := range sortedKeys(l.damaged) {
		if p*IndexPageEntries < lo+n && lo < (p+1)*IndexPageEntries {
			c.Err, c.Detail = store.ErrDamaged, fmt.Sprintf("index page %d of layer %d is damaged (checksum mismatch)", p, id)
			return false
		}
	}
	return true
}

// Store is one replica's in-memory store.
type Store struct {
	meta   []byte
	layers map[store.LayerID]*layer
	// intents are WriteIntents records (durable at once): per layer and
	// tag. Like filestore, only the newest tag of a layer is kept.
	intents map[store.LayerID]intentLog
}

type intentLog struct {
	tag     uint64
	entries []proto.BlockState
}

// New returns an empty store.
func New() *Store {
	return &Store{layers: map[store.LayerID]*layer{}, intents: map[store.LayerID]intentLog{}}
}

func (s *Store) executeIntents(io store.IO, c *store.Completion) {
	log := s.intents[io.Layer]
	if io.Kind == store.ReadIntents {
		if log.tag == io.FlushedSeq {
			c.Entries = append([]proto.BlockState(nil), log.entries...)
		}
		return
	}
	if log.tag != io.FlushedSeq {
		log = intentLog{tag: io.FlushedSeq}
	}
	log.entries = append(log.entries, io.Entries...)
	s.intents[io.Layer] = log
}

// Execute performs io at once and returns its completion.
func (s *Store) Execute(io store.IO) store.Completion {
	c := store.Completion{ID: io.ID}
	if io.Kind == store.ReadMeta {
		c.Meta = append([]byte(nil), s.meta...)
		if s.meta == nil {
			c.Meta = nil
		}
		return c
	}
	if io.Kind == store.WriteMeta {
		s.meta = append([]byte{}, io.Meta...)
		return c
	}
	if io.Kind == store.CreateLayer {
		// A layer left behind by a crash before the metadata named it is
		// emptied: its id is reused.
		s.layers[io.Layer] = newLayer()
		delete(s.intents, io.Layer)
		return c
	}
	if io.Kind == store.RemoveLayer {
		delete(s.layers, io.Layer)
		delete(s.intents, io.Layer)
		return c
	}
	if io.Kind == store.WriteIntents || io.Kind == store.ReadIntents {
		s.executeIntents(io, &c)
		return c
	}
	l := s.layers[io.Layer]
	if l == nil {
		c.Err, c.Detail = store.ErrMissing, fmt.Sprintf("layer %d does not exist", io.Layer)
		return c
	}
	if !l.checkIO(io, &c) {
		return c
	}
	l.execute(io, &c)
	return c
}

// checkIO fails an IO that reads or rewrites a damaged index page.
func (l *layer) checkIO(io store.IO, c *store.Completion) bool {
	switch io.Kind {
	case store.ReadIndex, store.ReadData:
		return l.checkPages(io.Layer, io.BlockIndex, io.BlockCount, c)
	case store.WriteIndex:
		for _, e := range io.Entries {
			if !l.checkPages(io.Layer, e.BlockIndex, 1, c) {
				return false
			}
		}
	}
	return true
}

func (l *layer) execute(io store.IO, c *store.Completion) {
	switch io.Kind {
	case store.ReadIndex:
		for b, e := range l.index {
			if b >= io.BlockIndex && b-io.BlockIndex < io.BlockCount {
				c.Entries = append(c.Entries, e)
			}
		}
		sort.Slice(c.Entries, func(i, j int) bool { return c.Entries[i].BlockIndex < c.Entries[j].BlockIndex })
		c.FlushedSeq, c.FUASeq = l.flushedSeq, l.fuaSeq
	case store.WriteIndex:
		for _, e := range io.Entries {
			if e.Kind == proto.BlockAbsent {
				delete(l.index, e.BlockIndex)
			} else {
				l.index[e.BlockIndex] = e
			}
			l.dirtyIndex[e.BlockIndex] = true
		}
		if io.FlushedSeq != 0 {
			l.flushedSeq, l.dirtySeq = io.FlushedSeq, true
		}
		if io.FUASeq > l.fuaSeq {
			l.fuaSeq, l.dirtySeq = io.FUASeq, true
		}
	case store.SyncIndex:
		for b := range l.dirtyIndex {
			persist(l.index, l.durIndex, b)
		}
		clear(l.dirtyIndex)
		l.durFlushedSeq, l.durFUASeq, l.dirtySeq = l.flushedSeq, l.fuaSeq, false
	case store.ReadData:
		c.Data = make([]byte, io.BlockCount*proto.BlockSize)
		if uint64(cap(io.Entries)) >= io.BlockCount {
			c.Entries = io.Entries[:io.BlockCount] // as filestore does: the replica's buffer
		} else {
			c.Entries = make([]proto.BlockState, io.BlockCount)
		}
		for i := uint64(0); i < io.BlockCount; i++ {
			b := io.BlockIndex + i
			copy(c.Data[i*proto.BlockSize:], l.data[b])
			c.Entries[i] = l.index[b]
			c.Entries[i].BlockIndex = b
		}
	case store.WriteData:
		for i := uint64(0); i*proto.BlockSize < uint64(len(io.Data)); i++ {
			b := io.BlockIndex + i
			src := io.Data[i*proto.BlockSize : (i+1)*proto.BlockSize]
			if l.owned[b] {
				copy(l.data[b], src)
			} else {
				l.data[b] = append([]byte(nil), src...)
				l.owned[b] = true
			}
			l.dirtyData[b] = true
		}
	case store.PunchHole:
		for i := uint64(0); i < io.BlockCount; i++ {
			delete(l.data, io.BlockIndex+i)
			delete(l.owned, io.BlockIndex+i)
			l.dirtyData[io.BlockIndex+i] = true
		}
	case store.SyncData:
		for b := range l.dirtyData {
			persist(l.data, l.durData, b)
		}
		clear(l.dirtyData)
		clear(l.owned) // durData shares them now
	default:
		c.Err, c.Detail = store.ErrIO, fmt.Sprintf("unknown io kind %v", io.Kind)
	}
}

func persist[V any](cur, dur map[uint64]V, b uint64) {
	if v, ok := cur[b]; ok {
		dur[b] = v
	} else {
		delete(dur, b)
	}
}

// Crash drops volatile state as a power loss would. For every block with an
// unsynced data or index change, keep(layer, block, isIndex) decides whether
// the unsynced version survives (true) or the durable one comes back.
func (s *Store) Crash(keep func(layer store.LayerID, blockIndex uint64, isIndex bool) bool) {
	for _, id := range s.LayerIDs() {
		l := s.layers[id]
		for _, b := range sortedKeys(l.dirtyData) {
			if keep(id, b, false) {
				persist(l.data, l.durData, b)
			}
		}
		for _, b := range sortedKeys(l.dirtyIndex) {
			if keep(id, b, true) {
				persist(l.index, l.durIndex, b)
			}
		}
		if l.dirtySeq && keep(id, ^uint64(0), true) {
			l.durFlushedSeq, l.durFUASeq = l.flushedSeq, l.fuaSeq
		}
		l.data, l.index, l.flushedSeq, l.fuaSeq = cloneMap(l.durData), cloneMap(l.durIndex), l.durFlushedSeq, l.durFUASeq
		clear(l.owned)
		clear(l.dirtyData)
		clear(l.dirtyIndex)
		l.dirtySeq = false
	}
}

// CorruptBlock flips one bit of a stored block's data (bit rot), durable
// and current copies alike. It reports whether the block had data.
func (s *Store) CorruptBlock(id store.LayerID, blockIndex uint64, bit uint) bool {
	l := s.layers[id]
	if l == nil {
		return false
	}
	d, ok := l.data[blockIndex]
	if !ok {
		return false
	}
	d = append([]byte(nil), d...)
	d[(bit/8)%proto.BlockSize] ^= 1 << (bit % 8)
	l.data[blockIndex] = d
	delete(l.owned, blockIndex) // durData may share it below
	if _, ok := l.durData[blockIndex]; ok {
		l.durData[blockIndex] = d
	}
	return true
}

// LayerIDs returns the layers present, sorted.
func (s *Store) LayerIDs() []store.LayerID {
	ids := make([]store.LayerID, 0, len(s.layers))
	for id := range s.layers {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// DataBlocks returns the blocks of a layer that hold data, sorted.
func (s *Store) DataBlocks(id store.LayerID) []uint64 {
	if l := s.layers[id]; l != nil {
		return sortedKeys(l.data)
	}
	return nil
}

func sortedKeys[V any](m map[uint64]V) []uint64 {
	keys := make([]uint64, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	return keys
}

func cloneMap[V any](m map[uint64]V) map[uint64]V {
	c := make(map[uint64]V, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// Block returns the current data of one block of a layer (nil for a hole).
func (s *Store) Block(id store.LayerID, blockIndex uint64) []byte {
	if l := s.layers[id]; l != nil {
		return l.data[blockIndex]
	}
	return nil
}

// DurableBlock returns the data of one block of a layer as the disk holds
// it durably (what a crash leaves; nil for a hole).
func (s *Store) DurableBlock(id store.LayerID, blockIndex uint64) []byte {
	if l := s.layers[id]; l != nil {
		return l.durData[blockIndex]
	}
	return nil
}

// Entry returns the current index entry of one block of a layer.
func (s *Store) Entry(id store.LayerID, blockIndex uint64) (proto.BlockState, bool) {
	if l := s.layers[id]; l != nil {
		e, ok := l.index[blockIndex]
		return e, ok
	}
	return proto.BlockState{}, false
}

// Clone returns a copy of the store as its disk holds it durably: what a
// copy of the disk image restores (the simulator brings replicas back
// from old copies with it). The copy shares no mutable state with s.
func (s *Store) Clone() *Store {
	c := New()
	if s.meta != nil {
		c.meta = append([]byte{}, s.meta...)
	}
	for id, l := range s.layers {
		n := newLayer()
		n.durData, n.durIndex = cloneMap(l.durData), cloneMap(l.durIndex)
		n.data, n.index = cloneMap(l.durData), cloneMap(l.durIndex)
		n.durFlushedSeq, n.flushedSeq = l.durFlushedSeq, l.durFlushedSeq
		n.durFUASeq, n.fuaSeq = l.durFUASeq, l.durFUASeq
		for p := range l.damaged {
			n.damaged[p] = true
		}
		c.layers[id] = n
	}
	for id, log := range s.intents {
		c.intents[id] = intentLog{tag: log.tag, entries: append([]proto.BlockState(nil), log.entries...)}
	}
	return c
}

// MetaDamage is a way the metadata blob can be damaged.
type MetaDamage int

const (
	MetaZeroed    MetaDamage = iota // every byte zero, the length kept
	MetaTruncated                   // cut short
	MetaByteFlip                    // one byte changed
)

// DamageMeta damages the metadata blob behind the replica's back (a
// misdirected write, a torn sector, a stray dd), durably. at picks the
// cut or the byte. It reports whether there was a blob to damage.
func (s *Store) DamageMeta(how MetaDamage, at int) bool {
	if len(s.meta) == 0 {
		return false
	}
	m := append([]byte{}, s.meta...)
	switch how {
	case MetaZeroed:
		clear(m)
	case MetaTruncated:
		m = m[:at%len(m)]
	case MetaByteFlip:
		m[at%len(m)] ^= 0x5a
	}
	s.meta = m
	return true
}

// IndexDamage is a way a layer's index can be damaged.
type IndexDamage int

const (
	IndexEntryCleared IndexDamage = iota // one entry zeroed (read as never written, unchecked)
	IndexPageZeroed                      // the whole page holding it zeroed
	IndexTruncated                       // the index cut off from that page on
)

// DamageIndex damages the index of a layer around blockIndex, durably and
// in the current state alike: the entries are gone, and the pages that
// held them fail their checksum (every later IO touching them fails, as
// filestore's checked pages do). It reports whether any entry was lost.
func (s *Store) DamageIndex(id store.LayerID, blockIndex uint64, how IndexDamage) bool {
	l := s.layers[id]
	if l == nil {
		return false
	}
	page := blockIndex / IndexPageEntries
	hit := func(b uint64) bool {
		switch how {
		case IndexEntryCleared:
			return b == blockIndex
		case IndexPageZeroed:
			return b/IndexPageEntries == page
		}
		return b/IndexPageEntries >= page
	}
	lost := false
	for _, m := range []map[uint64]proto.BlockState{l.index, l.durIndex} {
		for _, b := range sortedKeys(m) {
			if hit(b) {
				delete(m, b)
				l.damaged[b/IndexPageEntries] = true
				lost = true
			}
		}
	}
	return lost
}
