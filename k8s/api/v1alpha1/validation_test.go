package v1alpha1_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/template"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/k8s/k8stest"
)

func ptr[T any](v T) *T { return &v }

func volume(name string, spec v1alpha1.VolumeSpec) *v1alpha1.Volume {
	return &v1alpha1.Volume{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: k8stest.Namespace}, Spec: spec}
}

func backingImage(name string, spec v1alpha1.BackingImageSpec) *v1alpha1.BackingImage {
	return &v1alpha1.BackingImage{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: k8stest.Namespace}, Spec: spec}
}

// TestValidationInTheAPIServer installs the CRDs in a real kube-apiserver
// and checks that bad specs are refused with a message naming the field,
// and good ones are taken with their defaults.
func TestValidationInTheAPIServer(t *testing.T) {
	env := k8stest.Start(t)
	ctx := context.Background()
	c := env.Client

	good := volume("good", v1alpha1.VolumeSpec{Size: 1 << 30, NumberOfReplicas: ptr(int32(3))})
	if err := c.Create(ctx, good); err != nil {
		t.Fatalf("a good volume was refused: %v", err)
	}
	if good.Spec.Frontend != v1alpha1.FrontendNBD || good.Spec.DataLocality != v1alpha1.DataLocalityDisabled {
		t.Fatalf("defaults not applied: %+v", good.Spec)
	}

	bad := []struct {
		name string
		obj  client.Object
		want []string // substrings of the API server's error
	}{
		{"size not 4 KiB aligned", volume("a", v1alpha1.VolumeSpec{Size: 1<<30 + 512}),
			[]string{"spec.size", "multiple of 4096"}},
		{"size 0", volume("b", v1alpha1.VolumeSpec{Size: 0}), []string{"spec.size"}},
		{"replicas 0", volume("c", v1alpha1.VolumeSpec{Size: 4096, NumberOfReplicas: ptr(int32(0))}),
			[]string{"spec.numberOfReplicas", "greater than or equal to 1"}},
		{"unknown dataLocality", volume("d", v1alpha1.VolumeSpec{Size: 4096, DataLocality: "sometimes"}),
			[]string{"spec.dataLocality", `"sometimes"`, "best-effort"}},
		{"unknown frontend", volume("e", v1alpha1.VolumeSpec{Size: 4096, Frontend: "smb"}),
			[]string{"spec.frontend", "nbd"}},
		{"strict-local with 3 replicas", volume("f", v1alpha1.VolumeSpec{Size: 4096,
			DataLocality: v1alpha1.DataLocalityStrictLocal, NumberOfReplicas: ptr(int32(3))}),
			[]string{"spec", "strict-local needs numberOfReplicas 1"}},
		{"unknown setting", &v1alpha1.Setting{ObjectMeta: metav1.ObjectMeta{Name: "no-such-knob", Namespace: k8stest.Namespace}, Value: "1"},
			[]string{"not a known setting"}},
		{"setting not an integer", &v1alpha1.Setting{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.SettingDefaultReplicaCount, Namespace: k8stest.Namespace}, Value: "three"},
			[]string{"non-negative integer"}},
		{"setting not a duration", &v1alpha1.Setting{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.SettingStaleReplicaTimeout, Namespace: k8stest.Namespace}, Value: "soon"},
			[]string{"duration"}},
		{"recurring job cron of 3 fields", &v1alpha1.RecurringJob{ObjectMeta: metav1.ObjectMeta{Name: "j", Namespace: k8stest.Namespace},
			Spec: v1alpha1.RecurringJobSpec{Task: v1alpha1.RecurringJobSnapshot, Cron: "* * *", Retain: 2}},
			[]string{"spec.cron", "five fields"}},
		{"recurring job retain 0", &v1alpha1.RecurringJob{ObjectMeta: metav1.ObjectMeta{Name: "k", Namespace: k8stest.Namespace},
			Spec: v1alpha1.RecurringJobSpec{Task: v1alpha1.RecurringJobSnapshot, Cron: "* * * * *", Retain: 0}},
			[]string{"spec.retain"}},
		{"backup target url", &v1alpha1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: "t", Namespace: k8stest.Namespace},
			Spec: v1alpha1.BackupTargetSpec{URL: "ftp://x"}}, []string{"spec.url", "s3://"}},
		{"backing image without a source", backingImage("bi1", v1alpha1.BackingImageSpec{}),
			[]string{"exactly one of url and sourcePath"}},
		{"backing image with two sources", backingImage("bi2", v1alpha1.BackingImageSpec{URL: "https://x/y.raw", SourcePath: "/y.raw"}),
			[]string{"exactly one of url and sourcePath"}},
		{"backing image url not http", backingImage("bi3", v1alpha1.BackingImageSpec{URL: "ftp://x/y.raw"}),
			[]string{"spec.url", "https?://"}},
		{"backing image relative path", backingImage("bi4", v1alpha1.BackingImageSpec{SourcePath: "y.raw"}),
			[]string{"spec.sourcePath", "absolute"}},
		{"backing image checksum not hex", backingImage("bi5", v1alpha1.BackingImageSpec{URL: "https://x/y.raw", Checksum: "abc"}),
			[]string{"spec.checksum"}},
		{"relative disk path", &v1alpha1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Namespace: k8stest.Namespace},
			Spec: v1alpha1.NodeSpec{Disks: map[string]v1alpha1.DiskSpec{"d": {Path: "data"}}}},
			[]string{"spec.disks[d].path", "absolute"}},
	}
	for _, tc := range bad {
		err := c.Create(ctx, tc.obj)
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not say %q", tc.name, err, w)
			}
		}
	}

	// Transition rules: size may grow, never shrink.
	good.Spec.Size = 1 << 29
	if err := c.Update(ctx, good); err == nil || !strings.Contains(err.Error(), "size cannot shrink") {
		t.Errorf("shrink: got %v", err)
	}
	good.Spec.Size = 2 << 30
	if err := c.Update(ctx, good); err != nil {
		t.Errorf("grow: %v", err)
	}

	// A backing image's source and checksum never change.
	bi := backingImage("base", v1alpha1.BackingImageSpec{URL: "https://images.example/base.raw"})
	if err := c.Create(ctx, bi); err != nil {
		t.Fatalf("a good backing image was refused: %v", err)
	}
	bi.Spec.URL = "https://images.example/other.raw"
	if err := c.Update(ctx, bi); err == nil || !strings.Contains(err.Error(), "url is immutable") {
		t.Errorf("changing a backing image's url: got %v", err)
	}

	t.Run("manifests", func(t *testing.T) { dryRunManifests(t, c) })
	t.Run("csi-examples", func(t *testing.T) { dryRunCSIExamples(t, c) })
	t.Run("chart", func(t *testing.T) {
		for _, obj := range renderChart(t, k8stest.Namespace) {
			if err := c.Create(context.Background(), obj, client.DryRunAll, client.FieldValidation("Strict")); err != nil {
				t.Errorf("chart: %s %s: %v", obj.GetKind(), obj.GetName(), err)
			}
		}
	})

	// Every Setting with its default is taken.
	for name, def := range v1alpha1.SettingDefinitions {
		s := &v1alpha1.Setting{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: k8stest.Namespace}, Value: def.Default}
		if err := c.Create(ctx, s); err != nil {
			t.Errorf("setting %s=%s refused: %v", name, def.Default, err)
		}
	}
}

