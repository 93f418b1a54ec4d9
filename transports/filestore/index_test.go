package filestore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
	"pgregory.net/rapid"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/core/store"
	"github.com/drover-io/drover/transports/replicarun"
	"github.com/drover-io/drover/transports/testenv"
)

// execOK runs io on s and fails the test unless it succeeds.
func execOK(t testing.TB, s *Store, io store.IO) store.Completion {
	t.Helper()
	c := s.Execute(io)
	if c.Err != store.OK {
		t.Fatalf("%v: %v %s", io.Kind, c.Err, c.Detail)
	}
	return c
}

// damageBlocks are the blocks the damage tests write: three entry pages
// of group 0 (page 1 with an absent block in its middle), and a page of
// group 1.
var damageBlocks = func() []proto.BlockState {
	var es []proto.BlockState
	for b := uint64(0); b < 3*pageEntries; b++ {
		if b == pageEntries+100 {
			continue // absent, in a written page
		}
		kind := proto.BlockData
		if b%7 == 0 {
			kind = proto.BlockZero
		}
		es = append(es, proto.BlockState{BlockIndex: b, Kind: kind, CRC: uint32(b*2654435761) | 1})
	}
	for _, b := range []uint64{groupBlocks + 5, groupBlocks + 6} {
		es = append(es, proto.BlockState{BlockIndex: b, Kind: proto.BlockData, CRC: uint32(b)})
	}
	return es
}()

// writeDamageLayer writes and syncs damageBlocks into a new layer id.
func writeDamageLayer(t testing.TB, s *Store, id store.LayerID) {
	execOK(t, s, store.IO{Kind: store.CreateLayer, Layer: id})
	execOK(t, s, store.IO{Kind: store.WriteIndex, Layer: id, Entries: damageBlocks, FlushedSeq: 7})
	execOK(t, s, store.IO{Kind: store.SyncIndex, Layer: id})
}

