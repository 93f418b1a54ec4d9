package engine

import (
	"errors"
	"fmt"

	"github.com/drover-io/drover/core/proto"
)

// AdminOp is the kind of an admin request.
type AdminOp uint8

const (
	// AdminInfo describes the volume (answered at once).
	AdminInfo AdminOp = iota + 1
	// AdminSnapshot takes snapshot Name on every replica: new IO is held,
	// IO in flight drains, all replicas snapshot, IO resumes.
	AdminSnapshot
	// AdminDeleteSnapshot merges snapshot Name into its child everywhere.
	AdminDeleteSnapshot
	// AdminRevert reverts the volume to snapshot Name. The volume must be
	// detached (SetAttached(false)): a revert under a live filesystem
	// would silently discard what it believes it wrote.
	AdminRevert
	// AdminExpand grows the volume to SizeBytes (never shrinks).
	AdminExpand
	// AdminChangedExtents lists blocks changed after snapshot Name up to
	// snapshot Name2 ("" = the head), from one RW replica.
	AdminChangedExtents
	// AdminAddReplica opens Replica and rebuilds it into the volume.
	AdminAddReplica
	// AdminRemoveReplica takes Replica out of the volume.
	AdminRemoveReplica
	// AdminReadSnapshot reads BlockCount blocks from BlockIndex as snapshot
	// Name (not the head) shows them, from one RW replica (failing over
	// to the others).
	// It does not wait behind other admin requests (see backup.go).
	AdminReadSnapshot
	// AdminListSnapshots lists every layer with its attributes and sizes
	// (Snapshots; the head last, unnamed). Answered without waiting behind
	// other admin requests (see snapshots.go).
	AdminListSnapshots
	// AdminShrink cuts the volume to SizeBytes: only while detached, and
	// only when no layer holds data at or beyond the new end (shrink.go).
	AdminShrink
)

var adminOpNames = [...]string{"?", "info", "snapshot", "delete snapshot", "revert", "expand",
	"changed extents", "add replica", "remove replica", "read snapshot", "list snapshots", "shrink"}

func (op AdminOp) String() string {
	if int(op) < len(adminOpNames) {
		return adminOpNames[op]
	}
	return fmt.Sprintf("admin op %d", uint8(op))
}

// AdminRequest is a control-plane request.
type AdminRequest struct {
	ID        uint64
	Op        AdminOp
	Name      string
	Name2     string
	SizeBytes uint64
	Replica   proto.ReplicaID
	// Attrs: AdminSnapshot's creation time and labels (from the driver).
	Attrs *proto.SnapshotAttrs
	// RateBytesPerTick paces AdminAddReplica's rebuild (0: the engine's
	// configured rate, if any).
	RateBytesPerTick uint64
	// BlockIndex and BlockCount: AdminReadSnapshot's range.
	BlockIndex uint64
	BlockCount uint32
}

// AdminReply answers an AdminRequest.
type AdminReply struct {
	ID      uint64
	Err     error
	Info    *VolumeInfo
	Extents []proto.Extent
	Data    []byte // AdminReadSnapshot
	// Snapshots: AdminListSnapshots.
	Snapshots []proto.SnapshotInfo
}

// VolumeInfo is what the engine reports about its volume.
type VolumeInfo struct {
	Volume        string
	Phase         Phase
	Why           string // why it is not serving, when it is not
	Epoch         uint64
	SizeBytes     uint64
	Chain         []string
	MembershipGen uint64
	Replicas      []ReplicaInfo
	// Attached: frontend IO is accepted (SetAttached; detached, IO is
	// refused and a revert or shrink may run).
	Attached bool
	Rebuild  *RebuildProgress
	// LastRebuild is the last rebuild that ended; its Stage is "done" or
	// "failed: why".
	LastRebuild *RebuildProgress
	// Counters count what happened since the engine started.
	Counters Counters
	// Tasks are the multi-step tasks running and queued (Engine.Tasks).
	Tasks []TaskInfo
	// Spares are the configured spares not yet used; Removed the
	// tombstoned replicas; Replaced counts replacements by spares since
	// this engine started.
	Spares   []proto.ReplicaID
	Removed  []proto.ReplicaID
	Replaced int
}

