package manager

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/k8s/schedule"
	"github.com/drover-io/drover/k8s/volumekey"
)

// volumeReconciler owns a Volume's Replicas and Engine.
type volumeReconciler struct {
	client.Client
	// secrets reads encryption key secrets uncached (volumekey.Read).
	secrets client.Reader
	ns      string
	resync  time.Duration
	// created are the replicas this manager created that its cache may
	// not list yet: scheduling counts them, so that a reconcile running
	// before the cache catches up neither places a volume's replica twice
	// nor fills a disk past its limit.
	created createdReplicas
}

func (r *volumeReconciler) setup(mgr ctrl.Manager) error {
	allVolumes := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, _ client.Object) []reconcile.Request {
		var vols v1alpha1.VolumeList
		if err := r.List(ctx, &vols, client.InNamespace(r.ns)); err != nil {
			return nil
		}
		out := make([]reconcile.Request, len(vols.Items))
		for i, v := range vols.Items {
			out[i] = reconcile.Request{NamespacedName: types.NamespacedName{Namespace: v.Namespace, Name: v.Name}}
		}
		return out
	})
	return ctrl.NewControllerManagedBy(mgr).Named("volume").
		// One worker: placements are computed from the cache, and serial
		// reconciles let each see the replicas the one before created
		// (once the cache has them) when summing what a disk holds.
		WithOptions(controller.Options{MaxConcurrentReconciles: 1}).
		For(&v1alpha1.Volume{}).
		Owns(&v1alpha1.Replica{}).
		Owns(&v1alpha1.Engine{}).
		Watches(&v1alpha1.Node{}, allVolumes, builder.WithPredicates(nodeChanged)).
		Watches(&v1alpha1.Setting{}, allVolumes).
		Complete(r)
}

// nodeChanged passes Node events that can change a placement: a new or
// deleted node, a spec change, or readiness flipping; not the heartbeats
// every agent writes every few seconds (the resync covers capacity).
var nodeChanged = predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
	oldNode, ok1 := e.ObjectOld.(*v1alpha1.Node)
	newNode, ok2 := e.ObjectNew.(*v1alpha1.Node)
	if !ok1 || !ok2 {
		return true
	}
	return oldNode.Generation != newNode.Generation || nodeReady(oldNode) != nodeReady(newNode) ||
		!newNode.DeletionTimestamp.IsZero()
}}

// volumeView is what one reconcile read of the world.
type volumeView struct {
	vol      *v1alpha1.Volume
	replicas []v1alpha1.Replica // not being deleted, sorted by name
	engine   *v1alpha1.Engine   // nil when there is none
	nodes    map[string]*v1alpha1.Node
	settings settings
	now      time.Time
	// attachBlocked says why the engine is not started on spec.nodeID,
	// attachReason the condition's reason ("": DataLocality).
	attachBlocked, attachReason string
}

func (r *volumeReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var vol v1alpha1.Volume
	if err := r.Get(ctx, req.NamespacedName, &vol); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !vol.DeletionTimestamp.IsZero() {
		return r.finalize(ctx, &vol)
	}
	if controllerutil.AddFinalizer(&vol, v1alpha1.Finalizer) {
		if err := r.Update(ctx, &vol); err != nil {
			return ctrl.Result{}, fmt.Errorf("add finalizer: %w", err)
		}
	}
	v, err := r.read(ctx, &vol)
	if err != nil {
		return ctrl.Result{}, err
	}
	if err := r.growReplicas(ctx, v); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.markFailures(ctx, v); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.removeStale(ctx, v); err != nil {
		return ctrl.Result{}, err
	}
	schedErr := r.replenish(ctx, v)
	if err := r.reconcileEngine(ctx, v); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.bestEffortLocality(ctx, v); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.autoBalance(ctx, v); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.writeStatus(ctx, v, schedErr); err != nil {
		return ctrl.Result{}, err
	}
	var ue *schedule.UnschedulableError
	if schedErr != nil && !errors.As(schedErr, &ue) && !errors.Is(schedErr, errWaitingForAttach) {
		return ctrl.Result{}, schedErr
	}
	return ctrl.Result{RequeueAfter: r.resync}, nil
}

func (r *volumeReconciler) read(ctx context.Context, vol *v1alpha1.Volume) (*volumeView, error) {
	v := &volumeView{vol: vol, nodes: map[string]*v1alpha1.Node{}, now: time.Now()}
	var err error
	if v.settings, err = loadSettings(ctx, r, r.ns); err != nil {
		return nil, err
	}
	var reps v1alpha1.ReplicaList
	if err := r.List(ctx, &reps, client.InNamespace(vol.Namespace), client.MatchingLabels{v1alpha1.LabelVolume: vol.Name}); err != nil {
		return nil, fmt.Errorf("list replicas of %s: %w", vol.Name, err)
	}
	for _, rep := range r.created.merge(reps.Items, time.Now()) {
		if rep.DeletionTimestamp.IsZero() && rep.Spec.VolumeName == vol.Name {
			v.replicas = append(v.replicas, rep)
		}
	}
	sort.Slice(v.replicas, func(i, j int) bool { return v.replicas[i].Name < v.replicas[j].Name })
	var eng v1alpha1.Engine
	switch err := r.Get(ctx, types.NamespacedName{Namespace: vol.Namespace, Name: vol.Name}, &eng); {
	case err == nil:
		v.engine = &eng
	case client.IgnoreNotFound(err) != nil:
		return nil, fmt.Errorf("get engine of %s: %w", vol.Name, err)
	}
	var nodes v1alpha1.NodeList
	if err := r.List(ctx, &nodes, client.InNamespace(vol.Namespace)); err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	for i := range nodes.Items {
		v.nodes[nodes.Items[i].Name] = &nodes.Items[i]
	}
	return v, nil
}

