package manager

import (
	"context"
	"fmt"
	"sort"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
)

// nodeReconciler marks a Node not Ready when its agent stops reporting.
type nodeReconciler struct {
	client.Client
	ns string
}

func (r *nodeReconciler) setup(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).For(&v1alpha1.Node{}).Named("node").Complete(r)
}

func (r *nodeReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var node v1alpha1.Node
	if err := r.Get(ctx, req.NamespacedName, &node); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !node.DeletionTimestamp.IsZero() {
		return r.finalize(ctx, &node)
	}
	if controllerutil.AddFinalizer(&node, v1alpha1.Finalizer) {
		if err := r.Update(ctx, &node); err != nil {
			return ctrl.Result{}, fmt.Errorf("finalizer on node %s: %w", node.Name, err)
		}
	}
	s, err := loadSettings(ctx, r, r.ns)
	if err != nil {
		return ctrl.Result{}, err
	}
	ready := meta.FindStatusCondition(node.Status.Conditions, v1alpha1.NodeConditionReady)
	if ready == nil || ready.Status != metav1.ConditionTrue || node.Status.LastHeartbeat == nil {
		return ctrl.Result{}, nil
	}
	age := time.Since(node.Status.LastHeartbeat.Time)
	if age < s.nodeDownGrace {
		return ctrl.Result{RequeueAfter: s.nodeDownGrace - age + 100*time.Millisecond}, nil
	}
	patch := client.MergeFrom(node.DeepCopy())
	meta.SetStatusCondition(&node.Status.Conditions, metav1.Condition{
		Type: v1alpha1.NodeConditionReady, Status: metav1.ConditionFalse, Reason: "HeartbeatMissed",
		Message: fmt.Sprintf("the agent last reported %s ago (node-down-grace-period %s)", age.Round(time.Second), s.nodeDownGrace),
	})
	if err := r.Status().Patch(ctx, &node, patch); err != nil {
		return ctrl.Result{}, fmt.Errorf("mark node %s down: %w", node.Name, err)
	}
	return ctrl.Result{}, nil
}

// nodeReady reports whether the node's agent is up.
func nodeReady(n *v1alpha1.Node) bool {
	return meta.IsStatusConditionTrue(n.Status.Conditions, v1alpha1.NodeConditionReady)
}

// finalize lets a Node go only when it holds no volume's last healthy
// replica; until then it stays, with a Deletable=False condition naming
// the volumes.
func (r *nodeReconciler) finalize(ctx context.Context, node *v1alpha1.Node) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(node, v1alpha1.Finalizer) {
		return ctrl.Result{}, nil
	}
	held, err := r.lastCopies(ctx, node.Name)
	if err != nil {
		return ctrl.Result{}, err
	}
	if len(held) > 0 {
		patch := client.MergeFrom(node.DeepCopy())
		meta.SetStatusCondition(&node.Status.Conditions, metav1.Condition{Type: "Deletable", Status: metav1.ConditionFalse,
			Reason: "HoldsLastHealthyReplica", Message: fmt.Sprintf("the node holds the only healthy replica of volumes %v: "+
				"add a replica elsewhere or delete the volumes first", held)})
		if err := r.Status().Patch(ctx, node, patch); err != nil {
			return ctrl.Result{}, fmt.Errorf("status of node %s: %w", node.Name, err)
		}
		return ctrl.Result{RequeueAfter: 2 * time.Second}, nil
	}
	controllerutil.RemoveFinalizer(node, v1alpha1.Finalizer)
	if err := r.Update(ctx, node); err != nil {
		return ctrl.Result{}, fmt.Errorf("release node %s: %w", node.Name, err)
	}
	return ctrl.Result{}, nil
}

// lastCopies lists the volumes with no good replica but on node: a
// replica elsewhere counts as good while it runs and is not marked
// failed. On node itself any replica not failed counts, running or not:
// one whose agent is down (or whose Running status the cache has not
// seen yet) still holds its data on the node's disk.
func (r *nodeReconciler) lastCopies(ctx context.Context, node string) ([]string, error) {
	var reps v1alpha1.ReplicaList
	if err := r.List(ctx, &reps, client.InNamespace(r.ns)); err != nil {
		return nil, fmt.Errorf("list replicas: %w", err)
	}
	kept := func(rep *v1alpha1.Replica) bool { return rep.DeletionTimestamp.IsZero() && rep.Spec.FailedAt == nil }
	here, elsewhere := map[string]bool{}, map[string]bool{}
	for i := range reps.Items {
		rep := &reps.Items[i]
		switch {
		case !kept(rep):
		case rep.Spec.NodeID == node:
			here[rep.Spec.VolumeName] = true
		case rep.Status.CurrentState == v1alpha1.InstanceRunning:
			elsewhere[rep.Spec.VolumeName] = true
		}
	}
	var held []string
	for vol := range here {
		if !elsewhere[vol] {
			held = append(held, vol)
		}
	}
	sort.Strings(held)
	return held, nil
}
