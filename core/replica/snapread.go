package replica

import (
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
)

// newSnapRead validates an OpSnapRead. It reads like OpRead, but through
// the chain cut at the named layer, so it sees the snapshot's content
// whatever was written since. It does not write: overlapping writes to the
// head or a rebuild's layer writes are ordered around it by the scheduler,
// and a delete or revert (barriers) runs before or after it, never during.
func (r *Replica) newSnapRead(o *op) (*op, proto.Status, string) {
	if msg := r.checkRange(o.req); msg != "" {
		return nil, proto.StatusInvalid, msg
	}
	if l, _ := r.layerByName(o.req.Name); l == nil {
		return nil, proto.StatusNotFound, sprintf("no snapshot %q", o.req.Name)
	}
	o.run = r.runSnapRead
	return o, proto.StatusOK, ""
}

// resolveAt returns the newest layer at or below index top holding block b.
func (r *Replica) resolveAt(top int, b uint64) *layer {
	for i := top; i >= 0; i-- {
		if r.layers[i].held.Contains(b) {
			return r.layers[i]
		}
	}
	return nil
}

// snapRuns groups [lo, hi) into runs of blocks whose data lives in one
// layer at or below top; blocks that read as zeros are skipped.
func (r *Replica) snapRuns(top int, lo, hi uint64) []layerRun {
	var runs []layerRun
	for b := lo; b < hi; b++ {
		l := r.resolveAt(top, b)
		if l == nil || l.zero.Contains(b) {
			continue
		}
		if n := len(runs); n > 0 && runs[n-1].l == l && runs[n-1].start+runs[n-1].n == b {
			runs[n-1].n++
			continue
		}
		runs = append(runs, layerRun{l: l, start: b, n: 1})
	}
	return runs
}

func (r *Replica) runSnapRead(o *op) {
	req := o.req
	// A delete or revert queued before this op (both barriers) may have
	// removed the layer since newSnapRead looked: look again.
	_, top := r.layerByName(req.Name)
	if top < 0 {
		r.fails(o, proto.StatusNotFound, "snap-read: no snapshot %q", req.Name)
		return
	}
	runs := r.snapRuns(top, o.lo, o.hi)
	if len(runs) == 1 && runs[0].start == o.lo && runs[0].n == o.hi-o.lo {
		r.snapReadWhole(o, runs[0])
		return
	}
	out := make([]byte, uint64(req.BlockCount)*proto.BlockSize)
	left := len(runs)
	status, detail, bad := proto.StatusOK, "", uint64(0)
	done := func() {
		if status == proto.StatusOK {
			r.reply(proto.Reply{ID: req.ID, Data: out})
		} else {
			r.reply(proto.Reply{ID: req.ID, Status: status, Err: detail, BlockIndex: bad})
		}
		r.finish(o)
	}
	if left == 0 {
		done()
		return
	}
	for _, run := range runs {
		r.issue(store.IO{Kind: store.ReadData, Layer: run.l.meta.ID, BlockIndex: run.start, BlockCount: run.n}, func(c store.Completion) {
			left--
			switch {
			case c.Err != store.OK:
				if status == proto.StatusOK || status == proto.StatusCorrupt {
					status, detail = proto.StatusIOError, sprintf("read layer %d: %v %s", run.l.meta.ID, c.Err, c.Detail)
				}
			default:
				if b, why := r.verify(run.l, c, run.start); why != "" {
					if status == proto.StatusOK || (status == proto.StatusCorrupt && b < bad) {
						status, detail, bad = proto.StatusCorrupt, why, b
					}
				}
				copy(out[(run.start-o.lo)*proto.BlockSize:], c.Data)
			}
			if left == 0 {
				done()
			}
		})
	}
}

// snapReadWhole serves a snap-read held whole by one layer: the read's
// buffer is the reply (as OpLayerRead's is), no copy.
func (r *Replica) snapReadWhole(o *op, run layerRun) {
	r.issue(store.IO{Kind: store.ReadData, Layer: run.l.meta.ID, BlockIndex: run.start, BlockCount: run.n}, func(c store.Completion) {
		defer r.finish(o)
		if c.Err != store.OK {
			r.replyErr(o.req.ID, proto.StatusIOError, "read layer %d: %v %s", run.l.meta.ID, c.Err, c.Detail)
			return
		}
		if b, why := r.verify(run.l, c, run.start); why != "" {
			r.reply(proto.Reply{ID: o.req.ID, Status: proto.StatusCorrupt, Err: why, BlockIndex: b})
			return
		}
		r.reply(proto.Reply{ID: o.req.ID, Data: c.Data})
	})
}