// wantReplicas is the volume's replica count, or the Setting's default.
func (v *volumeView) wantReplicas() int {
	if v.vol.Spec.NumberOfReplicas != nil {
		return int(*v.vol.Spec.NumberOfReplicas)
	}
	return int(v.settings.defaultReplicas)
}

func (v *volumeView) staleTimeout() time.Duration {
	if v.vol.Spec.StaleReplicaTimeout != nil {
		return v.vol.Spec.StaleReplicaTimeout.Duration
	}
	return v.settings.staleReplicaTimeout
}

// healthy reports whether a replica counts as a good copy now: its node
// is up, its instance runs, and the engine (when one runs) has it RW.
func (v *volumeView) healthy(rep *v1alpha1.Replica) bool {
	n := v.nodes[rep.Spec.NodeID]
	if n == nil || !nodeReady(n) || rep.Status.CurrentState != v1alpha1.InstanceRunning {
		return false
	}
	if v.engineRunning() {
		return v.engine.Status.ReplicaModeMap[rep.Name] == v1alpha1.ReplicaModeRW
	}
	return rep.Spec.HealthyAt != nil
}

// failed reports whether a replica is known bad: its node is down or
// gone, or the running engine has it ERR. One the engine does not list
// yet (being added) is not failed.
func (v *volumeView) failed(rep *v1alpha1.Replica) bool {
	n := v.nodes[rep.Spec.NodeID]
	if n == nil || !nodeReady(n) || rep.Status.CurrentState == v1alpha1.InstanceError {
		return true
	}
	if v.engineRunning() {
		return v.engine.Status.ReplicaModeMap[rep.Name] == v1alpha1.ReplicaModeERR
	}
	return false
}

func (v *volumeView) engineRunning() bool {
	return v.engine != nil && v.engine.Status.CurrentState == v1alpha1.InstanceRunning
}

// growReplicas records a grown volume size on its replicas, so a disk's
// scheduled bytes count what they may now hold (the engine grows the
// replicas' data itself).
func (r *volumeReconciler) growReplicas(ctx context.Context, v *volumeView) error {
	for i := range v.replicas {
		rep := &v.replicas[i]
		if rep.Spec.VolumeSize >= v.vol.Spec.Size {
			continue
		}
		patch := client.MergeFrom(rep.DeepCopy())
		rep.Spec.VolumeSize = v.vol.Spec.Size
		if err := r.Patch(ctx, rep, patch); err != nil {
			return fmt.Errorf("grow replica %s: %w", rep.Name, err)
		}
	}
	return nil
}

// markFailures stamps FailedAt on replicas that went bad and HealthyAt
// on those the engine has RW (clearing FailedAt).
func (r *volumeReconciler) markFailures(ctx context.Context, v *volumeView) error {
	for i := range v.replicas {
		rep := &v.replicas[i]
		patch := client.MergeFrom(rep.DeepCopy())
		changed := false
		switch {
		case v.failed(rep) && rep.Spec.FailedAt == nil:
			rep.Spec.FailedAt = &metav1.Time{Time: v.now}
			changed = true
		case v.engineRunning() && v.engine.Status.ReplicaModeMap[rep.Name] == v1alpha1.ReplicaModeRW && nodeReady(v.nodes[rep.Spec.NodeID]):
			if rep.Spec.FailedAt != nil || rep.Spec.HealthyAt == nil {
				rep.Spec.FailedAt, rep.Spec.HealthyAt = nil, &metav1.Time{Time: v.now}
				changed = true
			}
		case !v.engineRunning() && rep.Spec.FailedAt != nil && !v.failed(rep) && rep.Status.CurrentState == v1alpha1.InstanceRunning:
			rep.Spec.FailedAt = nil // its node came back
			changed = true
		}
		if changed {
			if err := r.Patch(ctx, rep, patch); err != nil {
				return fmt.Errorf("mark replica %s: %w", rep.Name, err)
			}
		}
	}
	return nil
}

// removeStale deletes replicas failed for longer than the stale replica
// timeout, as long as another healthy copy remains: a volume is never
// left without one.
func (r *volumeReconciler) removeStale(ctx context.Context, v *volumeView) error {
	timeout := v.staleTimeout()
	var keep []v1alpha1.Replica
	for i := range v.replicas {
		rep := &v.replicas[i]
		stale := rep.Spec.FailedAt != nil && v.now.Sub(rep.Spec.FailedAt.Time) >= timeout
		if !stale || v.healthyOthers(rep.Name) == 0 {
			keep = append(keep, *rep)
			continue
		}
		if err := r.deleteReplica(ctx, rep); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("delete stale replica %s: %w", rep.Name, err)
		}
		if err := r.releaseIfNodeDown(ctx, rep, v.nodes); err != nil {
			return err
		}
	}
	v.replicas = keep
	return nil
}

