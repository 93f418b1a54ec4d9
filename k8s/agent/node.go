package agent

import (
	"context"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
)

// register creates the Node with the agent's disks, or adds the disks an
// existing Node lacks (an administrator's changes to the others stay).
func (a *Agent) register(ctx context.Context) error {
	for name, path := range a.cfg.Disks {
		if err := os.MkdirAll(path, 0o755); err != nil {
			return fmt.Errorf("disk %s: %w", name, err)
		}
	}
	var node v1alpha1.Node
	key := types.NamespacedName{Namespace: a.cfg.Namespace, Name: a.cfg.NodeName}
	err := a.client.Get(ctx, key, &node)
	if apierrors.IsNotFound(err) {
		node = v1alpha1.Node{ObjectMeta: metav1.ObjectMeta{Name: a.cfg.NodeName, Namespace: a.cfg.Namespace},
			Spec: v1alpha1.NodeSpec{AllowScheduling: true, Disks: map[string]v1alpha1.DiskSpec{}}}
		for name, path := range a.cfg.Disks {
			node.Spec.Disks[name] = v1alpha1.DiskSpec{Path: path, AllowScheduling: true}
		}
		if err := a.client.Create(ctx, &node); err != nil {
			return fmt.Errorf("create node: %w", err)
		}
		a.log.Info("registered node", "disks", len(a.cfg.Disks))
		return nil
	}
	if err != nil {
		return fmt.Errorf("get node: %w", err)
	}
	patch := client.MergeFrom(node.DeepCopy())
	if node.Spec.Disks == nil {
		node.Spec.Disks = map[string]v1alpha1.DiskSpec{}
	}
	for name, path := range a.cfg.Disks {
		if _, ok := node.Spec.Disks[name]; !ok {
			node.Spec.Disks[name] = v1alpha1.DiskSpec{Path: path, AllowScheduling: true}
		}
	}
	if err := a.client.Patch(ctx, &node, patch); err != nil {
		return fmt.Errorf("update node disks: %w", err)
	}
	return nil
}

// heartbeat writes the node's address, zone, disk capacities, Ready
// condition and heartbeat time.
func (a *Agent) heartbeat(ctx context.Context) error {
	var node v1alpha1.Node
	if err := a.client.Get(ctx, types.NamespacedName{Namespace: a.cfg.Namespace, Name: a.cfg.NodeName}, &node); err != nil {
		return fmt.Errorf("get node: %w", err)
	}
	patch := client.MergeFrom(node.DeepCopy())
	st := &node.Status
	st.Address, st.Zone = a.cfg.Address, a.cfg.Zone
	now := metav1.Now()
	st.LastHeartbeat = &now
	if st.DiskStatus == nil {
		st.DiskStatus = map[string]v1alpha1.DiskStatus{}
	}
	for name, d := range node.Spec.Disks {
		ds := st.DiskStatus[name]
		var fs unix.Statfs_t
		if err := unix.Statfs(d.Path, &fs); err != nil {
			ds.Message = fmt.Sprintf("statfs %s: %v", d.Path, err)
			ds.StorageMaximum, ds.StorageAvailable = 0, 0
		} else {
			ds.Message = ""
			ds.StorageMaximum = int64(fs.Blocks) * int64(fs.Bsize)
			ds.StorageAvailable = int64(fs.Bavail) * int64(fs.Bsize)
		}
		st.DiskStatus[name] = ds
	}
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: v1alpha1.NodeConditionReady,
		Status: metav1.ConditionTrue, Reason: "AgentReporting", Message: "the agent reports in"})
	if err := a.client.Status().Patch(ctx, &node, patch); err != nil {
		return fmt.Errorf("node status: %w", err)
	}
	return nil
}
