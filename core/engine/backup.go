package engine

import (
	"fmt"

	"github.com/drover-io/drover/core/proto"
)

// maxSnapReads bounds AdminReadSnapshot requests in flight at once.
const maxSnapReads = 64

// adminReadSnapshot serves AdminReadSnapshot. A snapshot's content never
// changes, so the read need not be ordered with frontend IO nor wait
// behind other admin tasks (a backup streams many of them); a delete or
// revert that removes the snapshot meanwhile makes the replica answer
// not found. It goes to one RW replica, round robin, and fails over to the
// next on an IO error, a corrupt block or no answer; a refusal (not found,
// invalid) fails at once, since every replica would say the same.
func (e *Engine) adminReadSnapshot(req AdminRequest) {
	fail := func(err error) {
		e.ready.AdminReplies = append(e.ready.AdminReplies, AdminReply{ID: req.ID, Err: err})
	}
	sizeBlocks := e.sizeBytes / proto.BlockSize
	switch {
	case req.Name == "":
		// The head changes under frontend IO, which these reads are not
		// ordered with: only snapshots can be read this way.
		fail(fmt.Errorf("%w: read snapshot: name a snapshot (the head is read through the frontend)", ErrInvalid))
		return
	case req.BlockCount == 0 || req.BlockCount > maxBlocksPerIO:
		fail(fmt.Errorf("%w: block count %d not in 1..%d", ErrInvalid, req.BlockCount, maxBlocksPerIO))
		return
	case req.BlockIndex >= sizeBlocks || uint64(req.BlockCount) > sizeBlocks-req.BlockIndex:
		fail(fmt.Errorf("%w: blocks [%d, +%d) beyond the volume's %d blocks", ErrInvalid, req.BlockIndex, req.BlockCount, sizeBlocks))
		return
	case e.snapReads >= maxSnapReads:
		fail(fmt.Errorf("%w: %d snapshot reads in flight", ErrBusy, e.snapReads))
		return
	}
	rs := e.readable()
	if len(rs) == 0 {
		fail(fmt.Errorf("%w: no readable replica", ErrIO))
		return
	}
	e.roundRobin++
	start := e.roundRobin % len(rs)
	order := append(append([]proto.ReplicaID(nil), rs[start:]...), rs[:start]...)
	e.snapReads++
	e.snapReadFrom(req, order, nil)
}

// snapReadFrom tries the replicas in order; errs collects each failure.
func (e *Engine) snapReadFrom(req AdminRequest, order []proto.ReplicaID, errs []string) {
	finish := func(rep AdminReply) {
		e.snapReads--
		e.ready.AdminReplies = append(e.ready.AdminReplies, rep)
	}
	if len(order) == 0 {
		finish(AdminReply{ID: req.ID, Err: fmt.Errorf("%w: snapshot %q read failed on every replica: %v", ErrIO, req.Name, errs)})
		return
	}
	to := order[0]
	r := proto.Request{Op: proto.OpSnapRead, Name: req.Name, BlockIndex: req.BlockIndex, BlockCount: req.BlockCount}
	e.send(to, r, func(rep proto.Reply) {
		switch rep.Status {
		case proto.StatusOK:
			finish(AdminReply{ID: req.ID, Data: rep.Data})
		case proto.StatusNotFound:
			finish(AdminReply{ID: req.ID, Err: fmt.Errorf("%w: %s", ErrNotFound, rep.Err)})
		case proto.StatusInvalid:
			finish(AdminReply{ID: req.ID, Err: fmt.Errorf("%w: %s", ErrInvalid, rep.Err)})
		default:
			why := fmt.Sprintf("%s: %v %s", to, rep.Status, rep.Err)
			e.snapReadFrom(req, order[1:], append(errs, why))
		}
	})
}
