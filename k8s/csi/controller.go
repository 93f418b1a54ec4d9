package csi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/k8s/manager"
	"github.com/drover-io/drover/k8s/schedule"
)

// AnnotationCSIName keeps the name CreateVolume or CreateSnapshot was
// called with on the object it made (the object's name is that name
// when it is a valid label value, else a hash of it).
const AnnotationCSIName = "csi.storage.drover.io/name"

// PublishContextEndpoint is the publish-context key holding the
// engine's NBD endpoint; PublishContextReadonly is "true" when the
// volume was published read-only (NodeStageVolume then attaches and
// mounts it read-only and never formats it).
const (
	PublishContextEndpoint = "endpoint"
	PublishContextReadonly = "readonly"
)

// AnnotationReadonly records on a published Volume whether it was
// published read-only, so a second publish asking otherwise is
// AlreadyExists.
const AnnotationReadonly = "csi.storage.drover.io/published-readonly"

var errTooLarge = errors.New("size too large")

// objectName maps a CSI name to an object name: the name itself when it
// is a valid label value (Engines and Replicas carry it in a label),
// else "csi-" and a hash of it.
func objectName(csiName string) string {
	if len(validation.IsDNS1123Label(csiName)) == 0 {
		return csiName
	}
	sum := sha256.Sum256([]byte(csiName))
	return "csi-" + hex.EncodeToString(sum[:16])
}

type controller struct {
	csipb.UnimplementedControllerServer
	d *Driver
}

var _ csipb.ControllerServer = controller{}

func (c controller) key(name string) client.ObjectKey {
	return client.ObjectKey{Namespace: c.d.cfg.Namespace, Name: name}
}

// getVolume reads a Volume; a missing one (or an ID that cannot name
// one) is NotFound.
func (c controller) getVolume(ctx context.Context, id string) (*v1alpha1.Volume, error) {
	var v v1alpha1.Volume
	if len(validation.IsDNS1123Label(id)) > 0 {
		return nil, status.Errorf(codes.NotFound, "volume %q: no such volume (not a Drover volume ID)", id)
	}
	if err := c.d.c.Get(ctx, c.key(id), &v); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, status.Errorf(codes.NotFound, "volume %s: no such volume", id)
		}
		return nil, status.Errorf(codes.Unavailable, "get volume %s: %v", id, err)
	}
	return &v, nil
}

// checkCaps refuses capabilities Drover cannot give: a volume attaches
// to one node at a time.
func checkCaps(caps []*csipb.VolumeCapability) error {
	if len(caps) == 0 {
		return status.Error(codes.InvalidArgument, "no volume capabilities given")
	}
	for _, cp := range caps {
		if err := checkCap(cp); err != nil {
			return err
		}
	}
	return nil
}

func checkCap(cp *csipb.VolumeCapability) error {
	if cp == nil {
		return status.Error(codes.InvalidArgument, "no volume capability given")
	}
	if cp.GetBlock() == nil && cp.GetMount() == nil {
		return status.Error(codes.InvalidArgument, "volume capability: want access type block or mount")
	}
	if m := cp.GetMount(); m != nil {
		switch m.FsType {
		case "", "ext4", "xfs":
		default:
			return status.Errorf(codes.InvalidArgument, "volume capability: filesystem %q: Drover formats ext4 or xfs", m.FsType)
		}
	}
	switch mode := cp.GetAccessMode().GetMode(); mode {
	case csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		csipb.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER, csipb.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:
	default:
		return status.Errorf(codes.InvalidArgument, "volume capability: access mode %s: a Drover volume is attached to one node at a time (ReadWriteOnce)", mode)
	}
	return nil
}

