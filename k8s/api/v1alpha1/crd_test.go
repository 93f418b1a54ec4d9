package v1alpha1_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/k8s/k8stest"
)

// TestCRDsUpToDate runs controller-gen into a temporary directory and
// compares its output with the committed deploy/crds: run `make crds`
// after changing a type.
func TestCRDsUpToDate(t *testing.T) {
	gen := k8stest.NeedBinary(t, "controller-gen")
	root := k8stest.RepoRoot()
	out := t.TempDir()
	cmd := exec.Command(gen, "crd", "paths=./k8s/api/...", "output:crd:artifacts:config="+out)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("controller-gen: %v\n%s", err, b)
	}
	committed := readDir(t, filepath.Join(root, "deploy", "crds"))
	fresh := readDir(t, out)
	if len(committed) != len(fresh) {
		t.Fatalf("deploy/crds holds %d files, controller-gen makes %d: run make crds", len(committed), len(fresh))
	}
	for name, b := range fresh {
		if !bytes.Equal(committed[name], b) {
			t.Errorf("deploy/crds/%s differs from controller-gen's output: run make crds", name)
		}
	}
}

func readDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		files[e.Name()] = b
	}
	return files
}

// TestEveryFieldDocumented walks every CRD's schema: each property of a
// spec or status carries a description, so kubectl explain reads well.
func TestEveryFieldDocumented(t *testing.T) {
	crds := readDir(t, filepath.Join(k8stest.RepoRoot(), "deploy", "crds"))
	for name, b := range crds {
		var doc map[string]any
		if err := yaml.Unmarshal(b, &doc); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, v := range dig(doc, "spec", "versions").([]any) {
			schema := dig(v, "schema", "openAPIV3Schema")
			if dig(schema, "description") == nil {
				t.Errorf("%s: the kind has no description", name)
			}
			walkSchema(t, name, "", schema)
		}
	}
}

func walkSchema(t *testing.T, file, path string, schema any) {
	props, _ := dig(schema, "properties").(map[string]any)
	for key, sub := range props {
		p := path + "." + key
		// apiVersion, kind and metadata are Kubernetes' own; conditions'
		// fields are metav1.Condition's.
		inherited := path == "" && (key == "apiVersion" || key == "kind" || key == "metadata") ||
			strings.Contains(p, ".conditions.")
		if !inherited && dig(sub, "description") == nil {
			t.Errorf("%s: field %s has no description", file, p)
		}
		walkSchema(t, file, p, sub)
		if items := dig(sub, "items"); items != nil {
			walkSchema(t, file, p+"[]", items)
		}
		if extra, ok := dig(sub, "additionalProperties").(map[string]any); ok {
			walkSchema(t, file, p+"{}", extra)
		}
	}
}

func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// TestSettingRulesMatchDefinitions keeps the Setting CRD's CEL rules,
// which repeat the setting names by type, in step with
// SettingDefinitions.
func TestSettingRulesMatchDefinitions(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(k8stest.RepoRoot(), "deploy", "crds", "storage.drover.io_settings.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	rules := dig(dig(doc, "spec", "versions").([]any)[0], "schema", "openAPIV3Schema", "x-kubernetes-validations").([]any)
	names := func(rule string) []string {
		list := regexp.MustCompile(`\[([^\]]*)\]`).FindStringSubmatch(rule)
		var out []string
		for _, m := range regexp.MustCompile(`'([a-z0-9-]+)'`).FindAllStringSubmatch(list[1], -1) {
			out = append(out, m[1])
		}
		sort.Strings(out)
		return out
	}
	byType := map[v1alpha1.SettingType][]string{}
	var all []string
	for name, def := range v1alpha1.SettingDefinitions {
		byType[def.Type] = append(byType[def.Type], name)
		all = append(all, name)
		if err := v1alpha1.ParseSettingValue(name, def.Default); err != nil {
			t.Errorf("default of %s: %v", name, err)
		}
	}
	sort.Strings(all)
	for _, l := range byType {
		sort.Strings(l)
	}
	want := map[string][]string{
		"metadata.name is not a known setting":               all,
		"value must be a non-negative integer":               byType[v1alpha1.SettingInt],
		"value must be true or false":                        byType[v1alpha1.SettingBool],
		"value must be a duration such as 30s, 10m or 1h30m": byType[v1alpha1.SettingDuration],
	}
	// An enum setting's rule lists its options.
	opts := slices.Sorted(slices.Values(v1alpha1.SettingDefinitions[v1alpha1.SettingReplicaAutoBalance].Options))
	want["value must be disabled, least-effort or best-effort"] = opts
	for _, r := range rules {
		msg, rule := dig(r, "message").(string), dig(r, "rule").(string)
		if got := names(rule); strings.Join(got, ",") != strings.Join(want[msg], ",") {
			t.Errorf("rule %q names %v, SettingDefinitions %v", msg, got, want[msg])
		}
		delete(want, msg)
	}
	if len(want) != 0 {
		t.Errorf("rules missing from the CRD: %v", want)
	}
}