// agentFinalizer is the finalizer each node's agent keeps on the
// Replicas and Engines it runs (k8s/agent.Finalizer).
const agentFinalizer = "storage.drover.io/agent"

// releaseIfNodeDown removes the agent's finalizer from an object being
// deleted whose node is down, so the deletion does not wait for a node
// that may never return; an agent that comes back removes the data of
// replicas it no longer has.
func (r *volumeReconciler) releaseIfNodeDown(ctx context.Context, obj client.Object, nodes map[string]*v1alpha1.Node) error {
	node := obj.GetLabels()[v1alpha1.LabelNode]
	if n := nodes[node]; n != nil && nodeReady(n) {
		return nil
	}
	patch := client.MergeFrom(obj.DeepCopyObject().(client.Object))
	if !controllerutil.RemoveFinalizer(obj, agentFinalizer) {
		return nil
	}
	if err := r.Patch(ctx, obj, patch); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("release %s of down node %s: %w", obj.GetName(), node, err)
	}
	return nil
}

func (v *volumeView) healthyOthers(name string) int {
	n := 0
	for i := range v.replicas {
		if v.replicas[i].Name != name && v.healthy(&v.replicas[i]) {
			n++
		}
	}
	return n
}

// replenish creates replicas until the volume has as many as it wants,
// placed by the scheduler. Failed replicas still count until they are
// removed as stale, so a short outage does not copy a whole volume.
func (r *volumeReconciler) replenish(ctx context.Context, v *volumeView) error {
	missing := v.wantReplicas() - len(v.replicas)
	if missing <= 0 {
		return nil
	}
	req := schedule.Request{SizeBytes: v.vol.Spec.Size, NodeSelector: v.vol.Spec.NodeSelector, DiskSelector: v.vol.Spec.DiskSelector}
	if v.vol.Spec.DataLocality == v1alpha1.DataLocalityStrictLocal {
		// The replica goes beside the engine, so it waits for an attach.
		if v.vol.Spec.NodeID == "" {
			return errWaitingForAttach
		}
		req.OnlyNode = v.vol.Spec.NodeID
	}
	for _, rep := range v.replicas {
		req.Existing = append(req.Existing, schedule.Placement{Node: rep.Spec.NodeID, Disk: rep.Spec.DiskName})
	}
	nodes, err := r.scheduleNodes(ctx, v)
	if err != nil {
		return err
	}
	placements, schedErr := schedule.PlaceMany(nodes, req, missing, v.settings.schedule)
	for _, p := range placements {
		if err := r.createReplica(ctx, v, p); err != nil {
			return err
		}
	}
	if schedErr != nil {
		return fmt.Errorf("%d of %d replicas wanted are placed: %w", v.wantReplicas()-missing+len(placements), v.wantReplicas(), schedErr)
	}
	return nil
}

// errWaitingForAttach: a strict-local volume's replica is placed on the
// node it is first attached to.
var errWaitingForAttach = errors.New("strict-local: the replica is placed on the node the volume is first attached to")

// createReplica creates a Replica of the volume at placement p.
func (r *volumeReconciler) createReplica(ctx context.Context, v *volumeView, p schedule.Placement) error {
	rep := &v1alpha1.Replica{ObjectMeta: metav1.ObjectMeta{
		GenerateName: v.vol.Name + "-r-", Namespace: v.vol.Namespace,
		Labels: map[string]string{v1alpha1.LabelVolume: v.vol.Name, v1alpha1.LabelNode: p.Node},
	}, Spec: v1alpha1.ReplicaSpec{
		VolumeName: v.vol.Name, VolumeSize: v.vol.Spec.Size, NodeID: p.Node, DiskName: p.Disk,
		DiskPath: v.nodes[p.Node].Spec.Disks[p.Disk].Path, BackingImage: v.vol.Spec.BackingImage,
		DesiredState: v1alpha1.DesiredRunning,
	}}
	if err := controllerutil.SetControllerReference(v.vol, rep, r.Scheme()); err != nil {
		return err
	}
	if err := r.Create(ctx, rep); err != nil {
		return fmt.Errorf("create replica of %s on %s: %w", v.vol.Name, p.Node, err)
	}
	r.created.add(*rep, time.Now())
	v.replicas = append(v.replicas, *rep)
	return nil
}

// deleteReplica deletes rep, and forgets it was just created.
func (r *volumeReconciler) deleteReplica(ctx context.Context, rep *v1alpha1.Replica) error {
	r.created.forget(rep.Name)
	return r.Delete(ctx, rep)
}

// createdReplicas remembers replicas just created until the cache lists
// them (or createdGrace passed: then the cache would have, or they are
// gone).
type createdReplicas struct {
	mu sync.Mutex
	m  map[string]createdReplica
}

