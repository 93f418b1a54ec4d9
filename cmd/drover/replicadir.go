package main

import (
	"fmt"
	"os"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/transports/filestore"
	"github.com/drover-io/drover/transports/replicarun"
)

// replicaDir is a replica running on a directory.
type replicaDir struct {
	runner *replicarun.Runner
	store  *filestore.Store
}

// openReplicaDir opens the replica in dir, creating it with createBytes
// when the directory holds none and createBytes is not zero.
func openReplicaDir(dir string, id proto.ReplicaID, createBytes uint64) (*replicaDir, error) {
	if createBytes != 0 {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("replica %s: %w", dir, err)
		}
	}
	st, err := filestore.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("replica %s: %w", dir, err)
	}
	r, err := replicarun.Open(replica.Config{ID: id, CreateSizeBytes: createBytes,
		MaxActiveRegions: replicarun.ActiveRegions}, st)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("replica %s: %w", dir, err)
	}
	return &replicaDir{runner: r, store: st}, nil
}

// Close stops the replica and closes its files.
func (r *replicaDir) Close() error {
	err := r.runner.Close()
	if cerr := r.store.Close(); err == nil {
		err = cerr
	}
	return err
}
