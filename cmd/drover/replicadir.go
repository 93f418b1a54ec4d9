package main

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
	"github.com/drover-io/drover/transports/filestore"
	"github.com/drover-io/drover/transports/replicadir"
	"github.com/drover-io/drover/transports/replicarun"
)

// replicaDir is a replica running on a directory.
type replicaDir struct {
	runner *replicarun.Runner
	store  *filestore.Store
}

// openReplicaDir opens the replica in dir, creating it with createBytes
// when the directory holds none and createBytes is not zero, under the
// default over-provisioning limit.
func openReplicaDir(dir string, id proto.ReplicaID, createBytes uint64) (*replicaDir, error) {
	return openReplicaDirLimited(dir, id, createBytes, 0)
}

// openReplicaDirLimited is openReplicaDir with an over-provisioning limit
// (percent of the disk's size; 0: filestore's default). A size the store
// cannot hold is refused before the replica is created, and the Runner
// refuses an expand beyond it the same way.
func openReplicaDirLimited(dir string, id proto.ReplicaID, createBytes uint64, overProvisioningPercent int) (*replicaDir, error) {
	rd, err := replicadir.Open(replicadir.Config{Dir: dir, ID: id, CreateSizeBytes: createBytes,
		CheckSize: true, OverProvisioningPercent: overProvisioningPercent})
	if err != nil {
		return nil, sizeRefusal(err, "create")
	}
	if !rd.Created {
		// A replica made before sizes were checked (or moved to another
		// file system) may be larger than its files can grow: say so
		// now rather than at the first write past the limit. Only the
		// file system's limit counts here, not over-provisioning.
		if err := rd.Store.CheckSize(rd.Runner.Info().SizeBytes, math.MaxInt32); err != nil {
			slog.Warn("replica larger than its file system can hold: writes past the limit will fail", "replica", id, "err", err)
		}
	}
	return &replicaDir{runner: rd.Runner, store: rd.Store}, nil
}

// sizeRefusal words a *filestore.SizeError for the command line: what
// was refused and the largest size that would be taken.
func sizeRefusal(err error, what string) error {
	var se *filestore.SizeError
	if !errors.As(err, &se) {
		return err
	}
	hint := ""
	if se.OverProvisioning {
		hint = "; --over-provisioning-percent raises the limit"
	}
	return fmt.Errorf("refusing to %s the volume: %w; nothing was written%s", what, err, hint)
}

// damagedFile names the file of dir that a failed load stopped at, by
// filestore's layout (see its package doc), for the operator to inspect.
func damagedFile(dir string, le *replicarun.LoadError) string {
	switch le.Last.Kind {
	case store.ReadMeta, store.WriteMeta:
		return filepath.Join(dir, "meta")
	case store.ReadIndex, store.WriteIndex, store.SyncIndex:
		return filepath.Join(dir, fmt.Sprintf("layer-%d.index", le.Last.Layer))
	case store.ReadData, store.WriteData, store.SyncData, store.PunchHole:
		return filepath.Join(dir, fmt.Sprintf("layer-%d.data", le.Last.Layer))
	}
	return dir
}

// failedReplica returns a Runner that tells engines why the replica in
// dir could not be loaded, when err says it could not (the store is
// damaged), after logging that loudly. Other errors give nil.
func failedReplica(id proto.ReplicaID, dir string, err error) *replicarun.Runner {
	var le *replicarun.LoadError
	if !errors.As(err, &le) {
		return nil
	}
	file := damagedFile(dir, le)
	damage := strings.TrimPrefix(le.Reason, fmt.Sprintf("replica %s: ", id))
	why := fmt.Sprintf("cannot load its %s (%s): %s; its files are left untouched: inspect or restore them, or replace the replica",
		le.Part(), file, damage)
	logDamaged(id, file, le)
	return replicarun.NewFailed(id, why)
}

// Close stops the replica and closes its files.
func (r *replicaDir) Close() error {
	err := r.runner.Close()
	if r.store == nil {
		return err
	}
	if cerr := r.store.Close(); err == nil {
		err = cerr
	}
	return err
}

// logDamaged is the loud line a damaged replica leaves in the log: which
// replica, which file, what is wrong with it, and what happens now.
func logDamaged(id proto.ReplicaID, file string, le *replicarun.LoadError) {
	slog.Error("REPLICA DAMAGED: it goes ERR and serves nothing; the volume serves on the other replicas",
		"replica", id, "file", file, "part", le.Part(), "damage", le.Reason)
}

// checkSizeAt checks that a volume of sizeBytes fits a replica in dir (or,
// if dir does not exist yet, in the directory that will hold it), before
// anything is created.
func checkSizeAt(dir string, sizeBytes uint64, overProvisioningPercent int) error {
	for at := dir; ; at = filepath.Dir(at) {
		if fi, err := os.Stat(at); err == nil && fi.IsDir() {
			st, err := filestore.Open(at)
			if err != nil {
				return fmt.Errorf("check size in %s: %w", at, err)
			}
			defer st.Close()
			return sizeRefusal(st.CheckSize(sizeBytes, overProvisioningPercent), "create")
		}
		if filepath.Dir(at) == at {
			return nil
		}
	}
}