// clusterScoped are the kinds in deploy/manifests that have no namespace.
var clusterScoped = map[string]bool{"Namespace": true, "CSIDriver": true, "ClusterRole": true, "ClusterRoleBinding": true,
	"ValidatingWebhookConfiguration": true}

// manifestObjects reads every object of deploy/manifests.
func manifestObjects(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	return yamlObjects(t, filepath.Join(k8stest.RepoRoot(), "deploy", "manifests"))
}

// yamlObjects reads every object of the YAML files in dir.
func yamlObjects(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s: %v", dir, err)
	}
	var objs []*unstructured.Unstructured
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range bytes.Split(b, []byte("\n---")) {
			var m map[string]any
			if err := yaml.Unmarshal(doc, &m); err != nil {
				t.Fatalf("%s: %v", filepath.Base(f), err)
			}
			if len(m) == 0 {
				continue
			}
			objs = append(objs, &unstructured.Unstructured{Object: m})
		}
	}
	return objs
}

// dryRunManifests sends every object of deploy/manifests to the API
// server as a server-side dry run: schemas, CEL rules and references
// are checked by the real thing, nothing is stored.
func dryRunManifests(t *testing.T, c client.Client) {
	for _, obj := range manifestObjects(t) {
		err := c.Create(context.Background(), obj, client.DryRunAll, client.FieldValidation("Strict"))
		if obj.GetKind() == "Namespace" && apierrors.IsAlreadyExists(err) {
			continue // the test environment made it
		}
		if err != nil {
			t.Errorf("%s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
	}
}

// TestManifestSettingsAreTheDefaults keeps deploy/manifests' Settings in
// step with SettingDefinitions.
func TestManifestSettingsAreTheDefaults(t *testing.T) {
	seen := map[string]bool{}
	for _, obj := range manifestObjects(t) {
		if obj.GetKind() != "Setting" {
			continue
		}
		def, ok := v1alpha1.SettingDefinitions[obj.GetName()]
		if value, _, _ := unstructured.NestedString(obj.Object, "value"); !ok || value != def.Default {
			t.Errorf("manifest setting %s=%q, definition %+v", obj.GetName(), value, def)
		}
		seen[obj.GetName()] = true
	}
	for name := range v1alpha1.SettingDefinitions {
		if !seen[name] {
			t.Errorf("setting %s missing from deploy/manifests/40-settings.yaml", name)
		}
	}
}

// renderChart renders deploy/chart's templates with its default values,
// as helm template would: they use only .Values, .Release.Namespace and
// range, which Go's text/template evaluates the same way.
func renderChart(t *testing.T, namespace string) []*unstructured.Unstructured {
	t.Helper()
	dir := filepath.Join(k8stest.RepoRoot(), "deploy", "chart")
	vb, err := os.ReadFile(filepath.Join(dir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(vb, &values); err != nil {
		t.Fatal(err)
	}
	data := map[string]any{"Values": values, "Release": map[string]any{"Namespace": namespace, "Name": "drover"}}
	files, _ := filepath.Glob(filepath.Join(dir, "templates", "*.yaml"))
	var objs []*unstructured.Unstructured
	for _, f := range files {
		tmpl, err := template.New(filepath.Base(f)).Option("missingkey=error").ParseFiles(f)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if err := tmpl.Execute(&out, data); err != nil {
			t.Fatalf("%s: %v", filepath.Base(f), err)
		}
		for _, doc := range bytes.Split(out.Bytes(), []byte("\n---")) {
			var m map[string]any
			if err := yaml.Unmarshal(doc, &m); err != nil {
				t.Fatalf("%s: %v\n%s", filepath.Base(f), err, doc)
			}
			if len(m) > 0 {
				objs = append(objs, &unstructured.Unstructured{Object: m})
			}
		}
	}
	return objs
}

// TestChartMatchesTheManifests keeps the chart in step: its CRDs are
// deploy/crds, its Settings the definitions' defaults, and it renders the
// same kinds and names as deploy/manifests (less the namespace, which
// helm install --create-namespace makes).
func TestChartMatchesTheManifests(t *testing.T) {
	root := k8stest.RepoRoot()
	crds, chartCRDs := readDir(t, filepath.Join(root, "deploy", "crds")), readDir(t, filepath.Join(root, "deploy", "chart", "crds"))
	if len(crds) != len(chartCRDs) {
		t.Errorf("chart holds %d CRDs, deploy/crds %d: run make crds", len(chartCRDs), len(crds))
	}
	for name, b := range crds {
		if !bytes.Equal(b, chartCRDs[name]) {
			t.Errorf("deploy/chart/crds/%s differs from deploy/crds: run make crds", name)
		}
	}
	key := func(o *unstructured.Unstructured) string { return o.GetKind() + "/" + o.GetName() }
	want := map[string]bool{}
	for _, o := range manifestObjects(t) {
		if o.GetKind() != "Namespace" {
			want[key(o)] = true
		}
	}
	for _, o := range renderChart(t, "elsewhere") {
		if !want[key(o)] {
			t.Errorf("the chart renders %s, which deploy/manifests lacks", key(o))
		}
		if clusterScoped[o.GetKind()] {
			if o.GetNamespace() != "" {
				t.Errorf("%s is cluster-scoped but has namespace %q", key(o), o.GetNamespace())
			}
		} else if o.GetNamespace() != "elsewhere" {
			t.Errorf("%s is not in the release's namespace: %q", key(o), o.GetNamespace())
		}
		if o.GetKind() == "Setting" {
			if v, _, _ := unstructured.NestedString(o.Object, "value"); v != v1alpha1.SettingDefinitions[o.GetName()].Default {
				t.Errorf("chart setting %s=%q, default %q", o.GetName(), v, v1alpha1.SettingDefinitions[o.GetName()].Default)
			}
		}
		delete(want, key(o))
	}
	for k := range want {
		t.Errorf("the chart does not render %s", k)
	}
}
