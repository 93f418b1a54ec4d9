package backuprun

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/drover-io/drover/core/backup"
)

// hostileChunks are chunk bodies a hostile bucket could serve for a
// 64 KiB chunk: none may decompress past what a manifest can describe.
func hostileChunks(t testing.TB) map[string][]byte {
	t.Helper()
	want := bytes.Repeat([]byte{7}, chunkBytes)
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	good := enc.EncodeAll(want, nil)
	big := enc.EncodeAll(make([]byte, 3*backup.MaxChunkBytes), nil)
	// A streaming frame states no content size.
	var stream bytes.Buffer
	w, _ := zstd.NewWriter(&stream)
	w.Write(make([]byte, 8<<20))
	w.Close()
	return map[string][]byte{
		"bomb claiming its size":       big,
		"frame without a content size": stream.Bytes(),
		"good frame then a bomb":       append(append([]byte(nil), good...), big...),
		"not zstd":                     []byte("hello"),
		"empty":                        {},
	}
}

// TestHostileChunks: chunks that would decompress into more than their
// manifest's chunk, or that are not one sized frame, are refused as
// corrupt, without decompressing past backup.MaxChunkBytes.
func TestHostileChunks(t *testing.T) {
	r, _ := newDirRepo(t)
	ctx := context.Background()
	want := bytes.Repeat([]byte{7}, chunkBytes)
	h := backup.HashOf(want)
	for name, b := range hostileChunks(t) {
		if err := r.Store.Put(ctx, chunkKey(h), b); err != nil {
			t.Fatal(err)
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		data, err := r.getChunk(ctx, h, chunkBytes)
		runtime.ReadMemStats(&after)
		if !errors.Is(err, ErrCorrupt) || data != nil {
			t.Errorf("%s: got %d bytes, %v; want ErrCorrupt", name, len(data), err)
		}
		// Reading the object costs its size; decompressing it may cost
		// at most one chunk of the largest size a manifest may describe.
		if got, limit := after.TotalAlloc-before.TotalAlloc, uint64(len(b))+2*backup.MaxChunkBytes; got > limit {
			t.Errorf("%s: allocated %d bytes, more than %d", name, got, limit)
		}
	}
	if _, err := r.getChunk(ctx, h, backup.MaxChunkBytes+1); !errors.Is(err, ErrCorrupt) {
		t.Errorf("a chunk longer than any manifest describes: %v", err)
	}
	enc, _ := zstd.NewWriter(nil)
	r.Store.Put(ctx, chunkKey(h), enc.EncodeAll(want, nil))
	if data, err := r.getChunk(ctx, h, chunkBytes); err != nil || !bytes.Equal(data, want) {
		t.Fatalf("a good chunk: %d bytes, %v", len(data), err)
	}
}

// FuzzGetChunk: whatever bytes a bucket serves as a chunk, getChunk never
// panics, and returns either exactly the chunk the hash names or
// ErrCorrupt.
func FuzzGetChunk(f *testing.F) {
	for _, b := range hostileChunks(f) {
		if len(b) < 1<<20 {
			f.Add(b)
		}
	}
	enc, _ := zstd.NewWriter(nil)
	f.Add(enc.EncodeAll(bytes.Repeat([]byte{7}, chunkBytes), nil))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		r, _ := newDirRepoAt(t, dir)
		ctx := context.Background()
		want := bytes.Repeat([]byte{7}, chunkBytes)
		h := backup.HashOf(want)
		if err := r.Store.Put(ctx, chunkKey(h), b); err != nil {
			t.Fatal(err)
		}
		data, err := r.getChunk(ctx, h, chunkBytes)
		switch {
		case err == nil && !bytes.Equal(data, want):
			t.Fatalf("accepted %d bytes that are not the chunk", len(data))
		case err != nil && !errors.Is(err, ErrCorrupt):
			t.Fatalf("error %v is not ErrCorrupt", err)
		}
	})
}
