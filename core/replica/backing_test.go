package replica_test

import (
	"bytes"
	"slices"
	"testing"

	"github.com/drover-io/drover/core/drive"
	"github.com/drover-io/drover/core/memstore"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/core/store"
)

// backingStore returns a store holding a backing image as layer
// replica.BackingLayerID: blockCount blocks, block b filled with byte b+1
// where b%3 != 2 (those stay holes), durable.
func backingStore(t *testing.T, blockCount uint64) (*memstore.Store, func(b uint64) []byte) {
	t.Helper()
	content := func(b uint64) []byte {
		if b%3 == 2 {
			return make([]byte, proto.BlockSize)
		}
		return bytes.Repeat([]byte{byte(b + 1)}, proto.BlockSize)
	}
	st := memstore.New()
	id := replica.BackingLayerID
	do := func(io store.IO) {
		if c := st.Execute(io); c.Err != store.OK {
			t.Fatalf("%v: %v %s", io.Kind, c.Err, c.Detail)
		}
	}
	do(store.IO{Kind: store.CreateLayer, Layer: id})
	var entries []proto.BlockState
	for b := uint64(0); b < blockCount; b++ {
		if b%3 == 2 {
			continue
		}
		do(store.IO{Kind: store.WriteData, Layer: id, BlockIndex: b, Data: content(b)})
		entries = append(entries, proto.BlockState{BlockIndex: b, Kind: proto.BlockData, CRC: replica.CRC(content(b))})
	}
	do(store.IO{Kind: store.SyncData, Layer: id})
	do(store.IO{Kind: store.WriteIndex, Layer: id, Entries: entries})
	do(store.IO{Kind: store.SyncIndex, Layer: id})
	return st, content
}

// TestBackingImage: a replica created on a backing image reads the
// image's data through its head, writes over it in the head only, refuses
// layer writes into the shared image, lists it at the bottom of its chain,
// survives a crash, and can merge the image into the volume (deleting the
// backing layer), after which it no longer needs it.
func TestBackingImage(t *testing.T) {
	const blocks = 64
	st, content := backingStore(t, blocks)
	d := drive.New(replica.Config{ID: "r1", CreateSizeBytes: 2 * blocks * proto.BlockSize,
		Backing: &replica.Backing{Image: "base"}}, st, func(int) int { return 0 })
	epoch := uint64(1)
	id := uint64(0)
	do := func(r proto.Request) proto.Reply {
		id++
		r.ID, r.Epoch = id, epoch
		return d.Do(r)
	}
	if rep := do(proto.Request{Op: proto.OpOpen}); rep.Status != proto.StatusOK {
		t.Fatalf("open: %v %s", rep.Status, rep.Err)
	}
	want := make([]byte, 2*blocks*proto.BlockSize)
	for b := uint64(0); b < blocks; b++ {
		copy(want[b*proto.BlockSize:], content(b))
	}
	readAll := func(what string) {
		t.Helper()
		rep := do(proto.Request{Op: proto.OpRead, BlockIndex: 0, BlockCount: 2 * blocks})
		if rep.Status != proto.StatusOK || !bytes.Equal(rep.Data, want) {
			t.Fatalf("%s: read %v %s, equal %v", what, rep.Status, rep.Err, bytes.Equal(rep.Data, want))
		}
	}
	readAll("fresh volume on the image")
	over := bytes.Repeat([]byte{0xee}, 2*proto.BlockSize)
	if rep := do(proto.Request{Op: proto.OpWrite, BlockIndex: 10, BlockCount: 2, Data: over}); rep.Status != proto.StatusOK {
		t.Fatal(rep.Err)
	}
	copy(want[10*proto.BlockSize:], over)
	readAll("after writing over the image")
	if got := st.Block(replica.BackingLayerID, 10); !bytes.Equal(got, content(10)) {
		t.Fatal("a write reached the backing image")
	}
	rep := do(proto.Request{Op: proto.OpLayerWrite, Name: "backing:base", BlockIndex: 0, BlockCount: 1,
		Data: over[:proto.BlockSize], Blocks: []proto.BlockState{{BlockIndex: 0, Kind: proto.BlockData, CRC: replica.CRC(over[:proto.BlockSize])}}})
	if rep.Status != proto.StatusInvalid {
		t.Fatalf("layer write into the shared image: %v %s", rep.Status, rep.Err)
	}
	if rep := do(proto.Request{Op: proto.OpShrink, SizeBytes: (blocks - 10) * proto.BlockSize}); rep.Status != proto.StatusInvalid {
		t.Fatalf("shrink into the image: %v %s", rep.Status, rep.Err)
	}
	l := do(proto.Request{Op: proto.OpListSnapshots}).Snapshots
	if len(l) != 2 || l[0].Name != "backing:base" || l[0].DataBlocks != 43 || l[0].ShadowedBlocks != 1 {
		t.Fatalf("list: %+v", l)
	}
	if rep := do(proto.Request{Op: proto.OpFlush}); rep.Status != proto.StatusOK {
		t.Fatal(rep.Err)
	}
	d.Crash(func(store.LayerID, uint64, bool) bool { return false })
	epoch++
	if rep := do(proto.Request{Op: proto.OpOpen}); rep.Status != proto.StatusOK {
		t.Fatalf("open after crash: %v %s", rep.Status, rep.Err)
	}
	readAll("after a crash")
	if rep := do(proto.Request{Op: proto.OpDeleteSnapshot, Name: "backing:base"}); rep.Status != proto.StatusOK {
		t.Fatalf("merge the image into the volume: %v %s", rep.Status, rep.Err)
	}
	if chain := d.Replica.Info().Chain; !slices.Equal(chain, []string(nil)) {
		t.Fatalf("chain after merging the image: %q", chain)
	}
	readAll("after merging the image into the volume")
}

