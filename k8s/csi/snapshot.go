package csi

import (
	"context"
	"sort"
	"strings"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
)

// ParamSnapshotType is the VolumeSnapshotClass parameter choosing what a
// CSI snapshot is: "snap" (default), a Drover Snapshot, a layer of the
// volume; "backup" (or Longhorn's "bak"), a Backup in the BackupTarget
// named "default", which a new volume can be created from.
const ParamSnapshotType = "type"

// backupIDPrefix starts the snapshot ID of a CSI snapshot that is a
// Backup; a Drover Snapshot's ID is its object's name.
const backupIDPrefix = "backup/"

// splitSnapshotID says whether id names a Backup, and the object's name;
// ok is false for an ID this driver never gives out.
func splitSnapshotID(id string) (backup bool, name string, ok bool) {
	name, backup = strings.CutPrefix(id, backupIDPrefix)
	return backup, name, len(validation.IsDNS1123Label(name)) == 0
}

func (c controller) CreateSnapshot(ctx context.Context, req *csipb.CreateSnapshotRequest) (*csipb.CreateSnapshotResponse, error) {
	switch {
	case req.Name == "":
		return nil, status.Error(codes.InvalidArgument, "CreateSnapshot: no name given")
	case req.SourceVolumeId == "":
		return nil, status.Error(codes.InvalidArgument, "CreateSnapshot: no source volume ID given")
	}
	backup := false
	for k, v := range req.Parameters {
		switch {
		case k == ParamSnapshotType && (v == "snap" || v == ""):
		case k == ParamSnapshotType && (v == "backup" || v == "bak"):
			backup = true
		case k == ParamSnapshotType:
			return nil, status.Errorf(codes.InvalidArgument, "CreateSnapshot %s: parameter type=%q: want snap or backup", req.Name, v)
		case !strings.HasPrefix(k, kubernetesParamPrefix):
			return nil, status.Errorf(codes.InvalidArgument, "CreateSnapshot %s: parameter %s: unknown (known: type)", req.Name, k)
		}
	}
	name := objectName(req.Name)
	unlock, err := c.d.lock("snapshot/"+name, "CreateSnapshot")
	if err != nil {
		return nil, err
	}
	defer unlock()
	var obj client.Object = &v1alpha1.Snapshot{}
	if backup {
		obj = &v1alpha1.Backup{}
	}
	switch err := c.d.c.Get(ctx, c.key(name), obj); {
	case err == nil:
		if obj.GetAnnotations()[AnnotationCSIName] != req.Name || sourceOf(obj) != req.SourceVolumeId {
			return nil, status.Errorf(codes.AlreadyExists, "CreateSnapshot %s: exists for volume %s", req.Name, sourceOf(obj))
		}
	case apierrors.IsNotFound(err):
		vol, err := c.getVolume(ctx, req.SourceVolumeId)
		if err != nil {
			return nil, err
		}
		meta := metav1.ObjectMeta{Name: name, Namespace: c.d.cfg.Namespace, Labels: map[string]string{v1alpha1.LabelVolume: vol.Name},
			Annotations: map[string]string{AnnotationCSIName: req.Name}}
		if backup {
			obj = &v1alpha1.Backup{ObjectMeta: meta, Spec: v1alpha1.BackupSpec{Volume: vol.Name, BackupTarget: "default"}}
		} else {
			obj = &v1alpha1.Snapshot{ObjectMeta: meta, Spec: v1alpha1.SnapshotSpec{Volume: vol.Name}}
		}
		if err := c.d.c.Create(ctx, obj); err != nil {
			return nil, status.Errorf(codes.Unavailable, "CreateSnapshot %s: %v", req.Name, err)
		}
		c.d.log.Info("snapshot created", "snapshot", name, "volume", vol.Name, "backup", backup)
	default:
		return nil, status.Errorf(codes.Unavailable, "CreateSnapshot %s: %v", req.Name, err)
	}
	if b, ok := obj.(*v1alpha1.Backup); ok && b.Status.State == v1alpha1.BackupError {
		return nil, status.Errorf(codes.Internal, "CreateSnapshot %s: the backup failed: %s", req.Name, b.Status.Error)
	}
	return &csipb.CreateSnapshotResponse{Snapshot: c.csiSnapshot(ctx, obj)}, nil
}