// ReplicaInfo is one replica as the engine sees it.
type ReplicaInfo struct {
	ID   proto.ReplicaID
	Mode Mode
	Why  string // last failure
}

// RebuildProgress reports the rebuild in progress. BlocksTotal counts
// every block of every layer compared (layers x volume blocks);
// BlocksDone those compared and brought up to date (a window being copied
// counts in proportion to its bytes copied), BlocksScanned those listed.
// BytesCopied is what was actually copied: only blocks the target lacked
// or held with another checksum. ElapsedTicks since the rebuild started;
// RateBytesPerTick is its pace limit (0: none). The driver turns ticks
// into seconds, rates and an ETA.
type RebuildProgress struct {
	Target           proto.ReplicaID
	Source           proto.ReplicaID
	Stage            string
	BlocksScanned    uint64
	BlocksTotal      uint64
	BlocksDone       uint64
	BytesCopied      uint64
	ElapsedTicks     int64
	RateBytesPerTick uint64
}

type adminTask struct {
	req      AdminRequest
	started  bool
	barrier  bool
	internal bool // queued by the engine itself: no reply
}

// Admin takes an admin request; its reply comes through Ready.
func (e *Engine) Admin(req AdminRequest) {
	if req.Op == AdminInfo {
		info := e.Info()
		e.ready.AdminReplies = append(e.ready.AdminReplies, AdminReply{ID: req.ID, Info: &info})
		return
	}
	if e.phase != PhaseServing {
		e.ready.AdminReplies = append(e.ready.AdminReplies, AdminReply{ID: req.ID, Err: e.notServing()})
		return
	}
	if req.Op == AdminReadSnapshot {
		e.adminReadSnapshot(req)
		return
	}
	if req.Op == AdminListSnapshots {
		e.adminListSnapshots(req)
		return
	}
	if len(e.admin) >= 64 {
		e.ready.AdminReplies = append(e.ready.AdminReplies, AdminReply{ID: req.ID, Err: fmt.Errorf("%w: 64 admin requests queued", ErrBusy)})
		return
	}
	t := &adminTask{req: req}
	t.barrier = req.Op == AdminSnapshot || req.Op == AdminRevert || req.Op == AdminExpand || req.Op == AdminShrink
	e.admin = append(e.admin, t)
	e.schedule()
}

func (e *Engine) notServing() error {
	switch e.phase {
	case PhaseFaulted:
		return fmt.Errorf("%w: %s", ErrFaulted, e.why)
	case PhaseFenced:
		return fmt.Errorf("%w: %s", ErrFenced, e.why)
	}
	return ErrNotOpen
}

// Info describes the volume.
func (e *Engine) Info() VolumeInfo {
	info := VolumeInfo{Volume: e.cfg.Volume, Phase: e.phase, Why: e.why, Epoch: e.epoch,
		SizeBytes: e.sizeBytes, Chain: append([]string(nil), e.chain...), Counters: e.counters, Attached: e.attached,
		Tasks: e.Tasks()}
	if e.committed != nil {
		info.MembershipGen = e.committed.Gen
	}
	for _, m := range e.sortedMembers() {
		info.Replicas = append(info.Replicas, ReplicaInfo{ID: m.id, Mode: m.mode, Why: m.why})
	}
	if rb := e.rebuild; rb != nil {
		p := rb.progress()
		info.Rebuild = &p
	}
	if lr := e.lastRebuild; lr != nil {
		p := *lr
		info.LastRebuild = &p
	}
	info.Spares = e.freeSpares()
	info.Removed = append([]proto.ReplicaID(nil), e.removed...)
	info.Replaced = e.replaced
	return info
}

func (e *Engine) adminReply(t *adminTask, rep *AdminReply, err error) {
	if t.internal {
		if err != nil {
			e.internalFailed(t)
			e.event(Event{Kind: EventInternalFailed, Why: fmt.Sprintf("%s %s: %v", t.req.Op, t.req.Name, err)})
		}
		return
	}
	r := AdminReply{ID: t.req.ID, Err: err}
	if rep != nil {
		r.Info, r.Extents = rep.Info, rep.Extents
	}
	e.ready.AdminReplies = append(e.ready.AdminReplies, r)
}

