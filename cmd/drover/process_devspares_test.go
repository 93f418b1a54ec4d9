package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestProcessDevSpares: drover dev --spares 1 keeps spare-1 under the
// data dir. After dev-3's directory is lost (a file in its place, as if
// its disk were gone), the next run serves from dev-1 and dev-2 and, with
// no IO, replaces dev-3 by spare-1 after --replace-after; the run after
// that finds spare-1 in the recorded membership and keeps dev-3 out.
func TestProcessDevSpares(t *testing.T) {
	dataDir := t.TempDir()
	c := newVolumeClient(t, freeAddr(t), testSizeBytes)
	startDev := func() *proc {
		return start(t, "dev", nil, "dev", "--data-dir", dataDir, "--size", "4MiB", "--control", c.ctlAddr,
			"--frontend", "none", "--spares", "1", "--replace-after", "1s")
	}
	dev := startDev()
	c.waitMembers("drover dev serving", map[string]string{"dev-1": "RW", "dev-2": "RW", "dev-3": "RW"})
	l := newLoad(c, 5)
	for i := 0; i < 30; i++ {
		l.write()
	}
	l.flush()
	dev.stop()

	dev3 := filepath.Join(dataDir, "dev-3")
	if err := os.RemoveAll(dev3); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dev3, []byte("not a replica\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dev = startDev()
	c.waitMembers("spare-1 in dev-3's place with no IO", map[string]string{"dev-1": "RW", "dev-2": "RW", "spare-1": "RW"})
	l.verify("after spare-1 replaced dev-3")
	dev.stop()

	dev = startDev()
	c.waitMembers("spare-1 adopted after a restart", map[string]string{"dev-1": "RW", "dev-2": "RW", "spare-1": "RW"})
	c.wantRemoved("dev-3")
	l.verify("after a restart with spare-1 a member")
	dev.stop()
}
