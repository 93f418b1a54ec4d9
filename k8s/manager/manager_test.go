package manager_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/k8s/k8stest"
	"github.com/drover-io/drover/k8s/manager"
)

const gib = int64(1) << 30

// addNode creates a Node with one disk and a fresh heartbeat, as an
// agent would.
func addNode(t *testing.T, c client.Client, name string, diskBytes int64) {
	t.Helper()
	ctx := context.Background()
	n := &v1alpha1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: k8stest.Namespace},
		Spec: v1alpha1.NodeSpec{AllowScheduling: true,
			Disks: map[string]v1alpha1.DiskSpec{"default": {Path: "/var/lib/drover", AllowScheduling: true}}}}
	if err := c.Create(ctx, n); err != nil {
		t.Fatal(err)
	}
	now := metav1.Now()
	patch := client.MergeFrom(n.DeepCopy())
	n.Status = v1alpha1.NodeStatus{Address: "127.0.0.1", LastHeartbeat: &now,
		DiskStatus: map[string]v1alpha1.DiskStatus{"default": {StorageMaximum: diskBytes, StorageAvailable: diskBytes}},
		Conditions: []metav1.Condition{{Type: v1alpha1.NodeConditionReady, Status: metav1.ConditionTrue,
			Reason: "AgentReporting", LastTransitionTime: now}}}
	if err := c.Status().Patch(ctx, n, patch); err != nil {
		t.Fatal(err)
	}
}

func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s never happened; last state: %s", what, last)
}

func replicaNodes(t *testing.T, c client.Client, vol string) []string {
	var list v1alpha1.ReplicaList
	if err := c.List(context.Background(), &list, client.InNamespace(k8stest.Namespace),
		client.MatchingLabels{v1alpha1.LabelVolume: vol}); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range list.Items {
		out = append(out, r.Spec.NodeID)
	}
	sort.Strings(out)
	return out
}

