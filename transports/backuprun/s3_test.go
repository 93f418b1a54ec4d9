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

// TestS3ServerDiesMidBackup: the server going away mid-upload fails the
// backup with an error and no manifest; once it is back, the rerun
// uploads only the chunks still missing and restores correctly.
func TestS3ServerDiesMidBackup(t *testing.T) {
	srv := s3test.Start(t, "drover")
	ctx := context.Background()
	s, err := objstore.OpenS3(ctx, objstore.S3Config{Endpoint: srv.Endpoint, Insecure: true, Bucket: "drover",
		Creds: objstore.Credentials{AccessKey: srv.AccessKey, SecretKey: srv.SecretKey}, MaxRetries: 1})
	if err != nil {
		t.Fatal(err)
	}
	r := NewRepo(s)
	v := newFake("vol", 4<<20)
	v.write(0, 1024, 3)
	_, _, err = r.Create(ctx, v, CreateOptions{ChunkBytes: chunkBytes, Parallel: 1, AfterChunks: func(n int) {
		if n == 10 {
			srv.Stop()
		}
	}})
	if err == nil {
		t.Fatal("backup succeeded with the server gone")
	}
	t.Logf("backup with the server gone: %v", err)
	srv.Restart(t)
	if refs, err := r.List(ctx, ""); err != nil || len(refs) != 0 {
		t.Fatalf("after the failed backup: manifests %v, %v", refs, err)
	}
	// The failed backup could not remove its marker. A rerun is a new
	// process (drover backup create), which takes a marker of a pid that
	// is gone for dead; in this one process, remove it as its exit would
	// let the next run ignore it.
	locks, err := s.List(ctx, "locks/")
	if err != nil || len(locks) != 1 {
		t.Fatalf("markers left: %v %v", locks, err)
	}
	s.Delete(ctx, locks[0])
	m, st := mustCreate(t, r, v, CreateOptions{})
	if st.ChunksDeduped < 10 || st.ChunksStored+st.ChunksDeduped != 64 {
		t.Fatalf("rerun: %+v, want the first 10 chunks reused", st)
	}
	if !bytes.Equal(restoreContent(t, r, m), v.content()) {
		t.Fatal("restore differs")
	}
}
