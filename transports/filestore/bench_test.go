package filestore

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
	"github.com/drover-io/drover/transports/bufpool"
)

// benchLayer returns a store on tmpfs (when there is one) holding layer 1
// with blocks [0, blocks) written, indexed and synced; with format1, in
// index format version 1 (as an existing data dir holds it).
func benchLayer(b *testing.B, blocks uint64, format1 bool) *Store {
	dir := benchDir(b)
	s := openStore(b, dir)
	b.Cleanup(func() { s.Close() })
	must := func(io store.IO) {
		if c := s.Execute(io); c.Err != store.OK {
			b.Fatalf("%v: %s", io.Kind, c.Detail)
		}
	}
	if format1 {
		var h [16]byte
		copy(h[:], indexMagic)
		binary.LittleEndian.PutUint32(h[4:], indexVersion1)
		if err := os.WriteFile(filepath.Join(dir, indexName(1)), h[:], 0o644); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, dataName(1)), nil, 0o644); err != nil {
			b.Fatal(err)
		}
	} else {
		must(store.IO{Kind: store.CreateLayer, Layer: 1})
	}
	es := make([]proto.BlockState, blocks)
	for i := range es {
		es[i] = proto.BlockState{BlockIndex: uint64(i), Kind: proto.BlockData, CRC: uint32(i) + 1}
	}
	must(store.IO{Kind: store.WriteData, Layer: 1, Data: fill(1, int(blocks))})
	must(store.IO{Kind: store.SyncData, Layer: 1})
	must(store.IO{Kind: store.WriteIndex, Layer: 1, Entries: es, FlushedSeq: 1})
	must(store.IO{Kind: store.SyncIndex, Layer: 1})
	return s
}

// BenchmarkStore measures the store's 4 KiB paths on tmpfs (the software's
// cost, not the disk's): a FUA write as the replica issues it (WriteData,
// SyncData, WriteIndex of its one entry, SyncIndex), the index write
// alone, and cached reads of 1 and 64 blocks with their entries; the
// parallel cases run the FUA write from every CPU at once.
func BenchmarkStore(b *testing.B) { benchStore(b, false) }

// BenchmarkStoreFormat1 is BenchmarkStore on a layer in index format
// version 1: the same build's cost without the slot checks.
func BenchmarkStoreFormat1(b *testing.B) { benchStore(b, true) }

func benchStore(b *testing.B, format1 bool) {
	const blocks = 4096
	p := fill(7, 1)
	fua := func(b *testing.B, s *Store, i int) {
		if err := fuaAt(s, uint64(i*7919)%blocks, uint32(i), p); err != nil {
			b.Error(err) // from RunParallel's goroutines too: no FailNow there
		}
	}
	b.Run("fua-write-4KiB", func(b *testing.B) {
		s := benchLayer(b, blocks, format1)
		b.SetBytes(proto.BlockSize)
		cpu := startCPU(b)
		defer cpu.report(b)
		for i := 0; i < b.N; i++ {
			fua(b, s, i)
		}
	})
	b.Run("fua-write-4KiB-parallel", func(b *testing.B) {
		s := benchLayer(b, blocks, format1)
		b.SetBytes(proto.BlockSize)
		cpu := startCPU(b)
		defer cpu.report(b)
		b.RunParallel(func(pb *testing.PB) {
			for i := 0; pb.Next(); i++ {
				fua(b, s, i)
			}
		})
	})
	b.Run("write-index-1", func(b *testing.B) {
		s := benchLayer(b, blocks, format1)
		es := []proto.BlockState{{Kind: proto.BlockData}}
		b.ReportAllocs()
		cpu := startCPU(b)
		defer cpu.report(b)
		for i := 0; i < b.N; i++ {
			es[0].BlockIndex, es[0].CRC = uint64(i*7919)%blocks, uint32(i)
			if c := s.Execute(store.IO{Kind: store.WriteIndex, Layer: 1, Entries: es}); c.Err != store.OK {
				b.Fatal(c.Detail)
			}
		}
	})
	for _, n := range []uint64{1, 64} {
		b.Run(fmt.Sprintf("read-%dKiB", n*4), func(b *testing.B) {
			s := benchLayer(b, blocks, format1)
			entries := make([]proto.BlockState, n)
			b.SetBytes(int64(n * proto.BlockSize))
			b.ReportAllocs()
			cpu := startCPU(b)
			defer cpu.report(b)
			for i := 0; i < b.N; i++ {
				blk := uint64(i*7919) % (blocks - n)
				c := s.Execute(store.IO{Kind: store.ReadData, Layer: 1, BlockIndex: blk, BlockCount: n, Entries: entries})
				if c.Err != store.OK || c.Entries[0].CRC != uint32(blk)+1 {
					b.Fatalf("read %d: %v %s", blk, c.Err, c.Detail)
				}
				bufpool.Put(c.Data)
			}
		})
	}
	b.Run("read-index-16MiB", func(b *testing.B) {
		s := benchLayer(b, blocks, format1)
		b.SetBytes(blocks * proto.BlockSize)
		cpu := startCPU(b)
		defer cpu.report(b)
		for i := 0; i < b.N; i++ {
			c := s.Execute(store.IO{Kind: store.ReadIndex, Layer: 1, BlockCount: 1 << 20})
			if c.Err != store.OK || len(c.Entries) != blocks {
				b.Fatalf("read index: %v %s (%d entries)", c.Err, c.Detail, len(c.Entries))
			}
		}
	})
}

