package filestore

import (
	"errors"
	"math"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestCheckSize: sizes past 2^63, over the over-provisioning limit, or
// (on ext4) past the file system's largest file are refused with a
// *SizeError saying which, and leave nothing in the directory; a size
// within every limit passes.
func TestCheckSize(t *testing.T) {
	dir := t.TempDir()
	st, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	disk := fs.Blocks * uint64(fs.Bsize)
	over := (disk/4096 + 1) * 4096
	for _, tc := range []struct {
		name    string
		size    uint64
		percent int
		want    string // "" = accepted
		over    bool
	}{
		{"within the disk", 1 << 20, 0, "", false},
		{"not block aligned", 4097, 0, "multiple of 4096", false},
		{"over the disk", over, 0, "over-provisioning limit, 100%", true},
		{"over the disk, allowed", over, 200, "", false},
		{"past 2^63", math.MaxUint64 &^ 4095, 1 << 30, "past 8 EiB", false},
	} {
		err := st.CheckSize(tc.size, tc.percent)
		var se *SizeError
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v, want accepted", tc.name, err)
		case tc.want != "" && (!errors.As(err, &se) || !strings.Contains(err.Error(), tc.want) || se.OverProvisioning != tc.over):
			t.Errorf("%s: %v, want a SizeError with %q (over-provisioning %v)", tc.name, err, tc.want, tc.over)
		}
	}
	if fs.Type == unix.EXT4_SUPER_MAGIC && fs.Bsize == 4096 {
		// ext4's largest file with 4 KiB blocks is 2^32-1 blocks.
		const ext4Max = (1<<32 - 1) * 4096
		if err := st.CheckSize(ext4Max, 1<<30); err != nil {
			t.Errorf("ext4's largest file size refused: %v", err)
		}
		err := st.CheckSize(ext4Max+4096, 1<<30)
		var se *SizeError
		if !errors.As(err, &se) || se.LimitBytes != ext4Max || se.OverProvisioning {
			t.Errorf("past ext4's largest file: %v, want a SizeError with limit %d", err, uint64(ext4Max))
		}
	} else {
		t.Logf("not ext4 with 4 KiB blocks (type %#x): the file system limit is not checked", fs.Type)
	}
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) != 0 {
		t.Fatalf("CheckSize left %v (%v) in the directory", ents, err)
	}
}
