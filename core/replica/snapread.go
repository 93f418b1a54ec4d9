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