func (c controller) CreateVolume(ctx context.Context, req *csipb.CreateVolumeRequest) (*csipb.CreateVolumeResponse, error) {
	if req.Name == "" {
		return nil, status.Error(codes.InvalidArgument, "CreateVolume: no name given")
	}
	if err := checkCaps(req.VolumeCapabilities); err != nil {
		return nil, err
	}
	params, err := ParseParams(req.Parameters)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "CreateVolume %s: %v", req.Name, err)
	}
	qos, err := ParseQoS(req.MutableParameters, nil)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "CreateVolume %s: %v", req.Name, err)
	}
	size, err := RoundSize(req.GetCapacityRange().GetRequiredBytes(), req.GetCapacityRange().GetLimitBytes(), c.d.cfg.DefaultSizeBytes)
	if errors.Is(err, errTooLarge) {
		return nil, status.Errorf(codes.ResourceExhausted, "CreateVolume %s: %v", req.Name, err)
	} else if err != nil {
		return nil, status.Errorf(codes.OutOfRange, "CreateVolume %s: %v", req.Name, err)
	}
	if src := req.VolumeContentSource; src != nil {
		if params.FromBackup != "" {
			return nil, status.Errorf(codes.InvalidArgument, "CreateVolume %s: both a content source and the fromBackup parameter given", req.Name)
		}
		if params.FromBackup, err = c.source(ctx, src, size); err != nil {
			return nil, err
		}
	}
	name := objectName(req.Name)
	unlock, err := c.d.lock(name, "CreateVolume")
	if err != nil {
		return nil, err
	}
	defer unlock()

	vol := &v1alpha1.Volume{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: c.d.cfg.Namespace,
		Annotations: map[string]string{AnnotationCSIName: req.Name}}, Spec: v1alpha1.VolumeSpec{Size: size}}
	params.apply(vol)
	vol.Spec.QoS = qos
	var old v1alpha1.Volume
	switch err := c.d.c.Get(ctx, c.key(name), &old); {
	case err == nil:
		return c.existing(&old, vol, req.Name)
	case !apierrors.IsNotFound(err):
		return nil, status.Errorf(codes.Unavailable, "CreateVolume %s: get volume %s: %v", req.Name, name, err)
	}
	var ue *schedule.UnschedulableError
	if err := manager.CheckPlacement(ctx, c.d.c, vol); errors.As(err, &ue) {
		return nil, status.Errorf(codes.ResourceExhausted, "CreateVolume %s: %v", req.Name, err)
	} else if err != nil {
		return nil, status.Errorf(codes.Unavailable, "CreateVolume %s: %v", req.Name, err)
	}
	if err := c.d.c.Create(ctx, vol); err != nil {
		if apierrors.IsInvalid(err) {
			return nil, status.Errorf(codes.InvalidArgument, "CreateVolume %s: %v", req.Name, err)
		}
		return nil, status.Errorf(codes.Unavailable, "CreateVolume %s: create volume %s: %v", req.Name, name, err)
	}
	c.d.log.Info("volume created", "volume", name, "csiName", req.Name, "size", size, "requested", req.GetCapacityRange().GetRequiredBytes())
	return &csipb.CreateVolumeResponse{Volume: csiVolume(vol, req.VolumeContentSource)}, nil
}

// existing answers a repeated CreateVolume: the same volume is success,
// a different one under the name is AlreadyExists.
func (c controller) existing(old, want *v1alpha1.Volume, csiName string) (*csipb.CreateVolumeResponse, error) {
	if !old.DeletionTimestamp.IsZero() {
		return nil, status.Errorf(codes.Aborted, "CreateVolume %s: volume %s is being deleted; retry", csiName, old.Name)
	}
	if old.Annotations[AnnotationCSIName] != csiName {
		return nil, status.Errorf(codes.AlreadyExists, "CreateVolume %s: volume %s belongs to %q", csiName, old.Name, old.Annotations[AnnotationCSIName])
	}
	if old.Spec.Size != want.Spec.Size {
		return nil, status.Errorf(codes.AlreadyExists, "CreateVolume %s: exists with %d bytes, asked for %d", csiName, old.Spec.Size, want.Spec.Size)
	}
	if !sameParams(&old.Spec, &want.Spec) {
		return nil, status.Errorf(codes.AlreadyExists, "CreateVolume %s: exists with other parameters", csiName)
	}
	return &csipb.CreateVolumeResponse{Volume: csiVolume(old, nil)}, nil
}

func sameParams(a, b *v1alpha1.VolumeSpec) bool {
	eqInt := func(x, y *int32) bool { return (x == nil && y == nil) || (x != nil && y != nil && *x == *y) }
	eqDur := func(x, y *metav1.Duration) bool {
		return (x == nil && y == nil) || (x != nil && y != nil && x.Duration == y.Duration)
	}
	frontend := func(f v1alpha1.Frontend) v1alpha1.Frontend {
		if f == "" {
			return v1alpha1.FrontendNBD
		}
		return f
	}
	locality := func(l v1alpha1.DataLocality) v1alpha1.DataLocality {
		if l == "" {
			return v1alpha1.DataLocalityDisabled
		}
		return l
	}
	return eqInt(a.NumberOfReplicas, b.NumberOfReplicas) && eqDur(a.StaleReplicaTimeout, b.StaleReplicaTimeout) &&
		a.FromBackup == b.FromBackup && locality(a.DataLocality) == locality(b.DataLocality) && a.BackingImage == b.BackingImage &&
		frontend(a.Frontend) == frontend(b.Frontend) && strings.Join(a.DiskSelector, ",") == strings.Join(b.DiskSelector, ",") &&
		strings.Join(a.NodeSelector, ",") == strings.Join(b.NodeSelector, ",")
}

