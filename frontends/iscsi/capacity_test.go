package iscsi_test

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/frontends/iscsi"
	"github.com/drover-io/drover/transports/enginerun"
)

// TestCapacityChangedUnitAttention expands a real (three-replica,
// in-process) Drover volume under a logical unit: each I_T nexus that saw
// the old size gets CHECK CONDITION with UNIT ATTENTION / CAPACITY DATA HAS
// CHANGED (06/2A/09) once, on its next command; READ CAPACITY(16) then
// reports the new size; a nexus that first speaks after the change sees
// no unit attention.
func TestCapacityChangedUnitAttention(t *testing.T) {
	vol := droverVolume(t, 3, 8<<20).(*enginerun.Volume)
	lu, err := iscsi.NewLogicalUnit(vol, "capacity")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tur := []byte{0, 0, 0, 0, 0, 0}
	rc16 := []byte{0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}
	capacity := func(nexus string) uint64 {
		t.Helper()
		r := lu.Execute(ctx, nexus, rc16, nil, 32)
		if r.Status != 0 || len(r.DataIn) < 12 {
			t.Fatalf("READ CAPACITY(16) from %s: status %#x sense %x", nexus, r.Status, r.Sense)
		}
		return (binary.BigEndian.Uint64(r.DataIn) + 1) * uint64(binary.BigEndian.Uint32(r.DataIn[8:]))
	}
	for _, n := range []string{"a", "b"} {
		if got := capacity(n); got != 8<<20 {
			t.Fatalf("%s: capacity %d before the expansion", n, got)
		}
	}
	if _, err := vol.Driver().Admin(ctx, engine.AdminRequest{Op: engine.AdminExpand, SizeBytes: 12 << 20}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b"} {
		r := lu.Execute(ctx, n, tur, nil, 0)
		if r.Status != 0x02 || len(r.Sense) < 14 || r.Sense[2]&0x0f != 0x06 || r.Sense[12] != 0x2a || r.Sense[13] != 0x09 {
			t.Fatalf("%s: first command after the expansion: status %#x sense %x, want CHECK CONDITION 06/2A/09", n, r.Status, r.Sense)
		}
		if r := lu.Execute(ctx, n, tur, nil, 0); r.Status != 0 {
			t.Fatalf("%s: the unit attention was reported twice: %x", n, r.Sense)
		}
		if got := capacity(n); got != 12<<20 {
			t.Fatalf("%s: capacity %d after the expansion", n, got)
		}
	}
	if r := lu.Execute(ctx, "c", tur, nil, 0); r.Status != 0 {
		t.Fatalf("a new nexus got %x", r.Sense)
	}
}