// TestIndexDamageDetected damages a written and synced version 2 index
// file in each way a disk or an operator does, and requires ReadIndex
// and ReadData of a damaged block to fail with an error naming the file
// and the page — never to read the block as absent.
func TestIndexDamageDetected(t *testing.T) {
	page1 := uint64(1)
	lastPage := uint64(groupBlocks+5) / pageEntries
	zero := func(off, n int64) func(*testing.T, string) {
		return func(t *testing.T, path string) { writeAt(t, path, make([]byte, n), off) }
	}
	flip := func(off int64) func(*testing.T, string) {
		return func(t *testing.T, path string) {
			b := readAt(t, path, 1, off)
			writeAt(t, path, []byte{b[0] ^ 0x10}, off)
		}
	}
	truncate := func(size int64) func(*testing.T, string) {
		return func(t *testing.T, path string) {
			if err := os.Truncate(path, size); err != nil {
				t.Fatal(err)
			}
		}
	}
	cases := []struct {
		name   string
		damage func(*testing.T, string)
		block  uint64 // a block whose ReadData must fail
		want   string // in the error
		// intact: the damage leaves block's own entry whole and ReadData
		// does not need more (a directory page matters only to zeroed
		// entries): its ReadData must succeed with the written entry.
		intact bool
	}{
		{"entry zeroed", zero(entryOffsetV2(100), entryBytes), 100, "file page 2, offset 8192): the entry of block 100 is zeroed", false},
		{"absent entry zeroed", zero(entryOffsetV2(pageEntries+100), entryBytes), pageEntries + 100, "the entry of block 612 is zeroed", false},
		{"entry CRC changed", flip(entryOffsetV2(100) + 5), 100, "the entry of block 100 fails its check", false},
		{"entry kind changed", flip(entryOffsetV2(100)), 100, "the entry of block 100 fails its check", false},
		{"entry check changed", flip(entryOffsetV2(100) + 2), 100, "the entry of block 100 fails its check", false},
		{"page zeroed", zero(pageOffset(page1), pageBytes), pageEntries, "entry page 1 (blocks [512,+512)) (file page 3", false},
		{"page punched", func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, pageOffset(page1), pageBytes); err != nil {
				testenv.Unavailable(t, "this file system cannot punch holes: %v", err)
			}
		}, pageEntries, "entry page 1 (blocks [512,+512)) (file page 3", false},
		{"page copied over another", func(t *testing.T, path string) {
			writeAt(t, path, readAt(t, path, pageBytes, pageOffset(0)), pageOffset(page1))
		}, pageEntries, "entry page 1", false},
		{"page from another layer", func(t *testing.T, path string) {
			other := filepath.Join(filepath.Dir(path), indexName(2))
			writeAt(t, path, readAt(t, other, pageBytes, pageOffset(page1)), pageOffset(page1))
		}, pageEntries, "entry page 1", false},
		{"directory zeroed", zero(dirOffset(0), pageBytes), 5 * pageEntries, "directory page of group 0 (entry pages 0..510) (file page 1, offset 4096): its marker is zeroed", false},
		{"directory zeroed, entry intact", zero(dirOffset(0), pageBytes), 3, "its marker is zeroed", true},
		{"directory slot changed", flip(slotOffset(page1) + 1), pageEntries, "the slot of entry page 1 fails its check", true},
		{"directory slot changed, read beside", flip(slotOffset(5) + 1), 5 * pageEntries, "the slot of entry page 5 fails its check", false},
		{"directory marker changed", flip(dirOffset(0) + 6), 5 * pageEntries, "its marker fails its check", false},
		{"truncated in the last group", truncate(pageOffset(lastPage)), groupBlocks + 5, fmt.Sprintf("entry page %d", lastPage), false},
		{"truncated before the last group", truncate(pageOffset(3)), groupBlocks + 5, "truncated", false},
		{"truncated to nothing", truncate(0), 0, "header (file page 0, offset 0): the file is 0 bytes", false},
		{"header zeroed", zero(0, pageBytes), 0, "header (file page 0, offset 0): bad magic", false},
		{"header extent changed", flip(32), 0, "header (file page 0, offset 0): its checksum does not match", false},
		// Found by TestIndexDamageNeverReadsAsAnotherIndex: version 2 with
		// one bit flipped is version 1, which has no checksum to fail.
		{"header version changed to 1", func(t *testing.T, path string) { writeAt(t, path, []byte{indexVersion1}, 4) },
			0, "a version 1 header with bytes past its end", false},
	}
	for _, dirKind := range []string{"disk", "tmpfs"} {
		for _, tc := range cases {
			t.Run(dirKind+"/"+tc.name, func(t *testing.T) {
				dir := t.TempDir()
				if dirKind == "tmpfs" {
					dir = fastDir(t)
				}
				s := openStore(t, dir)
				writeDamageLayer(t, s, 1)
				writeDamageLayer(t, s, 2)
				s.Close()
				tc.damage(t, filepath.Join(dir, indexName(1)))

				s = openStore(t, dir)
				defer s.Close()
				c := s.Execute(store.IO{Kind: store.ReadIndex, Layer: 1, BlockCount: 4 * groupBlocks})
				requireDamage(t, c, tc.want)
				c = s.Execute(store.IO{Kind: store.ReadData, Layer: 1, BlockIndex: tc.block, BlockCount: 1})
				if tc.intact {
					if c.Err != store.OK || c.Entries[0] != entryOf(tc.block) {
						t.Fatalf("block %d, its entry intact, reads %v %s %+v", tc.block, c.Err, c.Detail, c.Entries)
					}
				} else {
					requireDamage(t, c, "layer-1.index is damaged")
				}
				// The undamaged layer beside it reads back whole.
				c = execOK(t, s, store.IO{Kind: store.ReadIndex, Layer: 2, BlockCount: 4 * groupBlocks})
				if !reflect.DeepEqual(c.Entries, nonAbsent(damageBlocks)) {
					t.Fatal("layer 2 reads back different entries")
				}
			})
		}
	}
}

// entryOf returns block b's entry in damageBlocks (absent if not there).
func entryOf(b uint64) proto.BlockState {
	for _, e := range damageBlocks {
		if e.BlockIndex == b {
			return e
		}
	}
	return proto.BlockState{BlockIndex: b}
}

func requireDamage(t *testing.T, c store.Completion, want string) {
	t.Helper()
	if c.Err != store.ErrDamaged || !strings.Contains(c.Detail, "layer-1.index is damaged") || !strings.Contains(c.Detail, want) {
		t.Fatalf("want an error naming the damage (%q), got %v %q (%d entries)", want, c.Err, c.Detail, len(c.Entries))
	}
	t.Log(c.Detail)
}

