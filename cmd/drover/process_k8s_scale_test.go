package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/k8s/k8stest"
)

// rssBytes reads a process's resident set size from /proc.
func rssBytes(t *testing.T, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// TestProcessK8sManagerScale measures the manager process's memory with
// DROVER_K8S_SCALE volumes of three replicas each on five Nodes written
// as agents would (no agents run: this is the manager's own cost),
// against its memory with none, in the same run. It is a measurement,
// run by hand: DROVER_K8S_SCALE=100 go test -run ManagerScale -v ./cmd/drover
func TestProcessK8sManagerScale(t *testing.T) {
	count, _ := strconv.Atoi(os.Getenv("DROVER_K8S_SCALE"))
	if count <= 0 {
		t.Skip("set DROVER_K8S_SCALE=100 to measure the manager with 100 volumes")
	}
	c := startK8sCluster(t, 0)
	ctx := context.Background()
	// No agent heartbeats here: the nodes must not go down.
	grace := &v1alpha1.Setting{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.SettingNodeDownGracePeriod, Namespace: k8stest.Namespace}}
	if err := c.env.Client.Get(ctx, client.ObjectKeyFromObject(grace), grace); err != nil {
		t.Fatal(err)
	}
	grace.Value = "1h"
	if err := c.env.Client.Update(ctx, grace); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		name := fmt.Sprintf("n%d", i)
		n := &v1alpha1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: k8stest.Namespace},
			Spec: v1alpha1.NodeSpec{AllowScheduling: true, Disks: map[string]v1alpha1.DiskSpec{"d": {Path: "/data", AllowScheduling: true}}}}
		if err := c.env.Client.Create(ctx, n); err != nil {
			t.Fatal(err)
		}
		patch := client.MergeFrom(n.DeepCopy())
		now := metav1.Now()
		n.Status = v1alpha1.NodeStatus{LastHeartbeat: &now,
			DiskStatus: map[string]v1alpha1.DiskStatus{"d": {StorageMaximum: 1 << 50, StorageAvailable: 1 << 50}},
			Conditions: []metav1.Condition{{Type: v1alpha1.NodeConditionReady, Status: metav1.ConditionTrue, Reason: "Test", LastTransitionTime: now}}}
		if err := c.env.Client.Status().Patch(ctx, n, patch); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(3 * time.Second)
	idle := rssBytes(t, c.manager.cmd.Process.Pid)
	start := time.Now()
	for i := range count {
		v := &v1alpha1.Volume{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("v%03d", i), Namespace: k8stest.Namespace},
			Spec: v1alpha1.VolumeSpec{Size: 1 << 30}}
		if err := c.env.Client.Create(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "every volume's replicas placed", func() (bool, string) {
		var reps v1alpha1.ReplicaList
		if err := c.env.Client.List(ctx, &reps, client.InNamespace(k8stest.Namespace)); err != nil {
			return false, err.Error()
		}
		return len(reps.Items) == 3*count, fmt.Sprint(len(reps.Items))
	})
	placed := time.Since(start)
	time.Sleep(10 * time.Second) // a few resyncs
	loaded := rssBytes(t, c.manager.cmd.Process.Pid)
	t.Logf("manager RSS: %.1f MiB idle, %.1f MiB with %d volumes (%d replicas) after 10 s of resyncs; all placed in %v",
		float64(idle)/(1<<20), float64(loaded)/(1<<20), count, 3*count, placed.Round(time.Millisecond))
}
