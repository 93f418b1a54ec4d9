package manager_test

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/k8s/k8stest"
	"github.com/drover-io/drover/k8s/manager"
)

// playAgents marks every Replica of vol running and the volume's Engine
// running with every replica RW, as agents and a rebuilt engine would.
func playAgents(ctx context.Context, c client.Client, vol string) error {
	var reps v1alpha1.ReplicaList
	if err := c.List(ctx, &reps, client.InNamespace(k8stest.Namespace), client.MatchingLabels{v1alpha1.LabelVolume: vol}); err != nil {
		return err
	}
	modes := map[string]v1alpha1.ReplicaMode{}
	for i := range reps.Items {
		rep := &reps.Items[i]
		modes[rep.Name] = v1alpha1.ReplicaModeRW
		if rep.Status.CurrentState == v1alpha1.InstanceRunning {
			continue
		}
		patch := client.MergeFrom(rep.DeepCopy())
		rep.Status.CurrentState, rep.Status.Address, rep.Status.Mode = v1alpha1.InstanceRunning, "127.0.0.1:1", v1alpha1.ReplicaModeRW
		if err := c.Status().Patch(ctx, rep, patch); err != nil {
			return err
		}
	}
	var engs v1alpha1.EngineList
	if err := c.List(ctx, &engs, client.InNamespace(k8stest.Namespace), client.MatchingLabels{v1alpha1.LabelVolume: vol}); err != nil {
		return err
	}
	for i := range engs.Items {
		eng := &engs.Items[i]
		patch := client.MergeFrom(eng.DeepCopy())
		eng.Status.CurrentState, eng.Status.ReplicaModeMap = v1alpha1.InstanceRunning, modes
		if err := c.Status().Patch(ctx, eng, patch); err != nil {
			return err
		}
	}
	return nil
}

// TestReplicaAutoBalance: a volume whose two replicas had to share the
// only node (node soft anti-affinity) moves one to a node that joins,
// once replica-auto-balance is least-effort: a third replica is created
// there, and once it is RW one of the two on the first node is dropped.
// With auto-balance disabled nothing moves.
func TestReplicaAutoBalance(t *testing.T) {
	env := k8stest.Start(t)
	c := env.Client
	ctx, cancel := context.WithCancel(context.Background())
	for name, value := range map[string]string{
		v1alpha1.SettingNodeDownGracePeriod:         "1h", // the Nodes here heartbeat once
		v1alpha1.SettingReplicaNodeSoftAntiAffinity: "true",
	} {
		s := &v1alpha1.Setting{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: k8stest.Namespace}, Value: value}
		if err := c.Create(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	mgr, err := manager.New(env.Config, manager.Config{Namespace: k8stest.Namespace, Resync: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
	addNode(t, c, "a", 100*gib)
	two := int32(2)
	vol := &v1alpha1.Volume{ObjectMeta: metav1.ObjectMeta{Name: "v", Namespace: k8stest.Namespace},
		Spec: v1alpha1.VolumeSpec{Size: gib, NumberOfReplicas: &two, NodeID: "a"}}
	if err := c.Create(ctx, vol); err != nil {
		t.Fatal(err)
	}
	nodesAre := func(want string) func() (bool, string) {
		return func() (bool, string) {
			if err := playAgents(ctx, c, "v"); err != nil {
				return false, err.Error()
			}
			got := strings.Join(replicaNodes(t, c, "v"), ",")
			return got == want, got
		}
	}
	eventually(t, "both replicas on the only node", nodesAre("a,a"))
	addNode(t, c, "b", 100*gib)
	for range 10 { // auto-balance is disabled by default: nothing moves
		time.Sleep(50 * time.Millisecond)
		if err := playAgents(ctx, c, "v"); err != nil {
			t.Fatal(err)
		}
	}
	if got := strings.Join(replicaNodes(t, c, "v"), ","); got != "a,a" {
		t.Fatalf("replicas moved with auto-balance disabled: %s", got)
	}
	var s v1alpha1.Setting
	if err := c.Get(ctx, client.ObjectKey{Namespace: k8stest.Namespace, Name: v1alpha1.SettingReplicaAutoBalance}, &s); err != nil {
		t.Fatal(err)
	}
	s.Value = string(v1alpha1.AutoBalanceLeastEffort)
	if err := c.Update(ctx, &s); err != nil {
		t.Fatal(err)
	}
	eventually(t, "one replica moved to the new node", nodesAre("a,b"))
}
