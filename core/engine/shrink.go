package engine

import (
	"fmt"

	"github.com/drover-io/drover/core/proto"
)

// adminShrink cuts the volume to SizeBytes. It needs the volume detached
// (frontends would otherwise see their device shrink under them) and
// every replica to agree that no layer holds data at or beyond the new
// end: a replica that finds data there refuses and changes nothing. If
// all refuse, nothing changed; if some shrank and some refused, the
// refusing ones leave the set and are rebuilt to the new size.
func (e *Engine) adminShrink(t *adminTask) {
	size := t.req.SizeBytes
	switch {
	case size == 0 || size%proto.BlockSize != 0:
		e.finishAdmin(t, nil, fmt.Errorf("%w: size %d is not a positive multiple of %d", ErrInvalid, size, proto.BlockSize))
		return
	case size > e.sizeBytes:
		e.finishAdmin(t, nil, fmt.Errorf("%w: %d bytes is larger than the volume's %d: expand grows it", ErrInvalid, size, e.sizeBytes))
		return
	case size == e.sizeBytes:
		e.finishAdmin(t, nil, nil)
		return
	case e.attached:
		e.finishAdmin(t, nil, fmt.Errorf("%w: shrink needs the volume detached: a frontend would see its device shrink under it (detach it first)", ErrBusy))
		return
	case e.rebuild != nil:
		e.finishAdmin(t, nil, fmt.Errorf("%w: a rebuild is in progress", ErrBusy))
		return
	}
	e.sendAll(proto.Request{Op: proto.OpShrink, SizeBytes: size}, func(okCount int, refusal error, refusers []proto.ReplicaID) {
		switch {
		case okCount == 0 && refusal != nil:
			e.finishAdmin(t, nil, refusal)
		case okCount == 0:
			e.finishAdmin(t, nil, fmt.Errorf("%w: shrink failed on every replica", ErrIO))
		default:
			e.sizeBytes = size
			for _, id := range refusers {
				e.replicaFailed(id, "refused a shrink that other replicas did")
			}
			e.finishAdmin(t, nil, nil)
		}
	})
}
