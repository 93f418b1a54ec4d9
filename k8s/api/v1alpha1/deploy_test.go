package v1alpha1_test

import (
	"context"
	"path/filepath"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/drover-io/drover/k8s/k8stest"
)

// dryRunCSIExamples sends the CSI examples (StorageClass with the seed's
// parameters, claim and Pod, VolumeSnapshotClass, snapshot and restored
// claim, VolumeAttributesClass) and the snapshot controller's objects to
// the API server as a server-side dry run, with the snapshot CRDs
// installed (k8stest installs deploy/snapshot-controller/crds).
func dryRunCSIExamples(t *testing.T, c client.Client) {
	root := k8stest.RepoRoot()
	for _, dir := range []string{"examples", "snapshot-controller"} {
		objs := yamlObjects(t, filepath.Join(root, "deploy", dir))
		for _, obj := range objs {
			if err := c.Create(context.Background(), obj, client.DryRunAll, client.FieldValidation("Strict")); err != nil {
				t.Errorf("deploy/%s: %s %s: %v", dir, obj.GetKind(), obj.GetName(), err)
			}
		}
	}
	// The examples name what the seed's PersistentVolume carries.
	sc := map[string]string{}
	for _, obj := range yamlObjects(t, filepath.Join(root, "deploy", "examples")) {
		if obj.GetKind() == "StorageClass" {
			params, _, _ := unstructured.NestedStringMap(obj.Object, "parameters")
			sc = params
		}
	}
	for _, p := range []string{"numberOfReplicas", "staleReplicaTimeout", "fromBackup",
		"csi.storage.k8s.io/node-stage-secret-name", "csi.storage.k8s.io/node-publish-secret-name",
		"csi.storage.k8s.io/controller-expand-secret-name"} {
		if _, ok := sc[p]; !ok {
			t.Errorf("the example StorageClass lacks parameter %s", p)
		}
	}
	if sc["numberOfReplicas"] != "3" {
		t.Errorf("example numberOfReplicas = %q, the seed's is \"3\"", sc["numberOfReplicas"])
	}
}