func csiVolume(v *v1alpha1.Volume, src *csipb.VolumeContentSource) *csipb.Volume {
	return &csipb.Volume{VolumeId: v.Name, CapacityBytes: v.Spec.Size, ContentSource: src,
		VolumeContext: map[string]string{AnnotationCSIName: v.Annotations[AnnotationCSIName]}}
}

func (c controller) DeleteVolume(ctx context.Context, req *csipb.DeleteVolumeRequest) (*csipb.DeleteVolumeResponse, error) {
	if req.VolumeId == "" {
		return nil, status.Error(codes.InvalidArgument, "DeleteVolume: no volume ID given")
	}
	unlock, err := c.d.lock(req.VolumeId, "DeleteVolume")
	if err != nil {
		return nil, err
	}
	defer unlock()
	vol, err := c.getVolume(ctx, req.VolumeId)
	if status.Code(err) == codes.NotFound {
		return &csipb.DeleteVolumeResponse{}, nil
	} else if err != nil {
		return nil, err
	}
	if vol.Spec.NodeID != "" {
		return nil, status.Errorf(codes.FailedPrecondition, "DeleteVolume %s: attached to node %s; unpublish it first", vol.Name, vol.Spec.NodeID)
	}
	if err := c.d.c.Delete(ctx, vol); client.IgnoreNotFound(err) != nil {
		return nil, status.Errorf(codes.Unavailable, "DeleteVolume %s: %v", vol.Name, err)
	}
	c.d.log.Info("volume deleted", "volume", vol.Name)
	return &csipb.DeleteVolumeResponse{}, nil
}

func (c controller) ControllerPublishVolume(ctx context.Context, req *csipb.ControllerPublishVolumeRequest) (*csipb.ControllerPublishVolumeResponse, error) {
	switch {
	case req.VolumeId == "":
		return nil, status.Error(codes.InvalidArgument, "ControllerPublishVolume: no volume ID given")
	case req.NodeId == "":
		return nil, status.Error(codes.InvalidArgument, "ControllerPublishVolume: no node ID given")
	}
	if err := checkCap(req.VolumeCapability); err != nil {
		return nil, err
	}
	unlock, err := c.d.lock(req.VolumeId, "ControllerPublishVolume")
	if err != nil {
		return nil, err
	}
	defer unlock()
	vol, err := c.getVolume(ctx, req.VolumeId)
	if err != nil {
		return nil, err
	}
	var n v1alpha1.Node
	if err := c.d.c.Get(ctx, c.key(req.NodeId), &n); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, status.Errorf(codes.NotFound, "ControllerPublishVolume %s: node %s: no Drover agent has registered it", vol.Name, req.NodeId)
		}
		return nil, status.Errorf(codes.Unavailable, "ControllerPublishVolume %s: get node %s: %v", vol.Name, req.NodeId, err)
	}
	if !vol.DeletionTimestamp.IsZero() {
		return nil, status.Errorf(codes.NotFound, "ControllerPublishVolume %s: the volume is being deleted", vol.Name)
	}
	readonly := strconv.FormatBool(req.Readonly)
	switch vol.Spec.NodeID {
	case req.NodeId:
		if was := vol.Annotations[AnnotationReadonly]; was != "" && was != readonly {
			return nil, status.Errorf(codes.AlreadyExists, "ControllerPublishVolume %s: published to %s with readonly %s already", vol.Name, req.NodeId, was)
		}
	case "":
		patch := client.MergeFrom(vol.DeepCopy())
		vol.Spec.NodeID = req.NodeId
		if vol.Annotations == nil {
			vol.Annotations = map[string]string{}
		}
		vol.Annotations[AnnotationReadonly] = readonly
		if err := c.d.c.Patch(ctx, vol, patch); err != nil {
			return nil, status.Errorf(codes.Unavailable, "ControllerPublishVolume %s: attach to %s: %v", vol.Name, req.NodeId, err)
		}
	default:
		return nil, status.Errorf(codes.FailedPrecondition, "ControllerPublishVolume %s: attached to node %s; a Drover volume is attached to one node at a time", vol.Name, vol.Spec.NodeID)
	}
	var endpoint, last string
	err = c.wait(ctx, func(v *v1alpha1.Volume) bool {
		endpoint = v.Status.Endpoint
		last = describe(v)
		return v.Status.State == v1alpha1.VolumeAttached && v.Status.CurrentNodeID == req.NodeId && endpoint != ""
	}, vol.Name)
	if err != nil {
		return nil, status.Errorf(status.Code(err), "ControllerPublishVolume %s to %s: %v (volume: %s)", vol.Name, req.NodeId, err, last)
	}
	pc := map[string]string{PublishContextEndpoint: endpoint}
	if req.Readonly {
		pc[PublishContextReadonly] = "true"
	}
	return &csipb.ControllerPublishVolumeResponse{PublishContext: pc}, nil
}