// cpuTimer reports the process's CPU time (user and system) per op as
// cpu-ns/op beside the wall time: on a machine shared with other work the
// wall time swings with the load, the CPU an IO costs much less.
type cpuTimer struct{ start int64 }

func cpuNow() int64 {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func startCPU(b *testing.B) cpuTimer {
	b.ResetTimer()
	return cpuTimer{start: cpuNow()}
}

func (c cpuTimer) report(b *testing.B) {
	b.ReportMetric(float64(cpuNow()-c.start)/float64(b.N), "cpu-ns/op")
}

// fuaAt does a FUA write of p at blk as the replica issues it (its index
// write carries the write's sequence, crc+1).
func fuaAt(s *Store, blk uint64, crc uint32, p []byte) error {
	for _, io := range []store.IO{
		{Kind: store.WriteData, Layer: 1, BlockIndex: blk, Data: p},
		{Kind: store.SyncData, Layer: 1},
		{Kind: store.WriteIndex, Layer: 1, Entries: []proto.BlockState{{BlockIndex: blk, Kind: proto.BlockData, CRC: crc}}, FUASeq: uint64(crc) + 1},
		{Kind: store.SyncIndex, Layer: 1},
	} {
		if c := s.Execute(io); c.Err != store.OK {
			return fmt.Errorf("%v: %s", io.Kind, c.Detail)
		}
	}
	return nil
}

// BenchmarkFUANewPage measures a FUA write into a 2 MiB region of the
// layer not written before (a new index page each time; version 2 then
// initializes the page and records it with a second fdatasync), on tmpfs
// and on the test's disk (TMPDIR).
func BenchmarkFUANewPage(b *testing.B) {
	p := fill(7, 1)
	for _, where := range []string{"tmpfs", "disk"} {
		b.Run(where, func(b *testing.B) {
			dir := b.TempDir()
			if where == "tmpfs" {
				dir = benchDir(b)
			}
			s := openStore(b, dir)
			defer s.Close()
			if c := s.Execute(store.IO{Kind: store.CreateLayer, Layer: 1}); c.Err != store.OK {
				b.Fatal(c.Detail)
			}
			b.SetBytes(proto.BlockSize)
			cpu := startCPU(b)
			defer cpu.report(b)
			for i := 0; i < b.N; i++ {
				if err := fuaAt(s, uint64(i)*pageEntries, uint32(i), p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchDir is a fresh directory on tmpfs when there is one.
func benchDir(b *testing.B) string {
	b.Helper()
	return fastDirTB(b)
}

// BenchmarkSlotCheck measures checking one index slot (format version 2),
// against a 4 KiB CRC32C (what a per-page checksum would cost a 4 KiB
// read) measured beside it.
func BenchmarkSlotCheck(b *testing.B) {
	c := newSlotCodec(12345, 1)
	var slot [entryBytes]byte
	c.putEntry(slot[:], proto.BlockState{BlockIndex: 77, Kind: proto.BlockData, CRC: 99})
	b.Run("slot", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, s := c.entry(slot[:], 77); s != slotOK {
				b.Fatal("slot fails")
			}
		}
	})
	b.Run("page-crc32c-4KiB", func(b *testing.B) {
		page := fill(3, 1)
		for i := 0; i < b.N; i++ {
			if crc32.Checksum(page, castagnoli) == 0 {
				b.Fatal("zero")
			}
		}
	})
}