func sourceOf(obj client.Object) string {
	switch o := obj.(type) {
	case *v1alpha1.Snapshot:
		return o.Spec.Volume
	case *v1alpha1.Backup:
		return o.Spec.Volume
	}
	return ""
}

// csiSnapshot describes a Snapshot or a Backup as a CSI snapshot; its
// size is the source volume's (what a volume made from it needs).
func (c controller) csiSnapshot(ctx context.Context, obj client.Object) *csipb.Snapshot {
	created := obj.GetCreationTimestamp().Time
	var size int64
	out := &csipb.Snapshot{SnapshotId: obj.GetName(), SourceVolumeId: sourceOf(obj)}
	switch o := obj.(type) {
	case *v1alpha1.Snapshot:
		if o.Status.CreationTime != nil {
			created = o.Status.CreationTime.Time
		}
		size, out.ReadyToUse = o.Status.Size, o.Status.ReadyToUse
	case *v1alpha1.Backup:
		out.SnapshotId = backupIDPrefix + o.Name
		size, out.ReadyToUse = o.Status.VolumeSize, o.Status.State == v1alpha1.BackupCompleted
	}
	if b, ok := obj.(*v1alpha1.Backup); !ok || b.Status.VolumeSize == 0 {
		// A Snapshot's status size is its layer's bytes; a volume made
		// from it needs the volume's size.
		var vol v1alpha1.Volume
		if c.d.c.Get(ctx, c.key(out.SourceVolumeId), &vol) == nil {
			size = vol.Spec.Size
		}
	}
	out.SizeBytes, out.CreationTime = size, timestamppb.New(created)
	return out
}

// getSnapshot reads the Snapshot or Backup a snapshot ID names;
// NotFound when there is none.
func (c controller) getSnapshot(ctx context.Context, id string) (client.Object, error) {
	backup, name, ok := splitSnapshotID(id)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "snapshot %q: no such snapshot", id)
	}
	var obj client.Object = &v1alpha1.Snapshot{}
	if backup {
		obj = &v1alpha1.Backup{}
	}
	if err := c.d.c.Get(ctx, c.key(name), obj); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, status.Errorf(codes.NotFound, "snapshot %s: no such snapshot", id)
		}
		return nil, status.Errorf(codes.Unavailable, "snapshot %s: %v", id, err)
	}
	return obj, nil
}

func (c controller) GetSnapshot(ctx context.Context, req *csipb.GetSnapshotRequest) (*csipb.GetSnapshotResponse, error) {
	if req.SnapshotId == "" {
		return nil, status.Error(codes.InvalidArgument, "GetSnapshot: no snapshot ID given")
	}
	obj, err := c.getSnapshot(ctx, req.SnapshotId)
	if err != nil {
		return nil, err
	}
	return &csipb.GetSnapshotResponse{Snapshot: c.csiSnapshot(ctx, obj)}, nil
}

func (c controller) DeleteSnapshot(ctx context.Context, req *csipb.DeleteSnapshotRequest) (*csipb.DeleteSnapshotResponse, error) {
	if req.SnapshotId == "" {
		return nil, status.Error(codes.InvalidArgument, "DeleteSnapshot: no snapshot ID given")
	}
	unlock, err := c.d.lock("snapshot/"+req.SnapshotId, "DeleteSnapshot")
	if err != nil {
		return nil, err
	}
	defer unlock()
	obj, err := c.getSnapshot(ctx, req.SnapshotId)
	if status.Code(err) == codes.NotFound {
		return &csipb.DeleteSnapshotResponse{}, nil
	} else if err != nil {
		return nil, err
	}
	if err := c.d.c.Delete(ctx, obj); client.IgnoreNotFound(err) != nil {
		return nil, status.Errorf(codes.Unavailable, "DeleteSnapshot %s: %v", req.SnapshotId, err)
	}
	return &csipb.DeleteSnapshotResponse{}, nil
}

