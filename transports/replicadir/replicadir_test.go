package replicadir

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/filestore"
)

// TestCreateReopen creates a replica in a missing directory, writes a
// block, closes it and opens it again without a size: the block is there
// and the second open reports that it created nothing.
func TestCreateReopen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "r1")
	rd, err := Open(Config{Dir: dir, ID: "r1", CreateSizeBytes: 1 << 20, CheckSize: true})
	if err != nil {
		t.Fatal(err)
	}
	if !rd.Created {
		t.Errorf("first open: Created = false")
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("replica directory: %v, %v; want mode 0700", fi, err)
	}
	data := make([]byte, proto.BlockSize)
	copy(data, "replicadir")
	steps := []proto.Request{
		{ID: 1, Epoch: 1, Op: proto.OpOpen},
		{ID: 2, Epoch: 1, Op: proto.OpWrite, BlockIndex: 3, BlockCount: 1, Data: data},
		{ID: 3, Epoch: 1, Op: proto.OpFlush},
	}
	for _, req := range steps {
		if rep := rd.Runner.Do(req); rep.Status != proto.StatusOK {
			t.Fatalf("%v: %v %s", req.Op, rep.Status, rep.Err)
		}
	}
	if err := rd.Close(); err != nil {
		t.Fatal(err)
	}

	rd, err = Open(Config{Dir: dir, ID: "r1"})
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	if rd.Created {
		t.Errorf("reopen: Created = true")
	}
	if got := rd.Runner.Info().SizeBytes; got != 1<<20 {
		t.Errorf("reopened size %d, want %d", got, 1<<20)
	}
	if rep := rd.Runner.Do(proto.Request{ID: 4, Epoch: 2, Op: proto.OpOpen}); rep.Status != proto.StatusOK {
		t.Fatalf("open: %v %s", rep.Status, rep.Err)
	}
	rep := rd.Runner.Do(proto.Request{ID: 5, Epoch: 2, Op: proto.OpRead, BlockIndex: 3, BlockCount: 1})
	if rep.Status != proto.StatusOK || string(rep.Data[:10]) != "replicadir" {
		t.Fatalf("read back: %v %s %q", rep.Status, rep.Err, rep.Data[:10])
	}
}

// TestRefusals: an empty directory without a size to create is an error,
// and a size the file system cannot take is a *filestore.SizeError that
// leaves no directory behind.
func TestRefusals(t *testing.T) {
	if _, err := Open(Config{Dir: t.TempDir(), ID: "r1"}); err == nil {
		t.Errorf("opening an empty directory without CreateSizeBytes succeeded")
	}
	if _, err := Open(Config{ID: "r1", CreateSizeBytes: 1 << 20}); err == nil {
		t.Errorf("opening without a directory succeeded")
	}
	dir := filepath.Join(t.TempDir(), "big")
	_, err := Open(Config{Dir: dir, ID: "r1", CreateSizeBytes: 1 << 60, CheckSize: true})
	var se *filestore.SizeError
	if !errors.As(err, &se) {
		t.Fatalf("1 EiB replica: err %v, want a *filestore.SizeError", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused replica left %s behind (%v)", dir, err)
	}
}