type createdReplica struct {
	rep v1alpha1.Replica
	at  time.Time
}

const createdGrace = time.Minute

func (c *createdReplicas) add(rep v1alpha1.Replica, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]createdReplica{}
	}
	c.m[rep.Name] = createdReplica{rep: rep, at: now}
}

func (c *createdReplicas) forget(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, name)
}

// merge returns listed (a cache's list) and the created replicas it does
// not hold yet, and forgets those it holds and those past createdGrace.
func (c *createdReplicas) merge(listed []v1alpha1.Replica, now time.Time) []v1alpha1.Replica {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) == 0 {
		return listed
	}
	seen := make(map[string]bool, len(listed))
	for i := range listed {
		seen[listed[i].Name] = true
	}
	out := listed
	names := make([]string, 0, len(c.m))
	for name := range c.m {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		cr := c.m[name]
		switch {
		case seen[name] || now.Sub(cr.at) > createdGrace:
			delete(c.m, name)
		default:
			if len(out) == len(listed) {
				out = append([]v1alpha1.Replica(nil), listed...)
			}
			out = append(out, cr.rep)
		}
	}
	return out
}

// bestEffortLocality brings a best-effort volume's data beside its
// engine: with no good replica on the engine's node it adds one there
// (rebuilt like any new replica; if none fits, nothing happens: best
// effort), and once that one is RW and the volume has one replica too
// many, it deletes the farthest other (schedule.Farthest), only while
// every replica is healthy.
func (r *volumeReconciler) bestEffortLocality(ctx context.Context, v *volumeView) error {
	if v.vol.Spec.DataLocality != v1alpha1.DataLocalityBestEffort || !v.engineRunning() {
		return nil
	}
	engNode := v.engine.Spec.NodeID
	var local *v1alpha1.Replica
	var placements []schedule.Placement
	for i := range v.replicas {
		rep := &v.replicas[i]
		placements = append(placements, schedule.Placement{Node: rep.Spec.NodeID, Disk: rep.Spec.DiskName})
		if rep.Spec.NodeID == engNode && rep.Spec.FailedAt == nil {
			local = rep
		}
	}
	nodes, err := r.scheduleNodes(ctx, v)
	if err != nil {
		return err
	}
	want := v.wantReplicas()
	if local == nil {
		if len(v.replicas) > want {
			return nil // a move is under way
		}
		req := schedule.Request{SizeBytes: v.vol.Spec.Size, NodeSelector: v.vol.Spec.NodeSelector,
			DiskSelector: v.vol.Spec.DiskSelector, Existing: placements, OnlyNode: engNode}
		p, err := schedule.Place(nodes, req, v.settings.schedule)
		if err != nil {
			return nil // the engine's node cannot take it: stay as we are
		}
		return r.createReplica(ctx, v, p)
	}
	if len(v.replicas) <= want || !v.healthy(local) || v.healthyOthers("") != len(v.replicas) {
		return nil
	}
	far, ok := schedule.Farthest(nodes, engNode, placements)
	if !ok {
		return nil
	}
	return r.dropReplicaAt(ctx, v, far)
}

// dropReplicaAt deletes the volume's replica placed at p, if any.
func (r *volumeReconciler) dropReplicaAt(ctx context.Context, v *volumeView, p schedule.Placement) error {
	for i := range v.replicas {
		rep := &v.replicas[i]
		if rep.Spec.NodeID == p.Node && rep.Spec.DiskName == p.Disk {
			if err := r.deleteReplica(ctx, rep); client.IgnoreNotFound(err) != nil {
				return fmt.Errorf("drop replica %s of %s: %w", rep.Name, v.vol.Name, err)
			}
			v.replicas = append(v.replicas[:i], v.replicas[i+1:]...)
			return nil
		}
	}
	return nil
}

// autoBalance spreads a healthy volume's replicas over nodes (and, for
// best-effort, zones) as they become available (schedule.Rebalance): it
// adds a replica where the move says, and once that one is RW and the
// volume has one replica too many, drops the one whose absence leaves
// the best spread (schedule.Surplus). Only while every replica is
// healthy and the engine runs (a new replica is rebuilt by it); never for
// strict-local volumes; best-effort data locality moves replicas its
// own way and takes precedence.
func (r *volumeReconciler) autoBalance(ctx context.Context, v *volumeView) error {
	mode := v.vol.Spec.ReplicaAutoBalance
	if mode == "" || mode == v1alpha1.AutoBalanceIgnored {
		mode = v.settings.autoBalance
	}
	if mode != v1alpha1.AutoBalanceLeastEffort && mode != v1alpha1.AutoBalanceBestEffort ||
		v.vol.Spec.DataLocality == v1alpha1.DataLocalityStrictLocal || v.vol.Spec.DataLocality == v1alpha1.DataLocalityBestEffort ||
		!v.engineRunning() || v.healthyOthers("") != len(v.replicas) {
		return nil
	}
	zones := mode == v1alpha1.AutoBalanceBestEffort
	var placements []schedule.Placement
	for i := range v.replicas {
		placements = append(placements, schedule.Placement{Node: v.replicas[i].Spec.NodeID, Disk: v.replicas[i].Spec.DiskName})
	}
	nodes, err := r.scheduleNodes(ctx, v)
	if err != nil {
		return err
	}
	switch want := v.wantReplicas(); {
	case len(v.replicas) == want:
		req := schedule.Request{SizeBytes: v.vol.Spec.Size, NodeSelector: v.vol.Spec.NodeSelector, DiskSelector: v.vol.Spec.DiskSelector}
		m, ok := schedule.Rebalance(nodes, req, placements, v.settings.schedule, zones)
		if !ok {
			return nil
		}
		return r.createReplica(ctx, v, m.To)
	case len(v.replicas) == want+1:
		return r.dropReplicaAt(ctx, v, schedule.Surplus(nodes, placements, zones))
	}
	return nil
}

