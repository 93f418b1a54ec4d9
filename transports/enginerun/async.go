package enginerun

import (
	"context"
	"sync"
	"time"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/bufpool"
	"github.com/drover-io/drover/transports/device"
)

var _ device.Async = (*Volume)(nil)

// Start begins r (device.Async). Reads within one 4 MiB chunk of blocks,
// and write-like requests aligned to 4 KiB and at most 4 MiB long — what
// real clients send — go to the engine at once as one engine request,
// with no goroutine waiting: the reply completes them on whichever
// goroutine drives the engine, usually the caller's next Run (a read not
// aligned to 4 KiB reads the blocks covering it and copies its part out).
// Write-like requests take the range lock without waiting; one whose
// blocks are locked (a read-modify-write is patching them), and every
// unaligned write or larger request, runs through the synchronous
// methods on a goroutine of its own.
func (v *Volume) Start(r *device.Request) {
	if r.Op == device.OpFlush {
		v.startEngine(r, engine.Request{Op: proto.OpFlush}, nil, 0, 0)
		return
	}
	length := r.Length
	if r.Op == device.OpRead || r.Op == device.OpWrite {
		length = uint64(len(r.Data))
	}
	if err := v.check(r.Op.String(), r.Offset, length); err != nil || length == 0 {
		r.Done(r, err)
		return
	}
	lo, hi := blockSpan(r.Offset, length)
	req := engine.Request{BlockIndex: lo, BlockCount: uint32(hi - lo), FUA: r.FUA}
	if r.Op == device.OpRead && hi-lo <= maxChunkBlocks {
		req.Op = proto.OpRead
		v.startEngine(r, req, nil, 0, 0)
		return
	}
	if r.Offset%proto.BlockSize != 0 || length%proto.BlockSize != 0 || length > maxChunkBlocks*proto.BlockSize {
		device.StartSync(context.Background(), v, r)
		return
	}
	switch r.Op {
	case device.OpWrite:
		req.Op = proto.OpWrite
	case device.OpTrim:
		req.Op = proto.OpTrim
	case device.OpWriteZeroes:
		req.Op = proto.OpWriteZeroes
	default:
		device.StartSync(context.Background(), v, r) // Do refuses it
		return
	}
	if !v.locks.tryLock(lo, hi) {
		device.StartSync(context.Background(), v, r)
		return
	}
	if req.Op == proto.OpWrite {
		// A copy the volume owns, as the synchronous path makes: after a
		// failed write a slow replica may still be reading it.
		req.Data = bufpool.Get(int(length))
		copy(req.Data, r.Data)
	}
	v.startEngine(r, req, req.Data, lo, hi)
}

// Run drives the engine for the requests Start queued (device.Async).
func (v *Volume) Run() { v.d.Run() }

// startEngine hands req to the driver; the reply completes r. buf is the
// volume's copy of a write's data; [lo, hi) the blocks it holds locked
// (none when hi == lo).
func (v *Volume) startEngine(r *device.Request, req engine.Request, buf []byte, lo, hi uint64) {
	a := asyncPool.Get().(*asyncOp)
	a.v, a.r, a.buf, a.lo, a.hi, a.start = v, r, buf, lo, hi, time.Now()
	v.d.Start(req, a)
}

// asyncOp is a started request waiting for the engine: the Completer the
// driver calls. Pooled, so a started request allocates nothing.
type asyncOp struct {
	v      *Volume
	r      *device.Request
	buf    []byte
	lo, hi uint64
	start  time.Time // for IOStats
}

var asyncPool = sync.Pool{New: func() any { return new(asyncOp) }}

// Complete implements Completer: copy a read's data out, release the lock
// and the write buffer, and complete the request.
func (a *asyncOp) Complete(rep engine.Reply) {
	v, r, buf, lo, hi, start := a.v, a.r, a.buf, a.lo, a.hi, a.start
	*a = asyncOp{}
	asyncPool.Put(a)
	err := rep.Err
	if err == nil && r.Op == device.OpRead {
		// rep.Data holds the whole blocks covering r, and is ours alone
		// (see readInto).
		copy(r.Data, rep.Data[r.Offset%proto.BlockSize:])
		bufpool.Put(rep.Data)
	}
	if hi > lo {
		v.locks.unlock(lo, hi)
	}
	if err == nil && !rep.DataHeld {
		bufpool.Put(buf) // as submitOwned
	}
	length := r.Length
	if r.Op == device.OpRead || r.Op == device.OpWrite {
		length = uint64(len(r.Data))
	}
	v.stats.record(statsOp(r.Op), length, start, err)
	if err != nil {
		err = mapErr(r.Op.String(), r.Offset, length, err)
	}
	r.Done(r, err)
}

// statsOp is the IOStats kind of a device op.
func statsOp(op device.Op) IOOp {
	switch op {
	case device.OpRead:
		return IORead
	case device.OpFlush:
		return IOFlush
	case device.OpTrim:
		return IODiscard
	}
	return IOWrite // write, write-zeroes
}
