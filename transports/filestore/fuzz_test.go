package filestore

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
)

// FuzzDamagedFiles patches a written and synced layer's index file and
// the intents file with the fuzzer's bytes (what a failing disk or a
// hostile operator leaves), then reopens the store: nothing panics, and
// whatever reads back without an error is what was written — damage
// never reads as another index or other intents.
//
// Input: repeated records of [file byte][offset u32][length u8][bytes];
// file 0 is the index, 1 the intents file, 2 truncates the index at
// offset.
func FuzzDamagedFiles(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 4, 1, 2, 3, 4})
	f.Add([]byte{0, 0, 0x20, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{1, 0, 0, 0, 0, 16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{2, 0, 0x30, 0, 0, 0})
	// Two entry pages of the first group: small files, so that each
	// input's copy is cheap.
	var blocks []proto.BlockState
	for _, e := range damageBlocks {
		if e.BlockIndex < 2*pageEntries {
			blocks = append(blocks, e)
		}
	}
	written := map[uint64]proto.BlockState{}
	for _, e := range blocks {
		written[e.BlockIndex] = e
	}
	intents := blocks[:40]
	// The files are written once; each input patches a fresh copy (a
	// layer's write and sync per input would run the fuzzer at 60 a
	// second).
	template := fastDirTB(f)
	s := openStore(f, template)
	execOK(f, s, store.IO{Kind: store.CreateLayer, Layer: 1})
	execOK(f, s, store.IO{Kind: store.WriteIndex, Layer: 1, Entries: blocks, FlushedSeq: 7})
	execOK(f, s, store.IO{Kind: store.SyncIndex, Layer: 1})
	execOK(f, s, store.IO{Kind: store.WriteIntents, Layer: 1, FlushedSeq: 7, Entries: intents})
	s.Close()
	f.Fuzz(func(t *testing.T, in []byte) {
		dir := fastDirTB(t)
		copyDir(t, template, dir)
		// At most eight patches an input: each opens a file, and the
		// fuzzer grows inputs to thousands of records, which made it run
		// a few dozen inputs a second.
		for patches := 0; len(in) >= 6 && patches < 8; patches++ {
			file, off, n := in[0], binary.LittleEndian.Uint32(in[1:5]), int(in[5])
			in = in[6:]
			n = min(n, len(in))
			patch := in[:n]
			in = in[n:]
			path := filepath.Join(dir, indexName(1))
			switch file % 3 {
			case 1:
				path = filepath.Join(dir, intentsName)
			case 2:
				if st, err := os.Stat(path); err == nil && int64(off) < st.Size() {
					os.Truncate(path, int64(off))
				}
				continue
			}
			st, err := os.Stat(path)
			if err != nil || st.Size() == 0 {
				continue
			}
			writeAt(t, path, patch, int64(off)%st.Size())
		}
		s, err := Open(dir)
		if err != nil {
			return // refused as a whole: fine
		}
		defer s.Close()
		c := s.Execute(store.IO{Kind: store.ReadIndex, Layer: 1, BlockCount: 4 * groupBlocks})
		if c.Err == store.OK {
			if c.FlushedSeq != 7 || len(c.Entries) != len(written) {
				t.Fatalf("damaged index read back as seq %d with %d entries, want 7 and %d", c.FlushedSeq, len(c.Entries), len(written))
			}
			for _, e := range c.Entries {
				if written[e.BlockIndex] != e {
					t.Fatalf("block %d read back as %+v, written %+v", e.BlockIndex, e, written[e.BlockIndex])
				}
			}
		}
		c = s.Execute(store.IO{Kind: store.ReadIntents, Layer: 1, FlushedSeq: 7})
		if c.Err == store.OK {
			for _, e := range c.Entries { // an intent holds a block's CRC only
				if w, ok := written[e.BlockIndex]; !ok || w.CRC != e.CRC {
					t.Fatalf("intent of block %d read back as CRC %d, recorded %+v", e.BlockIndex, e.CRC, w)
				}
			}
		}
	})
}

// copyDir copies the regular files of from into to.
func copyDir(t testing.TB, from, to string) {
	t.Helper()
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
