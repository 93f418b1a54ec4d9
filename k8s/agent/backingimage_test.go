package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/transports/backingimage"
)

// TestFetchImage copies an image file into a disk's store over real HTTP
// and from a local path: the copy verifies, records the file's SHA-256,
// and progress climbs to 100; a file that does not match spec.checksum,
// a 404 and a missing path fail with the reason and leave nothing
// behind; a copy of an older image of the name (another checksum) does
// not count and is replaced.
func TestFetchImage(t *testing.T) {
	content := make([]byte, 1<<20+123)
	rng := rand.New(rand.NewPCG(1, 1))
	for i := range content {
		content[i] = byte(rng.Uint32())
	}
	sum := sha256.Sum256(content)
	hexSum := hex.EncodeToString(sum[:])
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/img.raw" {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, "img.raw", time.Time{}, bytes.NewReader(content))
	}))
	defer srv.Close()
	ctx := context.Background()
	image := func(spec v1alpha1.BackingImageSpec) *v1alpha1.BackingImage {
		img := &v1alpha1.BackingImage{Spec: spec}
		img.Name = "img"
		return img
	}
	leftovers := func(dir string) []string {
		ents, _ := os.ReadDir(dir)
		var out []string
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".") {
				out = append(out, e.Name())
			}
		}
		return out
	}

	store := backingimage.Store{Dir: filepath.Join(t.TempDir(), "backing-images")}
	var reports []int32
	have, got, err := fetchImage(ctx, image(v1alpha1.BackingImageSpec{URL: srv.URL + "/img.raw", Checksum: hexSum}), store,
		func(p int32) { reports = append(reports, p) })
	if err != nil {
		t.Fatal(err)
	}
	if got != hexSum || have.SizeBytes != 1<<20+4096 {
		t.Fatalf("copy: sha256 %s size %d, want %s and %d", got, have.SizeBytes, hexSum, 1<<20+4096)
	}
	if err := store.Verify(ctx, "img", nil); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(reports); i++ {
		if reports[i] < reports[i-1] {
			t.Fatalf("progress went back: %v", reports)
		}
	}
	if len(reports) == 0 || reports[len(reports)-1] != 100 {
		t.Fatalf("progress did not reach 100: %v", reports)
	}
	if local, s := localCopy(store, image(v1alpha1.BackingImageSpec{Checksum: hexSum})); local == nil || s != hexSum {
		t.Fatalf("localCopy: %v %q", local, s)
	}
	// An image of the same name with another checksum: the copy is not
	// its copy.
	other := strings.Repeat("0", 64)
	if local, _ := localCopy(store, image(v1alpha1.BackingImageSpec{Checksum: other})); local != nil {
		t.Fatal("a copy of another checksum counted")
	}
	_, _, err = fetchImage(ctx, image(v1alpha1.BackingImageSpec{URL: srv.URL + "/img.raw", Checksum: other}), store, func(int32) {})
	if err == nil || !strings.Contains(err.Error(), "has SHA-256 "+hexSum+", spec.checksum says "+other) {
		t.Fatalf("wrong checksum: %v", err)
	}
	if _, err := store.Get("img"); err == nil {
		t.Error("the copy of the other checksum is still there")
	}
	if l := leftovers(store.Dir); len(l) != 0 {
		t.Errorf("left behind: %v", l)
	}

	_, _, err = fetchImage(ctx, image(v1alpha1.BackingImageSpec{URL: srv.URL + "/missing.raw"}), store, func(int32) {})
	if err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("404: %v", err)
	}

	path := filepath.Join(t.TempDir(), "local.raw")
	if err := os.WriteFile(path, content, 0o644); err != nil {
		t.Fatal(err)
	}
	store2 := backingimage.Store{Dir: filepath.Join(t.TempDir(), "backing-images")}
	if _, got, err := fetchImage(ctx, image(v1alpha1.BackingImageSpec{SourcePath: path}), store2, func(int32) {}); err != nil || got != hexSum {
		t.Fatalf("from a local path: %v %s", err, got)
	}
	_, _, err = fetchImage(ctx, image(v1alpha1.BackingImageSpec{SourcePath: path + ".gone"}), backingimage.Store{Dir: t.TempDir()}, func(int32) {})
	if err == nil || !strings.Contains(err.Error(), "spec.sourcePath on this node") {
		t.Fatalf("missing path: %v", err)
	}
}