func nonAbsent(es []proto.BlockState) []proto.BlockState {
	var out []proto.BlockState
	for _, e := range es {
		if e.Kind != proto.BlockAbsent {
			out = append(out, e)
		}
	}
	return out
}

func writeAt(t testing.TB, path string, b []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func readAt(t testing.TB, path string, n int, off int64) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if err := readFull(f, b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestReplicaRefusesDamagedIndex is the report through a replica:
// data written and flushed, then one index entry zeroed while the replica
// is stopped. The replica must refuse to load rather than serve zeros.
func TestReplicaRefusesDamagedIndex(t *testing.T) {
	for _, damage := range []string{"entry zeroed", "truncated"} {
		t.Run(damage, func(t *testing.T) {
			dir := t.TempDir()
			s := openStore(t, dir)
			r, err := replicarun.Open(replica.Config{ID: "d", CreateSizeBytes: 64 << 20}, s)
			if err != nil {
				t.Fatal(err)
			}
			for i, req := range []proto.Request{
				{Op: proto.OpOpen},
				{Op: proto.OpWrite, BlockIndex: 0, BlockCount: 1024, Data: fill(0x3c, 1024), Seq: 1},
				{Op: proto.OpFlush, Seq: 1},
			} {
				req.ID, req.Epoch = uint64(i+1), 1
				if rep := r.Do(req); rep.Status != proto.StatusOK {
					t.Fatalf("%v: %v %s", req.Op, rep.Status, rep.Err)
				}
			}
			r.Close()
			s.Close()
			path := filepath.Join(dir, indexName(replicaHeadLayer(t, dir)))
			if damage == "truncated" {
				if err := os.Truncate(path, pageOffset(1)); err != nil {
					t.Fatal(err)
				}
			} else {
				writeAt(t, path, make([]byte, entryBytes), entryOffsetV2(700))
			}
			s = openStore(t, dir)
			defer s.Close()
			_, err = replicarun.Open(replica.Config{ID: "d"}, s)
			var le *replicarun.LoadError
			if !errors.As(err, &le) || !strings.Contains(err.Error(), "is damaged") {
				t.Fatalf("want a load error naming the damage, got %v", err)
			}
			t.Log(err)
		})
	}
}

// replicaHeadLayer returns the id of the only layer file with entries in
// dir (the head a fresh replica wrote to).
func replicaHeadLayer(t *testing.T, dir string) store.LayerID {
	t.Helper()
	names, _ := filepath.Glob(filepath.Join(dir, "layer-*.index"))
	var id store.LayerID
	var most int64
	for _, n := range names {
		st, err := os.Stat(n)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > most {
			most = st.Size()
			fmt.Sscanf(filepath.Base(n), "layer-%d.index", &id)
		}
	}
	if id == 0 {
		t.Fatalf("no layer with entries in %s", dir)
	}
	return id
}

// TestSlotCheckCatchesEveryByteChange: any change of one byte of a
// written slot (entry, directory slot or marker) fails its check — for
// CRC32C this holds for every slot once it holds for one (the check is
// linear in the bytes), and the test tries it on many.
func TestSlotCheckCatchesEveryByteChange(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		c := newSlotCodec(rng.Uint64(), store.LayerID(rng.Uint64N(100)))
		index := rng.Uint64N(1 << 40)
		var slot [entryBytes]byte
		isTag := isEntryTag
		switch k := rng.IntN(5); {
		case k < 3:
			c.putEntry(slot[:], proto.BlockState{BlockIndex: index, Kind: proto.BlockKind(k), CRC: rng.Uint32()})
		case k == 3:
			c.put(slot[:], index, tagPage, 0)
			isTag = isPageTag
		default:
			c.put(slot[:], index, tagDir, 0)
			isTag = isDirTag
		}
		var b [13]byte
		binary.LittleEndian.PutUint64(b[:], index)
		b[8] = slot[0]
		copy(b[9:], slot[4:])
		if want := crc32.Update(c.seed, castagnoli, b[:]) & 0xFFFFFF; c.check(index, slot[0], binary.LittleEndian.Uint32(slot[4:])) != want {
			t.Fatal("the slot check is not CRC32C of its bytes")
		}
		if _, _, s := c.get(slot[:], index, isTag); s != slotOK {
			t.Fatalf("a written slot %x does not pass its check", slot)
		}
		for i := range slot {
			for x := 1; x < 256; x++ {
				d := slot
				d[i] ^= byte(x)
				if _, _, s := c.get(d[:], index, isTag); s == slotOK {
					t.Fatalf("slot %x changed at byte %d to %x passes its check", slot, i, d)
				}
			}
		}
		// Elsewhere, or in another layer, the same bytes fail.
		if _, _, s := c.get(slot[:], index+1, isTag); s == slotOK {
			t.Fatalf("slot %x passes at the next index", slot)
		}
		other := newSlotCodec(rng.Uint64(), 1)
		if _, _, s := other.get(slot[:], index, isTag); s == slotOK {
			t.Fatalf("slot %x passes in another layer", slot)
		}
	}
}

// indexState is what a ReadIndex returns: the layer's FlushedSeq and
// non-absent entries.
type indexState struct {
	seq     uint64
	fuaSeq  uint64
	entries map[uint64]proto.BlockState
}

func readState(s *Store, id store.LayerID) (indexState, store.Completion) {
	c := s.Execute(store.IO{Kind: store.ReadIndex, Layer: id, BlockCount: 4 * groupBlocks})
	st := indexState{seq: c.FlushedSeq, fuaSeq: c.FUASeq, entries: map[uint64]proto.BlockState{}}
	for _, e := range c.Entries {
		st.entries[e.BlockIndex] = e
	}
	return st, c
}

// drawEntries draws a batch of index entries over three groups, mostly
// clustered so pages fill up.
func drawEntries(t *rapid.T, label string) []proto.BlockState {
	n := rapid.IntRange(1, 300).Draw(t, label+" count")
	base := rapid.SampledFrom([]uint64{0, 3 * pageEntries, groupBlocks - 10, 2*groupBlocks + 1000}).Draw(t, label+" base")
	es := make([]proto.BlockState, n)
	for i := range es {
		es[i] = proto.BlockState{BlockIndex: base + rapid.Uint64Range(0, 2000).Draw(t, "block"),
			Kind: proto.BlockKind(rapid.IntRange(0, 2).Draw(t, "kind")), CRC: rapid.Uint32().Draw(t, "crc")}
	}
	return es
}

func applyEntries(st indexState, es []proto.BlockState, seq uint64) indexState {
	out := indexState{seq: st.seq, fuaSeq: max(st.fuaSeq, seq*10), entries: map[uint64]proto.BlockState{}}
	for b, e := range st.entries {
		out.entries[b] = e
	}
	for _, e := range es {
		if e.Kind == proto.BlockAbsent {
			delete(out.entries, e.BlockIndex)
		} else {
			out.entries[e.BlockIndex] = e
		}
	}
	if seq != 0 {
		out.seq = seq
	}
	return out
}

// TestIndexDamageNeverReadsAsAnotherIndex writes random entries, damages
// the synced index file once at random — one byte changed, a page
// zeroed, punched, or copied over another, the file truncated — and
// requires every read after it either to fail or to return exactly what
// was written: damage is never read back as a different valid index.
func TestIndexDamageNeverReadsAsAnotherIndex(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		dir := fastDir(t)
		s := openStore(t, dir)
		execOK(t, s, store.IO{Kind: store.CreateLayer, Layer: 1})
		want := indexState{entries: map[uint64]proto.BlockState{}}
		for i := range rapid.IntRange(1, 3).Draw(rt, "batches") {
			es := drawEntries(rt, "batch")
			execOK(t, s, store.IO{Kind: store.WriteIndex, Layer: 1, Entries: es, FlushedSeq: uint64(i + 1), FUASeq: uint64(i+1) * 10})
			execOK(t, s, store.IO{Kind: store.SyncIndex, Layer: 1})
			want = applyEntries(want, es, uint64(i+1))
		}
		s.Close()
		path := filepath.Join(dir, indexName(1))
		st, err := os.Stat(path)
		if err != nil {
			rt.Fatal(err)
		}
		size := st.Size()
		pages := (size + pageBytes - 1) / pageBytes
		switch kind := rapid.IntRange(0, 4).Draw(rt, "damage"); kind {
		case 0: // one byte changed
			off := rapid.Int64Range(0, size-1).Draw(rt, "offset")
			x := rapid.ByteRange(1, 255).Draw(rt, "xor")
			writeAt(t, path, []byte{readAt(t, path, 1, off)[0] ^ x}, off)
		case 1: // a page zeroed
			p := rapid.Int64Range(0, pages-1).Draw(rt, "page")
			writeAt(t, path, make([]byte, pageBytes), p*pageBytes)
		case 2: // a page punched
			p := rapid.Int64Range(0, pages-1).Draw(rt, "page")
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				rt.Fatal(err)
			}
			_ = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, p*pageBytes, pageBytes)
			f.Close()
		case 3: // a page copied over another (a misdirected write)
			from, to := rapid.Int64Range(0, pages-1).Draw(rt, "from"), rapid.Int64Range(0, pages-1).Draw(rt, "to")
			writeAt(t, path, readAt(t, path, pageBytes, from*pageBytes), to*pageBytes)
		case 4: // truncated
			if err := os.Truncate(path, rapid.Int64Range(0, size-1).Draw(rt, "size")); err != nil {
				rt.Fatal(err)
			}
		}
		s = openStore(t, dir)
		defer s.Close()
		got, c := readState(s, 1)
		if c.Err == store.OK && !reflect.DeepEqual(got, want) {
			rt.Fatalf("damaged index read back as another index:\n got seq %d %d entries\nwant seq %d %d entries", got.seq, len(got.entries), want.seq, len(want.entries))
		}
		checkReadData(rt, s, want)
	})
}

