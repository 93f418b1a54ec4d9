package enginerun

import (
	"testing"
	"time"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
)

func TestRebuildStats(t *testing.T) {
	p := engine.RebuildProgress{BlocksDone: 256, BlocksTotal: 1024, BytesCopied: 1 << 20, ElapsedTicks: 100, RateBytesPerTick: 1 << 10}
	st := Stats(p, 10*time.Millisecond)
	if st.DoneBytes != 1<<20 || st.TotalBytes != 4<<20 || st.CopiedBytes != 1<<20 || st.Elapsed != time.Second {
		t.Fatalf("bytes and time: %+v", st)
	}
	if st.RateBytesPerSec != 1<<20 || st.ETA != 3*time.Second || st.LimitBytesPerSec != 100<<10 {
		t.Fatalf("rate %v, ETA %v, limit %d; want 1 MiB/s, 3s, 100 KiB/s", st.RateBytesPerSec, st.ETA, st.LimitBytesPerSec)
	}
	if st := Stats(engine.RebuildProgress{BlocksTotal: 8}, 10*time.Millisecond); st.ETA != 0 || st.RateBytesPerSec != 0 {
		t.Fatalf("no progress yet: rate %v ETA %v, want 0", st.RateBytesPerSec, st.ETA)
	}
	c := Config{Tick: 10 * time.Millisecond}
	if got := c.bytesPerTick(100 << 20); got != (100<<20)/100 {
		t.Fatalf("100 MiB/s at 10 ms ticks: %d bytes per tick", got)
	}
	if got := c.bytesPerTick(1); got != 1 {
		t.Fatalf("a rate below one byte per tick: %d, want 1", got)
	}
	var ec engine.Config
	c = Config{Tick: 10 * time.Millisecond, Spares: []Replica{{ID: "s1", Addr: "a"}}, ReplaceAfter: -1}
	c.rebuildConfig(&ec)
	if len(ec.Spares) != 1 || ec.Spares[0] != proto.ReplicaID("s1") || ec.ReplaceAfterTicks != -1 {
		t.Fatalf("engine config %+v", ec)
	}
}
