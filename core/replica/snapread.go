package replica

import (
	"github.com/drover-io/drover/core/proto"
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
	if _, ok := proto.RetiredIndex(o.req.Name); ok {
		o.run = r.runRetiredRead
		return o, proto.StatusOK, ""
	}
	if l, _ := r.layerByName(o.req.Name); l == nil {
		return nil, proto.StatusNotFound, sprintf("no snapshot %q", o.req.Name)
	}
	o.run = r.runSnapRead
	return o, proto.StatusOK, ""
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
	r.readRuns(o, r.runsAt(top, o.lo, o.hi))
}

// runRetiredRead reads blocks from one retired layer alone (not through
// a chain): they are what the layer held when a rebuild retired it. It
// answers StatusNotFound when there is no such layer or the layer does
// not hold every block asked for.
func (r *Replica) runRetiredRead(o *op) {
	i, _ := proto.RetiredIndex(o.req.Name)
	if i >= len(r.retired) {
		r.fails(o, proto.StatusNotFound, "snap-read: no retired layer %d", i)
		return
	}
	l := r.retired[i]
	runs := r.runBuf[:0]
	for b := o.lo; b < o.hi; b++ {
		if !l.held.Contains(b) {
			r.fails(o, proto.StatusNotFound, "snap-read: retired layer %d does not hold block %d", i, b)
			return
		}
		if l.zero.Contains(b) {
			continue
		}
		if n := len(runs); n > 0 && runs[n-1].start+runs[n-1].n == b {
			runs[n-1].n++
			continue
		}
		runs = append(runs, layerRun{l: l, start: b, n: 1})
	}
	r.runBuf = runs
	r.readRuns(o, runs)
}
