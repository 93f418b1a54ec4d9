package csi

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestExampleClassesParse: the StorageClass and VolumeAttributesClass
// examples under deploy/examples use only parameters the driver takes.
func TestExampleClassesParse(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(file), "..", "..", "deploy", "examples")
	b, err := os.ReadFile(filepath.Join(dir, "volumeattributesclass.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var vac struct {
		Parameters map[string]string `json:"parameters"`
	}
	if err := yaml.Unmarshal(b, &vac); err != nil {
		t.Fatal(err)
	}
	if len(vac.Parameters) == 0 {
		t.Fatal("the VolumeAttributesClass example has no parameters")
	}
	if _, err := ParseQoS(vac.Parameters, nil); err != nil {
		t.Errorf("volumeattributesclass.yaml: %v", err)
	}
	b, err = os.ReadFile(filepath.Join(dir, "storageclass.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var sc struct {
		Kind       string            `json:"kind"`
		Parameters map[string]string `json:"parameters"`
	}
	if err := yaml.Unmarshal([]byte(strings.Split(string(b), "\n---\n")[0]), &sc); err != nil {
		t.Fatal(err)
	}
	if sc.Kind != "StorageClass" || len(sc.Parameters) == 0 {
		t.Fatalf("storageclass.yaml's first document is a %q with %d parameters", sc.Kind, len(sc.Parameters))
	}
	if _, err := ParseParams(sc.Parameters); err != nil {
		t.Errorf("storageclass.yaml: %v", err)
	}
}