// ListSnapshots lists Snapshots and Backups (made by this driver or
// not) in snapshot-ID order.
func (c controller) ListSnapshots(ctx context.Context, req *csipb.ListSnapshotsRequest) (*csipb.ListSnapshotsResponse, error) {
	var objs []client.Object
	if req.SnapshotId != "" {
		obj, err := c.getSnapshot(ctx, req.SnapshotId)
		if status.Code(err) == codes.NotFound {
			return &csipb.ListSnapshotsResponse{}, nil
		} else if err != nil {
			return nil, err
		}
		objs = append(objs, obj)
	} else {
		opts := []client.ListOption{client.InNamespace(c.d.cfg.Namespace)}
		if req.SourceVolumeId != "" {
			if len(validation.IsDNS1123Label(req.SourceVolumeId)) > 0 {
				return &csipb.ListSnapshotsResponse{}, nil
			}
			opts = append(opts, client.MatchingLabels{v1alpha1.LabelVolume: req.SourceVolumeId})
		}
		var snaps v1alpha1.SnapshotList
		var backups v1alpha1.BackupList
		if err := c.d.c.List(ctx, &snaps, opts...); err != nil {
			return nil, status.Errorf(codes.Unavailable, "ListSnapshots: %v", err)
		}
		if err := c.d.c.List(ctx, &backups, opts...); err != nil {
			return nil, status.Errorf(codes.Unavailable, "ListSnapshots: %v", err)
		}
		for i := range snaps.Items {
			objs = append(objs, &snaps.Items[i])
		}
		for i := range backups.Items {
			objs = append(objs, &backups.Items[i])
		}
	}
	var list []*csipb.Snapshot
	for _, obj := range objs {
		if obj.GetDeletionTimestamp().IsZero() && (req.SourceVolumeId == "" || sourceOf(obj) == req.SourceVolumeId) {
			list = append(list, c.csiSnapshot(ctx, obj))
		}
	}
	sort.Slice(list, func(i, j int) bool { return list[i].SnapshotId < list[j].SnapshotId })
	start, end, next, err := page(len(list), req.StartingToken, req.MaxEntries)
	if err != nil {
		return nil, err
	}
	resp := &csipb.ListSnapshotsResponse{NextToken: next}
	for _, s := range list[start:end] {
		resp.Entries = append(resp.Entries, &csipb.ListSnapshotsResponse_Entry{Snapshot: s})
	}
	return resp, nil
}

// source answers a CreateVolume from a snapshot or a volume: a CSI
// snapshot that is a completed Backup becomes the new volume's
// fromBackup (restored at its first attach); a Drover Snapshot or a
// volume cannot fill a new volume yet.
func (c controller) source(ctx context.Context, src *csipb.VolumeContentSource, size int64) (fromBackup string, err error) {
	if s := src.GetSnapshot(); s != nil {
		obj, err := c.getSnapshot(ctx, s.SnapshotId)
		if err != nil {
			return "", status.Errorf(codes.NotFound, "CreateVolume: source %v", status.Convert(err).Message())
		}
		b, ok := obj.(*v1alpha1.Backup)
		if !ok {
			return "", status.Errorf(codes.Unimplemented, "CreateVolume from snapshot %s: the manager cannot fill a volume from a Drover snapshot yet; "+
				"take the VolumeSnapshot with a class whose parameter type is backup, and create the volume from that", s.SnapshotId)
		}
		switch {
		case b.Status.State == v1alpha1.BackupError:
			return "", status.Errorf(codes.FailedPrecondition, "CreateVolume from snapshot %s: the backup failed: %s", s.SnapshotId, b.Status.Error)
		case b.Status.State != v1alpha1.BackupCompleted || b.Status.URL == "":
			return "", status.Errorf(codes.Unavailable, "CreateVolume from snapshot %s: the backup is not complete yet (%s); retry", s.SnapshotId, b.Status.State)
		case size < b.Status.VolumeSize:
			return "", status.Errorf(codes.OutOfRange, "CreateVolume from snapshot %s: %d bytes asked, the backup holds %d", s.SnapshotId, size, b.Status.VolumeSize)
		}
		return b.Status.URL, nil
	}
	if v := src.GetVolume(); v != nil {
		if _, err := c.getVolume(ctx, v.VolumeId); err != nil {
			return "", err
		}
		return "", status.Errorf(codes.Unimplemented, "CreateVolume from volume %s: the manager cannot clone a volume yet; "+
			"snapshot it with a VolumeSnapshotClass of type backup and create the volume from that", v.VolumeId)
	}
	return "", status.Error(codes.InvalidArgument, "CreateVolume: empty volume content source")
}
