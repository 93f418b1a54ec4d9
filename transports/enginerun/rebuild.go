package enginerun

import (
	"context"
	"fmt"
	"time"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
)

const defaultReplaceAfter = time.Minute

// allReplicas are the replicas and the spares: every address dialed.
func (c *Config) allReplicas() []Replica {
	return append(append([]Replica(nil), c.Replicas...), c.Spares...)
}

// rebuildConfig fills the engine's replacement and pacing settings.
func (c *Config) rebuildConfig(ec *engine.Config) {
	for _, r := range c.Spares {
		ec.Spares = append(ec.Spares, r.ID)
	}
	switch {
	case c.ReplaceAfter < 0:
		ec.ReplaceAfterTicks = -1
	case c.ReplaceAfter == 0:
		ec.ReplaceAfterTicks = c.ticks(defaultReplaceAfter)
	default:
		ec.ReplaceAfterTicks = c.ticks(c.ReplaceAfter)
	}
	ec.RebuildBytesPerTick = c.bytesPerTick(c.RebuildRate)
}

// bytesPerTick converts a rate in bytes per second to bytes per tick (at
// least 1 when the rate is not 0).
func (c *Config) bytesPerTick(rateBytesPerSec uint64) uint64 {
	if rateBytesPerSec == 0 {
		return 0
	}
	return max(1, uint64(float64(rateBytesPerSec)*c.Tick.Seconds()))
}

// AddOptions tune AddReplicaWith.
type AddOptions struct {
	// RateBytesPerSec caps the rebuild's copying (0: Config.RebuildRate).
	RateBytesPerSec uint64
	// Replaces names a replica to remove once the new one is RW.
	Replaces proto.ReplicaID
}

// AddReplicaWith adds replica r as AddReplica does, paced as opt says,
// and then removes opt.Replaces (if set): replacing a replica by command.
func (d *Driver) AddReplicaWith(ctx context.Context, r Replica, opt AddOptions) error {
	if err := d.addReplica(ctx, r, d.cfg.bytesPerTick(opt.RateBytesPerSec)); err != nil {
		return err
	}
	if opt.Replaces != "" && opt.Replaces != r.ID {
		return d.RemoveReplica(ctx, opt.Replaces)
	}
	return nil
}

// RebuildStats is a rebuild's progress in bytes and seconds.
type RebuildStats struct {
	// DoneBytes of TotalBytes compared and brought up to date (every
	// layer of the chain counts the volume's size once).
	DoneBytes, TotalBytes uint64
	// CopiedBytes were actually copied: blocks the target lacked or held
	// with another checksum.
	CopiedBytes uint64
	Elapsed     time.Duration
	// RateBytesPerSec is DoneBytes over Elapsed; ETA the rest at that rate
	// (0 while unknown).
	RateBytesPerSec float64
	ETA             time.Duration
	// LimitBytesPerSec is the rebuild's pace limit (0: none).
	LimitBytesPerSec uint64
}

// Stats converts an engine's rebuild progress with the tick length.
func Stats(p engine.RebuildProgress, tick time.Duration) RebuildStats {
	st := RebuildStats{DoneBytes: p.BlocksDone * proto.BlockSize, TotalBytes: p.BlocksTotal * proto.BlockSize,
		CopiedBytes: p.BytesCopied, Elapsed: time.Duration(p.ElapsedTicks) * tick}
	if tick > 0 {
		st.LimitBytesPerSec = uint64(float64(p.RateBytesPerTick) / tick.Seconds())
	}
	if secs := st.Elapsed.Seconds(); secs > 0 && st.DoneBytes > 0 {
		st.RateBytesPerSec = float64(st.DoneBytes) / secs
		if st.TotalBytes > st.DoneBytes {
			st.ETA = time.Duration(float64(st.TotalBytes-st.DoneBytes) / st.RateBytesPerSec * float64(time.Second))
		}
	}
	return st
}

// String is a one-line summary for logs.
func (st RebuildStats) String() string {
	return fmt.Sprintf("%d/%d bytes (%d copied) in %s, %.1f MB/s, ETA %s",
		st.DoneBytes, st.TotalBytes, st.CopiedBytes, st.Elapsed.Round(time.Millisecond), st.RateBytesPerSec/1e6, st.ETA.Round(time.Second))
}
