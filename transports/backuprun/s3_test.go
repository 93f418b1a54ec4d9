package backuprun

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/drover-io/drover/transports/objstore"
	"github.com/drover-io/drover/transports/objstore/s3test"
)

// TestS3Target: full and incremental backups, restore, verify, delete and
// sweep, and a corrupted chunk, against a real S3 server (versitygw).
func TestS3Target(t *testing.T) {
	srv := s3test.Start(t, "drover")
	ctx := context.Background()
	s, err := objstore.Open(ctx, srv.URL("drover", "team"), objstore.Credentials{AccessKey: srv.AccessKey, SecretKey: srv.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	r := NewRepo(s)
	v := newFake("vol", 4<<20)
	v.write(0, 700, 1)
	m1, st1 := mustCreate(t, r, v, CreateOptions{Parallel: 8})
	want1 := v.content()
	v.write(100, 10, 2)
	m2, st2 := mustCreate(t, r, v, CreateOptions{Parallel: 8})
	if st2.Parent != m1.ID || st2.ChunksRead != 1 || st1.ChunksStored != 44 {
		t.Fatalf("stats: full %+v, incremental %+v", st1, st2)
	}
	if !bytes.Equal(restoreContent(t, r, m1), want1) || !bytes.Equal(restoreContent(t, r, m2), v.content()) {
		t.Fatal("restore from S3 differs")
	}
	refs, err := r.List(ctx, "")
	if err != nil || len(refs) != 2 {
		t.Fatalf("list: %v %v", refs, err)
	}
	st, err := r.Delete(ctx, "vol", m1.ID)
	if err != nil || st.Deleted != 1 {
		t.Fatalf("delete: %+v %v, want the chunk only the first backup had removed", st, err)
	}
	if err := r.Verify(ctx, m2, 4, nil); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(srv.Root, "drover", "team", filepath.FromSlash(chunkKey(m2.Chunks[5].Hash)))
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("chunk file in the posix backend: %v", err)
	}
	b[10] ^= 1
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.Verify(ctx, m2, 4, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("verify of a damaged chunk on S3: %v", err)
	}
}
