package manager_test

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/k8s/manager"
)

// TestRebuildsPerNode counts replicas listed in an engine and not yet RW
// (WO, or not reported yet) per node; RW and ERR ones are not rebuilding.
func TestRebuildsPerNode(t *testing.T) {
	rep := func(name, node string) v1alpha1.Replica {
		return v1alpha1.Replica{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.ReplicaSpec{NodeID: node}}
	}
	replicas := []v1alpha1.Replica{rep("a1", "n1"), rep("a2", "n2"), rep("a3", "n3"), rep("b1", "n1"), rep("b2", "n2")}
	engines := []v1alpha1.Engine{
		{Spec: v1alpha1.EngineSpec{ReplicaAddressMap: map[string]string{"a1": "x", "a2": "x", "a3": "x"}},
			Status: v1alpha1.EngineStatus{ReplicaModeMap: map[string]v1alpha1.ReplicaMode{"a1": "RW", "a2": "WO", "a3": "ERR"}}},
		{Spec: v1alpha1.EngineSpec{ReplicaAddressMap: map[string]string{"b1": "x", "b2": "x"}},
			Status: v1alpha1.EngineStatus{ReplicaModeMap: map[string]v1alpha1.ReplicaMode{"b2": "WO"}}},
	}
	got := manager.RebuildsPerNode(engines, replicas)
	if got["n1"] != 1 || got["n2"] != 2 || got["n3"] != 0 || len(got) != 2 {
		t.Fatalf("RebuildsPerNode = %v, want n1:1 n2:2", got)
	}
}