func describe(v *v1alpha1.Volume) string {
	var conds []string
	for _, cd := range v.Status.Conditions {
		if cd.Status != metav1.ConditionTrue && cd.Message != "" {
			conds = append(conds, cd.Type+": "+cd.Message)
		}
	}
	return fmt.Sprintf("state %q on %q, %s; %s", v.Status.State, v.Status.CurrentNodeID, v.Status.Robustness, strings.Join(conds, "; "))
}

// wait polls the Volume until done says so, the context ends, or
// AttachTimeout passes when the context has no deadline.
func (c controller) wait(ctx context.Context, done func(*v1alpha1.Volume) bool, name string) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.d.cfg.AttachTimeout)
		defer cancel()
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		var v v1alpha1.Volume
		err := c.d.c.Get(ctx, c.key(name), &v)
		if apierrors.IsNotFound(err) {
			return status.Error(codes.NotFound, "the volume was deleted")
		}
		if err == nil && done(&v) {
			return nil
		}
		select {
		case <-ctx.Done():
			return status.Error(codes.DeadlineExceeded, "not done in time; retry")
		case <-tick.C:
		}
	}
}

func (c controller) ControllerUnpublishVolume(ctx context.Context, req *csipb.ControllerUnpublishVolumeRequest) (*csipb.ControllerUnpublishVolumeResponse, error) {
	if req.VolumeId == "" {
		return nil, status.Error(codes.InvalidArgument, "ControllerUnpublishVolume: no volume ID given")
	}
	unlock, err := c.d.lock(req.VolumeId, "ControllerUnpublishVolume")
	if err != nil {
		return nil, err
	}
	defer unlock()
	vol, err := c.getVolume(ctx, req.VolumeId)
	if status.Code(err) == codes.NotFound {
		return &csipb.ControllerUnpublishVolumeResponse{}, nil
	} else if err != nil {
		return nil, err
	}
	if vol.Spec.NodeID == "" || (req.NodeId != "" && vol.Spec.NodeID != req.NodeId) {
		return &csipb.ControllerUnpublishVolumeResponse{}, nil // not attached there: done
	}
	patch := client.MergeFrom(vol.DeepCopy())
	vol.Spec.NodeID = ""
	delete(vol.Annotations, AnnotationReadonly)
	if err := c.d.c.Patch(ctx, vol, patch); err != nil {
		return nil, status.Errorf(codes.Unavailable, "ControllerUnpublishVolume %s: detach: %v", vol.Name, err)
	}
	// The engine flushes as it stops; the call returns once it has.
	var last string
	err = c.wait(ctx, func(v *v1alpha1.Volume) bool {
		last = describe(v)
		return v.Spec.NodeID == "" && v.Status.CurrentNodeID == "" && v.Status.State != v1alpha1.VolumeDetaching
	}, vol.Name)
	if err != nil && status.Code(err) != codes.NotFound {
		return nil, status.Errorf(status.Code(err), "ControllerUnpublishVolume %s: %v (volume: %s)", vol.Name, err, last)
	}
	return &csipb.ControllerUnpublishVolumeResponse{}, nil
}

