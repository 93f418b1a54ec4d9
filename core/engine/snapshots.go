package engine

import (
	"errors"
	"fmt"
	"strings"

	"github.com/drover-io/drover/core/proto"
)

// mergeWindowBlocks is the most one OpMergeSnapshot covers (64 MiB): a
// replica holds writes to that range only while it copies it, and no call
// runs long enough to time out however big the snapshot. Small volumes
// use an eighth of their size (at least 16 blocks), so that even the
// simulator's volumes are deleted in several windows beside client IO.
const mergeWindowBlocks = 1 << 14

func mergeWindow(sizeBlocks uint64) uint64 {
	return min(mergeWindowBlocks, max(sizeBlocks/8, 16))
}

// HeadNames are what users call the live head of a volume; no snapshot
// may take them, and deleting or reverting to them gets a clear error.
var HeadNames = []string{"head", "volume-head"}

func isHeadName(name string) bool {
	for _, n := range HeadNames {
		if name == n {
			return true
		}
	}
	return false
}

// checkSnapshotName says why name cannot name a new snapshot, or nil.
func checkSnapshotName(name string, internal bool) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: a snapshot needs a name", ErrInvalid)
	case isHeadName(name):
		return fmt.Errorf("%w: %q names the volume head (its live data), not a snapshot; pick another name", ErrInvalid, name)
	case strings.HasPrefix(name, proto.BackingPrefix):
		return fmt.Errorf("%w: snapshot names starting with %q are reserved for backing images", ErrInvalid, proto.BackingPrefix)
	case strings.HasPrefix(name, proto.RetiredPrefix):
		return fmt.Errorf("%w: snapshot names starting with %q are reserved for retired layers", ErrInvalid, proto.RetiredPrefix)
	case !internal && strings.HasPrefix(name, rebuildSnapshotPrefix):
		return fmt.Errorf("%w: snapshot names starting with %q are reserved for rebuilds", ErrInvalid, rebuildSnapshotPrefix)
	}
	return nil
}

// checkLabels requires unique keys in sorted order (drivers sort them).
func checkLabels(a *proto.SnapshotAttrs) error {
	if a == nil {
		return nil
	}
	for i, l := range a.Labels {
		if l.Key == "" {
			return fmt.Errorf("%w: a label needs a key", ErrInvalid)
		}
		if i > 0 && a.Labels[i-1].Key >= l.Key {
			return fmt.Errorf("%w: label keys must be unique and sorted (%q after %q)", ErrInvalid, l.Key, a.Labels[i-1].Key)
		}
	}
	return nil
}

// checkExisting says why name cannot be deleted or reverted to, or nil.
func (e *Engine) checkExisting(verb, name string) error {
	for _, n := range e.chain {
		if n == name {
			return nil
		}
	}
	if name == "" || isHeadName(name) {
		return fmt.Errorf("%w: cannot %s the volume head (its live data): it is not a snapshot", ErrInvalid, verb)
	}
	return fmt.Errorf("%w: no snapshot %q (see the snapshot list)", ErrNotFound, name)
}

// adminDeleteSnapshot merges snapshot Name into its child on every
// replica window by window (OpMergeSnapshot), then deletes it
// (OpDeleteSnapshot, which then has nothing left to copy). Frontend IO
// goes on meanwhile; each window holds only writes to its own range on
// each replica. A crash or failure at any point leaves a valid chain and
// the same views: the merge copies only what the child lacks.
func (e *Engine) adminDeleteSnapshot(t *adminTask) {
	if err := e.checkExisting("delete", t.req.Name); err != nil {
		e.finishAdmin(t, nil, err)
		return
	}
	e.mergeWindow(t, 0)
}

func (e *Engine) mergeWindow(t *adminTask, from uint64) {
	if len(e.admin) == 0 || e.admin[0] != t {
		return // failed meanwhile (failAll)
	}
	if e.rebuild != nil {
		// A rebuild copies the chain as it is; the windows merged so far
		// changed no view and a later delete finds them done.
		e.finishAdmin(t, nil, fmt.Errorf("%w: a rebuild started; delete the snapshot again after it", ErrBusy))
		return
	}
	sizeBlocks := e.sizeBytes / proto.BlockSize
	if from >= sizeBlocks {
		e.adminEverywhere(t, proto.Request{Op: proto.OpDeleteSnapshot, Name: t.req.Name})
		return
	}
	n := min(mergeWindow(sizeBlocks), sizeBlocks-from)
	req := proto.Request{Op: proto.OpMergeSnapshot, Name: t.req.Name, BlockIndex: from, BlockCount: uint32(n)}
	e.sendAllVia(req, e.sendMerge, func(okCount int, refusal error, refusers []proto.ReplicaID) {
		switch {
		case okCount == 0 && refusal == nil:
			e.finishAdmin(t, nil, fmt.Errorf("%w: merge of snapshot %q failed on every replica", ErrIO, t.req.Name))
		case refusal != nil && okCount == 0:
			e.finishAdmin(t, nil, refusal)
		default:
			for _, id := range refusers {
				e.replicaFailed(id, fmt.Sprintf("refused to merge snapshot %q that other replicas hold", t.req.Name))
			}
			e.mergeWindow(t, from+n)
		}
	})
}

