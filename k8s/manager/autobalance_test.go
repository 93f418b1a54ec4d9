package manager_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/k8s/k8stest"
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
	startManager(t, env, ctx, cancel, 100*time.Millisecond)
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

// TestEngineMovesOffADeadNode: a volume attached to a node whose agent
// stops heartbeating moves to another node when its attachment does: the
// old Engine, which only the dead node's agent would release, is let go
// and a new one starts on the new node.
func TestEngineMovesOffADeadNode(t *testing.T) {
	env := k8stest.Start(t)
	c := env.Client
	ctx, cancel := context.WithCancel(context.Background())
	grace := &v1alpha1.Setting{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.SettingNodeDownGracePeriod, Namespace: k8stest.Namespace}, Value: "2s"}
	if err := c.Create(ctx, grace); err != nil {
		t.Fatal(err)
	}
	startManager(t, env, ctx, cancel, 100*time.Millisecond)
	addNode(t, c, "a", 100*gib)
	addNode(t, c, "b", 100*gib)
	alive := map[string]bool{"a": true, "b": true}
	heartbeat := func() error { // the agents of the nodes still alive
		for name, ok := range alive {
			if !ok {
				continue
			}
			var n v1alpha1.Node
			if err := c.Get(ctx, client.ObjectKey{Namespace: k8stest.Namespace, Name: name}, &n); err != nil {
				return err
			}
			patch := client.MergeFrom(n.DeepCopy())
			now := metav1.Now()
			n.Status.LastHeartbeat = &now
			if err := c.Status().Patch(ctx, &n, patch); err != nil {
				return err
			}
		}
		return nil
	}
	one := int32(1)
	vol := &v1alpha1.Volume{ObjectMeta: metav1.ObjectMeta{Name: "v", Namespace: k8stest.Namespace},
		Spec: v1alpha1.VolumeSpec{Size: gib, NumberOfReplicas: &one, NodeID: "a"}}
	if err := c.Create(ctx, vol); err != nil {
		t.Fatal(err)
	}
	engineOn := func(node string) func() (bool, string) {
		return func() (bool, string) {
			if err := heartbeat(); err != nil {
				return false, err.Error()
			}
			if err := playAgents(ctx, c, "v"); err != nil {
				return false, err.Error()
			}
			var eng v1alpha1.Engine
			if err := c.Get(ctx, client.ObjectKey{Namespace: k8stest.Namespace, Name: "v"}, &eng); err != nil {
				return false, err.Error()
			}
			if node == "a" && !controllerutil.ContainsFinalizer(&eng, agentFinalizer) {
				// Node a's agent runs it, and holds it until it stopped it.
				patch := client.MergeFrom(eng.DeepCopy())
				controllerutil.AddFinalizer(&eng, agentFinalizer)
				if err := c.Patch(ctx, &eng, patch); err != nil {
					return false, err.Error()
				}
			}
			return eng.Spec.NodeID == node && eng.DeletionTimestamp.IsZero(), fmt.Sprintf("engine on %s deleting=%v", eng.Spec.NodeID, !eng.DeletionTimestamp.IsZero())
		}
	}
	eventually(t, "the engine on node a", engineOn("a"))
	alive["a"] = false // node a dies with the engine on it
	eventually(t, "node a down", func() (bool, string) {
		if err := heartbeat(); err != nil {
			return false, err.Error()
		}
		var n v1alpha1.Node
		if err := c.Get(ctx, client.ObjectKey{Namespace: k8stest.Namespace, Name: "a"}, &n); err != nil {
			return false, err.Error()
		}
		return !meta.IsStatusConditionTrue(n.Status.Conditions, v1alpha1.NodeConditionReady), fmt.Sprint(n.Status.Conditions)
	})
	if err := c.Get(ctx, client.ObjectKeyFromObject(vol), vol); err != nil {
		t.Fatal(err)
	}
	vol.Spec.NodeID = "b" // the workload moved: Kubernetes attaches it there
	if err := c.Update(ctx, vol); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the engine on node b", engineOn("b"))
}

// agentFinalizer is the finalizer an agent keeps on what it runs.
const agentFinalizer = "storage.drover.io/agent"
