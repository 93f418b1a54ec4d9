package objstore_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/drover-io/drover/transports/objstore"
	"github.com/drover-io/drover/transports/objstore/s3test"
)

// conformance runs the Store contract against one target.
func conformance(t *testing.T, s objstore.Store) {
	ctx := context.Background()
	if _, err := s.Get(ctx, "x/missing"); !errors.Is(err, objstore.ErrNotExist) {
		t.Fatalf("get missing: %v, want ErrNotExist", err)
	}
	for i := range 3 {
		if err := s.Put(ctx, fmt.Sprintf("a/%d", i), []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Put(ctx, "b/c/d", []byte("deep")); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "a/1", []byte("replaced")); err != nil {
		t.Fatal(err)
	}
	if b, err := s.Get(ctx, "a/1"); err != nil || string(b) != "replaced" {
		t.Fatalf("get a/1: %q %v", b, err)
	}
	keys, err := s.List(ctx, "a/")
	if err != nil || !slices.Equal(keys, []string{"a/0", "a/1", "a/2"}) {
		t.Fatalf("list a/: %v %v", keys, err)
	}
	keys, err = s.List(ctx, "")
	if err != nil || !slices.Equal(keys, []string{"a/0", "a/1", "a/2", "b/c/d"}) {
		t.Fatalf("list all: %v %v", keys, err)
	}
	if keys, err := s.List(ctx, "zzz/"); err != nil || len(keys) != 0 {
		t.Fatalf("list of nothing: %v %v", keys, err)
	}
	if err := s.Delete(ctx, "a/0"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "a/0"); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := s.Get(ctx, "a/0"); !errors.Is(err, objstore.ErrNotExist) {
		t.Fatalf("get deleted: %v", err)
	}
	big := make([]byte, 3<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	if err := s.Put(ctx, "big", big); err != nil {
		t.Fatal(err)
	}
	if b, err := s.Get(ctx, "big"); err != nil || !slices.Equal(b, big) {
		t.Fatalf("big object: %d bytes, %v", len(b), err)
	}
}

func TestDir(t *testing.T) {
	d, err := objstore.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	conformance(t, d)
	if _, err := objstore.OpenDir(filepath.Join(t.TempDir(), "nope")); !errors.Is(err, objstore.ErrNoBucket) {
		t.Fatalf("missing dir: %v", err)
	}
	if err := d.Put(context.Background(), "../escape", nil); err == nil {
		t.Fatal("a key with .. was accepted")
	}
}

func TestS3(t *testing.T) {
	srv := s3test.Start(t, "drover-backups")
	ctx := context.Background()
	creds := objstore.Credentials{AccessKey: srv.AccessKey, SecretKey: srv.SecretKey}
	s, err := objstore.Open(ctx, srv.URL("drover-backups", "pre/fix"), creds)
	if err != nil {
		t.Fatal(err)
	}
	conformance(t, s)
	if _, err := os.Stat(filepath.Join(srv.Root, "drover-backups", "pre", "fix", "b", "c", "d")); err != nil {
		t.Fatalf("object not under the prefix in the bucket: %v", err)
	}
	if _, err := objstore.Open(ctx, srv.URL("no-such-bucket", ""), creds); !errors.Is(err, objstore.ErrNoBucket) {
		t.Fatalf("missing bucket: %v, want ErrNoBucket", err)
	}
	bad := objstore.Credentials{AccessKey: srv.AccessKey, SecretKey: "wrong-secret"}
	if _, err := objstore.Open(ctx, srv.URL("drover-backups", ""), bad); !errors.Is(err, objstore.ErrAccessDenied) {
		t.Fatalf("bad secret: %v, want ErrAccessDenied", err)
	}
	bad = objstore.Credentials{AccessKey: "nobody", SecretKey: srv.SecretKey}
	if _, err := objstore.Open(ctx, srv.URL("drover-backups", ""), bad); !errors.Is(err, objstore.ErrAccessDenied) {
		t.Fatalf("bad access key: %v, want ErrAccessDenied", err)
	}
}

func TestCredentialsFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "creds")
	os.WriteFile(p, []byte("# test\naccess_key = AK\nsecret_key=SK\n"), 0o600)
	c, err := objstore.CredentialsFromEnv(p)
	if err != nil || c.AccessKey != "AK" || c.SecretKey != "SK" {
		t.Fatalf("%+v %v", c, err)
	}
	os.WriteFile(p, []byte("token = x\n"), 0o600)
	if _, err := objstore.CredentialsFromEnv(p); err == nil {
		t.Fatal("unknown key accepted")
	}
}