func (c controller) ValidateVolumeCapabilities(ctx context.Context, req *csipb.ValidateVolumeCapabilitiesRequest) (*csipb.ValidateVolumeCapabilitiesResponse, error) {
	if req.VolumeId == "" {
		return nil, status.Error(codes.InvalidArgument, "ValidateVolumeCapabilities: no volume ID given")
	}
	if len(req.VolumeCapabilities) == 0 {
		return nil, status.Error(codes.InvalidArgument, "ValidateVolumeCapabilities: no volume capabilities given")
	}
	if _, err := c.getVolume(ctx, req.VolumeId); err != nil {
		return nil, err
	}
	if _, err := ParseParams(req.Parameters); err != nil {
		return &csipb.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	if err := checkCaps(req.VolumeCapabilities); err != nil {
		return &csipb.ValidateVolumeCapabilitiesResponse{Message: status.Convert(err).Message()}, nil
	}
	return &csipb.ValidateVolumeCapabilitiesResponse{Confirmed: &csipb.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext: req.VolumeContext, VolumeCapabilities: req.VolumeCapabilities, Parameters: req.Parameters}}, nil
}

// page cuts n entries into the page a starting token and max_entries
// ask for; the token is the index of the first entry, in name order.
func page(n int, token string, maxEntries int32) (start, end int, next string, err error) {
	if maxEntries < 0 {
		return 0, 0, "", status.Error(codes.InvalidArgument, "max_entries is negative")
	}
	if token != "" {
		i, perr := strconv.Atoi(token)
		if perr != nil || i < 0 || i > n {
			return 0, 0, "", status.Errorf(codes.Aborted, "starting_token %q: not a token this driver gave out (or the list shrank past it)", token)
		}
		start = i
	}
	end = n
	if maxEntries > 0 && start+int(maxEntries) < n {
		end = start + int(maxEntries)
		next = strconv.Itoa(end)
	}
	return start, end, next, nil
}

// volumes lists the Volumes not being deleted, by name.
func (c controller) volumes(ctx context.Context) ([]v1alpha1.Volume, error) {
	var list v1alpha1.VolumeList
	if err := c.d.c.List(ctx, &list, client.InNamespace(c.d.cfg.Namespace)); err != nil {
		return nil, status.Errorf(codes.Unavailable, "list volumes: %v", err)
	}
	var vols []v1alpha1.Volume
	for _, v := range list.Items {
		if v.DeletionTimestamp.IsZero() {
			vols = append(vols, v)
		}
	}
	sort.Slice(vols, func(i, j int) bool { return vols[i].Name < vols[j].Name })
	return vols, nil
}

func (c controller) ListVolumes(ctx context.Context, req *csipb.ListVolumesRequest) (*csipb.ListVolumesResponse, error) {
	vols, err := c.volumes(ctx)
	if err != nil {
		return nil, err
	}
	start, end, next, err := page(len(vols), req.StartingToken, req.MaxEntries)
	if err != nil {
		return nil, err
	}
	resp := &csipb.ListVolumesResponse{NextToken: next}
	for i := start; i < end; i++ {
		v := &vols[i]
		resp.Entries = append(resp.Entries, &csipb.ListVolumesResponse_Entry{Volume: csiVolume(v, nil),
			Status: &csipb.ListVolumesResponse_VolumeStatus{PublishedNodeIds: publishedOn(v)}})
	}
	return resp, nil
}

func publishedOn(v *v1alpha1.Volume) []string {
	if v.Spec.NodeID == "" {
		return nil
	}
	return []string{v.Spec.NodeID}
}

// health is a volume's CSI health: DEGRADED while fewer replicas than
// wanted are healthy, INACCESSIBLE when none is (faulted); no entry when
// healthy.
func health(v *v1alpha1.Volume) *csipb.VolumeHealth {
	h := &csipb.VolumeHealth{VolumeId: v.Name}
	entry := func(t csipb.VolumeHealthErrorType, reason, msg string) {
		h.HealthStatuses = append(h.HealthStatuses, &csipb.VolumeHealth_VolumeHealthEntry{Status: t, Reason: reason, Message: msg})
	}
	switch v.Status.Robustness {
	case v1alpha1.RobustnessDegraded:
		entry(csipb.VolumeHealthErrorType_DEGRADED, "Degraded", fmt.Sprintf("%d replicas ready, %s", v.Status.ReplicasReady, describe(v)))
	case v1alpha1.RobustnessFaulted:
		entry(csipb.VolumeHealthErrorType_INACCESSIBLE, "Faulted", "no healthy replica: "+describe(v))
	}
	return h
}