// sendAll sends req to every replica in the write set and calls then once
// all answered (at once when there is none): how many succeeded, the
// last refusal (not found, exists, invalid) and who refused. Replicas
// that failed otherwise went ERR.
func (e *Engine) sendAll(req proto.Request, then func(okCount int, refusal error, refusers []proto.ReplicaID)) {
	e.sendAllVia(req, e.send, then)
}

// sendAllVia is sendAll with each replica's request sent by send.
func (e *Engine) sendAllVia(req proto.Request, send func(proto.ReplicaID, proto.Request, func(proto.Reply)),
	then func(okCount int, refusal error, refusers []proto.ReplicaID)) {
	targets := e.writeTargets()
	left, okCount := len(targets), 0
	var refusal error
	var refusers []proto.ReplicaID
	if left == 0 {
		then(0, nil, nil)
		return
	}
	for _, id := range targets {
		send(id, req, func(rep proto.Reply) {
			left--
			switch rep.Status {
			case proto.StatusOK:
				okCount++
			case proto.StatusNotFound:
				refusal, refusers = fmt.Errorf("%w: %s", ErrNotFound, rep.Err), append(refusers, id)
			case proto.StatusExists:
				refusal, refusers = fmt.Errorf("%w: %s", ErrExists, rep.Err), append(refusers, id)
			case proto.StatusInvalid:
				refusal, refusers = fmt.Errorf("%w: %s", ErrInvalid, rep.Err), append(refusers, id)
			default:
				e.replicaFailed(id, fmt.Sprintf("%v: %v %s", req.Op, rep.Status, rep.Err))
			}
			if left == 0 {
				then(okCount, refusal, refusers)
			}
		})
	}
}

// maxMergeRepairs bounds the corrupt blocks one merge window may repair
// on one replica; a replica with more is failed (and rebuilt) instead.
const maxMergeRepairs = 64

// sendMerge sends a merge window to one replica. When the replica finds a
// corrupt block of the snapshot (bit rot in a frozen layer: reads repair
// only the head's view, so such rot stays until something reads the
// layer), the block is repaired from another replica and the window is
// sent again: failing the replica instead would turn rot that every other
// replica can make good into the loss of a replica, and rot on two
// replicas into a volume served by one (sim swarm seed 3413: two
// replicas failed one delete, the third then held the only copy of a
// block that rotted there too, and no rebuild could complete). then
// gets the last reply.
func (e *Engine) sendMerge(id proto.ReplicaID, req proto.Request, then func(proto.Reply)) {
	repaired := map[uint64]bool{}
	var try func()
	try = func() {
		e.send(id, req, func(rep proto.Reply) {
			b := rep.BlockIndex
			inWindow := b >= req.BlockIndex && b < req.BlockIndex+uint64(req.BlockCount)
			m := e.members[id]
			if rep.Status != proto.StatusCorrupt || !inWindow || repaired[b] || len(repaired) >= maxMergeRepairs ||
				m == nil || m.mode != ModeRW {
				then(rep)
				return
			}
			repaired[b] = true
			e.repairLayerBlock(id, req.Name, b, func(ok bool) {
				if !ok {
					then(rep)
					return
				}
				try()
			})
		})
	}
	try()
}

// repairLayerBlock rewrites block b of snapshot layer name on replica
// bad from another RW replica's view of that snapshot, and reports
// whether it did. The block must come back exactly as bad's own index
// records it: the layer write carries bad's checksum, which the replica
// checks the data against (StatusCorrupt: that copy differs, try the
// next), so a repair never changes what the snapshot holds, only makes
// rotted bytes good again.
func (e *Engine) repairLayerBlock(bad proto.ReplicaID, name string, b uint64, done func(ok bool)) {
	list := proto.Request{Op: proto.OpLayerBlocks, Name: name, BlockIndex: b, BlockCount: 1}
	e.send(bad, list, func(rep proto.Reply) {
		var want *proto.BlockState
		for i := range rep.Blocks {
			if rep.Blocks[i].BlockIndex == b && rep.Blocks[i].Kind == proto.BlockData {
				want = &rep.Blocks[i]
			}
		}
		if rep.Status != proto.StatusOK || want == nil {
			done(false)
			return
		}
		var sources []proto.ReplicaID
		for _, id := range e.readable() {
			if id != bad {
				sources = append(sources, id)
			}
		}
		e.repairLayerBlockFrom(bad, name, *want, sources, done)
	})
}

