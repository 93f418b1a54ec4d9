package engine_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
)

// TestEngineSnapshotNamesAndList checks the errors users meet (duplicate
// and reserved names, unknown snapshots, the head, revert while attached,
// bad labels) and that the list carries the driver's attributes and each
// layer's sizes.
func TestEngineSnapshotNamesAndList(t *testing.T) {
	c := newCluster(t, 3, 64*proto.BlockSize, engine.Config{Volume: "v"})
	for b := uint64(0); b < 5; b++ {
		c.write(b, 10+b)
	}
	attrs := &proto.SnapshotAttrs{CreatedUnixNano: 1_700_000_000_000_000_000, Labels: []proto.Label{{Key: "app", Value: "db"}}}
	if r := c.adminDo(engine.AdminRequest{Op: engine.AdminSnapshot, Name: "s1", Attrs: attrs}); r.Err != nil {
		t.Fatal(r.Err)
	}
	c.write(0, 20)
	if r := c.submit(engine.Request{Op: proto.OpTrim, BlockIndex: 9, BlockCount: 2}); r.Err != nil {
		t.Fatal(r.Err)
	}
	bad := []struct {
		req  engine.AdminRequest
		want error
	}{
		{engine.AdminRequest{Op: engine.AdminSnapshot, Name: "s1"}, engine.ErrExists},
		{engine.AdminRequest{Op: engine.AdminSnapshot, Name: "head"}, engine.ErrInvalid},
		{engine.AdminRequest{Op: engine.AdminSnapshot, Name: ""}, engine.ErrInvalid},
		{engine.AdminRequest{Op: engine.AdminSnapshot, Name: "rebuild-1"}, engine.ErrInvalid},
		{engine.AdminRequest{Op: engine.AdminSnapshot, Name: "s2", Attrs: &proto.SnapshotAttrs{
			Labels: []proto.Label{{Key: "b"}, {Key: "a"}}}}, engine.ErrInvalid},
		{engine.AdminRequest{Op: engine.AdminDeleteSnapshot, Name: "head"}, engine.ErrInvalid},
		{engine.AdminRequest{Op: engine.AdminDeleteSnapshot, Name: ""}, engine.ErrInvalid},
		{engine.AdminRequest{Op: engine.AdminDeleteSnapshot, Name: "nope"}, engine.ErrNotFound},
		{engine.AdminRequest{Op: engine.AdminRevert, Name: "nope"}, engine.ErrNotFound},
		{engine.AdminRequest{Op: engine.AdminRevert, Name: "volume-head"}, engine.ErrInvalid},
		{engine.AdminRequest{Op: engine.AdminRevert, Name: "s1"}, engine.ErrBusy}, // attached
	}
	for _, b := range bad {
		if r := c.adminDo(b.req); !errors.Is(r.Err, b.want) {
			t.Errorf("%v %q: got %v, want %v", b.req.Op, b.req.Name, r.Err, b.want)
		}
	}
	r := c.adminDo(engine.AdminRequest{Op: engine.AdminListSnapshots})
	if r.Err != nil || len(r.Snapshots) != 2 {
		t.Fatalf("list: %v %+v", r.Err, r.Snapshots)
	}
	s1, head := r.Snapshots[0], r.Snapshots[1]
	if s1.Name != "s1" || s1.Attrs.CreatedUnixNano != attrs.CreatedUnixNano || len(s1.Attrs.Labels) != 1 ||
		s1.Attrs.Labels[0] != attrs.Labels[0] || s1.DataBlocks != 5 || s1.ZeroBlocks != 0 || s1.ShadowedBlocks != 1 {
		t.Fatalf("s1 listed as %+v", s1)
	}
	if head.Name != "" || head.DataBlocks != 1 || head.ZeroBlocks != 2 {
		t.Fatalf("head listed as %+v", head)
	}
}

// TestEngineDeleteOnlineInWindows deletes a snapshot spanning several
// merge windows while writes keep landing in every window: the delete
// does not hold frontend IO, and afterwards every block reads its last
// write or the snapshot's content, on every replica.
func TestEngineDeleteOnlineInWindows(t *testing.T) {
	const windows = 3
	size := uint64(windows*(1<<14)+200) * proto.BlockSize
	c := newCluster(t, 3, size, engine.Config{Volume: "v"})
	want := map[uint64]uint64{}
	blocks := []uint64{0, 1, 1 << 14, 1<<14 + 7, 2 << 14, 3<<14 + 99}
	for i, b := range blocks {
		c.write(b, uint64(100+i))
		want[b] = uint64(100 + i)
	}
	if r := c.adminDo(engine.AdminRequest{Op: engine.AdminSnapshot, Name: "s"}); r.Err != nil {
		t.Fatal(r.Err)
	}
	del := c.SubmitAdmin(engine.AdminRequest{Op: engine.AdminDeleteSnapshot, Name: "s"})
	h := c.Host()
	writesDuring := 0
	for i := 0; ; i++ {
		if _, done := h.AdminReplies[del]; done {
			break
		}
		if i > 10000 {
			t.Fatal("delete never finished")
		}
		b := blocks[i%len(blocks)] + uint64(i%3)
		c.write(b, uint64(1000+i)) // runs the cluster until the write is acknowledged
		want[b] = uint64(1000 + i)
		writesDuring++
	}
	if r := h.AdminReplies[del]; r.Err != nil {
		t.Fatal(r.Err)
	}
	if writesDuring < windows {
		t.Fatalf("only %d writes were acknowledged during the delete: it held IO", writesDuring)
	}
	if chain := c.Engine().Info().Chain; len(chain) != 0 {
		t.Fatalf("chain after delete: %q", chain)
	}
	for b, v := range want {
		c.expect(b, v)
	}
	for id := range c.Nodes {
		l := c.Direct(id, proto.Request{Op: proto.OpListSnapshots})
		if len(l.Snapshots) != 1 || l.Snapshots[0].DataBlocks != uint64(len(want)) {
			t.Fatalf("replica %s after delete: %+v", id, l.Snapshots)
		}
	}
	t.Logf("%d writes acknowledged while the delete ran", writesDuring)
}

