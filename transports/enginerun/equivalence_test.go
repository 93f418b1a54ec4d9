package enginerun_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/drover-io/drover/core/drive"
	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/enginerun"
	"github.com/drover-io/drover/transports/filestore"
	"github.com/drover-io/drover/transports/replicadir"
	"github.com/drover-io/drover/transports/replicarun"
	"github.com/drover-io/drover/transports/tcp"
)

// The equivalence test runs one seeded operation sequence through the
// synchronous in-memory harness (core/drive.Cluster: the core's own
// effects on memstores, events in a seeded order) and through the real
// stack (enginerun over TCP loopback to three replicarun replicas on
// filestore directories), and requires every 4 KiB block to end with the
// same CRC32C in both: read through each engine, read from each replica
// directly (the real ones reopened from their directories after
// everything was closed), and in a flat reference of what the sequence
// should leave.

const (
	eqStartBlocks = 1024 // 4 MiB
	eqGrowBlocks  = 256  // each expand adds 1 MiB
	eqMaxExpands  = 2
	eqOps         = 400
	eqMaxChunk    = 1024 // blocks per read request
)

var eqReplicas = []proto.ReplicaID{"r1", "r2", "r3"}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type eqKind uint8

const (
	eqWrite eqKind = iota + 1
	eqTrim
	eqWriteZeroes
	eqFlush
	eqRead
	eqSnapshot
	eqDeleteSnapshot
	eqExpand
)

// eqOp is one step of the sequence: a frontend request or an admin one.
type eqOp struct {
	kind  eqKind
	req   engine.Request
	admin engine.AdminRequest
}

// eqSequence generates n ops for a volume starting at eqStartBlocks and
// the content they leave (ref). Every written block carries its op index
// and block index in its first 16 bytes and seeded noise after, so no
// two writes put the same bytes anywhere.
func eqSequence(seed uint64, n int) (ops []eqOp, ref []byte) {
	rng := rand.New(rand.NewPCG(seed, 0x6571))
	blocks := uint64(eqStartBlocks)
	ref = make([]byte, blocks*proto.BlockSize)
	var snaps []string
	expands, snapNo := 0, 0
	span := func(maxCount int) (uint64, uint32) {
		count := uint64(1 + rng.IntN(maxCount))
		if rng.IntN(10) == 0 && blocks > 8 {
			// Near the end (after an expand: across the old boundary).
			return blocks - min(count, blocks), uint32(min(count, blocks))
		}
		b := rng.Uint64N(blocks - count + 1)
		return b, uint32(count)
	}
	for i := 0; i < n; i++ {
		var op eqOp
		switch r := rng.IntN(100); {
		case r < 50:
			b, c := span(16)
			data := make([]byte, uint64(c)*proto.BlockSize)
			for k := uint64(0); k < uint64(c); k++ {
				blk := data[k*proto.BlockSize : (k+1)*proto.BlockSize]
				binary.LittleEndian.PutUint64(blk[0:], uint64(i+1))
				binary.LittleEndian.PutUint64(blk[8:], b+k)
				for j := 16; j < len(blk); j += 8 {
					binary.LittleEndian.PutUint64(blk[j:], rng.Uint64())
				}
			}
			op = eqOp{kind: eqWrite, req: engine.Request{Op: proto.OpWrite, BlockIndex: b, BlockCount: c, Data: data, FUA: rng.IntN(8) == 0}}
			copy(ref[b*proto.BlockSize:], data)
		case r < 60:
			b, c := span(32)
			op = eqOp{kind: eqTrim, req: engine.Request{Op: proto.OpTrim, BlockIndex: b, BlockCount: c}}
			clear(ref[b*proto.BlockSize : (b+uint64(c))*proto.BlockSize])
		case r < 70:
			b, c := span(32)
			op = eqOp{kind: eqWriteZeroes, req: engine.Request{Op: proto.OpWriteZeroes, BlockIndex: b, BlockCount: c, FUA: rng.IntN(8) == 0}}
			clear(ref[b*proto.BlockSize : (b+uint64(c))*proto.BlockSize])
		case r < 78:
			op = eqOp{kind: eqFlush, req: engine.Request{Op: proto.OpFlush}}
		case r < 88:
			b, c := span(64)
			op = eqOp{kind: eqRead, req: engine.Request{Op: proto.OpRead, BlockIndex: b, BlockCount: c}}
		case r < 94 || len(snaps) == 0:
			snapNo++
			name := fmt.Sprintf("s%d", snapNo)
			snaps = append(snaps, name)
			op = eqOp{kind: eqSnapshot, admin: engine.AdminRequest{Op: engine.AdminSnapshot, Name: name}}
		case r < 98 || expands == eqMaxExpands:
			k := rng.IntN(len(snaps))
			op = eqOp{kind: eqDeleteSnapshot, admin: engine.AdminRequest{Op: engine.AdminDeleteSnapshot, Name: snaps[k]}}
			snaps = slices.Delete(snaps, k, k+1)
		default:
			expands++
			blocks += eqGrowBlocks
			ref = append(ref, make([]byte, eqGrowBlocks*proto.BlockSize)...)
			op = eqOp{kind: eqExpand, admin: engine.AdminRequest{Op: engine.AdminExpand, SizeBytes: blocks * proto.BlockSize}}
		}
		ops = append(ops, op)
	}
	// End flushed, so the replicas reopened from disk hold everything.
	ops = append(ops, eqOp{kind: eqFlush, req: engine.Request{Op: proto.OpFlush}})
	return ops, ref
}