func (e *Engine) repairLayerBlockFrom(bad proto.ReplicaID, name string, want proto.BlockState, sources []proto.ReplicaID, done func(ok bool)) {
	if len(sources) == 0 {
		done(false)
		return
	}
	next := func() { e.repairLayerBlockFrom(bad, name, want, sources[1:], done) }
	read := proto.Request{Op: proto.OpSnapRead, Name: name, BlockIndex: want.BlockIndex, BlockCount: 1}
	e.send(sources[0], read, func(rep proto.Reply) {
		if rep.Status != proto.StatusOK || uint64(len(rep.Data)) != proto.BlockSize {
			next()
			return
		}
		w := proto.Request{Op: proto.OpLayerWrite, Name: name, BlockIndex: want.BlockIndex, BlockCount: 1,
			Data: rep.Data, Blocks: []proto.BlockState{want}}
		e.send(bad, w, func(rep proto.Reply) {
			switch rep.Status {
			case proto.StatusOK:
				done(true)
			case proto.StatusCorrupt:
				next() // that replica's view differs from bad's index
			default:
				done(false)
			}
		})
	})
}

// adminListSnapshots answers AdminListSnapshots at once (it does not wait
// behind other admin tasks: a long delete must not hide the list). Sizes
// come from the first RW replica that answers; attributes per snapshot
// from any replica that has them (a rebuilt replica's layers carry names
// only).
func (e *Engine) adminListSnapshots(req AdminRequest) {
	rs := e.readable()
	if len(rs) == 0 {
		e.ready.AdminReplies = append(e.ready.AdminReplies, AdminReply{ID: req.ID, Err: fmt.Errorf("%w: no readable replica", ErrIO)})
		return
	}
	left := len(rs)
	var lists [][]proto.SnapshotInfo
	var from []proto.ReplicaID
	var errs []error
	for _, id := range rs {
		e.send(id, proto.Request{Op: proto.OpListSnapshots}, func(rep proto.Reply) {
			left--
			if rep.Status == proto.StatusOK {
				lists, from = append(lists, rep.Snapshots), append(from, id)
			} else {
				errs = append(errs, fmt.Errorf("%s: %v %s", id, rep.Status, rep.Err))
			}
			if left > 0 {
				return
			}
			if len(lists) == 0 {
				e.ready.AdminReplies = append(e.ready.AdminReplies, AdminReply{ID: req.ID,
					Err: fmt.Errorf("%w: list snapshots: %w", ErrIO, errors.Join(errs...))})
				return
			}
			merged := mergeLists(lists)
			e.ready.AdminReplies = append(e.ready.AdminReplies, AdminReply{ID: req.ID, Snapshots: merged})
			e.restoreAttrs(from, lists, merged)
		})
	}
}

// mergeLists takes the first list and fills in attributes the others have.
func mergeLists(lists [][]proto.SnapshotInfo) []proto.SnapshotInfo {
	out := append([]proto.SnapshotInfo(nil), lists[0]...)
	for i := range out {
		if out[i].Name == "" || out[i].Attrs.CreatedUnixNano != 0 {
			continue
		}
		for _, l := range lists[1:] {
			for _, s := range l {
				if s.Name == out[i].Name && s.Attrs.CreatedUnixNano != 0 {
					out[i].Attrs = s.Attrs
				}
			}
		}
	}
	return out
}

// restoreAttrs gives back the attributes a replica's layers lost (a
// rebuild creates layers by name only) from what the others hold, so
// they survive once the replicas that had them are gone. Replies are not
// awaited: the next listing tries again.
func (e *Engine) restoreAttrs(from []proto.ReplicaID, lists [][]proto.SnapshotInfo, merged []proto.SnapshotInfo) {
	want := map[string]proto.SnapshotAttrs{}
	for _, s := range merged {
		if s.Name != "" && s.Attrs.CreatedUnixNano != 0 {
			want[s.Name] = s.Attrs
		}
	}
	for i, l := range lists {
		for _, s := range l {
			if a, ok := want[s.Name]; ok && s.Attrs.CreatedUnixNano == 0 {
				e.send(from[i], proto.Request{Op: proto.OpSetSnapshotAttrs, Name: s.Name, Attrs: a.Clone()}, func(proto.Reply) {})
			}
		}
	}
}
