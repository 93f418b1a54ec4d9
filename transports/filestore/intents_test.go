package filestore

import (
	"os"
	"reflect"
	"testing"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
)

func intentIO(kind store.Kind, layer store.LayerID, tag uint64, entries ...proto.BlockState) store.IO {
	return store.IO{Kind: kind, Layer: layer, FlushedSeq: tag, Entries: entries}
}

// TestIntents: records come back for their (layer, tag) only, across a
// reopen; a new tag starts over; a damaged record is skipped, never read
// as another checksum.
func TestIntents(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	a := proto.BlockState{BlockIndex: 7, Kind: proto.BlockData, CRC: 0xdeadbeef}
	b := proto.BlockState{BlockIndex: 9, Kind: proto.BlockData, CRC: 0x12345678}
	c := proto.BlockState{BlockIndex: 7, Kind: proto.BlockData, CRC: 0x0badf00d}
	for _, io := range []store.IO{intentIO(store.WriteIntents, 3, 10, a), intentIO(store.WriteIntents, 3, 10, b, c)} {
		if comp := s.Execute(io); comp.Err != store.OK {
			t.Fatalf("write intents: %v %s", comp.Err, comp.Detail)
		}
	}
	read := func(s *Store, layer store.LayerID, tag uint64) []proto.BlockState {
		t.Helper()
		comp := s.Execute(intentIO(store.ReadIntents, layer, tag))
		if comp.Err != store.OK {
			t.Fatalf("read intents: %v %s", comp.Err, comp.Detail)
		}
		return comp.Entries
	}
	if got := read(s, 3, 10); !reflect.DeepEqual(got, []proto.BlockState{a, b, c}) {
		t.Fatalf("layer 3 tag 10: %v", got)
	}
	if got := read(s, 3, 11); len(got) != 0 {
		t.Fatalf("another tag read %v", got)
	}
	if got := read(s, 4, 10); len(got) != 0 {
		t.Fatalf("another layer read %v", got)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Damage the second record: it is skipped, the others stay.
	f, err := os.OpenFile(dir+"/"+intentsName, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0xff}, intentRecordBytes+24); err != nil {
		t.Fatal(err)
	}
	f.Close()
	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := read(s, 3, 10); !reflect.DeepEqual(got, []proto.BlockState{a, c}) {
		t.Fatalf("after damage to one record: %v", got)
	}
	// A new tag starts over: the old records are no longer read for it.
	if comp := s.Execute(intentIO(store.WriteIntents, 3, 12, b)); comp.Err != store.OK {
		t.Fatal(comp.Detail)
	}
	if got := read(s, 3, 12); !reflect.DeepEqual(got, []proto.BlockState{b}) {
		t.Fatalf("tag 12: %v", got)
	}
	if got := read(s, 3, 10); !reflect.DeepEqual(got, []proto.BlockState{c}) {
		t.Fatalf("tag 10 after tag 12 overwrote its first records: %v", got)
	}
}
