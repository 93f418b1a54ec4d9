package nbd_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover-io/drover/frontends/nbd"
	"github.com/drover-io/drover/transports/testenv"
)

// TestExt4OverNbdfuseAndLoop puts a real filesystem on the export:
// nbdfuse exposes it as a file, a loop device makes that a block device,
// then mkfs.ext4, files written, unmount, fsck.ext4 -f, remount and the
// files read back intact. It needs root, FUSE and loop devices.
func TestExt4OverNbdfuseAndLoop(t *testing.T) {
	need(t, "nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "fsck.ext4", "mount", "umount")
	testenv.NeedRoot(t, "losetup and mount")
	testenv.NeedFUSE(t)
	d, _ := fileDevice(t, 256<<20)
	s := serve(t, nbd.Export{Name: "vol", Device: d})
	dir := t.TempDir()
	fuseDir, fsDir := filepath.Join(dir, "fuse"), filepath.Join(dir, "fs")
	for _, p := range []string{fuseDir, fsDir} {
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	image := mountNbdfuse(t, fuseDir, s.unixURI("vol"))
	out, err := exec.Command("losetup", "--find", "--show", image).CombinedOutput()
	if err != nil {
		testenv.Unavailable(t, "no loop device available (%v: %s)", err, out)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", loop).Run() })

	run(t, "mkfs.ext4", "-q", "-F", loop)
	files := map[string][]byte{}
	for i, sizeBytes := range []int{1, 4095, 4096, 1 << 20, 3<<20 + 17, 16 << 20} {
		files[filepath.Join("dir", string(rune('a'+i)))] = bytes.Repeat([]byte{byte(i + 1), byte(i * 7)}, sizeBytes/2+1)[:sizeBytes]
	}
	mount(t, loop, fsDir)
	if err := os.Mkdir(filepath.Join(fsDir, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(fsDir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A deleted file's blocks are discarded (mounted with -o discard):
	// TRIM requests reach the export.
	junk := filepath.Join(fsDir, "junk")
	if err := os.WriteFile(junk, bytes.Repeat([]byte{0xee}, 8<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "sync", "-f", junk)
	if err := os.Remove(junk); err != nil {
		t.Fatal(err)
	}
	checkFiles(t, fsDir, files)
	run(t, "umount", fsDir)
	run(t, "fsck.ext4", "-f", "-n", loop)
	mount(t, loop, fsDir)
	checkFiles(t, fsDir, files)
	run(t, "umount", fsDir)
}

// mountNbdfuse runs nbdfuse on uri under dir and returns the file it
// exposes; cleanup unmounts it.
func mountNbdfuse(t *testing.T, dir, uri string) string {
	t.Helper()
	pidfile := filepath.Join(t.TempDir(), "pid")
	cmd := exec.Command("nbdfuse", "-P", pidfile, filepath.Join(dir, "disk"), uri)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		exec.Command("fusermount3", "-u", dir).Run()
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	// nbdfuse writes its pidfile once the mount is ready.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		if _, err := os.Stat(pidfile); err == nil {
			return filepath.Join(dir, "disk")
		}
		select {
		case err := <-exited:
			testenv.Unavailable(t, "nbdfuse exited before mounting (%v: %s)", err, stderr.String())
		case <-ctx.Done():
			t.Fatalf("nbdfuse did not mount within 30s: %s", stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func mount(t *testing.T, dev, dir string) {
	t.Helper()
	if out, err := exec.Command("mount", "-t", "ext4", "-o", "discard", dev, dir).CombinedOutput(); err != nil {
		t.Fatalf("mount %s: %v: %s", dev, err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
}

func checkFiles(t *testing.T, root string, files map[string][]byte) {
	t.Helper()
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(root, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: read %d bytes differing from the %d written", name, len(got), len(want))
		}
	}
}