// checkReadData reads every block near the written ones with ReadData:
// each must fail or return its entry as written (absent if never
// written).
func checkReadData(t *rapid.T, s *Store, want indexState) {
	seen := map[uint64]bool{}
	for b := range want.entries {
		lo := b - min(b, 3)
		for blk := lo; blk < lo+8; blk++ {
			if seen[blk] {
				continue
			}
			seen[blk] = true
			c := s.Execute(store.IO{Kind: store.ReadData, Layer: 1, BlockIndex: blk, BlockCount: 1})
			if c.Err != store.OK {
				continue
			}
			w, ok := want.entries[blk]
			if !ok {
				w = proto.BlockState{BlockIndex: blk}
			}
			if c.Entries[0] != w {
				t.Fatalf("block %d reads entry %+v, written %+v", blk, c.Entries[0], w)
			}
		}
	}
}

// TestIndexCrashNeverLooksDamaged models an ordinary crash during a
// flush on a disk whose sectors (512 bytes) are written whole or not at
// all, and nothing larger is: after synced state A, WriteIndex IOs make
// the file M (volatile), and SyncIndex makes it B (durable). A crash
// before SyncIndex's first fdatasync completes leaves any mix of A's and
// M's sectors; one during its second step (recording the new pages) any
// mix of M's and B's. Every such file must open and read without error,
// each block's entry as in A or as in M — a torn index page is the
// contract's "any subset, block by block", never damage.
func TestIndexCrashNeverLooksDamaged(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		dir := fastDir(t)
		s := openStore(t, dir)
		execOK(t, s, store.IO{Kind: store.CreateLayer, Layer: 1})
		stateA := indexState{entries: map[uint64]proto.BlockState{}}
		if rapid.Bool().Draw(rt, "written before") {
			es := drawEntries(rt, "A")
			execOK(t, s, store.IO{Kind: store.WriteIndex, Layer: 1, Entries: es, FlushedSeq: 1, FUASeq: 10})
			execOK(t, s, store.IO{Kind: store.SyncIndex, Layer: 1})
			stateA = applyEntries(stateA, es, 1)
		}
		path := filepath.Join(dir, indexName(1))
		fileA := readWhole(t, path)
		es := drawEntries(rt, "M")
		execOK(t, s, store.IO{Kind: store.WriteIndex, Layer: 1, Entries: es, FlushedSeq: 2, FUASeq: 20})
		stateM := applyEntries(stateA, es, 2)
		fileM := readWhole(t, path)
		execOK(t, s, store.IO{Kind: store.SyncIndex, Layer: 1})
		fileB := readWhole(t, path)
		s.Close()

		from, to := fileA, fileM
		if rapid.Bool().Draw(rt, "crash while recording") {
			from, to = fileM, fileB
		}
		mixed := mixSectors(rt, from, to)
		if err := os.WriteFile(path, mixed, 0o644); err != nil {
			rt.Fatal(err)
		}
		s = openStore(t, dir)
		defer s.Close()
		got, c := readState(s, 1)
		if c.Err != store.OK {
			rt.Fatalf("a crash during a flush left an index read as damaged: %s", c.Detail)
		}
		if got.seq != stateA.seq && got.seq != stateM.seq || got.fuaSeq != stateA.fuaSeq && got.fuaSeq != stateM.fuaSeq {
			rt.Fatalf("flushed seq %d FUA seq %d, want %d/%d or %d/%d", got.seq, got.fuaSeq, stateA.seq, stateA.fuaSeq, stateM.seq, stateM.fuaSeq)
		}
		for _, b := range unionBlocks(stateA, stateM, got) {
			g, a, m := got.entries[b], stateA.entries[b], stateM.entries[b]
			if g != a && g != m {
				rt.Fatalf("block %d: entry %+v after the crash, before %+v, after %+v", b, g, a, m)
			}
			d := s.Execute(store.IO{Kind: store.ReadData, Layer: 1, BlockIndex: b, BlockCount: 1})
			if d.Err != store.OK {
				rt.Fatalf("read block %d after the crash: %s", b, d.Detail)
			}
			if e := d.Entries[0]; e != g && !(e.Kind == proto.BlockAbsent && g == (proto.BlockState{})) {
				rt.Fatalf("block %d: ReadData entry %+v, ReadIndex %+v", b, e, g)
			}
		}
		// The layer goes on: a write and a flush after the crash, and the
		// file reads back whole.
		more := drawEntries(rt, "after")
		execOK(t, s, store.IO{Kind: store.WriteIndex, Layer: 1, Entries: more, FlushedSeq: 3, FUASeq: 30})
		execOK(t, s, store.IO{Kind: store.SyncIndex, Layer: 1})
		want := applyEntries(got, more, 3)
		s.Close()
		s2 := openStore(t, dir)
		defer s2.Close()
		if got, c := readState(s2, 1); c.Err != store.OK || !reflect.DeepEqual(got, want) {
			rt.Fatalf("after recovering: %v %s", c.Err, c.Detail)
		}
	})
}