func (c controller) ControllerGetVolume(ctx context.Context, req *csipb.ControllerGetVolumeRequest) (*csipb.ControllerGetVolumeResponse, error) {
	if req.VolumeId == "" {
		return nil, status.Error(codes.InvalidArgument, "ControllerGetVolume: no volume ID given")
	}
	v, err := c.getVolume(ctx, req.VolumeId)
	if err != nil {
		return nil, err
	}
	return &csipb.ControllerGetVolumeResponse{Volume: csiVolume(v, nil),
		Status: &csipb.ControllerGetVolumeResponse_VolumeStatus{PublishedNodeIds: publishedOn(v)}}, nil
}

func (c controller) ControllerGetVolumeHealth(ctx context.Context, req *csipb.ControllerGetVolumeHealthRequest) (*csipb.ControllerGetVolumeHealthResponse, error) {
	if req.VolumeId == "" {
		return nil, status.Error(codes.InvalidArgument, "ControllerGetVolumeHealth: no volume ID given")
	}
	v, err := c.getVolume(ctx, req.VolumeId)
	if err != nil {
		return nil, err
	}
	return &csipb.ControllerGetVolumeHealthResponse{VolumeHealth: health(v)}, nil
}

func (c controller) ControllerListVolumeHealth(ctx context.Context, req *csipb.ControllerListVolumeHealthRequest) (*csipb.ControllerListVolumeHealthResponse, error) {
	vols, err := c.volumes(ctx)
	if err != nil {
		return nil, err
	}
	start, end, next, err := page(len(vols), req.StartingToken, req.MaxEntries)
	if err != nil {
		return nil, err
	}
	resp := &csipb.ControllerListVolumeHealthResponse{NextToken: next}
	for i := start; i < end; i++ {
		resp.Entries = append(resp.Entries, health(&vols[i]))
	}
	return resp, nil
}

// GetCapacity is the bytes the disks of the ready, schedulable nodes in
// the topology segment have free (all nodes without a segment), beyond
// their reserved bytes.
func (c controller) GetCapacity(ctx context.Context, req *csipb.GetCapacityRequest) (*csipb.GetCapacityResponse, error) {
	if _, err := ParseParams(req.Parameters); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "GetCapacity: %v", err)
	}
	for _, cp := range req.VolumeCapabilities {
		if err := checkCap(cp); err != nil {
			return &csipb.GetCapacityResponse{}, nil // no capacity for what cannot be had
		}
	}
	var nodes v1alpha1.NodeList
	if err := c.d.c.List(ctx, &nodes, client.InNamespace(c.d.cfg.Namespace)); err != nil {
		return nil, status.Errorf(codes.Unavailable, "GetCapacity: %v", err)
	}
	seg := req.GetAccessibleTopology().GetSegments()
	var total, largest int64
	for _, n := range nodes.Items {
		if !inSegment(&n, seg) || !n.Spec.AllowScheduling || !nodeReady(&n) {
			continue
		}
		for name, d := range n.Spec.Disks {
			if !d.AllowScheduling {
				continue
			}
			free := n.Status.DiskStatus[name].StorageAvailable - d.StorageReserved
			if free <= 0 {
				continue
			}
			total += free
			largest = max(largest, free)
		}
	}
	return &csipb.GetCapacityResponse{AvailableCapacity: total, MaximumVolumeSize: wrapperspb.Int64(largest)}, nil
}

func inSegment(n *v1alpha1.Node, seg map[string]string) bool {
	for k, want := range seg {
		switch k {
		case TopologyNodeKey:
			if n.Name != want {
				return false
			}
		case TopologyZoneKey:
			if n.Status.Zone != want {
				return false
			}
		default:
			return false // a key this driver never reports
		}
	}
	return true
}

func nodeReady(n *v1alpha1.Node) bool {
	for _, cd := range n.Status.Conditions {
		if cd.Type == v1alpha1.NodeConditionReady {
			return cd.Status == metav1.ConditionTrue
		}
	}
	return false
}