// scheduleNodes turns Node objects and every volume's replicas into the
// scheduler's input: what each disk has scheduled is summed from the
// Replica objects themselves, so it is never behind.
func (r *volumeReconciler) scheduleNodes(ctx context.Context, v *volumeView) ([]schedule.Node, error) {
	var all v1alpha1.ReplicaList
	if err := r.List(ctx, &all, client.InNamespace(v.vol.Namespace)); err != nil {
		return nil, fmt.Errorf("list replicas: %w", err)
	}
	scheduled := map[schedule.Placement]int64{}
	for _, rep := range r.created.merge(all.Items, time.Now()) {
		scheduled[schedule.Placement{Node: rep.Spec.NodeID, Disk: rep.Spec.DiskName}] += rep.Spec.VolumeSize
	}
	var out []schedule.Node
	for _, n := range v.nodes {
		sn := schedule.Node{Name: n.Name, Zone: n.Status.Zone, Ready: nodeReady(n) && n.DeletionTimestamp.IsZero(),
			AllowScheduling: n.Spec.AllowScheduling, Tags: n.Spec.Tags}
		for name, d := range n.Spec.Disks {
			st := n.Status.DiskStatus[name]
			sn.Disks = append(sn.Disks, schedule.Disk{Name: name, AllowScheduling: d.AllowScheduling, Tags: d.Tags,
				StorageMaximumBytes: st.StorageMaximum, StorageAvailableBytes: st.StorageAvailable,
				StorageReservedBytes: d.StorageReserved, StorageScheduledBytes: scheduled[schedule.Placement{Node: n.Name, Disk: name}]})
		}
		out = append(out, sn)
	}
	return out, nil
}

// reconcileEngine keeps one Engine, named after the volume, on the node
// the volume is attached to, listing the replicas that run.
func (r *volumeReconciler) reconcileEngine(ctx context.Context, v *volumeView) error {
	target := v.vol.Spec.NodeID
	if v.engine != nil && (target == "" || v.engine.Spec.NodeID != target || !v.engine.DeletionTimestamp.IsZero()) {
		if err := r.Delete(ctx, v.engine); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("delete engine of %s: %w", v.vol.Name, err)
		}
		// An engine on a node that is down is never stopped by its agent:
		// let it go, or the volume could never move to another node (the
		// replicas fence it by epoch should it still run somewhere).
		if err := r.releaseIfNodeDown(ctx, v.engine, v.nodes); err != nil {
			return err
		}
		v.engine = nil
		return nil
	}
	if target == "" {
		return nil
	}
	if v.vol.Spec.DataLocality == v1alpha1.DataLocalityStrictLocal {
		for i := range v.replicas {
			if n := v.replicas[i].Spec.NodeID; n != target {
				v.attachBlocked = fmt.Sprintf("strict-local: the volume's replica is on node %s; attach it there", n)
				return nil
			}
		}
	}
	addrs := map[string]string{}
	for i := range v.replicas {
		rep := &v.replicas[i]
		if rep.Status.Address != "" && rep.Status.CurrentState == v1alpha1.InstanceRunning {
			addrs[rep.Name] = rep.Status.Address
		}
	}
	if v.engine == nil {
		// The first engine opens every replica at once: wait until all
		// the placed ones run, so it does not start on a subset.
		if len(addrs) == 0 || len(addrs) < len(v.replicas) {
			return nil
		}
		check, err := r.encryptionCheck(ctx, v)
		if err != nil {
			v.attachBlocked, v.attachReason = err.Error(), "EncryptionKey"
			return nil
		}
		eng := &v1alpha1.Engine{ObjectMeta: metav1.ObjectMeta{Name: v.vol.Name, Namespace: v.vol.Namespace,
			Labels: map[string]string{v1alpha1.LabelVolume: v.vol.Name, v1alpha1.LabelNode: target}},
			Spec: v1alpha1.EngineSpec{VolumeName: v.vol.Name, VolumeSize: v.vol.Spec.Size, NodeID: target,
				Frontend: v.vol.Spec.Frontend, DesiredState: v1alpha1.DesiredRunning, ReplicaAddressMap: addrs,
				QoS: v.vol.Spec.QoS.DeepCopy(), EncryptionKeySecret: v.vol.Spec.EncryptionKeySecret, EncryptionKeyCheck: check}}
		if from := v.vol.Spec.FromBackup; from != "" && !meta.IsStatusConditionTrue(v.vol.Status.Conditions, v1alpha1.VolumeConditionRestored) {
			var bt v1alpha1.BackupTarget
			if err := r.Get(ctx, types.NamespacedName{Namespace: v.vol.Namespace, Name: "default"}, &bt); err != nil {
				return fmt.Errorf("volume %s restores from a backup: backup target \"default\": %w", v.vol.Name, err)
			}
			eng.Spec.RestoreFrom, eng.Spec.RestoreTarget = from, bt.Spec.URL
			eng.Spec.RestoreCredentialSecret = bt.Spec.CredentialSecret
		}
		if err := controllerutil.SetControllerReference(v.vol, eng, r.Scheme()); err != nil {
			return err
		}
		if err := r.Create(ctx, eng); err != nil {
			return fmt.Errorf("create engine of %s: %w", v.vol.Name, err)
		}
		v.engine = eng
		return nil
	}
	// A new replica joins only while its node runs fewer rebuilds than
	// the concurrent-replica-rebuild-per-node-limit Setting allows.
	if err := r.holdRebuilds(ctx, v, addrs); err != nil {
		return err
	}
	// A replica whose address is gone from the map (deleted as stale)
	// leaves the engine; a new one that runs joins and is rebuilt.
	for name, addr := range v.engine.Spec.ReplicaAddressMap {
		if _, ok := addrs[name]; !ok && v.hasReplica(name) {
			addrs[name] = addr // still ours, its instance is only down: keep it
		}
	}
	if mapsEqual(addrs, v.engine.Spec.ReplicaAddressMap) && v.engine.Spec.VolumeSize == v.vol.Spec.Size &&
		qosEqual(v.engine.Spec.QoS, v.vol.Spec.QoS) {
		return nil
	}
	patch := client.MergeFrom(v.engine.DeepCopy())
	v.engine.Spec.ReplicaAddressMap, v.engine.Spec.VolumeSize = addrs, v.vol.Spec.Size
	// QoS follows the volume's while the engine runs (applied live).
	v.engine.Spec.QoS = v.vol.Spec.QoS.DeepCopy()
	if err := r.Patch(ctx, v.engine, patch); err != nil {
		return fmt.Errorf("update engine of %s: %w", v.vol.Name, err)
	}
	return nil
}