// TestEngineRestoresSnapshotAttrs: a replica whose snapshot layer lost its
// attributes (as a rebuild leaves it) gets them back from the others when
// the snapshots are listed.
func TestEngineRestoresSnapshotAttrs(t *testing.T) {
	c := newCluster(t, 3, 64*proto.BlockSize, engine.Config{Volume: "v"})
	attrs := &proto.SnapshotAttrs{CreatedUnixNano: 42, Labels: []proto.Label{{Key: "k", Value: "v"}}}
	if r := c.adminDo(engine.AdminRequest{Op: engine.AdminSnapshot, Name: "s", Attrs: attrs}); r.Err != nil {
		t.Fatal(r.Err)
	}
	if rep := c.Direct("r2", proto.Request{Op: proto.OpSetSnapshotAttrs, Name: "s", Attrs: &proto.SnapshotAttrs{}}); rep.Status != proto.StatusOK {
		t.Fatalf("clear r2's attributes: %v %s", rep.Status, rep.Err)
	}
	if got := c.Direct("r2", proto.Request{Op: proto.OpListSnapshots}).Snapshots[0].Attrs; got.CreatedUnixNano != 0 {
		t.Fatalf("r2 still has %+v", got)
	}
	r := c.adminDo(engine.AdminRequest{Op: engine.AdminListSnapshots})
	if r.Err != nil || r.Snapshots[0].Attrs.CreatedUnixNano != 42 {
		t.Fatalf("list: %v %+v", r.Err, r.Snapshots)
	}
	c.settle()
	for _, id := range []proto.ReplicaID{"r1", "r2", "r3"} {
		got := c.Direct(id, proto.Request{Op: proto.OpListSnapshots}).Snapshots[0].Attrs
		if got.CreatedUnixNano != 42 || len(got.Labels) != 1 || got.Labels[0] != attrs.Labels[0] {
			t.Fatalf("%s holds %+v after the listing", id, got)
		}
	}
	if rep := c.Direct("r1", proto.Request{Op: proto.OpSetSnapshotAttrs, Name: "nope", Attrs: attrs}); rep.Status != proto.StatusNotFound {
		t.Fatalf("attributes of a missing snapshot: %v", rep.Status)
	}
}

// TestEngineDeleteRepairsRottedSnapshot rots a block of the snapshot
// being deleted on two of three replicas (a different block on each):
// the merge finds them, repairs each from a replica whose copy matches
// the rotted replica's own checksum, and every replica stays RW (sim
// swarm seed 3413: both went ERR, and the third replica's own rot then
// had no other copy a rebuild could use).
func TestEngineDeleteRepairsRottedSnapshot(t *testing.T) {
	c := newCluster(t, 3, 64*proto.BlockSize, engine.Config{Volume: "v", RebuildAfterTicks: -1})
	c.write(5, 5)
	c.write(6, 6)
	if r := c.adminDo(engine.AdminRequest{Op: engine.AdminSnapshot, Name: "s1"}); r.Err != nil {
		t.Fatal(r.Err)
	}
	c.write(7, 7)
	if r := c.adminDo(engine.AdminRequest{Op: engine.AdminSnapshot, Name: "s2"}); r.Err != nil {
		t.Fatal(r.Err)
	}
	// Blocks 5 and 6 live only in s1's layer: the merge into s2 reads them.
	if !c.CorruptBlock("r1", 5, 77) || !c.CorruptBlock("r2", 6, 1234) {
		t.Fatal("no block to rot")
	}
	if r := c.adminDo(engine.AdminRequest{Op: engine.AdminDeleteSnapshot, Name: "s1"}); r.Err != nil {
		t.Fatalf("delete s1: %v", r.Err)
	}
	c.settle()
	for _, r := range c.adminDo(engine.AdminRequest{Op: engine.AdminInfo}).Info.Replicas {
		if r.Mode != engine.ModeRW {
			t.Fatalf("%s is %v (%s) after the delete, want RW", r.ID, r.Mode, r.Why)
		}
	}
	for _, id := range []proto.ReplicaID{"r1", "r2", "r3"} {
		for _, b := range []uint64{5, 6, 7} {
			rep := c.Direct(id, proto.Request{Op: proto.OpSnapRead, Name: "s2", BlockIndex: b, BlockCount: 1})
			if rep.Status != proto.StatusOK || !bytes.Equal(rep.Data, block(b)) {
				t.Fatalf("%s block %d of s2: %v %s", id, b, rep.Status, rep.Err)
			}
		}
	}
}
