package engine

import (
	"fmt"
	"strings"
)

// TaskKind names a multi-step task of the engine.
type TaskKind uint8

const (
	// TaskOpen: fencing the replicas, choosing the current ones, resyncing.
	TaskOpen TaskKind = iota + 1
	// TaskRebuild: copying a member's data from a current replica.
	TaskRebuild
	// TaskMembership: recording a membership on a quorum.
	TaskMembership
	// TaskAdmin: a control-plane request (queued or running).
	TaskAdmin
)

var taskKindNames = [...]string{"?", "open", "rebuild", "membership", "admin"}

func (k TaskKind) String() string {
	if int(k) < len(taskKindNames) {
		return taskKindNames[k]
	}
	return fmt.Sprintf("task(%d)", uint8(k))
}

// TaskInfo is one task the engine is running or has queued, as an
// operator (`drover volume info --debug`) and the simulator's failure
// reports see it: what it is, where it is, and what it waits for.
type TaskInfo struct {
	Kind TaskKind
	// Stage is where the task is: open's ask, fence, corroborate,
	// repair, resync, repair-others, settle or retry; rebuild's stages
	// (open, expand, join, snapshot, snapshotting, chain, copy, flush,
	// promote); membership's "recording"; admin's "queued" or "running".
	Stage string
	// Detail says what the task works on (replicas, layer, progress,
	// the operation and its name).
	Detail string
}

func (t TaskInfo) String() string {
	if t.Detail == "" {
		return t.Kind.String() + " " + t.Stage
	}
	return t.Kind.String() + " " + t.Stage + ": " + t.Detail
}

// Tasks lists the tasks the engine is running and has queued, oldest
// first: an open (or the wait before the next attempt), the rebuild,
// a membership change, then the admin queue.
func (e *Engine) Tasks() []TaskInfo {
	var out []TaskInfo
	switch {
	case e.opening != nil:
		t := e.opening
		d := fmt.Sprintf("epoch %d, %d answered, %d fenced", e.epoch, len(t.infos), len(t.fenced))
		if t.best != nil {
			d += fmt.Sprintf(", membership gen %d", t.best.Gen)
		}
		out = append(out, TaskInfo{Kind: TaskOpen, Stage: t.stage, Detail: d})
	case e.phase == PhaseOpening:
		out = append(out, TaskInfo{Kind: TaskOpen, Stage: "retry", Detail: fmt.Sprintf("at tick %d: %s", e.retryAt, e.why)})
	}
	if rb := e.rebuild; rb != nil {
		d := fmt.Sprintf("%s from %s, %d of %d blocks scanned, %d copied", rb.target, rb.source, rb.scanned, rb.blocksTotal, rb.copied)
		if rb.sync != nil {
			name := rb.sync.layer
			if name == "" {
				name = "head"
			}
			d += fmt.Sprintf(", layer %s", name)
		}
		out = append(out, TaskInfo{Kind: TaskRebuild, Stage: rb.stage, Detail: d})
	}
	if c := e.change; c != nil {
		acked := make([]string, 0, len(c.acks))
		for _, id := range sortedIDs(c.acks) {
			acked = append(acked, string(id))
		}
		out = append(out, TaskInfo{Kind: TaskMembership, Stage: "recording",
			Detail: fmt.Sprintf("gen %d, recorded on [%s], %d answers awaited", c.next.Gen, strings.Join(acked, " "), c.left)})
	}
	for _, t := range e.admin {
		stage := "queued"
		if t.started {
			stage = "running"
		}
		d := t.req.Op.String()
		if t.req.Name != "" {
			d += " " + t.req.Name
		}
		if t.req.Replica != "" {
			d += " " + string(t.req.Replica)
		}
		if t.internal {
			d += " (internal)"
		}
		out = append(out, TaskInfo{Kind: TaskAdmin, Stage: stage, Detail: d})
	}
	return out
}
