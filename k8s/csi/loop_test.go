package csi

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drover-io/drover/transports/testenv"
)

// TestOwnsLoopByIdentity: a loop device is recognised as the one a
// stage attached by its backing file's identity from the kernel, also
// once the file is unreachable (a dead nbdfuse; here: unlinked), where
// losetup --associated no longer finds it; a loop device over another
// file is not ours.
func TestOwnsLoopByIdentity(t *testing.T) {
	testenv.NeedRoot(t, "it attaches loop devices")
	testenv.NeedTools(t, "losetup")
	ctx := context.Background()
	dir := t.TempDir()
	attach := func(name string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := run(ctx, "losetup", "--find", "--show", p)
		if err != nil {
			testenv.Unavailable(t, "no loop device: %v", err)
		}
		loop := strings.TrimSpace(out)
		t.Cleanup(func() { _, _ = run(ctx, "losetup", "--detach", loop) })
		return loop
	}
	loop1, loop2 := attach("one"), attach("two")
	id, err := loopBacking(loop1)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(id.name, "/one") || id.ino == 0 {
		t.Fatalf("loop identity %+v", id)
	}
	st := &stageState{Image: filepath.Join(dir, "one"), Loop: loop1, LoopDevice: id.dev, LoopInode: id.ino, LoopFile: id.name}
	if !ownsLoop(ctx, st) {
		t.Fatalf("%s over %s not recognised", loop1, st.Image)
	}
	if err := os.Remove(st.Image); err != nil {
		t.Fatal(err)
	}
	if loop, err := loopFor(ctx, st.Image); err == nil && loop == loop1 {
		t.Fatalf("losetup --associated still finds the unlinked image")
	}
	if !ownsLoop(ctx, st) {
		t.Fatalf("%s not recognised once its file is unreachable", loop1)
	}
	other := *st
	other.Loop = loop2
	if ownsLoop(ctx, &other) {
		t.Fatalf("%s, over another file, taken for ours", loop2)
	}
	other = *st
	other.LoopFile = "/elsewhere/disk"
	if ownsLoop(ctx, &other) {
		t.Fatalf("a loop device with another name taken for ours")
	}
}
