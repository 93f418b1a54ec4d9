package engine

import (
	"fmt"

	"github.com/drover-io/drover/core/proto"
)

// EventKind names something an operator wants to know happened.
type EventKind uint8

const (
	// EventCorrupt: a replica answered a read with a block that failed
	// its checksum (Block names it).
	EventCorrupt EventKind = iota + 1
	// EventRepaired: read repair rewrote that replica's copy of a block
	// read corrupt from it, from a good copy (Block is the read's first).
	EventRepaired
	// EventReplicaFailed: a replica left the RW set (Why says why).
	EventReplicaFailed
	// EventStaleAtOpen: the open found a member that cannot prove it
	// holds the newest data; it is rebuilt (Why says why).
	EventStaleAtOpen
	// EventRebuildStarted, EventRebuildDone, EventRebuildFailed: a
	// rebuild of Replica began or ended (Why: the source, or the error).
	EventRebuildStarted
	EventRebuildDone
	EventRebuildFailed
	// EventInternalFailed: a task the engine queued itself (the merge of
	// a rebuild snapshot) failed; it is tried again (Why says why).
	EventInternalFailed
)

var eventNames = [...]string{"?", "corrupt block", "block repaired", "replica failed",
	"stale replica at open", "rebuild started", "rebuild done", "rebuild failed", "internal task failed"}

func (k EventKind) String() string {
	if int(k) < len(eventNames) {
		return eventNames[k]
	}
	return fmt.Sprintf("event(%d)", uint8(k))
}

// Event is one thing that happened, for the driver to log. Events come
// out in Ready in the order they happened; they promise nothing and need
// no answer.
type Event struct {
	Kind    EventKind
	Replica proto.ReplicaID
	Block   uint64
	Why     string
}

// Counters count events since the engine started (VolumeInfo.Counters):
// what a metrics endpoint exports.
type Counters struct {
	CorruptBlocks  uint64 // corrupt blocks replicas answered reads with
	RepairedBlocks uint64 // read repairs that rewrote a corrupt copy
	ReplicaFailed  uint64 // replicas that left the RW set
	StaleAtOpen    uint64 // members an open found could not prove they are current
	RebuildsDone   uint64
	RebuildsFailed uint64
	// HeartbeatFailures counts lease heartbeats an RW replica did not
	// answer, answered with an error, or answered as restarted (each one
	// counts, whether or not it took the replica out of the set).
	HeartbeatFailures uint64
}

// event records ev in the next Ready and counts it.
func (e *Engine) event(ev Event) {
	switch ev.Kind {
	case EventCorrupt:
		e.counters.CorruptBlocks++
	case EventRepaired:
		e.counters.RepairedBlocks++
	case EventReplicaFailed:
		e.counters.ReplicaFailed++
	case EventStaleAtOpen:
		e.counters.StaleAtOpen++
	case EventRebuildDone:
		e.counters.RebuildsDone++
	case EventRebuildFailed:
		e.counters.RebuildsFailed++
	}
	e.ready.Events = append(e.ready.Events, ev)
}