func readWhole(t testing.TB, path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// mixSectors returns a file of to's length whose every 512-byte sector
// comes from from or to, drawn at random (biased to runs, as a device's
// queue completes them).
func mixSectors(t *rapid.T, from, to []byte) []byte {
	out := bytes.Clone(to)
	if len(from) > len(to) {
		from = from[:len(to)]
	}
	old := rapid.Bool().Draw(t, "first sector old")
	flipOdds := rapid.IntRange(1, 16).Draw(t, "run length")
	for off := 0; off < len(out); off += 512 {
		if rapid.IntRange(0, flipOdds).Draw(t, "flip") == 0 {
			old = !old
		}
		if old {
			end := min(off+512, len(out))
			n := copy(out[off:end], from[min(off, len(from)):min(end, len(from))])
			clear(out[off+n : end]) // past the old file's end: zeros
		}
	}
	return out
}

func unionBlocks(states ...indexState) []uint64 {
	seen := map[uint64]bool{}
	var out []uint64
	for _, st := range states {
		for b := range st.entries {
			if !seen[b] {
				seen[b] = true
				out = append(out, b)
			}
		}
	}
	return out
}

// TestConcurrentIndexWritesOnePage runs WriteIndex IOs of one layer from
// many goroutines at once into the same fresh pages (as the store's
// callers may), with reads beside them, and requires the synced file to
// hold every entry.
func TestConcurrentIndexWritesOnePage(t *testing.T) {
	dir := fastDir(t)
	s := openStore(t, dir)
	execOK(t, s, store.IO{Kind: store.CreateLayer, Layer: 1})
	const writers, perWriter = 8, 128
	var wg sync.WaitGroup
	errs := make(chan string, writers*perWriter*2)
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				b := uint64(i*writers + w) // interleaved: every page shared
				es := []proto.BlockState{{BlockIndex: b, Kind: proto.BlockData, CRC: uint32(b) + 1}}
				if c := s.Execute(store.IO{Kind: store.WriteIndex, Layer: 1, Entries: es}); c.Err != store.OK {
					errs <- c.Detail
				}
				if c := s.Execute(store.IO{Kind: store.ReadData, Layer: 1, BlockIndex: b, BlockCount: 1}); c.Err != store.OK {
					errs <- c.Detail
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	execOK(t, s, store.IO{Kind: store.SyncIndex, Layer: 1})
	s.Close()
	s = openStore(t, dir)
	defer s.Close()
	got, c := readState(s, 1)
	if c.Err != store.OK || len(got.entries) != writers*perWriter {
		t.Fatalf("read back %d entries of %d: %v %s", len(got.entries), writers*perWriter, c.Err, c.Detail)
	}
	for b, e := range got.entries {
		if e.CRC != uint32(b)+1 {
			t.Fatalf("block %d: %+v", b, e)
		}
	}
}

// writeV1Layer writes layer id in index format version 1, as builds
// before version 2 did: a 16-byte header, then 8 bytes per block.
func writeV1Layer(t *testing.T, dir string, id store.LayerID, es []proto.BlockState, seq uint64) {
	var h [16]byte
	copy(h[:], indexMagic)
	binary.LittleEndian.PutUint32(h[4:], indexVersion1)
	binary.LittleEndian.PutUint64(h[8:], seq)
	idx := h[:]
	for _, e := range es {
		end := int(entryOffsetV1(e.BlockIndex + 1))
		if len(idx) < end {
			idx = append(idx, make([]byte, end-len(idx))...)
		}
		putEntryV1(idx[end-entryBytes:end], e)
	}
	if err := os.WriteFile(filepath.Join(dir, indexName(id)), idx, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, dataName(id)), fill(5, 4), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestVersion1IndexStillWorks opens a layer written in format version 1:
// it reads back, takes writes in version 1 (it stays version 1 until the
// layer is recreated), and a new layer beside it is version 2.
func TestVersion1IndexStillWorks(t *testing.T) {
	dir := t.TempDir()
	old := []proto.BlockState{{BlockIndex: 1, Kind: proto.BlockData, CRC: 11}, {BlockIndex: 600, Kind: proto.BlockZero}}
	writeV1Layer(t, dir, 1, old, 4)
	s := openStore(t, dir)
	got, c := readState(s, 1)
	if c.Err != store.OK || got.seq != 4 || len(got.entries) != 2 || got.entries[1] != old[0] {
		t.Fatalf("version 1 layer reads %v %s: %+v", c.Err, c.Detail, got)
	}
	d := execOK(t, s, store.IO{Kind: store.ReadData, Layer: 1, BlockIndex: 0, BlockCount: 2})
	if !reflect.DeepEqual(d.Entries, []proto.BlockState{{BlockIndex: 0}, old[0]}) || !bytes.Equal(d.Data, fill(5, 2)) {
		t.Fatalf("version 1 ReadData: %+v", d.Entries)
	}
	added := []proto.BlockState{{BlockIndex: 2, Kind: proto.BlockData, CRC: 22}, {BlockIndex: 600}}
	execOK(t, s, store.IO{Kind: store.WriteData, Layer: 1, BlockIndex: 2, Data: fill(6, 1)})
	execOK(t, s, store.IO{Kind: store.WriteIndex, Layer: 1, Entries: added, FlushedSeq: 5, FUASeq: 9})
	execOK(t, s, store.IO{Kind: store.WriteIndex, Layer: 1, FUASeq: 8}) // completes late: kept 9
	execOK(t, s, store.IO{Kind: store.SyncIndex, Layer: 1})
	execOK(t, s, store.IO{Kind: store.CreateLayer, Layer: 2})
	s.Close()

	if v := binary.LittleEndian.Uint32(readAt(t, filepath.Join(dir, indexName(1)), 8, 0)[4:]); v != indexVersion1 {
		t.Fatalf("layer 1 is version %d after writes", v)
	}
	if v := binary.LittleEndian.Uint32(readAt(t, filepath.Join(dir, indexName(2)), 8, 0)[4:]); v != indexVersion {
		t.Fatalf("a new layer is version %d", v)
	}
	s = openStore(t, dir)
	defer s.Close()
	got, c = readState(s, 1)
	want := map[uint64]proto.BlockState{1: old[0], 2: added[0]}
	if c.Err != store.OK || got.seq != 5 || got.fuaSeq != 9 || !reflect.DeepEqual(got.entries, want) {
		t.Fatalf("version 1 layer after writes: %v %s %+v", c.Err, c.Detail, got)
	}
}

// TestCrashLostDirectoryThenRecover: found by TestIndexCrashNeverLooksDamaged.
// A crash kept an initialized entry page of group 1 but not group 1's
// directory page (written in the same interval, never synced). Reopened,
// ReadIndex takes the page as initialized, and the next SyncIndex records
// it — which must write the directory's marker first, or the file reads
// as damaged from then on.
func TestCrashLostDirectoryThenRecover(t *testing.T) {
	dir := fastDir(t)
	s := openStore(t, dir)
	execOK(t, s, store.IO{Kind: store.CreateLayer, Layer: 1})
	b := uint64(groupBlocks + 3)
	execOK(t, s, store.IO{Kind: store.WriteIndex, Layer: 1, Entries: []proto.BlockState{{BlockIndex: b, Kind: proto.BlockData, CRC: 9}}})
	s.Close()
	path := filepath.Join(dir, indexName(1))
	writeAt(t, path, make([]byte, pageBytes), dirOffset(1)) // the crash lost it

	s = openStore(t, dir)
	got, c := readState(s, 1)
	if c.Err != store.OK || got.entries[b].CRC != 9 {
		t.Fatalf("after the crash: %v %s %+v", c.Err, c.Detail, got)
	}
	execOK(t, s, store.IO{Kind: store.WriteIndex, Layer: 1, Entries: []proto.BlockState{{BlockIndex: 1, Kind: proto.BlockZero}}, FlushedSeq: 2})
	execOK(t, s, store.IO{Kind: store.SyncIndex, Layer: 1})
	s.Close()
	s = openStore(t, dir)
	defer s.Close()
	if got, c := readState(s, 1); c.Err != store.OK || len(got.entries) != 2 || got.seq != 2 {
		t.Fatalf("after recovering: %v %s %+v", c.Err, c.Detail, got)
	}
	// Recorded now: zeroing the page is damage.
	s.Close()
	writeAt(t, path, make([]byte, pageBytes), pageOffset(b/pageEntries))
	s = openStore(t, dir)
	if _, c := readState(s, 1); c.Err != store.ErrDamaged || !strings.Contains(c.Detail, "is damaged") {
		t.Fatalf("zeroed recorded page: %v %s", c.Err, c.Detail)
	}
}

// TestFarWriteNeedsRoomForDirectories: the first index write far into a
// huge layer needs the directory pages before it (4 KiB per 1 GiB of
// layer); on a 2 MiB tmpfs it fails with ErrNoSpace at once, and the
// layer keeps working near its start.
func TestFarWriteNeedsRoomForDirectories(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", dir).CombinedOutput(); err != nil {
		testenv.Unavailable(t, "cannot mount a small tmpfs (needs root): %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	s := openStore(t, dir)
	defer s.Close()
	execOK(t, s, store.IO{Kind: store.CreateLayer, Layer: 1})
	far := uint64(10000) * groupBlocks // 10 TiB in: 40 MiB of directory pages
	for _, io := range []store.IO{
		{Kind: store.WriteData, Layer: 1, BlockIndex: far, Data: fill(1, 1)},
		{Kind: store.WriteIndex, Layer: 1, Entries: []proto.BlockState{{BlockIndex: far, Kind: proto.BlockZero}}},
	} {
		c := s.Execute(io)
		if c.Err != store.ErrNoSpace {
			t.Fatalf("%v at block %d on a 2 MiB disk: %v %s", io.Kind, far, c.Err, c.Detail)
		}
		t.Log(c.Detail)
	}
	execOK(t, s, store.IO{Kind: store.WriteIndex, Layer: 1, Entries: []proto.BlockState{{BlockIndex: 3, Kind: proto.BlockZero}}})
	execOK(t, s, store.IO{Kind: store.SyncIndex, Layer: 1})
	if got, c := readState(s, 1); c.Err != store.OK || len(got.entries) != 1 {
		t.Fatalf("after the refused write: %v %s %+v", c.Err, c.Detail, got)
	}
}

// TestIndexCutWhileOpen: the index file truncated while the layer is open
// (and its index mapped) makes reads of its blocks fail with the damage,
// not fault the process.
func TestIndexCutWhileOpen(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	defer s.Close()
	writeDamageLayer(t, s, 1)
	execOK(t, s, store.IO{Kind: store.ReadData, Layer: 1, BlockIndex: 100, BlockCount: 1})
	if err := os.Truncate(filepath.Join(dir, indexName(1)), pageBytes); err != nil {
		t.Fatal(err)
	}
	for _, b := range []uint64{100, 5 * pageEntries} { // an entry; a directory slot
		c := s.Execute(store.IO{Kind: store.ReadData, Layer: 1, BlockIndex: b, BlockCount: 1})
		requireDamage(t, c, "layer-1.index is damaged")
	}
}
