package e2e

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Images the cluster runs besides drover's (make image) and the
// sidecars' (from bin/): the sandbox and the workload.
const (
	pauseImage    = "local.test/pause:1"
	workloadImage = "local.test/workload:1"
)

// binaryImage writes a docker-archive tarball of a one-layer image that
// holds binary as /NAME (its entrypoint) and an empty /tmp, tagged ref.
func binaryImage(t *testing.T, ref, binary, out string) {
	t.Helper()
	b, err := os.ReadFile(binary)
	if err != nil {
		t.Fatalf("image %s: %v", ref, err)
	}
	base := filepath.Base(binary)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777},
		{Name: base, Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(b))},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(b); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", runtime.GOARCH
	cfg.Config.Entrypoint = []string{"/" + base}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatalf("image name %s: %v", ref, err)
	}
	if err := tarball.WriteToFile(out, tag, img); err != nil {
		t.Fatalf("write image %s: %v", ref, err)
	}
}

// goBinary builds a static binary of pkg into dir.
func goBinary(t *testing.T, pkg, out string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}

// importImage imports a docker-archive or OCI tarball into containerd's
// k8s.io namespace, where the kubelet finds it (imagePullPolicy Never or
// IfNotPresent: nothing is pulled).
func (c *cluster) importImage(t *testing.T, tarPath string) {
	t.Helper()
	out, err := exec.Command("ctr", "-a", c.containerdSock(), "-n", "k8s.io", "images", "import", tarPath).CombinedOutput()
	if err != nil {
		t.Fatalf("ctr images import %s: %v\n%s", tarPath, err, out)
	}
}

// images builds and imports the sandbox and workload images, the drover
// image make image wrote, and an image for each sidecar binary the
// manifests name (registry.k8s.io/sig-storage/NAME:VERSION from bin/NAME).
func (c *cluster) images(t *testing.T, droverImage string, sidecars map[string]string) {
	t.Helper()
	dir := c.path("images")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	goBinary(t, "github.com/drover-io/drover/k8s/e2e/pause", filepath.Join(dir, "pause"))
	goBinary(t, "github.com/drover-io/drover/k8s/e2e/workload", filepath.Join(dir, "workload"))
	binaryImage(t, pauseImage, filepath.Join(dir, "pause"), filepath.Join(dir, "pause.tar"))
	binaryImage(t, workloadImage, filepath.Join(dir, "workload"), filepath.Join(dir, "workload.tar"))
	c.importImage(t, filepath.Join(dir, "pause.tar"))
	c.importImage(t, filepath.Join(dir, "workload.tar"))
	c.importImage(t, droverImage)
	for ref, bin := range sidecars {
		out := filepath.Join(dir, filepath.Base(bin)+".tar")
		binaryImage(t, ref, bin, out)
		c.importImage(t, out)
	}
	out, _ := exec.Command("ctr", "-a", c.containerdSock(), "-n", "k8s.io", "images", "ls", "-q").Output()
	t.Logf("images in containerd:\n%s", out)
}
