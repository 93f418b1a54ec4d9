package replicarun

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover-io/drover/core/memstore"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/core/store"
	"github.com/drover-io/drover/transports/link"
)

const testSize = 1 << 20 // 256 blocks

func openMem(t *testing.T) (*Runner, *memstore.Store) {
	t.Helper()
	st := memstore.New()
	r, err := Open(replica.Config{ID: "r1", CreateSizeBytes: testSize}, NewLockedExecutor(st))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if rep := r.Do(proto.Request{ID: 1, Epoch: 1, Op: proto.OpOpen}); rep.Status != proto.StatusOK {
		t.Fatalf("open epoch 1: %v %s", rep.Status, rep.Err)
	}
	return r, st
}

func block(v byte) []byte { return bytes.Repeat([]byte{v}, proto.BlockSize) }

func TestOpenMissingReplicaIsLoadError(t *testing.T) {
	_, err := Open(replica.Config{ID: "gone"}, NewLockedExecutor(memstore.New()))
	var le *LoadError
	if !errors.As(err, &le) || le.ID != "gone" || le.Reason == "" {
		t.Fatalf("want a LoadError naming the replica, got %v", err)
	}
	t.Log(err)
}

func TestOpenBadMetadataIsLoadError(t *testing.T) {
	st := memstore.New()
	st.Execute(storeWriteMeta([]byte("not metadata")))
	_, err := Open(replica.Config{ID: "bad"}, NewLockedExecutor(st))
	var le *LoadError
	if !errors.As(err, &le) {
		t.Fatalf("want a LoadError, got %v", err)
	}
	if le.Last.Kind != store.ReadMeta || le.Part() != "metadata" {
		t.Fatalf("load stopped at %v (%s), want the metadata read", le.Last.Kind, le.Part())
	}
	t.Log(err)
}

