package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// readObjects reads every object of the YAML files matching pattern,
// with the e2e cluster's paths in place of the host's (the kubelet's
// --root-dir and the agent's data live under the cluster's root).
func (c *cluster) readObjects(t *testing.T, pattern string) []*unstructured.Unstructured {
	t.Helper()
	files, err := filepath.Glob(pattern)
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests match %s: %v", pattern, err)
	}
	sort.Strings(files)
	var objs []*unstructured.Unstructured
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b = bytes.ReplaceAll(b, []byte("/var/lib/kubelet"), []byte(c.path("kubelet")))
		b = bytes.ReplaceAll(b, []byte("/var/lib/drover"), []byte(c.path("drover")))
		for _, doc := range bytes.Split(b, []byte("\n---")) {
			var m map[string]any
			if err := yaml.Unmarshal(doc, &m); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if len(m) > 0 {
				objs = append(objs, &unstructured.Unstructured{Object: m})
			}
		}
	}
	return objs
}

// adapt fits a workload of the manifests to this cluster, which has one
// node and no kube-proxy (so no Service IPs): every Pod is on the host's
// network and reaches the API server at 127.0.0.1 (the kubelet gives a
// container's own KUBERNETES_SERVICE_* variables precedence), nothing is
// pulled, the manager runs once (two copies on the host's network would
// share its health port), and the agent serves three disks, so that a
// volume's three replicas fit on the one node in different directories.
func (c *cluster) adapt(t *testing.T, obj *unstructured.Unstructured) {
	t.Helper()
	kind := obj.GetKind()
	if kind != "Deployment" && kind != "DaemonSet" {
		return
	}
	if kind == "Deployment" {
		must(t, unstructured.SetNestedField(obj.Object, int64(1), "spec", "replicas"))
	}
	spec, _, _ := unstructured.NestedMap(obj.Object, "spec", "template", "spec")
	spec["hostNetwork"] = true
	spec["dnsPolicy"] = "Default" // no cluster DNS
	containers, _, _ := unstructured.NestedSlice(spec, "containers")
	for i, ci := range containers {
		ctr := ci.(map[string]any)
		ctr["imagePullPolicy"] = "Never"
		env, _, _ := unstructured.NestedSlice(ctr, "env")
		env = append(env,
			map[string]any{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
			map[string]any{"name": "KUBERNETES_SERVICE_PORT", "value": fmt.Sprint(c.apiPort)})
		ctr["env"] = env
		// One copy of each: a Lease adds nothing but a way to fail when
		// the API server answers slowly (on a loaded 2-core machine the
		// sidecars and the manager all lost theirs at once and exited).
		if args, ok, _ := unstructured.NestedStringSlice(ctr, "args"); ok {
			out := make([]any, 0, len(args))
			for _, a := range args {
				switch a {
				case "--leader-elect=true":
					a = "--leader-elect=false"
				case "--leader-election", "--leader-election=true":
					a = "--leader-election=false"
				}
				out = append(out, a)
			}
			ctr["args"] = out
		}
		if ctr["name"] == "agent" {
			args, _, _ := unstructured.NestedStringSlice(ctr, "args")
			var out []any
			for _, a := range args {
				if strings.HasPrefix(a, "--disk=") {
					for _, d := range diskNames {
						out = append(out, fmt.Sprintf("--disk=%s=%s", d, c.path("drover", d)))
					}
					continue
				}
				out = append(out, a)
			}
			ctr["args"] = out
		}
		containers[i] = ctr
	}
	if obj.GetName() == "drover-manager" {
		// The backup target of the snapshot step is a directory on the
		// node (a shared filesystem on a real cluster): the manager
		// lists and deletes its backups.
		dir := c.path("drover", "backups")
		for i := range containers {
			ctr := containers[i].(map[string]any)
			if ctr["name"] == "manager" {
				mounts, _, _ := unstructured.NestedSlice(ctr, "volumeMounts")
				ctr["volumeMounts"] = append(mounts, map[string]any{"name": "backups", "mountPath": dir})
			}
		}
		vols, _, _ := unstructured.NestedSlice(spec, "volumes")
		spec["volumes"] = append(vols, map[string]any{"name": "backups",
			"hostPath": map[string]any{"path": dir, "type": "DirectoryOrCreate"}})
	}
	spec["containers"] = containers
	must(t, unstructured.SetNestedMap(obj.Object, spec, "spec", "template", "spec"))
}

// diskNames are the agent's disks: directories under root/drover.
var diskNames = []string{"disk1", "disk2", "disk3"}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// apply creates or updates objects by server-side apply.
func apply(t *testing.T, cl client.Client, objs ...*unstructured.Unstructured) {
	t.Helper()
	for _, o := range objs {
		err := cl.Apply(context.Background(), client.ApplyConfigurationFromUnstructured(o), client.FieldOwner("drover-e2e"), client.ForceOwnership)
		if err != nil {
			t.Fatalf("apply %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
	}
}

// applyCRDs applies the CRDs and waits until the API server serves them.
func (c *cluster) applyCRDs(t *testing.T, cl client.Client, objs []*unstructured.Unstructured) {
	t.Helper()
	apply(t, cl, objs...)
	for _, o := range objs {
		c.waitFor(t, "CRD "+o.GetName()+" established", 60*time.Second, "kube-apiserver", func() error {
			var crd apiextensionsv1.CustomResourceDefinition
			if err := cl.Get(context.Background(), client.ObjectKey{Name: o.GetName()}, &crd); err != nil {
				return err
			}
			for _, cond := range crd.Status.Conditions {
				if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
					return nil
				}
			}
			return fmt.Errorf("not established")
		})
	}
}
