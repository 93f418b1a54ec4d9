package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/drover-io/drover/core/proto"
)

// replicaSetTarget restores a backup straight into new replica
// directories (no engine): every write goes to each replica through its
// core, at epoch 1, then a flush. An engine (drover dev --data-dir, or
// drover replica + drover engine) opens them afterwards as any replicas:
// it fences them at a higher epoch and finds them equal.
type replicaSetTarget struct {
	mu     sync.Mutex // requests reach replicas in id order (they drop older ids as duplicates)
	reps   []*replicaDir
	nextID uint64
	seq    uint64
	size   uint64
}

// openReplicaSet creates replicas dirs[i] named ids[i] of sizeBytes; each
// directory must not hold a replica yet.
func openReplicaSet(dirs []string, ids []string, sizeBytes uint64) (*replicaSetTarget, error) {
	t := &replicaSetTarget{size: sizeBytes}
	for i, dir := range dirs {
		if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
			t.Close()
			return nil, fmt.Errorf("restore into %s: the directory is not empty (restore makes new replicas)", dir)
		}
		r, err := openReplicaDir(dir, proto.ReplicaID(ids[i]), sizeBytes)
		if err != nil {
			t.Close()
			return nil, err
		}
		t.reps = append(t.reps, r)
	}
	if err := t.do(proto.Request{Op: proto.OpOpen}); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// do sends req to every replica and waits for each to answer.
func (t *replicaSetTarget) do(req proto.Request) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.nextID++
	req.ID, req.Epoch = t.nextID, 1
	if req.Op == proto.OpWrite || req.Op == proto.OpWriteZeroes {
		t.seq++
		req.Seq = t.seq
	}
	for _, r := range t.reps {
		if rep := r.runner.Do(req); rep.Status != proto.StatusOK {
			return fmt.Errorf("replica %s: %v: %v %s", r.runner.ID(), req.Op, rep.Status, rep.Err)
		}
	}
	return nil
}

func (t *replicaSetTarget) SizeBytes(context.Context) (uint64, error) { return t.size, nil }

func (t *replicaSetTarget) Grow(_ context.Context, sizeBytes uint64) error {
	if sizeBytes <= t.size {
		return nil
	}
	if err := t.do(proto.Request{Op: proto.OpExpand, SizeBytes: sizeBytes}); err != nil {
		return err
	}
	t.size = sizeBytes
	return nil
}

func (t *replicaSetTarget) WriteAt(_ context.Context, p []byte, off uint64) error {
	for len(p) > 0 {
		n := min(len(p), 1024*proto.BlockSize)
		if err := t.do(proto.Request{Op: proto.OpWrite, BlockIndex: off / proto.BlockSize, BlockCount: uint32(n / proto.BlockSize),
			Data: p[:n]}); err != nil {
			return err
		}
		p, off = p[n:], off+uint64(n)
	}
	return nil
}

func (t *replicaSetTarget) WriteZeroes(_ context.Context, off, length uint64) error {
	for length > 0 {
		n := min(length, 1024*proto.BlockSize)
		if err := t.do(proto.Request{Op: proto.OpWriteZeroes, BlockIndex: off / proto.BlockSize, BlockCount: uint32(n / proto.BlockSize)}); err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

func (t *replicaSetTarget) Flush(context.Context) error {
	return t.do(proto.Request{Op: proto.OpFlush, Seq: t.seq})
}

// Close closes every replica.
func (t *replicaSetTarget) Close() error {
	var first error
	for _, r := range t.reps {
		if err := r.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// devReplicaDirs returns drover dev's replica directories in dataDir.
func devReplicaDirs(dataDir string) ([]string, []string) {
	var dirs, ids []string
	for i := 1; i <= devReplicas; i++ {
		id := fmt.Sprintf("dev-%d", i)
		dirs, ids = append(dirs, filepath.Join(dataDir, id)), append(ids, id)
	}
	return dirs, ids
}