// encryptionCheck returns the check value of an encrypted volume's key
// for its engine, recording it in the volume's status the first time (so
// a later key that differs is refused rather than serving garbage), and
// refusing a key that does not match the one recorded. "" for a volume
// without encryption.
func (r *volumeReconciler) encryptionCheck(ctx context.Context, v *volumeView) (string, error) {
	name := v.vol.Spec.EncryptionKeySecret
	if name == "" {
		return "", nil
	}
	key, err := volumekey.Read(ctx, r.secrets, v.vol.Namespace, name)
	if err != nil {
		return "", err
	}
	defer clear(key)
	if have := v.vol.Status.EncryptionKeyCheck; have != "" {
		if err := volumekey.Verify(key, have); err != nil {
			return "", fmt.Errorf("encryption key secret %s: %w: it is not the key the volume was made with", name, err)
		}
		return have, nil
	}
	patch := client.MergeFrom(v.vol.DeepCopy())
	v.vol.Status.EncryptionKeyCheck = volumekey.Check(key)
	if err := r.Status().Patch(ctx, v.vol, patch); err != nil {
		return "", fmt.Errorf("record the encryption key check of %s: %w", v.vol.Name, err)
	}
	return v.vol.Status.EncryptionKeyCheck, nil
}

// qosEqual compares QoS limits; unset is no limit.
func qosEqual(a, b *v1alpha1.VolumeQoS) bool {
	var za, zb v1alpha1.VolumeQoS
	if a != nil {
		za = *a
	}
	if b != nil {
		zb = *b
	}
	return za == zb
}

// holdRebuilds removes from addrs the replicas that would join the
// engine (and be rebuilt) on a node already running as many rebuilds as
// the Setting allows; a later reconcile adds them.
func (r *volumeReconciler) holdRebuilds(ctx context.Context, v *volumeView, addrs map[string]string) error {
	limit := v.settings.rebuildsPerNode
	if limit <= 0 {
		return nil
	}
	var engines v1alpha1.EngineList
	if err := r.List(ctx, &engines, client.InNamespace(v.vol.Namespace)); err != nil {
		return fmt.Errorf("list engines: %w", err)
	}
	var all v1alpha1.ReplicaList
	if err := r.List(ctx, &all, client.InNamespace(v.vol.Namespace)); err != nil {
		return fmt.Errorf("list replicas: %w", err)
	}
	busy := RebuildsPerNode(engines.Items, all.Items)
	names := make([]string, 0, len(addrs))
	for name := range addrs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if _, member := v.engine.Spec.ReplicaAddressMap[name]; member {
			continue
		}
		node := ""
		for i := range v.replicas {
			if v.replicas[i].Name == name {
				node = v.replicas[i].Spec.NodeID
			}
		}
		if busy[node] >= limit {
			delete(addrs, name)
			continue
		}
		busy[node]++
	}
	return nil
}