// TestSchedulingAgainstTheAPIServer runs the manager's controllers in
// process against a real API server, with Nodes written as agents would:
// replicas land on distinct nodes; a volume that cannot be placed in
// full says why in its Scheduled condition and is placed once a node
// joins; every Setting is created with its default.
func TestSchedulingAgainstTheAPIServer(t *testing.T) {
	env := k8stest.Start(t)
	c := env.Client
	ctx, cancel := context.WithCancel(context.Background())
	// The Nodes here heartbeat once: they must not go down mid-test.
	grace := &v1alpha1.Setting{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.SettingNodeDownGracePeriod, Namespace: k8stest.Namespace}, Value: "1h"}
	if err := c.Create(ctx, grace); err != nil {
		t.Fatal(err)
	}
	startManager(t, env, ctx, cancel, 200*time.Millisecond)
	addNode(t, c, "a", 100*gib)
	addNode(t, c, "b", 100*gib)

	three := int32(3)
	vol := &v1alpha1.Volume{ObjectMeta: metav1.ObjectMeta{Name: "v", Namespace: k8stest.Namespace},
		Spec: v1alpha1.VolumeSpec{Size: 10 * gib, NumberOfReplicas: &three}}
	if err := c.Create(ctx, vol); err != nil {
		t.Fatal(err)
	}
	eventually(t, "two replicas placed and the third refused with a reason", func() (bool, string) {
		var v v1alpha1.Volume
		if err := c.Get(ctx, types.NamespacedName{Namespace: k8stest.Namespace, Name: "v"}, &v); err != nil {
			return false, err.Error()
		}
		cond := meta.FindStatusCondition(v.Status.Conditions, v1alpha1.VolumeConditionScheduled)
		nodes := replicaNodes(t, c, "v")
		ok := cond != nil && cond.Status == metav1.ConditionFalse &&
			strings.Contains(cond.Message, "2 of 3 replicas wanted are placed") &&
			strings.Contains(cond.Message, "node a: already holds a replica of the volume") &&
			strings.Join(nodes, ",") == "a,b"
		return ok, fmt.Sprintf("%+v %v", cond, nodes)
	})
	addNode(t, c, "c", 100*gib)
	eventually(t, "the third replica on the new node", func() (bool, string) {
		var v v1alpha1.Volume
		if err := c.Get(ctx, types.NamespacedName{Namespace: k8stest.Namespace, Name: "v"}, &v); err != nil {
			return false, err.Error()
		}
		nodes := replicaNodes(t, c, "v")
		return strings.Join(nodes, ",") == "a,b,c" &&
			meta.IsStatusConditionTrue(v.Status.Conditions, v1alpha1.VolumeConditionScheduled), fmt.Sprint(nodes, v.Status.Conditions)
	})

	var settings v1alpha1.SettingList
	if err := c.List(ctx, &settings, client.InNamespace(k8stest.Namespace)); err != nil {
		t.Fatal(err)
	}
	if len(settings.Items) != len(v1alpha1.SettingDefinitions) {
		t.Errorf("%d settings created, want %d", len(settings.Items), len(v1alpha1.SettingDefinitions))
	}

	// A volume too big for any disk stays pending and says so.
	huge := &v1alpha1.Volume{ObjectMeta: metav1.ObjectMeta{Name: "huge", Namespace: k8stest.Namespace},
		Spec: v1alpha1.VolumeSpec{Size: 200 * gib}}
	if err := c.Create(ctx, huge); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the huge volume unschedulable", func() (bool, string) {
		var v v1alpha1.Volume
		if err := c.Get(ctx, types.NamespacedName{Namespace: k8stest.Namespace, Name: "huge"}, &v); err != nil {
			return false, err.Error()
		}
		cond := meta.FindStatusCondition(v.Status.Conditions, v1alpha1.VolumeConditionScheduled)
		return cond != nil && cond.Status == metav1.ConditionFalse && strings.Contains(cond.Message, "needs 200.0 GiB") &&
			len(replicaNodes(t, c, "huge")) == 0, fmt.Sprintf("%+v", cond)
	})

	// A node holding a volume's only running replica is kept until the
	// volume is gone.
	one := int32(1)
	solo := &v1alpha1.Volume{ObjectMeta: metav1.ObjectMeta{Name: "solo", Namespace: k8stest.Namespace},
		Spec: v1alpha1.VolumeSpec{Size: gib, NumberOfReplicas: &one, NodeSelector: []string{"solo"}}}
	addNode(t, c, "d", 100*gib)
	var d v1alpha1.Node
	if err := c.Get(ctx, types.NamespacedName{Namespace: k8stest.Namespace, Name: "d"}, &d); err != nil {
		t.Fatal(err)
	}
	dpatch := client.MergeFrom(d.DeepCopy())
	d.Spec.Tags = []string{"solo"}
	if err := c.Patch(ctx, &d, dpatch); err != nil {
		t.Fatal(err)
	}
	if err := c.Create(ctx, solo); err != nil {
		t.Fatal(err)
	}
	var rep v1alpha1.Replica
	eventually(t, "solo's replica on d", func() (bool, string) {
		var list v1alpha1.ReplicaList
		_ = c.List(ctx, &list, client.InNamespace(k8stest.Namespace), client.MatchingLabels{v1alpha1.LabelVolume: "solo"})
		if len(list.Items) != 1 || !controllerutilHas(&d, v1alpha1.Finalizer, c) {
			return false, fmt.Sprint(len(list.Items))
		}
		rep = list.Items[0]
		return rep.Spec.NodeID == "d", rep.Spec.NodeID
	})
	rpatch := client.MergeFrom(rep.DeepCopy())
	rep.Status.CurrentState = v1alpha1.InstanceRunning // as d's agent would report
	if err := c.Status().Patch(ctx, &rep, rpatch); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, &d); err != nil {
		t.Fatal(err)
	}
	eventually(t, "node d held with a reason", func() (bool, string) {
		var n v1alpha1.Node
		if err := c.Get(ctx, types.NamespacedName{Namespace: k8stest.Namespace, Name: "d"}, &n); err != nil {
			return false, err.Error()
		}
		cond := meta.FindStatusCondition(n.Status.Conditions, "Deletable")
		return cond != nil && strings.Contains(cond.Message, "only healthy replica of volumes [solo]"), fmt.Sprintf("%+v", cond)
	})
	if err := c.Delete(ctx, solo); err != nil {
		t.Fatal(err)
	}
	eventually(t, "node d gone once solo is", func() (bool, string) {
		err := c.Get(ctx, types.NamespacedName{Namespace: k8stest.Namespace, Name: "d"}, &v1alpha1.Node{})
		return client.IgnoreNotFound(err) == nil && err != nil, fmt.Sprint(err)
	})

	// A strict-local volume's replica waits for the attach, goes to the
	// attaching node, and the volume cannot then attach elsewhere.
	strict := &v1alpha1.Volume{ObjectMeta: metav1.ObjectMeta{Name: "strict", Namespace: k8stest.Namespace},
		Spec: v1alpha1.VolumeSpec{Size: gib, NumberOfReplicas: &one, DataLocality: v1alpha1.DataLocalityStrictLocal}}
	if err := c.Create(ctx, strict); err != nil {
		t.Fatal(err)
	}
	condOf := func(name, typ string) *metav1.Condition {
		var v v1alpha1.Volume
		if err := c.Get(ctx, types.NamespacedName{Namespace: k8stest.Namespace, Name: name}, &v); err != nil {
			return nil
		}
		return meta.FindStatusCondition(v.Status.Conditions, typ)
	}
	eventually(t, "strict-local waiting for an attach", func() (bool, string) {
		cond := condOf("strict", v1alpha1.VolumeConditionScheduled)
		return cond != nil && cond.Reason == "WaitingForAttach" && len(replicaNodes(t, c, "strict")) == 0, fmt.Sprintf("%+v", cond)
	})
	setNode := func(node string) {
		var v v1alpha1.Volume
		if err := c.Get(ctx, types.NamespacedName{Namespace: k8stest.Namespace, Name: "strict"}, &v); err != nil {
			t.Fatal(err)
		}
		patch := client.MergeFrom(v.DeepCopy())
		v.Spec.NodeID = node
		if err := c.Patch(ctx, &v, patch); err != nil {
			t.Fatal(err)
		}
	}
	setNode("b")
	eventually(t, "strict-local replica on the attaching node", func() (bool, string) {
		nodes := replicaNodes(t, c, "strict")
		return strings.Join(nodes, ",") == "b", fmt.Sprint(nodes)
	})
	setNode("c")
	eventually(t, "strict-local not attachable elsewhere", func() (bool, string) {
		cond := condOf("strict", v1alpha1.VolumeConditionAttachable)
		return cond != nil && cond.Status == metav1.ConditionFalse && strings.Contains(cond.Message, "replica is on node b"), fmt.Sprintf("%+v", cond)
	})

	// Deleting a volume deletes its replicas (no agent holds them here)
	// and then the volume.
	if err := c.Delete(ctx, vol); err != nil {
		t.Fatal(err)
	}
	eventually(t, "volume and replicas gone", func() (bool, string) {
		err := c.Get(ctx, types.NamespacedName{Namespace: k8stest.Namespace, Name: "v"}, &v1alpha1.Volume{})
		return client.IgnoreNotFound(err) == nil && err != nil && len(replicaNodes(t, c, "v")) == 0, fmt.Sprint(err)
	})
}

// controllerutilHas reports whether the stored node carries finalizer f.
func controllerutilHas(n *v1alpha1.Node, f string, c client.Client) bool {
	var cur v1alpha1.Node
	if err := c.Get(context.Background(), client.ObjectKeyFromObject(n), &cur); err != nil {
		return false
	}
	for _, x := range cur.Finalizers {
		if x == f {
			return true
		}
	}
	return false
}

// startManager runs the manager's controllers in process against env
// until the test ends (cancel stops it, and its error fails the test).
func startManager(t *testing.T, env *k8stest.Env, ctx context.Context, cancel context.CancelFunc, resync time.Duration) {
	t.Helper()
	mgr, err := manager.New(env.Config, manager.Config{Namespace: k8stest.Namespace, Resync: resync})
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
}