// eqStack is one way of running the sequence.
type eqStack interface {
	submit(req engine.Request) (engine.Reply, error)
	admin(req engine.AdminRequest) error
	chain() ([]string, error)
}

// runSequence runs ops on s, checking every read against the content
// the ops before it left.
func runSequence(t *testing.T, name string, s eqStack, ops []eqOp) {
	t.Helper()
	model := make([]byte, eqStartBlocks*proto.BlockSize)
	for i, op := range ops {
		var err error
		switch op.kind {
		case eqSnapshot, eqDeleteSnapshot, eqExpand:
			err = s.admin(op.admin)
			if op.kind == eqExpand {
				model = append(model, make([]byte, op.admin.SizeBytes-uint64(len(model)))...)
			}
		default:
			var rep engine.Reply
			rep, err = s.submit(op.req)
			if err == nil {
				err = rep.Err
			}
			at := op.req.BlockIndex * proto.BlockSize
			end := at + uint64(op.req.BlockCount)*proto.BlockSize
			switch op.kind {
			case eqWrite:
				copy(model[at:], op.req.Data)
			case eqTrim, eqWriteZeroes:
				clear(model[at:end])
			case eqRead:
				if err == nil && !bytes.Equal(rep.Data, model[at:end]) {
					t.Fatalf("%s: op %d: read [%d, +%d) differs from what the ops before it wrote", name, i, op.req.BlockIndex, op.req.BlockCount)
				}
			}
		}
		if err != nil {
			t.Fatalf("%s: op %d (%+v %+v): %v", name, i, op.req.Op, op.admin, err)
		}
	}
}

// blockCRCs returns the CRC32C of every block of content.
func blockCRCs(content []byte) []uint32 {
	out := make([]uint32, len(content)/proto.BlockSize)
	for i := range out {
		out[i] = crc32.Checksum(content[i*proto.BlockSize:(i+1)*proto.BlockSize], castagnoli)
	}
	return out
}

// readAll reads blocks [0, n) in chunks with read.
func readAll(n uint64, read func(b uint64, count uint32) ([]byte, error)) ([]byte, error) {
	out := make([]byte, 0, n*proto.BlockSize)
	for b := uint64(0); b < n; b += eqMaxChunk {
		count := uint32(min(eqMaxChunk, n-b))
		data, err := read(b, count)
		if err != nil {
			return nil, fmt.Errorf("read [%d, +%d): %w", b, count, err)
		}
		if len(data) != int(count)*proto.BlockSize {
			return nil, fmt.Errorf("read [%d, +%d): got %d bytes", b, count, len(data))
		}
		out = append(out, data...)
	}
	return out, nil
}

// simStack is core/drive.Cluster: engine and replicas stepped
// synchronously on memstores.
type simStack struct{ c *drive.Cluster }

const simMaxTicks = 5000

func (s simStack) submit(req engine.Request) (engine.Reply, error) {
	rep, ok := s.c.Do(req, simMaxTicks)
	if !ok {
		return rep, fmt.Errorf("no reply within %d ticks", simMaxTicks)
	}
	return rep, nil
}

