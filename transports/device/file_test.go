package device

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// fileDirs lists directories on different filesystems so File's fallback
// paths (tmpfs lacks FALLOC_FL_ZERO_RANGE) run too.
func fileDirs(t *testing.T) []string {
	dirs := []string{t.TempDir()}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		d, err := os.MkdirTemp("/dev/shm", "drover-file-test")
		if err == nil {
			t.Cleanup(func() { os.RemoveAll(d) })
			dirs = append(dirs, d)
		}
	}
	return dirs
}

func TestFileReadWriteTrimZeroes(t *testing.T) {
	ctx := context.Background()
	for _, dir := range fileDirs(t) {
		t.Run(dir, func(t *testing.T) {
			path := filepath.Join(dir, "dev")
			d, err := OpenFile(path, FileConfig{SizeBytes: 1 << 20})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if d.SizeBytes() != 1<<20 || d.MinBlockBytes() != 512 || d.PreferredBlockBytes() != 4096 {
				t.Fatalf("geometry %d/%d/%d", d.SizeBytes(), d.MinBlockBytes(), d.PreferredBlockBytes())
			}
			data := bytes.Repeat([]byte{0xab}, 64<<10)
			if err := d.WriteAt(ctx, data, 4096+512, true); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(data))
			if err := d.ReadAt(ctx, got, 4096+512); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read back: %v, equal %v", err, bytes.Equal(got, data))
			}
			if err := d.Trim(ctx, 8192, 8192, false); err != nil {
				t.Fatal(err)
			}
			if err := d.WriteZeroes(ctx, 32768, 1024, true); err != nil {
				t.Fatal(err)
			}
			if err := d.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if err := d.ReadAt(ctx, got, 4096+512); err != nil {
				t.Fatal(err)
			}
			want := bytes.Clone(data)
			clear(want[8192-4608 : 16384-4608])
			clear(want[32768-4608 : 32768+1024-4608])
			if !bytes.Equal(got, want) {
				t.Fatal("trimmed and zeroed ranges do not read as zeros around intact data")
			}
		})
	}
}

func TestFileRejectsBadRequests(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "dev")
	d, err := OpenFile(path, FileConfig{SizeBytes: 8192})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 512)
	for name, err := range map[string]error{
		"misaligned read": d.ReadAt(ctx, buf, 100),
		"short length":    d.ReadAt(ctx, buf[:100], 0),
		"read past end":   d.ReadAt(ctx, buf, 8192),
		"write past end":  d.WriteAt(ctx, make([]byte, 1024), 7680, false),
		"trim overflow":   d.Trim(ctx, 512, ^uint64(0), false),
		"zeroes past end": d.WriteZeroes(ctx, 8192, 512, false),
	} {
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", name, err)
		}
	}
	d.Close()

	ro, err := OpenFile(path, FileConfig{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if ro.SizeBytes() != 8192 {
		t.Fatalf("reopened size %d", ro.SizeBytes())
	}
	if err := ro.WriteAt(ctx, buf, 0, false); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("write to read-only file: %v", err)
	}
	if err := ro.ReadAt(ctx, buf, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenFile(filepath.Join(t.TempDir(), "odd"), FileConfig{SizeBytes: 1000}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("odd size: %v", err)
	}
}