// finishAdmin replies to the running admin task and lets the next run.
// A success waits while a membership change is pending, as a write's
// acknowledgement does: a replica that failed the task is leaving the set,
// and until that is recorded an engine opening from it could undo what
// was acknowledged (sim swarm seed 923: a revert acknowledged while the
// replica that missed it was still RW in the committed membership; the
// change then failed, and the next engine opened from that replica).
func (e *Engine) finishAdmin(t *adminTask, rep *AdminReply, err error) {
	if len(e.admin) == 0 || e.admin[0] != t {
		return
	}
	if err == nil && e.change != nil {
		e.parkedAdmin = append(e.parkedAdmin, func() { e.finishAdmin(t, rep, nil) })
		return
	}
	e.admin = e.admin[1:]
	e.adminReply(t, rep, err)
	e.schedule()
}

// runAdmin starts the first admin task when its turn comes: barrier tasks
// hold new frontend IO and wait for IO in flight to drain.
func (e *Engine) runAdmin() {
	if len(e.admin) == 0 {
		return
	}
	t := e.admin[0]
	if t.started {
		return
	}
	if t.barrier && (len(e.running) > 0 || e.change != nil) {
		return
	}
	t.started = true
	switch t.req.Op {
	case AdminSnapshot:
		e.adminSnapshot(t)
	case AdminDeleteSnapshot:
		e.adminDeleteSnapshot(t)
	case AdminRevert:
		e.adminRevert(t)
	case AdminExpand:
		e.adminExpand(t)
	case AdminShrink:
		e.adminShrink(t)
	case AdminChangedExtents:
		e.adminChangedExtents(t)
	case AdminAddReplica:
		e.adminAddReplica(t)
	case AdminRemoveReplica:
		e.adminRemoveReplica(t)
	default:
		e.finishAdmin(t, nil, fmt.Errorf("%w: unknown admin operation %d", ErrInvalid, t.req.Op))
	}
}

func (e *Engine) adminSnapshot(t *adminTask) {
	if err := errors.Join(checkSnapshotName(t.req.Name, t.internal), checkLabels(t.req.Attrs)); err != nil {
		e.finishAdmin(t, nil, err)
		return
	}
	if e.rebuild != nil {
		e.finishAdmin(t, nil, fmt.Errorf("%w: a rebuild is in progress", ErrBusy))
		return
	}
	for _, n := range e.chain {
		if n == t.req.Name {
			e.finishAdmin(t, nil, fmt.Errorf("%w: snapshot %q already exists", ErrExists, t.req.Name))
			return
		}
	}
	e.adminEverywhere(t, proto.Request{Op: proto.OpSnapshot, Name: t.req.Name, Seq: e.writeSeq, Attrs: t.req.Attrs.Clone()})
}

func (e *Engine) adminRevert(t *adminTask) {
	if err := e.checkExisting("revert to", t.req.Name); err != nil {
		e.finishAdmin(t, nil, err)
		return
	}
	if e.attached {
		e.finishAdmin(t, nil, fmt.Errorf("%w: revert needs the volume detached: the data would change under whatever uses it (detach it first)", ErrBusy))
		return
	}
	e.adminEverywhere(t, proto.Request{Op: proto.OpRevert, Name: t.req.Name})
}

func (e *Engine) adminExpand(t *adminTask) {
	size := t.req.SizeBytes
	switch {
	case size%proto.BlockSize != 0:
		e.finishAdmin(t, nil, fmt.Errorf("%w: size %d is not a multiple of %d", ErrInvalid, size, proto.BlockSize))
	case size < e.sizeBytes:
		e.finishAdmin(t, nil, fmt.Errorf("%w: %d bytes is below the volume's %d: expand never shrinks (a shrink needs the volume detached and nothing stored beyond the new end)", ErrInvalid, size, e.sizeBytes))
	default:
		e.adminEverywhere(t, proto.Request{Op: proto.OpExpand, SizeBytes: size})
	}
}