// RebuildsPerNode counts, per node, the replicas being rebuilt: listed
// in their engine's replica map but not RW in its status.
func RebuildsPerNode(engines []v1alpha1.Engine, replicas []v1alpha1.Replica) map[string]int {
	nodeOf := map[string]string{}
	for _, rep := range replicas {
		nodeOf[rep.Name] = rep.Spec.NodeID
	}
	out := map[string]int{}
	for _, e := range engines {
		for name := range e.Spec.ReplicaAddressMap {
			if mode := e.Status.ReplicaModeMap[name]; mode != v1alpha1.ReplicaModeRW && mode != v1alpha1.ReplicaModeERR {
				out[nodeOf[name]]++
			}
		}
	}
	return out
}

func (v *volumeView) hasReplica(name string) bool {
	for i := range v.replicas {
		if v.replicas[i].Name == name {
			return true
		}
	}
	return false
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, x := range a {
		if y, ok := b[k]; !ok || x != y {
			return false
		}
	}
	return true
}

// writeStatus sets the volume's state, robustness, engine node and
// endpoint, and its Scheduled condition.
func (r *volumeReconciler) writeStatus(ctx context.Context, v *volumeView, schedErr error) error {
	vol := v.vol
	patch := client.MergeFrom(vol.DeepCopy())
	before := *vol.Status.DeepCopy()
	st := &vol.Status
	st.ObservedGeneration = vol.Generation
	healthy := 0
	for i := range v.replicas {
		if v.healthy(&v.replicas[i]) {
			healthy++
		}
	}
	st.ReplicasReady = int32(healthy)
	want := v.wantReplicas()
	switch {
	case healthy == 0 && v.engineRunning():
		st.Robustness = v1alpha1.RobustnessFaulted
	case healthy == 0:
		st.Robustness = v1alpha1.RobustnessUnknown
	case healthy < want:
		st.Robustness = v1alpha1.RobustnessDegraded
	default:
		st.Robustness = v1alpha1.RobustnessHealthy
	}
	st.CurrentNodeID, st.Endpoint = "", ""
	switch {
	case v.engineRunning():
		st.State = v1alpha1.VolumeAttached
		st.CurrentNodeID, st.Endpoint = v.engine.Spec.NodeID, v.engine.Status.Endpoint
	case vol.Spec.NodeID != "":
		st.State = v1alpha1.VolumeAttaching
	case v.engine != nil:
		st.State = v1alpha1.VolumeDetaching
	case len(v.replicas) == 0 || v.anyReplicaStarting():
		st.State = v1alpha1.VolumeCreating
	default:
		st.State = v1alpha1.VolumeDetached
	}
	cond := metav1.Condition{Type: v1alpha1.VolumeConditionScheduled, Status: metav1.ConditionTrue,
		Reason: "AllReplicasScheduled", Message: fmt.Sprintf("%d replicas placed", len(v.replicas)),
		ObservedGeneration: vol.Generation}
	switch {
	case errors.Is(schedErr, errWaitingForAttach):
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, "WaitingForAttach", schedErr.Error()
	case schedErr != nil:
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, "ReplicaSchedulingFailed", schedErr.Error()
	}
	meta.SetStatusCondition(&st.Conditions, cond)
	if v.attachBlocked != "" {
		reason := v.attachReason
		if reason == "" {
			reason = "DataLocality"
		}
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: v1alpha1.VolumeConditionAttachable, Status: metav1.ConditionFalse,
			Reason: reason, Message: v.attachBlocked, ObservedGeneration: vol.Generation})
	} else {
		meta.RemoveStatusCondition(&st.Conditions, v1alpha1.VolumeConditionAttachable)
	}
	v.backingImageCondition()
	if from := vol.Spec.FromBackup; from != "" && !meta.IsStatusConditionTrue(st.Conditions, v1alpha1.VolumeConditionRestored) {
		rc := metav1.Condition{Type: v1alpha1.VolumeConditionRestored, Status: metav1.ConditionFalse,
			Reason: "WaitingForAttach", Message: "the backup is restored the first time the volume is attached",
			ObservedGeneration: vol.Generation}
		switch {
		case v.engine != nil && v.engine.Status.RestoredFrom == from:
			rc.Status, rc.Reason, rc.Message = metav1.ConditionTrue, "Restored", "restored from "+from
		case v.engine != nil:
			rc.Reason, rc.Message = "Restoring", "restoring "+from
			if msg := v.engine.Status.Message; msg != "" {
				rc.Message = msg
			}
		}
		meta.SetStatusCondition(&st.Conditions, rc)
	}
	if equality.Semantic.DeepEqual(before, vol.Status) {
		return nil // most resyncs change nothing: send nothing
	}
	if err := r.Status().Patch(ctx, vol, patch); err != nil {
		return fmt.Errorf("status of %s: %w", vol.Name, err)
	}
	return nil
}

