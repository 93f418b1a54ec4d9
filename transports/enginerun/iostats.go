package enginerun

import (
	"sync/atomic"
	"time"
)

// IOOp is a kind of frontend request IOStats counts. Write-zeroes count
// as writes and trims as discards, as Linux's block statistics count
// them.
type IOOp uint8

const (
	IORead IOOp = iota
	IOWrite
	IOFlush
	IODiscard
	ioOps
)

// IOOps lists every IOOp, for exporters.
var IOOps = [...]IOOp{IORead, IOWrite, IOFlush, IODiscard}

func (op IOOp) String() string {
	return [...]string{"read", "write", "flush", "discard"}[op]
}

// LatencyBounds are the upper bounds of the latency histogram's buckets
// (a last bucket holds everything slower). They span a page-cache hit
// over an in-process link (tens of microseconds) to a replica timing out
// (seconds).
var LatencyBounds = [...]time.Duration{
	25 * time.Microsecond, 50 * time.Microsecond, 100 * time.Microsecond, 250 * time.Microsecond,
	500 * time.Microsecond, time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond,
	250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2500 * time.Millisecond,
	5 * time.Second, 10 * time.Second,
}

// IOStats counts a Volume's frontend requests: how many, how many bytes,
// how many failed, and how long they took. Everything is an atomic, so
// recording costs no allocation and no lock on the data path; a reader
// (a metrics scrape) sees each field current, not all fields at one
// instant.
type IOStats struct {
	op [ioOps]opStats
}

type opStats struct {
	ops, bytes, errors, latencyNanos atomic.Uint64
	buckets                          [len(LatencyBounds) + 1]atomic.Uint64
}

// OpStats is one IOOp's counts at a moment.
type OpStats struct {
	Ops, Bytes, Errors uint64
	// Latency is the sum of every request's latency; Buckets[i] counts
	// requests that took at most LatencyBounds[i] and more than the
	// bound before it, Buckets[len(LatencyBounds)] the slower ones.
	Latency time.Duration
	Buckets [len(LatencyBounds) + 1]uint64
}

// record counts one request of op over bytes that started at start.
func (s *IOStats) record(op IOOp, bytes uint64, start time.Time, err error) {
	took := time.Since(start)
	o := &s.op[op]
	o.ops.Add(1)
	o.bytes.Add(bytes)
	if err != nil {
		o.errors.Add(1)
	}
	o.latencyNanos.Add(uint64(max(took, 0)))
	i := 0
	for i < len(LatencyBounds) && took > LatencyBounds[i] {
		i++
	}
	o.buckets[i].Add(1)
}

// Op returns op's counts now. Ops is the sum of the buckets, so a
// histogram built from them is consistent even while requests complete.
func (s *IOStats) Op(op IOOp) OpStats {
	o := &s.op[op]
	st := OpStats{Bytes: o.bytes.Load(), Errors: o.errors.Load(), Latency: time.Duration(o.latencyNanos.Load())}
	for i := range o.buckets {
		st.Buckets[i] = o.buckets[i].Load()
		st.Ops += st.Buckets[i]
	}
	return st
}