// TestFailedRunnerAnswersWhy: a failed Runner answers every request, in
// process and as a handler, with StatusIOError and why.
func TestFailedRunnerAnswersWhy(t *testing.T) {
	r := NewFailed("r1", "bad metadata in /d/meta")
	for _, op := range []proto.Op{proto.OpInfo, proto.OpOpen, proto.OpWrite} {
		rep := r.Do(proto.Request{ID: 7, Epoch: 1, Op: op, BlockCount: 1, Data: block(1)})
		if rep.ID != 7 || rep.Status != proto.StatusIOError || !strings.Contains(rep.Err, "bad metadata in /d/meta") {
			t.Fatalf("%v: %+v, want StatusIOError with the reason", op, rep)
		}
	}
	if r.Failed() == "" || r.Info().ID != "r1" {
		t.Fatalf("Failed %q, Info %+v", r.Failed(), r.Info())
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestSizeCheckRefusesExpand: an expand the size check refuses gets
// StatusInvalid with its reason and leaves the size; one to the current
// size is not checked; one the check takes goes through.
func TestSizeCheckRefusesExpand(t *testing.T) {
	r, _ := openMem(t)
	var checked []uint64
	r.SetSizeCheck(func(n uint64) error {
		checked = append(checked, n)
		if n > 4*testSize {
			return errors.New("too big for this disk")
		}
		return nil
	})
	rep := r.Do(proto.Request{ID: 2, Epoch: 1, Op: proto.OpExpand, SizeBytes: 8 * testSize})
	if rep.Status != proto.StatusInvalid || !strings.Contains(rep.Err, "too big for this disk") {
		t.Fatalf("expand over the limit: %+v", rep)
	}
	if got := r.Info().SizeBytes; got != testSize {
		t.Fatalf("size after a refused expand = %d, want %d", got, testSize)
	}
	if rep := r.Do(proto.Request{ID: 3, Epoch: 1, Op: proto.OpExpand, SizeBytes: testSize}); rep.Status != proto.StatusOK {
		t.Fatalf("expand to the same size: %+v", rep)
	}
	if rep := r.Do(proto.Request{ID: 4, Epoch: 1, Op: proto.OpExpand, SizeBytes: 2 * testSize}); rep.Status != proto.StatusOK {
		t.Fatalf("expand within the limit: %+v", rep)
	}
	if got := r.Info().SizeBytes; got != 2*testSize {
		t.Fatalf("size = %d, want %d", got, 2*testSize)
	}
	if len(checked) != 2 || checked[0] != 8*testSize || checked[1] != 2*testSize {
		t.Fatalf("checked %v, want the two growing expands", checked)
	}
}

func TestWriteReadFlushReopen(t *testing.T) {
	r, st := openMem(t)
	id := uint64(2)
	do := func(req proto.Request) proto.Reply {
		id++
		req.ID, req.Epoch = id, 1
		rep := r.Do(req)
		if rep.ID != req.ID {
			t.Fatalf("reply id %d for request %d", rep.ID, req.ID)
		}
		return rep
	}
	if rep := do(proto.Request{Op: proto.OpWrite, BlockIndex: 5, BlockCount: 2, Data: append(block(7), block(8)...), Seq: 1}); rep.Status != proto.StatusOK {
		t.Fatalf("write: %v %s", rep.Status, rep.Err)
	}
	if rep := do(proto.Request{Op: proto.OpFlush, Seq: 1}); rep.Status != proto.StatusOK {
		t.Fatalf("flush: %v %s", rep.Status, rep.Err)
	}
	rep := do(proto.Request{Op: proto.OpRead, BlockIndex: 4, BlockCount: 4})
	want := append(append(append(block(0), block(7)...), block(8)...), block(0)...)
	if rep.Status != proto.StatusOK || !bytes.Equal(rep.Data, want) {
		t.Fatalf("read: %v %s", rep.Status, rep.Err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r2, err := Open(replica.Config{ID: "r1"}, NewLockedExecutor(st))
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	if info := r2.Info(); info.FlushedSeq != 1 || info.Epoch != 1 {
		t.Fatalf("reopened info: %+v", info)
	}
	rep = r2.Do(proto.Request{ID: 1, Epoch: 2, Op: proto.OpOpen})
	if rep.Status != proto.StatusOK {
		t.Fatalf("open epoch 2: %v", rep.Status)
	}
	rep = r2.Do(proto.Request{ID: 2, Epoch: 2, Op: proto.OpRead, BlockIndex: 4, BlockCount: 4})
	if !bytes.Equal(rep.Data, want) {
		t.Fatal("flushed data lost across reopen")
	}
}

// TestLocalLinkConcurrent sends writes, reads and flushes from many
// goroutines over several local links and checks every request gets exactly one reply,
// OnReply never runs concurrently for one link, and the data is right.
func TestLocalLinkConcurrent(t *testing.T) {
	r, _ := openMem(t)
	const links, perLink = 4, 200
	var wg sync.WaitGroup
	// The replica drops a request whose id is not above the last one of its
	// epoch as a duplicate, so ids are drawn and sent under one lock, as
	// an engine does.
	var sendMu sync.Mutex
	nextID := uint64(10)
	send := func(l link.Link, reqs ...proto.Request) []proto.Request {
		sendMu.Lock()
		defer sendMu.Unlock()
		for i := range reqs {
			nextID++
			reqs[i].ID = nextID
		}
		l.Send(reqs...)
		return reqs
	}
	for li := range links {
		var inReply atomic.Int32
		got := map[uint64]proto.Reply{}
		var gotMu sync.Mutex
		done := make(chan struct{})
		l := NewLocalLink(r, link.Handler{OnReply: func(rep proto.Reply) {
			if inReply.Add(1) != 1 {
				t.Error("OnReply ran concurrently for one link")
			}
			gotMu.Lock()
			if _, dup := got[rep.ID]; dup {
				t.Errorf("two replies for request %d", rep.ID)
			}
			got[rep.ID] = rep
			if len(got) == 2*perLink {
				close(done)
			}
			gotMu.Unlock()
			inReply.Add(-1)
		}})
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer l.Close()
			var sent []proto.Request
			for i := range perLink {
				b := uint64(li*50 + i%50)
				w := proto.Request{Epoch: 1, Op: proto.OpWrite, BlockIndex: b, BlockCount: 1, Data: block(byte(li + 1))}
				rd := proto.Request{Epoch: 1, Op: proto.OpRead, BlockIndex: b, BlockCount: 1}
				if i%10 == 9 {
					rd = proto.Request{Epoch: 1, Op: proto.OpFlush}
				}
				sent = append(sent, send(l, w, rd)...)
			}
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Errorf("link %d: replies missing", li)
				return
			}
			gotMu.Lock()
			defer gotMu.Unlock()
			for _, req := range sent {
				rep := got[req.ID]
				if rep.Status != proto.StatusOK {
					t.Errorf("%v %d: %v %s", req.Op, req.ID, rep.Status, rep.Err)
				}
				if req.Op == proto.OpRead && rep.Status == proto.StatusOK && !bytes.Equal(rep.Data, block(byte(li+1))) {
					t.Errorf("read %d: wrong data", req.ID)
				}
			}
		}()
	}
	wg.Wait()
}

// TestSendFromOnReply checks a Send made inside OnReply neither deadlocks
// nor reorders: its reply arrives after OnReply returns.
func TestSendFromOnReply(t *testing.T) {
	r, _ := openMem(t)
	var l link.Link
	var order []uint64
	depth := 0
	l = NewLocalLink(r, link.Handler{OnReply: func(rep proto.Reply) {
		depth++
		if depth > 1 {
			t.Error("OnReply re-entered")
		}
		order = append(order, rep.ID)
		if rep.ID < 20 {
			l.Send(proto.Request{ID: rep.ID + 1, Epoch: 1, Op: proto.OpRead, BlockIndex: 0, BlockCount: 1})
		}
		depth--
	}})
	l.Send(proto.Request{ID: 10, Epoch: 1, Op: proto.OpRead, BlockIndex: 0, BlockCount: 1})
	if len(order) != 11 || order[10] != 20 {
		t.Fatalf("replies %v", order)
	}
}

func TestCloseCallsOnDown(t *testing.T) {
	r, _ := openMem(t)
	downs := make(chan error, 2)
	l := NewLocalLink(r, link.Handler{OnReply: func(proto.Reply) {}, OnDown: func(err error) { downs <- err }})
	closedLink := NewLocalLink(r, link.Handler{OnDown: func(err error) { downs <- err }})
	closedLink.Close()
	r.Close()
	select {
	case err := <-downs:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("OnDown(%v), want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no OnDown after the runner closed")
	}
	select {
	case err := <-downs:
		t.Fatalf("a closed link heard OnDown(%v)", err)
	default:
	}
	l.Send(proto.Request{ID: 99, Epoch: 1, Op: proto.OpRead, BlockCount: 1}) // dropped silently
	if rep := r.Do(proto.Request{ID: 100, Epoch: 1, Op: proto.OpInfo}); rep.Status != proto.StatusNotReady {
		t.Fatalf("request after close: %v", rep.Status)
	}
}

// TestStaleEpochReusingID checks a request from a fenced epoch is answered
// at once with StatusStaleEpoch, to its own caller.
func TestStaleEpochReusingID(t *testing.T) {
	r, _ := openMem(t)
	if rep := r.Do(proto.Request{ID: 5, Epoch: 2, Op: proto.OpOpen}); rep.Status != proto.StatusOK {
		t.Fatalf("open 2: %v", rep.Status)
	}
	rep := r.Do(proto.Request{ID: 6, Epoch: 1, Op: proto.OpWrite, BlockCount: 1, Data: block(1)})
	if rep.Status != proto.StatusStaleEpoch || rep.ID != 6 {
		t.Fatalf("stale write: %v id %d", rep.Status, rep.ID)
	}
}

func storeWriteMeta(b []byte) store.IO { return store.IO{Kind: store.WriteMeta, Meta: b} }

// meetingExecutor holds each uncached read until another one is executing
// too (or a second has passed, counted as a miss).
type meetingExecutor struct {
	Executor
	arrived chan struct{}
	misses  atomic.Int32
}

func (m *meetingExecutor) Execute(io store.IO) store.Completion {
	if io.Kind == store.ReadData && io.Uncached {
		select {
		case m.arrived <- struct{}{}:
		case <-m.arrived:
		case <-time.After(time.Second):
			m.misses.Add(1)
		}
	}
	return m.Executor.Execute(io)
}

// TestUncachedReadsRunInParallel: two layer reads (a rebuild source's)
// handed in one after another on one goroutine are executed at the same
// time, not one after the other on that goroutine.
func TestUncachedReadsRunInParallel(t *testing.T) {
	ex := &meetingExecutor{Executor: NewLockedExecutor(memstore.New()), arrived: make(chan struct{})}
	r, err := Open(replica.Config{ID: "r1", CreateSizeBytes: testSize}, ex)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if rep := r.Do(proto.Request{ID: 1, Epoch: 1, Op: proto.OpOpen}); rep.Status != proto.StatusOK {
		t.Fatalf("open: %v %s", rep.Status, rep.Err)
	}
	if rep := r.Do(proto.Request{ID: 2, Epoch: 1, Op: proto.OpWrite, BlockIndex: 0, BlockCount: 1, Data: block(9)}); rep.Status != proto.StatusOK {
		t.Fatalf("write: %v %s", rep.Status, rep.Err)
	}
	var wg sync.WaitGroup
	for i, at := range []uint64{0, 8} {
		wg.Add(1)
		r.Handle(proto.Request{ID: uint64(3 + i), Epoch: 1, Op: proto.OpLayerRead, BlockIndex: at, BlockCount: 4}, func(rep proto.Reply) {
			defer wg.Done()
			if rep.Status != proto.StatusOK {
				t.Errorf("layer read at %d: %v %s", at, rep.Status, rep.Err)
			}
		})
	}
	wg.Wait()
	if n := ex.misses.Load(); n > 0 {
		t.Fatalf("%d layer reads ran alone: uncached reads are not executed in parallel", n)
	}
}
