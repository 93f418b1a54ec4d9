package engine_test

import (
	"errors"
	"testing"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
)

// TestEngineShrink: a shrink is refused while attached and when data lies
// beyond the new end (in the head or in a snapshot), allowed otherwise; the
// data below the end stays, every replica takes the new size, and a later
// expansion reads zeros where blocks were dropped.
func TestEngineShrink(t *testing.T) {
	c := newCluster(t, 3, 64*proto.BlockSize, engine.Config{Volume: "v"})
	c.write(10, 1)
	c.write(40, 2)
	if r := c.adminDo(engine.AdminRequest{Op: engine.AdminSnapshot, Name: "s"}); r.Err != nil {
		t.Fatal(r.Err)
	}
	if r := c.submit(engine.Request{Op: proto.OpTrim, BlockIndex: 40, BlockCount: 1}); r.Err != nil {
		t.Fatal(r.Err)
	}
	shrink := func(blocks uint64) error {
		return c.adminDo(engine.AdminRequest{Op: engine.AdminShrink, SizeBytes: blocks * proto.BlockSize}).Err
	}
	if err := shrink(32); !errors.Is(err, engine.ErrBusy) {
		t.Fatalf("shrink while attached: %v", err)
	}
	if err := c.adminDo(engine.AdminRequest{Op: engine.AdminExpand, SizeBytes: 32 * proto.BlockSize}).Err; !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("expand to a smaller size: %v", err)
	}
	c.Engine().SetAttached(false)
	if err := shrink(32); !errors.Is(err, engine.ErrInvalid) { // snapshot s holds block 40
		t.Fatalf("shrink over a snapshot's data: %v", err)
	}
	if err := shrink(65); !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("shrink to a larger size: %v", err)
	}
	if r := c.adminDo(engine.AdminRequest{Op: engine.AdminDeleteSnapshot, Name: "s"}); r.Err != nil {
		t.Fatal(r.Err)
	}
	if err := shrink(10); !errors.Is(err, engine.ErrInvalid) { // the head holds block 10
		t.Fatalf("shrink over the head's data: %v", err)
	}
	if err := shrink(11); err != nil { // block 40 is only a trim now
		t.Fatal(err)
	}
	c.Engine().SetAttached(true)
	if got := c.Engine().SizeBytes(); got != 11*proto.BlockSize {
		t.Fatalf("size after shrink: %d", got)
	}
	for id := range c.Nodes {
		if got := c.Nodes[id].Replica.SizeBytes(); got != 11*proto.BlockSize {
			t.Fatalf("replica %s holds %d bytes", id, got)
		}
	}
	c.expect(10, 1)
	if r := c.submit(engine.Request{Op: proto.OpRead, BlockIndex: 11, BlockCount: 1}); !errors.Is(r.Err, engine.ErrInvalid) {
		t.Fatalf("read beyond the new end: %v", r.Err)
	}
	if err := c.adminDo(engine.AdminRequest{Op: engine.AdminExpand, SizeBytes: 64 * proto.BlockSize}).Err; err != nil {
		t.Fatal(err)
	}
	c.expect(40, 0)
	c.expect(10, 1)
}
