// Command drover-image writes Drover's container image as a
// docker-archive tarball (what docker load, podman load and kind load
// image-archive take) from a drover binary built for Linux: one layer
// holding /usr/local/bin/drover, the binary as the entrypoint. No
// registry and no container runtime are needed, and the output is
// reproducible: the same binary gives the same bytes (every time in the
// image is the Unix epoch, every owner root). `make image` builds the
// binary reproducibly (-trimpath, no build id, no VCS stamp) and runs it.
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// binaryPath is where the image holds drover.
const binaryPath = "usr/local/bin/drover"

func main() {
	bin := flag.String("binary", "", "the drover binary (built for linux, CGO_ENABLED=0)")
	out := flag.String("out", "", "the image tarball to write")
	tag := flag.String("tag", "drover:dev", "the image's name:tag in the tarball")
	arch := flag.String("arch", runtime.GOARCH, "the binary's architecture")
	flag.Parse()
	if *bin == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "usage: drover-image --binary PATH --out IMAGE.tar [--tag drover:dev]")
		os.Exit(2)
	}
	if err := build(*bin, *out, *tag, *arch); err != nil {
		fmt.Fprintf(os.Stderr, "drover-image: %v\n", err)
		os.Exit(1)
	}
}

// epoch is every timestamp in the image, so that it is reproducible.
var epoch = time.Unix(0, 0).UTC()

// layerTar is the image's one layer: the directories down to the binary,
// the binary, and /tmp.
func layerTar(binary []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	entries := []tar.Header{
		{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777},
		{Name: "usr/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "usr/local/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "usr/local/bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: binaryPath, Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(binary))},
	}
	for _, h := range entries {
		h.ModTime, h.Format = epoch, tar.FormatUSTAR
		if err := tw.WriteHeader(&h); err != nil {
			return nil, fmt.Errorf("layer: %s: %w", h.Name, err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(binary); err != nil {
				return nil, fmt.Errorf("layer: %s: %w", h.Name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	return buf.Bytes(), nil
}

// image builds the image around a drover binary.
func image(binary []byte, arch string) (v1.Image, error) {
	layerBytes, err := layerTar(binary)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{Layer: layer,
		History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "drover-image: " + binaryPath}})
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture, cfg.Created = "linux", arch, v1.Time{Time: epoch}
	cfg.Config.Entrypoint = []string{"/" + binaryPath}
	cfg.Config.Env = []string{"PATH=/usr/local/bin"}
	cfg.Config.Labels = map[string]string{"org.opencontainers.image.title": "drover"}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	return img, nil
}

func build(binPath, out, tag, arch string) error {
	binary, err := os.ReadFile(binPath)
	if err != nil {
		return err
	}
	if len(binary) < 4 || string(binary[:4]) != "\x7fELF" {
		return fmt.Errorf("%s is not a Linux (ELF) binary", binPath)
	}
	ref, err := name.NewTag(tag)
	if err != nil {
		return fmt.Errorf("--tag %q: %w", tag, err)
	}
	img, err := image(binary, arch)
	if err != nil {
		return err
	}
	if err := tarball.WriteToFile(out, ref, img); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("%s: %s %s\n", out, ref, digest)
	return nil
}
