package main

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestImageIsReproducibleAndHoldsTheBinary builds the image twice from
// the same binary (this test's own executable, an ELF file): the
// tarballs are byte-identical, and reading one back gives the entrypoint
// and the binary's bytes at /usr/local/bin/drover.
func TestImageIsReproducibleAndHoldsTheBinary(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.tar"), filepath.Join(dir, "b.tar")
	for _, out := range []string{a, b} {
		if err := build(self, out, "drover:test", "amd64"); err != nil {
			t.Fatal(err)
		}
	}
	ab, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if !bytes.Equal(ab, bb) {
		t.Fatal("two builds from one binary differ")
	}
	img, err := tarball.ImageFromPath(a, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.Config.Entrypoint, " ") != "/usr/local/bin/drover" || cfg.OS != "linux" || cfg.Created.Unix() != 0 {
		t.Fatalf("config: %+v", cfg)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	want, _ := os.ReadFile(self)
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			t.Fatal("no usr/local/bin/drover in the layer")
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name != binaryPath {
			continue
		}
		got, _ := io.ReadAll(tr)
		if !bytes.Equal(got, want) || h.Mode != 0o755 || h.ModTime.Unix() != 0 {
			t.Fatalf("binary in the image: %d bytes, mode %o, mtime %v", len(got), h.Mode, h.ModTime)
		}
		return
	}
}

func TestRefusesANonELFBinary(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := build(p, filepath.Join(t.TempDir(), "o.tar"), "drover:dev", "amd64"); err == nil || !strings.Contains(err.Error(), "not a Linux (ELF) binary") {
		t.Fatalf("got %v", err)
	}
}
