package agent

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/k8s/api/v1alpha1"
)

// snapshotReconciler takes and deletes the snapshots of the volumes whose
// engines run on this node: the agent hosting a volume's engine is the
// one that executes its Snapshot objects.
type snapshotReconciler struct{ a *Agent }

func (sr *snapshotReconciler) setup(mgr ctrl.Manager) error {
	// An engine that starts (or changes) here may have snapshots waiting.
	return ctrl.NewControllerManagedBy(mgr).Named("snapshot").For(&v1alpha1.Snapshot{}).
		Watches(&v1alpha1.Engine{}, ofEngineVolume(sr.a.client, &v1alpha1.SnapshotList{})).Complete(sr)
}

// ofEngineVolume maps an Engine's events to the objects of list's kind
// (Snapshots, Backups) of its volume in its namespace: engines are named
// after their volume.
func ofEngineVolume(c client.Client, list client.ObjectList) handler.EventHandler {
	return handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, obj client.Object) []reconcile.Request {
		l := list.DeepCopyObject().(client.ObjectList)
		if err := c.List(ctx, l, client.InNamespace(obj.GetNamespace())); err != nil {
			return nil
		}
		var out []reconcile.Request
		_ = apimeta.EachListItem(l, func(o runtime.Object) error {
			var volume string
			switch x := o.(type) {
			case *v1alpha1.Snapshot:
				volume = x.Spec.Volume
			case *v1alpha1.Backup:
				volume = x.Spec.Volume
			}
			if m, ok := o.(client.Object); ok && volume == obj.GetName() {
				out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: m.GetNamespace(), Name: m.GetName()}})
			}
			return nil
		})
		return out
	})
}

func (sr *snapshotReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	a := sr.a
	var snap v1alpha1.Snapshot
	if err := a.client.Get(ctx, req.NamespacedName, &snap); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	inst := a.engineInstance(snap.Spec.Volume) // engines are named after their volume
	if inst == nil || !inst.driver.Serving() {
		return ctrl.Result{}, nil // not ours, or not yet: the engine's events bring it back
	}
	if !snap.DeletionTimestamp.IsZero() {
		if !controllerutil.ContainsFinalizer(&snap, Finalizer) {
			return ctrl.Result{}, nil
		}
		_, err := inst.driver.Admin(ctx, engine.AdminRequest{Op: engine.AdminDeleteSnapshot, Name: snap.Name})
		if err != nil && !errors.Is(err, engine.ErrNotFound) {
			return ctrl.Result{}, fmt.Errorf("delete snapshot %s of %s: %w", snap.Name, snap.Spec.Volume, err)
		}
		controllerutil.RemoveFinalizer(&snap, Finalizer)
		if err := a.client.Update(ctx, &snap); err != nil {
			return ctrl.Result{}, fmt.Errorf("release snapshot %s: %w", snap.Name, err)
		}
		a.log.Info("snapshot deleted", "volume", snap.Spec.Volume, "snapshot", snap.Name)
		return ctrl.Result{}, nil
	}
	if snap.Status.ReadyToUse || snap.Status.Error != "" {
		return ctrl.Result{}, nil
	}
	// The finalizer goes on first: a snapshot taken is then never lost
	// track of, even if the agent dies before writing the status.
	if controllerutil.AddFinalizer(&snap, Finalizer) {
		if err := a.client.Update(ctx, &snap); err != nil {
			return ctrl.Result{}, fmt.Errorf("finalizer on snapshot %s: %w", snap.Name, err)
		}
	}
	now := time.Now()
	attrs := &proto.SnapshotAttrs{CreatedUnixNano: now.UnixNano()}
	for k, v := range snap.Spec.Labels {
		attrs.Labels = append(attrs.Labels, proto.Label{Key: k, Value: v})
	}
	sort.Slice(attrs.Labels, func(i, j int) bool { return attrs.Labels[i].Key < attrs.Labels[j].Key })
	patch := client.MergeFrom(snap.DeepCopy())
	_, err := inst.driver.Admin(ctx, engine.AdminRequest{Op: engine.AdminSnapshot, Name: snap.Name, Attrs: attrs})
	switch {
	case err == nil || errors.Is(err, engine.ErrExists):
		snap.Status.ReadyToUse, snap.Status.CreationTime = true, &metav1.Time{Time: now}
		a.log.Info("snapshot taken", "volume", snap.Spec.Volume, "snapshot", snap.Name)
	case errors.Is(err, engine.ErrInvalid):
		snap.Status.Error = err.Error() // a bad name, say: retrying cannot help
	default:
		return ctrl.Result{}, fmt.Errorf("snapshot %s of %s: %w", snap.Name, snap.Spec.Volume, err)
	}
	if err := a.client.Status().Patch(ctx, &snap, patch); err != nil {
		return ctrl.Result{}, fmt.Errorf("status of snapshot %s: %w", snap.Name, err)
	}
	return ctrl.Result{}, nil
}
