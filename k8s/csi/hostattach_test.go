package csi

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestParseCgroupRoots: one mount point per hierarchy, at its root; a
// container's bind mount of a subtree and other filesystems are not.
func TestParseCgroupRoots(t *testing.T) {
	mi := `25 30 0:23 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
26 25 0:24 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
27 25 0:25 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
28 25 0:26 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
40 30 0:25 / /var/tmp/x\040y rw,relatime - cgroup cgroup rw,memory
41 30 0:24 /kubepods/pod1 /run/c/sys/fs/cgroup/cpu ro - cgroup cgroup rw,cpu
`
	got := parseCgroupRoots(mi)
	want := []string{"/sys/fs/cgroup/cpu", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// TestJoinCgroupRefusesPaths: the name is one path element.
func TestJoinCgroupRefusesPaths(t *testing.T) {
	for _, name := range []string{"", ".", "..", "a/b", "../x"} {
		if err := JoinCgroup(name); err == nil {
			t.Errorf("JoinCgroup(%q) accepted", name)
		}
	}
}

// TestCopyByHash: the copy is named by content, kept when present,
// executable, and older copies go.
func TestCopyByHash(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, []byte("one"), 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "bin")
	a, err := copyByHash(src, bin)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := copyByHash(src, bin); err != nil || b != a {
		t.Fatalf("second copy: %q %v, want %q", b, err, a)
	}
	if err := os.WriteFile(src, []byte("two"), 0o755); err != nil {
		t.Fatal(err)
	}
	c, err := copyByHash(src, bin)
	if err != nil || c == a {
		t.Fatalf("new content: %q %v", c, err)
	}
	left, _ := filepath.Glob(filepath.Join(bin, "*"))
	if !slices.Equal(left, []string{c}) {
		t.Fatalf("left in bin: %q, want only %q", left, c)
	}
	if st, err := os.Stat(c); err != nil || st.Mode().Perm()&0o100 == 0 {
		t.Fatalf("copy %s: %v %v", c, st.Mode(), err)
	}
	if b, _ := os.ReadFile(c); string(b) != "two" {
		t.Fatalf("copy holds %q", b)
	}
}