func (c controller) ControllerGetCapabilities(context.Context, *csipb.ControllerGetCapabilitiesRequest) (*csipb.ControllerGetCapabilitiesResponse, error) {
	var caps []*csipb.ControllerServiceCapability
	for _, t := range []csipb.ControllerServiceCapability_RPC_Type{
		csipb.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csipb.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME,
		csipb.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csipb.ControllerServiceCapability_RPC_GET_CAPACITY,
		csipb.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csipb.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csipb.ControllerServiceCapability_RPC_GET_SNAPSHOT,
		csipb.ControllerServiceCapability_RPC_MODIFY_VOLUME,
		csipb.ControllerServiceCapability_RPC_PUBLISH_READONLY,
		csipb.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		csipb.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csipb.ControllerServiceCapability_RPC_LIST_VOLUMES_PUBLISHED_NODES,
		csipb.ControllerServiceCapability_RPC_GET_VOLUME_HEALTH,
		csipb.ControllerServiceCapability_RPC_LIST_VOLUME_HEALTH,
		csipb.ControllerServiceCapability_RPC_GET_VOLUME,
	} {
		caps = append(caps, &csipb.ControllerServiceCapability{Type: &csipb.ControllerServiceCapability_Rpc{
			Rpc: &csipb.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csipb.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (c controller) ControllerExpandVolume(ctx context.Context, req *csipb.ControllerExpandVolumeRequest) (*csipb.ControllerExpandVolumeResponse, error) {
	if req.VolumeId == "" {
		return nil, status.Error(codes.InvalidArgument, "ControllerExpandVolume: no volume ID given")
	}
	if req.CapacityRange == nil {
		return nil, status.Error(codes.InvalidArgument, "ControllerExpandVolume: no capacity range given")
	}
	size, err := RoundSize(req.CapacityRange.RequiredBytes, req.CapacityRange.LimitBytes, 0)
	if errors.Is(err, errTooLarge) {
		return nil, status.Errorf(codes.ResourceExhausted, "ControllerExpandVolume %s: %v", req.VolumeId, err)
	} else if err != nil {
		return nil, status.Errorf(codes.OutOfRange, "ControllerExpandVolume %s: %v", req.VolumeId, err)
	}
	unlock, err := c.d.lock(req.VolumeId, "ControllerExpandVolume")
	if err != nil {
		return nil, err
	}
	defer unlock()
	vol, err := c.getVolume(ctx, req.VolumeId)
	if err != nil {
		return nil, err
	}
	nodeExpand := req.GetVolumeCapability().GetBlock() == nil
	if size <= vol.Spec.Size {
		return &csipb.ControllerExpandVolumeResponse{CapacityBytes: vol.Spec.Size, NodeExpansionRequired: nodeExpand}, nil
	}
	patch := client.MergeFrom(vol.DeepCopy())
	vol.Spec.Size = size
	if err := c.d.c.Patch(ctx, vol, patch); err != nil {
		if apierrors.IsInvalid(err) {
			return nil, status.Errorf(codes.InvalidArgument, "ControllerExpandVolume %s: %v", vol.Name, err)
		}
		return nil, status.Errorf(codes.Unavailable, "ControllerExpandVolume %s: %v", vol.Name, err)
	}
	c.d.log.Info("volume expanded", "volume", vol.Name, "size", size)
	return &csipb.ControllerExpandVolumeResponse{CapacityBytes: size, NodeExpansionRequired: nodeExpand}, nil
}

// ControllerModifyVolume applies a VolumeAttributesClass's parameters,
// the volume's QoS: the Volume's spec.qos, which the manager copies to
// the running Engine and its agent sets on the engine's frontend through
// the control API, without restarting it.
func (c controller) ControllerModifyVolume(ctx context.Context, req *csipb.ControllerModifyVolumeRequest) (*csipb.ControllerModifyVolumeResponse, error) {
	if req.VolumeId == "" {
		return nil, status.Error(codes.InvalidArgument, "ControllerModifyVolume: no volume ID given")
	}
	unlock, err := c.d.lock(req.VolumeId, "ControllerModifyVolume")
	if err != nil {
		return nil, err
	}
	defer unlock()
	vol, err := c.getVolume(ctx, req.VolumeId)
	if err != nil {
		return nil, err
	}
	qos, err := ParseQoS(req.MutableParameters, vol.Spec.QoS)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "ControllerModifyVolume %s: %v", vol.Name, err)
	}
	patch := client.MergeFrom(vol.DeepCopy())
	vol.Spec.QoS = qos
	if err := c.d.c.Patch(ctx, vol, patch); err != nil {
		return nil, status.Errorf(codes.Unavailable, "ControllerModifyVolume %s: %v", vol.Name, err)
	}
	c.d.log.Info("volume QoS set", "volume", vol.Name, "qos", qos)
	return &csipb.ControllerModifyVolumeResponse{}, nil
}
