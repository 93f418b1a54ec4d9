package filestore

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"

	"pgregory.net/rapid"

	"github.com/drover-io/drover/core/memstore"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/core/store"
	"github.com/drover-io/drover/transports/replicarun"
	"github.com/drover-io/drover/transports/testenv"
)

func openStore(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	return s
}

func fill(v byte, blocks int) []byte { return bytes.Repeat([]byte{v}, blocks*proto.BlockSize) }

// fastDir returns a fresh directory on /dev/shm when there is one (the
// property test makes thousands of fsyncs), else under t.TempDir.
func fastDir(t *testing.T) string { return fastDirTB(t) }

func fastDirTB(t testing.TB) string {
	dir, err := os.MkdirTemp("/dev/shm", "filestore-test-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TestMatchesMemstore runs the same random IO sequences through memstore
// and filestore (closing and reopening the filestore now and then) and
// requires identical completions.
func TestMatchesMemstore(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		const blocks = 2000 // spans several index pages
		dir := fastDir(t)
		fs := openStore(t, dir)
		defer func() { fs.Close() }()
		ms := memstore.New()
		layerIDs := []store.LayerID{1, 2, 3}
		for step := rapid.IntRange(1, 60).Draw(rt, "steps"); step > 0; step-- {
			id := rapid.SampledFrom(layerIDs).Draw(rt, "layer")
			b := rapid.Uint64Range(0, blocks-1).Draw(rt, "block")
			n := rapid.Uint64Range(1, min(8, blocks-b)).Draw(rt, "count")
			var io store.IO
			switch op := rapid.IntRange(0, 11).Draw(rt, "op"); op {
			case 0:
				io = store.IO{Kind: store.CreateLayer, Layer: id}
			case 1:
				io = store.IO{Kind: store.RemoveLayer, Layer: id}
			case 2, 3:
				// Up to 64 blocks: uncached writes of 16 or more go
				// around the page cache.
				n = rapid.Uint64Range(1, min(64, blocks-b)).Draw(rt, "write count")
				io = store.IO{Kind: store.WriteData, Layer: id, BlockIndex: b, Data: fill(rapid.ByteRange(1, 255).Draw(rt, "v"), int(n)),
					Uncached: rapid.Bool().Draw(rt, "uncached write")}
			case 4:
				io = store.IO{Kind: store.PunchHole, Layer: id, BlockIndex: b, BlockCount: n}
			case 5, 6:
				es := make([]proto.BlockState, n)
				for i := range es {
					es[i] = proto.BlockState{BlockIndex: rapid.Uint64Range(0, blocks-1).Draw(rt, "eb"),
						Kind: proto.BlockKind(rapid.IntRange(0, 2).Draw(rt, "kind")), CRC: rapid.Uint32().Draw(rt, "crc")}
				}
				io = store.IO{Kind: store.WriteIndex, Layer: id, Entries: es, FlushedSeq: rapid.Uint64Range(0, 3).Draw(rt, "seq"),
					FUASeq: rapid.Uint64Range(0, 5).Draw(rt, "fua seq")}
			case 7:
				io = store.IO{Kind: rapid.SampledFrom([]store.Kind{store.SyncData, store.SyncIndex}).Draw(rt, "sync"), Layer: id}
			case 8:
				// Up to 64 blocks: uncached reads of 16 or more go around
				// the page cache.
				n = rapid.Uint64Range(1, min(64, blocks-b)).Draw(rt, "read count")
				io = store.IO{Kind: store.ReadData, Layer: id, BlockIndex: b, BlockCount: n, Uncached: rapid.Bool().Draw(rt, "uncached")}
			case 9:
				io = store.IO{Kind: store.ReadIndex, Layer: id, BlockIndex: rapid.Uint64Range(0, b).Draw(rt, "lo"), BlockCount: blocks}
			case 10:
				io = store.IO{Kind: store.WriteMeta, Meta: []byte{byte(b), byte(n)}}
			case 11:
				if err := fs.Close(); err != nil {
					rt.Fatalf("close: %v", err)
				}
				fs = openStore(t, dir)
				io = store.IO{Kind: store.ReadMeta}
			}
			io.ID = uint64(step)
			want, got := ms.Execute(io), fs.Execute(io)
			if got.Err != want.Err {
				rt.Fatalf("%v: err %v (%s), memstore %v (%s)", io.Kind, got.Err, got.Detail, want.Err, want.Detail)
			}
			got.Detail, want.Detail = "", ""
			if len(want.Entries) == 0 && len(got.Entries) == 0 {
				got.Entries, want.Entries = nil, nil
			}
			if !reflect.DeepEqual(got, want) {
				rt.Fatalf("%v: completion differs:\nfilestore %+v\nmemstore  %+v", io.Kind, summarize(got), summarize(want))
			}
		}
	})
}

