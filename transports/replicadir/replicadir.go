// Package replicadir opens a replica kept in a directory: a filestore
// (transports/filestore) under a replica driver (transports/replicarun).
// It is the one place that stack is assembled, so the replica process, the
// node agent, drover dev, the benchmarks and the tests all run a replica
// the same way (the production activity-log bound, the same creation and
// size checks) instead of each wiring the two parts by hand.
package replicadir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/core/store"
	"github.com/drover-io/drover/transports/filestore"
	"github.com/drover-io/drover/transports/replicarun"
)

// Config says which replica to open and how. The zero values of the
// optional fields open a replica without size limits.
type Config struct {
	// Dir is the replica's directory (filestore's layout).
	Dir string
	// ID names the replica to engines.
	ID proto.ReplicaID
	// CreateSizeBytes, when nonzero, creates a replica of that size if Dir
	// holds none (making Dir, mode 0700, if it is missing). Zero opens an
	// existing replica only: an empty Dir is an error.
	CreateSizeBytes uint64
	// Backing is a new replica's backing image; its files must already be
	// in Dir (transports/backingimage links them). Ignored for a replica
	// that exists.
	Backing *replica.Backing
	// CheckSize refuses, at creation and at every growing expand, a size
	// the file system cannot address or that exceeds
	// OverProvisioningPercent of it (filestore.Store.CheckSize; 0: the
	// store's default percentage). A refusal at creation is a
	// *filestore.SizeError and leaves nothing behind.
	CheckSize               bool
	OverProvisioningPercent int
}

// Replica is an open replica: its driver and the store under it.
type Replica struct {
	Runner *replicarun.Runner
	Store  *filestore.Store
	// Created reports that Open created the replica (Dir held none).
	Created bool
}

// Open opens the replica in cfg.Dir, creating it as cfg says. A replica
// whose data does not load yields an error wrapping *replicarun.LoadError
// (the caller may serve replicarun.NewFailed in its place).
func Open(cfg Config) (*Replica, error) {
	if cfg.Dir == "" {
		return nil, fmt.Errorf("open replica %s: no directory", cfg.ID)
	}
	made := false
	if cfg.CreateSizeBytes != 0 {
		if _, err := os.Stat(cfg.Dir); errors.Is(err, fs.ErrNotExist) {
			made = true
		}
		if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("replica %s: %w", cfg.Dir, err)
		}
	}
	st, err := filestore.Open(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("replica %s: %w", cfg.Dir, err)
	}
	created := holdsNoReplica(st)
	if cfg.CheckSize && cfg.CreateSizeBytes != 0 && created {
		if err := st.CheckSize(cfg.CreateSizeBytes, cfg.OverProvisioningPercent); err != nil {
			st.Close()
			if made {
				os.Remove(cfg.Dir) // still empty: leave nothing behind
			}
			return nil, err
		}
	}
	r, err := replicarun.Open(replica.Config{ID: cfg.ID, CreateSizeBytes: cfg.CreateSizeBytes,
		MaxActiveRegions: replicarun.ActiveRegions, Backing: cfg.Backing}, st)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("replica %s: %w", cfg.Dir, err)
	}
	if cfg.CheckSize {
		pct := cfg.OverProvisioningPercent
		r.SetSizeCheck(func(n uint64) error { return st.CheckSize(n, pct) })
	}
	return &Replica{Runner: r, Store: st, Created: created && cfg.CreateSizeBytes != 0}, nil
}

// Close stops the driver, then closes the store under it.
func (r *Replica) Close() error {
	rerr := r.Runner.Close()
	if err := r.Store.Close(); err != nil {
		return fmt.Errorf("close replica %s store: %w", r.Runner.ID(), err)
	}
	if rerr != nil {
		return fmt.Errorf("close replica %s: %w", r.Runner.ID(), rerr)
	}
	return nil
}

// holdsNoReplica reports whether st has no metadata yet: opening it
// creates a replica.
func holdsNoReplica(st *filestore.Store) bool {
	c := st.Execute(store.IO{Kind: store.ReadMeta})
	return c.Err == store.OK && c.Meta == nil
}