// adminEverywhere sends one control request to every replica in the
// write set. A replica that fails it with an IO error or no answer goes
// ERR (to be rebuilt); a refusal (not found, exists, invalid) fails the
// request. The engine's view of the chain and size follows.
func (e *Engine) adminEverywhere(t *adminTask, req proto.Request) {
	if e.rebuild != nil && req.Op != proto.OpExpand {
		e.finishAdmin(t, nil, fmt.Errorf("%w: a rebuild is in progress", ErrBusy))
		return
	}
	e.sendAll(req, func(okCount int, refusal error, refusers []proto.ReplicaID) {
		if okCount > 0 {
			e.applyAdmin(req)
		}
		err := refusal
		if err == nil && okCount == 0 {
			err = fmt.Errorf("%w: %v failed on every replica", ErrIO, req.Op)
		}
		if refusal != nil && okCount > 0 {
			// Some replicas did it, some refused: they disagree now.
			// The refusing ones leave the set and are rebuilt.
			for _, id := range refusers {
				e.replicaFailed(id, fmt.Sprintf("refused %v that other replicas did", req.Op))
			}
			err = errors.Join(refusal, fmt.Errorf("replicas disagreed; the refusing ones will be rebuilt"))
		}
		e.finishAdmin(t, nil, err)
	})
}

// applyAdmin updates the engine's view after a control request succeeded.
func (e *Engine) applyAdmin(req proto.Request) {
	switch req.Op {
	case proto.OpSnapshot:
		e.chain = append(e.chain, req.Name)
	case proto.OpDeleteSnapshot:
		for i, n := range e.chain {
			if n == req.Name {
				e.chain = append(e.chain[:i:i], e.chain[i+1:]...)
				break
			}
		}
	case proto.OpRevert:
		for i, n := range e.chain {
			if n == req.Name {
				e.chain = e.chain[: i+1 : i+1]
				break
			}
		}
	case proto.OpExpand:
		e.sizeBytes = req.SizeBytes
	}
}

func (e *Engine) adminChangedExtents(t *adminTask) {
	rs := e.readable()
	if len(rs) == 0 {
		e.finishAdmin(t, nil, fmt.Errorf("%w: no readable replica", ErrIO))
		return
	}
	e.send(rs[0], proto.Request{Op: proto.OpChangedExtents, Name: t.req.Name, Name2: t.req.Name2}, func(rep proto.Reply) {
		switch rep.Status {
		case proto.StatusOK:
			e.finishAdmin(t, &AdminReply{Extents: rep.Extents}, nil)
		case proto.StatusNotFound:
			e.finishAdmin(t, nil, fmt.Errorf("%w: %s", ErrNotFound, rep.Err))
		default:
			e.finishAdmin(t, nil, fmt.Errorf("%w: %v %s", ErrIO, rep.Status, rep.Err))
		}
	})
}

func (e *Engine) adminRemoveReplica(t *adminTask) {
	m := e.members[t.req.Replica]
	if m == nil {
		e.finishAdmin(t, nil, fmt.Errorf("%w: replica %s", ErrNotFound, t.req.Replica))
		return
	}
	if m.mode == ModeRW && e.rwCount() <= 1 {
		e.finishAdmin(t, nil, fmt.Errorf("%w: %s is the last RW replica", ErrInvalid, t.req.Replica))
		return
	}
	e.replicaFailed(m.id, "removed by request")
	delete(e.members, m.id)
	e.tombstone(m.id)
	e.proposeMembership(func(ok bool) {
		if ok {
			e.finishAdmin(t, nil, nil)
		} else {
			e.finishAdmin(t, nil, fmt.Errorf("%w: membership change did not reach a quorum", ErrFaulted))
		}
	})
}

// Backlog returns how many frontend requests are running and waiting, and
// how many replica calls are outstanding (for liveness reports).
func (e *Engine) Backlog() (running, waiting, calls int) {
	return len(e.running), len(e.waiting), len(e.calls)
}