func (s simStack) admin(req engine.AdminRequest) error {
	rep, ok := s.c.Admin(req, simMaxTicks)
	if !ok {
		return fmt.Errorf("no admin reply within %d ticks", simMaxTicks)
	}
	return rep.Err
}

func (s simStack) chain() ([]string, error) {
	rep, ok := s.c.Admin(engine.AdminRequest{Op: engine.AdminInfo}, simMaxTicks)
	if !ok || rep.Info == nil {
		return nil, fmt.Errorf("no info (err %v)", rep.Err)
	}
	return rep.Info.Chain, nil
}

// realStack is enginerun over TCP to replicas on filestore.
type realStack struct{ d *enginerun.Driver }

func (s realStack) submit(req engine.Request) (engine.Reply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return s.d.Submit(ctx, req)
}

func (s realStack) admin(req engine.AdminRequest) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := s.d.Admin(ctx, req)
	return err
}

func (s realStack) chain() ([]string, error) {
	info, err := s.d.Info(context.Background())
	return info.Chain, err
}

// realReplica is one replica process's parts, in this process.
type realReplica struct {
	id     proto.ReplicaID
	dir    string
	store  *filestore.Store
	runner *replicarun.Runner
	srv    *tcp.Server
	addr   string
}

func startRealReplica(t *testing.T, id proto.ReplicaID, dir string, sizeBytes uint64) *realReplica {
	t.Helper()
	rd, err := replicadir.Open(replicadir.Config{Dir: dir, ID: id, CreateSizeBytes: sizeBytes})
	if err != nil {
		t.Fatal(err)
	}
	r, st := rd.Runner, rd.Store
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := tcp.NewServer(r, t.Logf)
	go func() { _ = srv.Serve(ln) }()
	return &realReplica{id: id, dir: dir, store: st, runner: r, srv: srv, addr: ln.Addr().String()}
}

func (r *realReplica) close() {
	if r.srv != nil {
		r.srv.Close()
		r.runner.Close()
		r.store.Close()
		r.srv = nil
	}
}

// readReplicaDir opens a stopped replica's directory, fences it at an
// epoch above its own as an engine would, and reads blocks [0, n).
func readReplicaDir(id proto.ReplicaID, dir string, n uint64) ([]byte, proto.Info, error) {
	rd, err := replicadir.Open(replicadir.Config{Dir: dir, ID: id})
	if err != nil {
		return nil, proto.Info{}, err
	}
	defer rd.Close()
	r := rd.Runner
	info := r.Info()
	epoch := info.Epoch + 1
	if rep := r.Do(proto.Request{ID: 1, Epoch: epoch, Op: proto.OpOpen}); rep.Status != proto.StatusOK {
		return nil, info, fmt.Errorf("open: %v %s", rep.Status, rep.Err)
	}
	reqID := uint64(1)
	data, err := readAll(n, func(b uint64, count uint32) ([]byte, error) {
		reqID++
		rep := r.Do(proto.Request{ID: reqID, Epoch: epoch, Op: proto.OpRead, BlockIndex: b, BlockCount: count})
		if rep.Status != proto.StatusOK {
			return nil, fmt.Errorf("%v %s", rep.Status, rep.Err)
		}
		return rep.Data, nil
	})
	return data, info, err
}

// firstDiff names the first block whose CRC differs, for failures.
func firstDiff(a, b []uint32) string {
	if len(a) != len(b) {
		return fmt.Sprintf("%d blocks vs %d", len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			return fmt.Sprintf("block %d: crc32c %08x vs %08x", i, a[i], b[i])
		}
	}
	return ""
}

func TestSimAndRealStackEquivalent(t *testing.T) {
	for _, seed := range []uint64{1, 2} {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { testEquivalence(t, seed) })
	}
}

