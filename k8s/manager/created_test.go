package manager

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
)

// TestCreatedReplicasUntilListed: a replica just created counts until the
// cache lists it, is counted once when it does, and is forgotten after
// the grace or when deleted.
func TestCreatedReplicasUntilListed(t *testing.T) {
	rep := func(name string) v1alpha1.Replica {
		return v1alpha1.Replica{ObjectMeta: metav1.ObjectMeta{Name: name}}
	}
	names := func(rs []v1alpha1.Replica) (out []string) {
		for _, r := range rs {
			out = append(out, r.Name)
		}
		return out
	}
	var c createdReplicas
	t0 := time.Unix(1000, 0)
	c.add(rep("b"), t0)
	c.add(rep("c"), t0)
	listed := []v1alpha1.Replica{rep("a")}
	if got := names(c.merge(listed, t0.Add(time.Second))); len(got) != 3 || got[0] != "a" || got[1] != "b" || got[2] != "c" {
		t.Fatalf("before the cache lists them: %v", got)
	}
	if len(listed) != 1 {
		t.Fatal("merge changed the cache's list")
	}
	if got := names(c.merge([]v1alpha1.Replica{rep("a"), rep("b")}, t0.Add(2*time.Second))); len(got) != 3 {
		t.Fatalf("once b is listed: %v", got)
	}
	if got := names(c.merge([]v1alpha1.Replica{rep("a")}, t0.Add(3*time.Second))); len(got) != 2 || got[1] != "c" {
		t.Fatalf("b, listed once, is not added again: %v", got)
	}
	c.forget("c")
	if got := names(c.merge(nil, t0.Add(4*time.Second))); len(got) != 0 {
		t.Fatalf("after c was deleted: %v", got)
	}
	c.add(rep("d"), t0)
	if got := names(c.merge(nil, t0.Add(createdGrace+time.Second))); len(got) != 0 {
		t.Fatalf("past the grace: %v", got)
	}
}