func summarize(c store.Completion) store.Completion {
	if len(c.Data) > 16 {
		c.Data = c.Data[:16]
	}
	return c
}

func TestOpenErrors(t *testing.T) {
	if _, err := Open(filepath.Join(t.TempDir(), "nope")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing dir: %v", err)
	}
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o644)
	if _, err := Open(f); err == nil {
		t.Fatal("a plain file opened as a store")
	} else {
		t.Log(err)
	}
	s := openStore(t, t.TempDir())
	c := s.Execute(store.IO{Kind: store.ReadData, Layer: 4, BlockCount: 1})
	if c.Err != store.ErrMissing {
		t.Fatalf("missing layer: %v %s", c.Err, c.Detail)
	}
	t.Log(c.Detail)
}

// TestDamagedIndexIsClearError checks a replica whose index file was
// clobbered fails to load with an error naming the layer.
func TestDamagedIndexIsClearError(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	r, err := replicarun.Open(replica.Config{ID: "d", CreateSizeBytes: 1 << 20}, s)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	s.Close()
	if err := os.WriteFile(filepath.Join(dir, indexName(1)), []byte("garbage!garbage!"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = replicarun.Open(replica.Config{ID: "d"}, openStore(t, dir))
	var le *replicarun.LoadError
	if !errors.As(err, &le) {
		t.Fatalf("want a load error, got %v", err)
	}
	t.Log(err)
	os.Remove(filepath.Join(dir, indexName(1)))
	_, err = replicarun.Open(replica.Config{ID: "d"}, openStore(t, dir))
	if !errors.As(err, &le) {
		t.Fatalf("want a load error for a missing index, got %v", err)
	}
	t.Log(err)
}

// TestReadIndexSparse checks ReadIndex on a layer with a few entries far
// apart in a huge range returns exactly them.
func TestReadIndexSparse(t *testing.T) {
	s := openStore(t, t.TempDir())
	s.Execute(store.IO{Kind: store.CreateLayer, Layer: 1})
	at := []uint64{0, 511, 512, 1 << 20, 1<<28 - 1}
	var es []proto.BlockState
	for i, b := range at {
		es = append(es, proto.BlockState{BlockIndex: b, Kind: proto.BlockData, CRC: uint32(i + 1)})
	}
	if c := s.Execute(store.IO{Kind: store.WriteIndex, Layer: 1, Entries: es, FlushedSeq: 9}); c.Err != store.OK {
		t.Fatal(c.Detail)
	}
	c := s.Execute(store.IO{Kind: store.ReadIndex, Layer: 1, BlockCount: 1 << 28}) // 1 TiB of blocks
	if c.Err != store.OK || c.FlushedSeq != 9 || !reflect.DeepEqual(c.Entries, es) {
		t.Fatalf("read index: %v seq %d entries %v", c.Err, c.FlushedSeq, c.Entries)
	}
	c = s.Execute(store.IO{Kind: store.ReadIndex, Layer: 1, BlockIndex: 512, BlockCount: 1 << 20})
	if !reflect.DeepEqual(c.Entries, es[2:4]) {
		t.Fatalf("read index [512, +1M): %v", c.Entries)
	}
}

// TestCreateLayerEmptiesLeftover checks a reused layer id starts empty.
func TestCreateLayerEmptiesLeftover(t *testing.T) {
	s := openStore(t, t.TempDir())
	s.Execute(store.IO{Kind: store.CreateLayer, Layer: 3})
	s.Execute(store.IO{Kind: store.WriteData, Layer: 3, BlockIndex: 2, Data: fill(9, 1)})
	s.Execute(store.IO{Kind: store.WriteIndex, Layer: 3, Entries: []proto.BlockState{{BlockIndex: 2, Kind: proto.BlockData}}, FlushedSeq: 4})
	s.Close()
	s = openStore(t, s.Dir())
	s.Execute(store.IO{Kind: store.CreateLayer, Layer: 3})
	c := s.Execute(store.IO{Kind: store.ReadIndex, Layer: 3, BlockCount: 100})
	d := s.Execute(store.IO{Kind: store.ReadData, Layer: 3, BlockIndex: 2, BlockCount: 1})
	if len(c.Entries) != 0 || c.FlushedSeq != 0 || !bytes.Equal(d.Data, fill(0, 1)) {
		t.Fatalf("reused layer not empty: %v seq %d", c.Entries, c.FlushedSeq)
	}
}

// TestReplicaSurvivesReopen runs a replica on a filestore, writes and
// flushes, takes a snapshot, writes more without flushing, closes
// everything and reopens: the flushed data reads back intact.
func TestReplicaSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	r, err := replicarun.Open(replica.Config{ID: "f", CreateSizeBytes: 64 << 20}, s)
	if err != nil {
		t.Fatal(err)
	}
	id := uint64(0)
	do := func(r *replicarun.Runner, req proto.Request) proto.Reply {
		id++
		req.ID = id
		rep := r.Do(req)
		if rep.Status != proto.StatusOK {
			t.Fatalf("%v: %v %s", req.Op, rep.Status, rep.Err)
		}
		return rep
	}
	do(r, proto.Request{Epoch: 1, Op: proto.OpOpen})
	do(r, proto.Request{Epoch: 1, Op: proto.OpWrite, BlockIndex: 100, BlockCount: 2, Data: fill(1, 2), Seq: 1})
	do(r, proto.Request{Epoch: 1, Op: proto.OpWrite, BlockIndex: 5000, BlockCount: 1, Data: fill(2, 1), Seq: 2})
	do(r, proto.Request{Epoch: 1, Op: proto.OpFlush, Seq: 2})
	do(r, proto.Request{Epoch: 1, Op: proto.OpSnapshot, Name: "s1"})
	do(r, proto.Request{Epoch: 1, Op: proto.OpWrite, BlockIndex: 101, BlockCount: 1, Data: fill(3, 1), Seq: 3})
	do(r, proto.Request{Epoch: 1, Op: proto.OpTrim, BlockIndex: 5000, BlockCount: 1, Seq: 4})
	do(r, proto.Request{Epoch: 1, Op: proto.OpFlush, Seq: 4})
	r.Close()
	s.Close()

	s = openStore(t, dir)
	defer s.Close()
	r, err = replicarun.Open(replica.Config{ID: "f"}, s)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	info := r.Info()
	if info.FlushedSeq != 4 || !reflect.DeepEqual(info.Chain, []string{"s1"}) {
		t.Fatalf("info after reopen: %+v", info)
	}
	id = 0
	do(r, proto.Request{Epoch: 2, Op: proto.OpOpen})
	got := do(r, proto.Request{Epoch: 2, Op: proto.OpRead, BlockIndex: 100, BlockCount: 2}).Data
	if !bytes.Equal(got, append(fill(1, 1), fill(3, 1)...)) {
		t.Fatal("blocks 100-101 wrong after reopen")
	}
	if got := do(r, proto.Request{Epoch: 2, Op: proto.OpRead, BlockIndex: 5000, BlockCount: 1}).Data; !bytes.Equal(got, fill(0, 1)) {
		t.Fatal("trimmed block 5000 not zero after reopen")
	}
}

// TestNoSpace fills a 2 MiB tmpfs: the write that does not fit fails with
// ErrNoSpace and a clear detail, and everything written before reads back
// intact, through the store and through a replica.
func TestNoSpace(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", dir).CombinedOutput(); err != nil {
		testenv.Unavailable(t, "cannot mount a tmpfs to fill (needs root): %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	s := openStore(t, dir)
	defer s.Close()
	r, err := replicarun.Open(replica.Config{ID: "full", CreateSizeBytes: 16 << 20}, s)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	id := uint64(1)
	r.Do(proto.Request{ID: id, Epoch: 1, Op: proto.OpOpen})
	var written uint64
	var full proto.Reply
	for b := uint64(0); b < 16<<20/proto.BlockSize; b += 8 {
		id++
		rep := r.Do(proto.Request{ID: id, Epoch: 1, Op: proto.OpWrite, BlockIndex: b, BlockCount: 8, Data: fill(byte(b/8+1), 8), Seq: id})
		if rep.Status != proto.StatusOK {
			full = rep
			break
		}
		written = b + 8
	}
	if full.Status != proto.StatusNoSpace {
		t.Fatalf("writing past a 2 MiB disk: %v %s (after %d blocks)", full.Status, full.Err, written)
	}
	t.Logf("after %d blocks: %s", written, full.Err)
	id++
	if rep := r.Do(proto.Request{ID: id, Epoch: 1, Op: proto.OpFlush, Seq: id}); rep.Status != proto.StatusOK {
		t.Fatalf("flush on a full disk: %v %s", rep.Status, rep.Err)
	}
	for b := uint64(0); b < written; b += 8 {
		id++
		rep := r.Do(proto.Request{ID: id, Epoch: 1, Op: proto.OpRead, BlockIndex: b, BlockCount: 8})
		if rep.Status != proto.StatusOK || !bytes.Equal(rep.Data, fill(byte(b/8+1), 8)) {
			t.Fatalf("block %d after ENOSPC: %v %s", b, rep.Status, rep.Err)
		}
	}
	// Straight at the store: a write into a hole fails and leaves no trace.
	c := s.Execute(store.IO{Kind: store.WriteData, Layer: 1, BlockIndex: 3000, Data: fill(7, 64)})
	if c.Err != store.ErrNoSpace {
		t.Fatalf("store write on a full disk: %v %s", c.Err, c.Detail)
	}
	d := s.Execute(store.IO{Kind: store.ReadData, Layer: 1, BlockIndex: 3000, BlockCount: 64})
	if !bytes.Equal(d.Data, fill(0, 64)) {
		t.Fatal("a failed write left data behind")
	}
}

// TestUncachedReadsMatch: reads around the page cache (O_DIRECT) return
// what cached reads do — written blocks, holes, blocks past the end of the
// file, and writes not yet synced, cached or not — on the test's disk.
func TestUncachedReadsMatch(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	exec := func(io store.IO) store.Completion {
		t.Helper()
		c := s.Execute(io)
		if c.Err != store.OK {
			t.Fatalf("%v: %v %s", io.Kind, c.Err, c.Detail)
		}
		return c
	}
	exec(store.IO{Kind: store.CreateLayer, Layer: 1})
	exec(store.IO{Kind: store.WriteData, Layer: 1, BlockIndex: 0, Data: fill(1, 40)})
	exec(store.IO{Kind: store.SyncData, Layer: 1})
	exec(store.IO{Kind: store.WriteData, Layer: 1, BlockIndex: 8, Data: fill(2, 4)}) // not synced
	exec(store.IO{Kind: store.PunchHole, Layer: 1, BlockIndex: 20, BlockCount: 3})
	// Around the cache, over blocks the cache holds (read above them
	// first) and past the end of the file; then a cached overwrite of part
	// of it.
	exec(store.IO{Kind: store.ReadData, Layer: 1, BlockIndex: 32, BlockCount: 8})
	exec(store.IO{Kind: store.WriteData, Layer: 1, BlockIndex: 32, Data: fill(3, 32), Uncached: true})
	exec(store.IO{Kind: store.WriteData, Layer: 1, BlockIndex: 60, Data: fill(4, 2)})
	want := append(append(fill(3, 28), fill(4, 2)...), fill(3, 2)...)
	if got := exec(store.IO{Kind: store.ReadData, Layer: 1, BlockIndex: 32, BlockCount: 32}); !bytes.Equal(got.Data, want) {
		t.Fatal("a cached read after an uncached write does not return its data")
	}
	for _, r := range []struct{ at, n uint64 }{{0, 64}, {8, 16}, {30, 100}, {1, 16}} {
		read := store.IO{Kind: store.ReadData, Layer: 1, BlockIndex: r.at, BlockCount: r.n}
		want := exec(read)
		read.Uncached = true
		if got := exec(read); !reflect.DeepEqual(got, want) {
			t.Fatalf("uncached read of [%d,+%d) differs:\n got %+v\nwant %+v", r.at, r.n, summarize(got), summarize(want))
		}
	}
	l, err := s.layer(1)
	if err != nil {
		t.Fatal(err)
	}
	if l.direct == nil || l.noDirect {
		t.Logf("O_DIRECT not used on %s (%s): reads fell back to the page cache", s.Dir(), "this file system")
	}
}

// TestOpenMakesFilesPrivate: a store's files hold the volume's data, so
// Open takes group and world access away from files made before they
// were created 0600 (and leaves other files alone).
func TestOpenMakesFilesPrivate(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"meta", "layer-1.data", "layer-1.index", "notes.txt"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(dir, name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for name, want := range map[string]os.FileMode{"meta": 0o600, "layer-1.data": 0o600, "layer-1.index": 0o600, "notes.txt": 0o644} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s: mode %o, want %o", name, st.Mode().Perm(), want)
		}
	}
}
