package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover-io/drover/transports/control"
	"github.com/drover-io/drover/transports/control/controlpb"
)

// TestProcessBackingImage stores a raw image (with holes and a size that is
// not a multiple of 4 KiB) and a qcow2 conversion of it as backing images,
// creates two drover dev volumes on the raw one and one on the qcow2 one:
// each reads the image, writes over it without touching the image, and the
// two volumes on one image share one copy (same inode). rm is refused
// while volumes use an image and allowed once they are gone; a damaged
// image fails verify and cannot back a new volume.
func TestProcessBackingImage(t *testing.T) {
	needTools(t, "qemu-img")
	dir := t.TempDir()
	images := filepath.Join(dir, "images")
	const imgBytes = 6<<20 + 1000
	content := make([]byte, imgBytes)
	rng := rand.New(rand.NewPCG(5, 5))
	for off := 0; off < imgBytes; off += 64 << 10 {
		if rng.IntN(3) == 0 {
			continue // a hole
		}
		for i := off; i < min(off+64<<10, imgBytes); i++ {
			content[i] = byte(rng.Uint32())
		}
	}
	raw := filepath.Join(dir, "base.raw")
	mustNil(t, os.WriteFile(raw, content, 0o644))
	qcow := filepath.Join(dir, "base.qcow2")
	sh(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow)
	padded := append(bytes.Clone(content), make([]byte, 4096-imgBytes%4096)...)

	out := runDrover(t, "backing-image", "create", "base", "--from", raw, "--images-dir", images)
	if !strings.Contains(out, "sha256 "+sha(padded)) {
		t.Fatalf("create from raw: %s (want sha256 %s)", out, sha(padded))
	}
	runDrover(t, "backing-image", "create", "base-q", "--from", qcow, "--images-dir", images)
	if out, err := exec.Command(droverBin, "backing-image", "create", "base", "--from", raw, "--images-dir", images).CombinedOutput(); err == nil || !strings.Contains(string(out), "already exists") {
		t.Errorf("create twice: %v %s", err, out)
	}

	const volBytes = 8 << 20
	startOn := func(image, dataDir string) *snapVolume {
		t.Helper()
		ctl := freeAddr(t)
		v := &snapVolume{dataDir: dataDir}
		v.proc = start(t, "dev on "+image, nil, "dev", "--data-dir", dataDir, "--size", "8MiB", "--control", ctl,
			"--frontend", "none", "--backing-image", image, "--images-dir", images)
		client, conn, err := control.Dial(ctl)
		mustNil(t, err)
		t.Cleanup(func() { conn.Close() })
		v.volumeClient = &volumeClient{t: t, ctlAddr: ctl, size: volBytes, client: client}
		v.waitModes("drover dev on a backing image serving", "", "", "")
		return v
	}
	want := append(bytes.Clone(padded), make([]byte, volBytes-len(padded))...)
	a := startOn("base", filepath.Join(dir, "a"))
	b := startOn("base", filepath.Join(dir, "b"))
	q := startOn("base-q", filepath.Join(dir, "q"))
	for _, v := range []*snapVolume{a, b, q} {
		if !bytes.Equal(v.content(""), want) {
			t.Fatalf("volume in %s does not read the image's content", v.dataDir)
		}
	}
	// Write over the image in volume a only.
	over := bytes.Repeat([]byte{0x5a}, 64<<10)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := a.client.Write(ctx, &controlpb.WriteRequest{Offset: 1 << 20, Data: over})
	mustNil(t, err)
	wantA := bytes.Clone(want)
	copy(wantA[1<<20:], over)
	if !bytes.Equal(a.content(""), wantA) || !bytes.Equal(b.content(""), want) {
		t.Fatal("a write over the image in one volume is not exactly where it belongs")
	}
	ino := func(dataDir string) uint64 {
		st, err := os.Stat(filepath.Join(dataDir, "dev-1", "layer-1.data"))
		mustNil(t, err)
		return st.Sys().(*syscall.Stat_t).Ino
	}
	if ino(a.dataDir) != ino(b.dataDir) || ino(a.dataDir) == ino(q.dataDir) {
		t.Errorf("volumes on one image do not share one copy (inodes %d, %d; other image %d)", ino(a.dataDir), ino(b.dataDir), ino(q.dataDir))
	}
	ls := runDrover(t, "backing-image", "ls", "--images-dir", images)
	if !strings.Contains(ls, "base ") || !strings.Contains(ls, "6: ") || !strings.Contains(ls, "qcow2") {
		t.Errorf("backing-image ls:\n%s", ls)
	}
	if out, err := exec.Command(droverBin, "backing-image", "rm", "base", "--images-dir", images).CombinedOutput(); err == nil || !strings.Contains(string(out), "backs 6 replica(s)") {
		t.Errorf("rm of an image in use: %v %s", err, out)
	}
	// Separate processes: two drover replica on the image and an engine.
	var reps []string
	var repDirs []string
	for i := 1; i <= 2; i++ {
		rd, addr := filepath.Join(dir, fmt.Sprintf("tcp-r%d", i)), freeAddr(t)
		repDirs = append(repDirs, rd)
		start(t, fmt.Sprintf("replica %d", i), nil, "replica", "--dir", rd, "--listen", addr, "--size", "8MiB",
			"--backing-image", "base", "--images-dir", images)
		reps = append(reps, fmt.Sprintf("r%d=%s", i, addr))
	}
	ctl := freeAddr(t)
	eng := start(t, "engine", nil, "engine", "--volume", "tcp", "--replicas", strings.Join(reps, ","), "--control", ctl)
	client, conn, err := control.Dial(ctl)
	mustNil(t, err)
	defer conn.Close()
	tv := &snapVolume{volumeClient: &volumeClient{t: t, ctlAddr: ctl, size: volBytes, client: client}}
	tv.waitModes("an engine on replica processes created on the image", "RW", "RW")
	if !bytes.Equal(tv.content(""), want) {
		t.Fatal("a volume of replica processes on the image does not read it")
	}
	eng.stop()
	snaps := a.list()
	if len(snaps) != 2 || snaps[0].GetName() != "backing:base" {
		t.Errorf("chain of a volume on an image: %v", snaps)
	}
	// Restart: the volume reopens on the same copy.
	a.proc.stop()
	a = startOn("base", a.dataDir)
	if !bytes.Equal(a.content(""), wantA) {
		t.Fatal("after a restart the volume on the image reads something else")
	}
	for _, v := range []*snapVolume{a, b, q} {
		v.proc.stop()
	}
	mustNil(t, os.RemoveAll(a.dataDir))
	mustNil(t, os.RemoveAll(b.dataDir))
	if out, err := exec.Command(droverBin, "backing-image", "rm", "base", "--images-dir", images).CombinedOutput(); err == nil || !strings.Contains(string(out), "backs 2 replica(s)") {
		t.Errorf("rm while replica processes' directories use it: %v %s", err, out)
	}
	for _, rd := range repDirs {
		mustNil(t, os.RemoveAll(rd))
	}
	runDrover(t, "backing-image", "rm", "base", "--images-dir", images)
	if out := runDrover(t, "backing-image", "ls", "--images-dir", images); strings.Contains(out, "base ") {
		t.Errorf("ls after rm:\n%s", out)
	}
	// Damage one block of base-q's data: verify and linking a new volume fail.
	dataFile := filepath.Join(images, "base-q", "layer", "layer-1.data")
	f, err := os.OpenFile(dataFile, os.O_RDWR, 0)
	mustNil(t, err)
	_, err = f.WriteAt([]byte{0xff, 0xfe}, 4096*3+17)
	mustNil(t, err)
	f.Close()
	if out, err := exec.Command(droverBin, "backing-image", "verify", "base-q", "--images-dir", images).CombinedOutput(); err == nil || !strings.Contains(string(out), "checksum") {
		t.Errorf("verify of a damaged image: %v %s", err, out)
	}
	if out, err := exec.Command(droverBin, "dev", "--data-dir", filepath.Join(dir, "r"), "--control", freeAddr(t), "--frontend", "none",
		"--backing-image", "base-q", "--images-dir", images).CombinedOutput(); err == nil || !strings.Contains(string(out), "checksum") {
		t.Errorf("a volume on a damaged image: %v %s", err, out)
	}
}