func testEquivalence(t *testing.T, seed uint64) {
	ops, ref := eqSequence(seed, eqOps)
	finalBlocks := uint64(len(ref)) / proto.BlockSize
	want := blockCRCs(ref)
	sums := map[string][]uint32{}

	// (a) The synchronous harness, its events in a seeded order.
	crng := rand.New(rand.NewPCG(seed, 0x73696d))
	c := drive.NewCluster(len(eqReplicas), eqStartBlocks*proto.BlockSize,
		engine.Config{Volume: "eq", Nonce: 1}, func(n int) int { return crng.IntN(n) })
	if !c.Engine().Serving() {
		t.Fatalf("sim: engine not serving: %+v", c.Engine().Info())
	}
	sim := simStack{c}
	runSequence(t, "sim", sim, ops)
	simChain, err := sim.chain()
	if err != nil {
		t.Fatalf("sim: %v", err)
	}
	vol, err := readAll(finalBlocks, func(b uint64, count uint32) ([]byte, error) {
		rep, err := sim.submit(engine.Request{Op: proto.OpRead, BlockIndex: b, BlockCount: count})
		if err == nil {
			err = rep.Err
		}
		return rep.Data, err
	})
	if err != nil {
		t.Fatalf("sim volume: %v", err)
	}
	sums["sim volume"] = blockCRCs(vol)
	c.Run(5, 1000) // quiesce before reading replicas directly
	for _, id := range eqReplicas {
		data, err := readAll(finalBlocks, func(b uint64, count uint32) ([]byte, error) {
			rep := c.Direct(id, proto.Request{Op: proto.OpRead, BlockIndex: b, BlockCount: count})
			if rep.Status != proto.StatusOK {
				return nil, fmt.Errorf("%v %s", rep.Status, rep.Err)
			}
			return rep.Data, nil
		})
		if err != nil {
			t.Fatalf("sim replica %s: %v", id, err)
		}
		sums["sim replica "+string(id)] = blockCRCs(data)
	}

	// (b) The real stack: filestore replicas served over loopback TCP.
	reps := make([]*realReplica, len(eqReplicas))
	cfg := enginerun.Config{Volume: "eq", Dial: tcp.Dial, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for i, id := range eqReplicas {
		reps[i] = startRealReplica(t, id, t.TempDir(), eqStartBlocks*proto.BlockSize)
		defer reps[i].close()
		cfg.Replicas = append(cfg.Replicas, enginerun.Replica{ID: id, Addr: reps[i].addr})
	}
	d, err := enginerun.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}
	rs := realStack{d}
	runSequence(t, "real", rs, ops)
	realChain, err := rs.chain()
	if err != nil {
		t.Fatalf("real: %v", err)
	}
	vol, err = readAll(finalBlocks, func(b uint64, count uint32) ([]byte, error) {
		rep, err := rs.submit(engine.Request{Op: proto.OpRead, BlockIndex: b, BlockCount: count})
		if err == nil {
			err = rep.Err
		}
		return rep.Data, err
	})
	if err != nil {
		t.Fatalf("real volume: %v", err)
	}
	sums["real volume"] = blockCRCs(vol)
	info, err := d.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range info.Replicas {
		if r.Mode != engine.ModeRW {
			t.Errorf("real: replica %s is %v (%s), want RW", r.ID, r.Mode, r.Why)
		}
	}
	_ = d.Close()
	for _, r := range reps {
		r.close()
		data, rinfo, err := readReplicaDir(r.id, r.dir, finalBlocks)
		if err != nil {
			t.Fatalf("real replica %s reopened from %s: %v", r.id, r.dir, err)
		}
		if rinfo.SizeBytes != finalBlocks*proto.BlockSize {
			t.Errorf("real replica %s: size %d, want %d", r.id, rinfo.SizeBytes, finalBlocks*proto.BlockSize)
		}
		if !slices.Equal(rinfo.Chain, simChain) {
			t.Errorf("real replica %s: chain %v, the sim's engine has %v", r.id, rinfo.Chain, simChain)
		}
		sums["real replica "+string(r.id)] = blockCRCs(data)
	}

	if !slices.Equal(simChain, realChain) {
		t.Errorf("snapshot chains differ: sim %v, real %v", simChain, realChain)
	}
	names := make([]string, 0, len(sums))
	for name := range sums {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if diff := firstDiff(sums[name], want); diff != "" {
			t.Errorf("%s differs from the reference: %s", name, diff)
		}
	}
	if t.Failed() {
		return
	}
	t.Logf("seed %d: %d ops, %d blocks, snapshots %v; %d block checksums equal in %d views",
		seed, len(ops), finalBlocks, simChain, finalBlocks, len(sums))
}
