package replica_test

import (
	"bytes"
	"testing"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
)

// flushedBlock opens a replica, writes block 0 with 1s and flushes it, so
// its index entry is durable and an overwrite needs write intents. It
// returns the replica's fault injector, a Do, and a send that requires
// the request to be answered at once with IOs left pending.
func flushedBlock(t *testing.T) (*faulty, func(proto.Request) proto.Reply, func(proto.Request)) {
	t.Helper()
	d := newDriver(16)
	f := &faulty{st: d.Store, fail: func(store.IO) store.Err { return store.OK }}
	d.Exec = f
	mustOK(t, "open", d.Do(proto.Request{ID: 1, Epoch: 1, Op: proto.OpOpen}))
	mustOK(t, "write", d.Do(proto.Request{ID: 2, Epoch: 1, Op: proto.OpWrite, BlockCount: 1, Data: block(1)}))
	mustOK(t, "flush", d.Do(proto.Request{ID: 3, Epoch: 1, Op: proto.OpFlush}))
	return f, d.Do, func(req proto.Request) {
		d.Send(req)
		reps := d.Replies()
		if len(reps) != 1 || reps[0].ID != req.ID {
			t.Fatalf("replies %+v, want request %d's answered early", reps, req.ID)
		}
		mustOK(t, "early reply", reps[0])
		if d.Pending() == 0 {
			t.Fatal("nothing pending: the write was not answered early")
		}
	}
}

// TestEarlyAckedWriteIsReadAndFlushed: an overwrite of a flushed block is
// answered before its intents and data are written (its buffer may be
// reused at once), and a read and a flush sent after the answer still see
// it.
func TestEarlyAckedWriteIsReadAndFlushed(t *testing.T) {
	_, do, sendEarly := flushedBlock(t)
	data := block(2)
	sendEarly(proto.Request{ID: 4, Epoch: 1, Op: proto.OpWrite, BlockCount: 1, Data: data})
	copy(data, block(9)) // the driver reuses the buffer once answered
	rep := mustOK(t, "read", do(proto.Request{ID: 5, Epoch: 1, Op: proto.OpRead, BlockCount: 1}))
	if !bytes.Equal(rep.Data, block(2)) {
		t.Fatalf("read after an early-acked write sees %d, want 2", rep.Data[0])
	}
	mustOK(t, "flush", do(proto.Request{ID: 6, Epoch: 1, Op: proto.OpFlush}))
}

// TestEarlyAckedWriteFailureFailsReplica: a write answered early whose
// data then fails to be written (or whose intents fail to be recorded)
// fails the replica, and is not answered a second time.
func TestEarlyAckedWriteFailureFailsReplica(t *testing.T) {
	for _, kind := range []store.Kind{store.WriteIntents, store.WriteData} {
		for _, st := range []store.Err{store.ErrIO, store.ErrNoSpace} {
			f, do, sendEarly := flushedBlock(t)
			f.fail = func(io store.IO) store.Err {
				if io.Kind == kind {
					return st
				}
				return store.OK
			}
			sendEarly(proto.Request{ID: 4, Epoch: 1, Op: proto.OpWrite, BlockCount: 1, Data: block(2)})
			rep := do(proto.Request{ID: 5, Epoch: 1, Op: proto.OpRead, BlockCount: 1})
			if rep.Status != proto.StatusIOError {
				t.Fatalf("%v fails with %v: read after it %v %s, want io error", kind, st, rep.Status, rep.Err)
			}
		}
	}
}

// TestFUAWriteIsNotAckedEarly: a FUA overwrite is answered only once
// durable.
func TestFUAWriteIsNotAckedEarly(t *testing.T) {
	d := newDriver(16)
	mustOK(t, "open", d.Do(proto.Request{ID: 1, Epoch: 1, Op: proto.OpOpen}))
	mustOK(t, "write", d.Do(proto.Request{ID: 2, Epoch: 1, Op: proto.OpWrite, BlockCount: 1, Data: block(1)}))
	mustOK(t, "flush", d.Do(proto.Request{ID: 3, Epoch: 1, Op: proto.OpFlush}))
	d.Send(proto.Request{ID: 4, Epoch: 1, Op: proto.OpWrite, BlockCount: 1, Data: block(2), FUA: true})
	if reps := d.Replies(); len(reps) > 0 {
		t.Fatalf("a FUA write answered before its IOs: %+v", reps)
	}
	d.Run()
	if reps := d.Replies(); len(reps) != 1 || reps[0].Status != proto.StatusOK {
		t.Fatalf("FUA write: %+v", reps)
	}
}
