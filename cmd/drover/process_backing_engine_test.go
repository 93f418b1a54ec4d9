package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/drover-io/drover/transports/control"
)

// TestProcessEngineBackingImage: drover engine --backing-image declares
// the volume's image. Two nodes' images directories each hold an image
// named "base", with different content. r1 and r2 are created on the
// first node's, r3 on the second's: the engine (given the first node's
// directory, so it knows the checksum) serves from r1 and r2, keeps r3
// ERR with a message naming both checksums, and replaces it with the
// spare s1, created without the image (it gets a private copy of the
// image layer). The volume reads the first image throughout. An engine
// declaring another image, or replicas created without one, does not
// serve and says why on stderr and in volume info.
func TestProcessEngineBackingImage(t *testing.T) {
	dir := t.TempDir()
	const imgBytes, volBytes = 2 << 20, 4 << 20
	images := func(node string, seed uint64) (string, []byte) {
		content := make([]byte, imgBytes)
		rng := rand.New(rand.NewPCG(seed, seed))
		for i := range content {
			content[i] = byte(rng.Uint32())
		}
		raw := filepath.Join(dir, node+".raw")
		mustNil(t, os.WriteFile(raw, content, 0o644))
		d := filepath.Join(dir, node+"-images")
		runDrover(t, "backing-image", "create", "base", "--from", raw, "--images-dir", d)
		return d, content
	}
	imagesA, contentA := images("a", 1)
	imagesB, _ := images("b", 2)

	var reps []string
	for i, imgs := range []string{imagesA, imagesA, imagesB} {
		addr := freeAddr(t)
		start(t, fmt.Sprintf("r%d", i+1), nil, "replica", "--dir", filepath.Join(dir, fmt.Sprintf("r%d", i+1)), "--listen", addr,
			"--size", fmt.Sprint(volBytes), "--backing-image", "base", "--images-dir", imgs)
		reps = append(reps, fmt.Sprintf("r%d=%s", i+1, addr))
	}
	s1Addr := freeAddr(t)
	start(t, "s1", nil, "replica", "--dir", filepath.Join(dir, "s1"), "--listen", s1Addr, "--id", "s1", "--size", fmt.Sprint(volBytes))
	ctl := freeAddr(t)
	client, conn, err := control.Dial(ctl)
	mustNil(t, err)
	defer conn.Close()
	v := &snapVolume{volumeClient: &volumeClient{t: t, ctlAddr: ctl, size: volBytes, client: client}}
	engineOn := func(image string, replicas ...string) *proc {
		return start(t, "engine", nil, "engine", "--volume", "img", "--replicas", strings.Join(replicas, ","), "--control", ctl,
			"--backing-image", image, "--images-dir", imagesA, "--spares", "s1="+s1Addr, "--replace-after", "1s", "--replica-timeout", "2s")
	}
	want := append(bytes.Clone(contentA), make([]byte, volBytes-imgBytes)...)

	eng := engineOn("base", reps...)
	eventually(t, "r3 refused for its image", func() (bool, string) {
		out := volumeInfoText(ctl)
		return strings.Contains(out, "r3") && strings.Contains(out, "is on backing image \"base\" with sha256") &&
			strings.Contains(out, "but the volume's image has sha256"), out
	})
	v.waitMembers("s1 in r3's place", map[string]string{"r1": "RW", "r2": "RW", "s1": "RW"})
	if !bytes.Equal(v.content(""), want) {
		t.Fatal("the volume does not read the first node's image")
	}
	eng.stop()

	// The same replicas under an engine declaring another image.
	eng = engineOn("other", reps...)
	eventually(t, "an engine on the wrong image says why", func() (bool, string) {
		out := eng.output()
		return strings.Contains(out, `not serving: the volume is on backing image "base", not "other"`), out
	})
	eng.stop()

	// Replicas created without an image, under an engine declaring one.
	var plain []string
	for i := 1; i <= 2; i++ {
		addr := freeAddr(t)
		start(t, fmt.Sprintf("p%d", i), nil, "replica", "--dir", filepath.Join(dir, fmt.Sprintf("p%d", i)), "--listen", addr,
			"--id", fmt.Sprintf("p%d", i), "--size", fmt.Sprint(volBytes))
		plain = append(plain, fmt.Sprintf("p%d=%s", i, addr))
	}
	eng = engineOn("base", plain...)
	eventually(t, "an engine on replicas without the image says why", func() (bool, string) {
		out := volumeInfoText(ctl)
		return strings.Contains(out, `the replicas were not created on backing image "base"`), out
	})
	// --debug lists the open waiting for its next attempt, and why.
	eventually(t, "volume info --debug lists the open's retry", func() (bool, string) {
		out, _ := exec.Command(droverBin, "volume", "info", "--debug", "--control", ctl).CombinedOutput()
		return regexp.MustCompile(`(?m)^tasks:\n  open +retry +at tick \d+: .*not created on backing image`).Match(out), string(out)
	})
	eng.stop()
}

// volumeInfoText is drover volume info's output, or its error.
func volumeInfoText(ctl string) string {
	out, _ := exec.Command(droverBin, "volume", "info", "--control", ctl).CombinedOutput()
	return string(out)
}