// TestBackingSHA256: a replica created on an image with its checksum
// reports it in Info (also after a restart), says whether it was opened in
// this incarnation, and reports none once the image is merged away.
func TestBackingSHA256(t *testing.T) {
	const blocks = 16
	st, _ := backingStore(t, blocks)
	d := drive.New(replica.Config{ID: "r1", CreateSizeBytes: blocks * proto.BlockSize,
		Backing: &replica.Backing{Image: "base", SHA256: "5ha"}}, st, func(int) int { return 0 })
	id := uint64(0)
	do := func(r proto.Request) proto.Reply {
		id++
		r.ID, r.Epoch = id, 1
		return d.Do(r)
	}
	info := func(what string, wantSHA string, wantOpened bool) {
		t.Helper()
		rep := do(proto.Request{Op: proto.OpInfo})
		if rep.Info == nil || rep.Info.BackingSHA256 != wantSHA || rep.Info.Opened != wantOpened {
			t.Fatalf("%s: info %+v, want sha %q opened %v", what, rep.Info, wantSHA, wantOpened)
		}
	}
	info("before open", "5ha", false)
	if rep := do(proto.Request{Op: proto.OpOpen}); rep.Status != proto.StatusOK {
		t.Fatalf("open: %v %s", rep.Status, rep.Err)
	}
	info("opened", "5ha", true)
	d.Crash(func(store.LayerID, uint64, bool) bool { return false })
	info("restarted", "5ha", false)
	if rep := do(proto.Request{Op: proto.OpOpen}); rep.Status != proto.StatusOK {
		t.Fatalf("reopen: %v %s", rep.Status, rep.Err)
	}
	if rep := do(proto.Request{Op: proto.OpDeleteSnapshot, Name: "backing:base"}); rep.Status != proto.StatusOK {
		t.Fatalf("delete the backing layer: %v %s", rep.Status, rep.Err)
	}
	info("image merged away", "", true)
}