// backingImageCondition copies the first waiting replica's
// BackingImageReady=False condition to the volume (True once none waits).
func (v *volumeView) backingImageCondition() {
	if v.vol.Spec.BackingImage == "" {
		return
	}
	cond := metav1.Condition{Type: v1alpha1.VolumeConditionBackingImageReady, Status: metav1.ConditionTrue, Reason: "Ready",
		Message:            "every replica's disk holds a ready copy of backing image " + v.vol.Spec.BackingImage,
		ObservedGeneration: v.vol.Generation}
	for i := range v.replicas {
		rc := meta.FindStatusCondition(v.replicas[i].Status.Conditions, v1alpha1.ReplicaConditionBackingImageReady)
		if rc == nil || rc.Status == metav1.ConditionTrue {
			continue
		}
		cond.Status, cond.Reason = metav1.ConditionFalse, rc.Reason
		cond.Message = fmt.Sprintf("replica %s on node %s: %s", v.replicas[i].Name, v.replicas[i].Spec.NodeID, rc.Message)
		break
	}
	meta.SetStatusCondition(&v.vol.Status.Conditions, cond)
}

func (v *volumeView) anyReplicaStarting() bool {
	for i := range v.replicas {
		if v.replicas[i].Status.CurrentState != v1alpha1.InstanceRunning {
			return true
		}
	}
	return false
}

// finalize deletes the volume's engine and replicas, and lets the volume
// go once the agents have removed them (and their data).
func (r *volumeReconciler) finalize(ctx context.Context, vol *v1alpha1.Volume) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(vol, v1alpha1.Finalizer) {
		return ctrl.Result{}, nil
	}
	if vol.Status.State != v1alpha1.VolumeDeleting {
		patch := client.MergeFrom(vol.DeepCopy())
		vol.Status.State = v1alpha1.VolumeDeleting
		if err := r.Status().Patch(ctx, vol, patch); err != nil {
			return ctrl.Result{}, fmt.Errorf("status of %s: %w", vol.Name, err)
		}
	}
	if err := r.deleteSnapshots(ctx, vol); err != nil {
		return ctrl.Result{}, err
	}
	sel := []client.DeleteAllOfOption{client.InNamespace(vol.Namespace), client.MatchingLabels{v1alpha1.LabelVolume: vol.Name}}
	if err := r.DeleteAllOf(ctx, &v1alpha1.Engine{}, sel...); err != nil {
		return ctrl.Result{}, fmt.Errorf("delete engine of %s: %w", vol.Name, err)
	}
	if err := r.DeleteAllOf(ctx, &v1alpha1.Replica{}, sel...); err != nil {
		return ctrl.Result{}, fmt.Errorf("delete replicas of %s: %w", vol.Name, err)
	}
	var reps v1alpha1.ReplicaList
	var engs v1alpha1.EngineList
	lsel := []client.ListOption{client.InNamespace(vol.Namespace), client.MatchingLabels{v1alpha1.LabelVolume: vol.Name}}
	if err := r.List(ctx, &reps, lsel...); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.List(ctx, &engs, lsel...); err != nil {
		return ctrl.Result{}, err
	}
	if len(reps.Items)+len(engs.Items) > 0 {
		var nodes v1alpha1.NodeList
		if err := r.List(ctx, &nodes, client.InNamespace(vol.Namespace)); err != nil {
			return ctrl.Result{}, err
		}
		byName := map[string]*v1alpha1.Node{}
		for i := range nodes.Items {
			byName[nodes.Items[i].Name] = &nodes.Items[i]
		}
		for i := range reps.Items {
			if err := r.releaseIfNodeDown(ctx, &reps.Items[i], byName); err != nil {
				return ctrl.Result{}, err
			}
		}
		for i := range engs.Items {
			if err := r.releaseIfNodeDown(ctx, &engs.Items[i], byName); err != nil {
				return ctrl.Result{}, err
			}
		}
		return ctrl.Result{RequeueAfter: time.Second}, nil
	}
	controllerutil.RemoveFinalizer(vol, v1alpha1.Finalizer)
	if err := r.Update(ctx, vol); err != nil {
		return ctrl.Result{}, fmt.Errorf("remove finalizer of %s: %w", vol.Name, err)
	}
	return ctrl.Result{}, nil
}

// deleteSnapshots deletes a deleted volume's Snapshot objects, releasing
// the agent's finalizer: their data goes with the replicas.
func (r *volumeReconciler) deleteSnapshots(ctx context.Context, vol *v1alpha1.Volume) error {
	var snaps v1alpha1.SnapshotList
	if err := r.List(ctx, &snaps, client.InNamespace(vol.Namespace)); err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	for i := range snaps.Items {
		s := &snaps.Items[i]
		if s.Spec.Volume != vol.Name {
			continue
		}
		patch := client.MergeFrom(s.DeepCopy())
		if controllerutil.RemoveFinalizer(s, agentFinalizer) {
			if err := r.Patch(ctx, s, patch); client.IgnoreNotFound(err) != nil {
				return fmt.Errorf("release snapshot %s: %w", s.Name, err)
			}
		}
		if err := r.Delete(ctx, s); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("delete snapshot %s: %w", s.Name, err)
		}
	}
	return nil
}
