package backuprun

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover-io/drover/core/backup"
	"github.com/drover-io/drover/transports/objstore"
)

const chunkBytes = 64 << 10 // small chunks: many of them in a small volume

func newDirRepo(t *testing.T) (*Repo, string) {
	return newDirRepoAt(t, t.TempDir())
}

func newDirRepoAt(t testing.TB, dir string) (*Repo, string) {
	s, err := objstore.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return NewRepo(s), dir
}

func mustCreate(t *testing.T, r *Repo, v *fakeVolume, opt CreateOptions) (*backup.Manifest, Stats) {
	t.Helper()
	if opt.ChunkBytes == 0 {
		opt.ChunkBytes = chunkBytes
	}
	m, st, err := r.Create(context.Background(), v, opt)
	if err != nil {
		t.Fatalf("backup of %s: %v", v.name, err)
	}
	if _, err := DropOldSnapshots(context.Background(), v, m); err != nil {
		t.Fatalf("drop old snapshots of %s: %v", v.name, err)
	}
	return m, st
}

func restoreContent(t *testing.T, r *Repo, m *backup.Manifest) []byte {
	t.Helper()
	target := newFake("restored", 4096)
	if err := r.Restore(context.Background(), m, target, RestoreOptions{}); err != nil {
		t.Fatalf("restore %s: %v", m.ID, err)
	}
	return target.content()
}

func countChunks(t *testing.T, dir string) int {
	n := 0
	filepath.Walk(filepath.Join(dir, "chunks"), func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n++
		}
		return nil
	})
	return n
}

// TestFullIncrementalRestore: a full backup, 5% changed (and the volume
// grown), an incremental one that reads and stores only changed chunks;
// each restores to exactly the content it was taken from.
func TestFullIncrementalRestore(t *testing.T) {
	r, dir := newDirRepo(t)
	v := newFake("vol", 8<<20) // 128 chunks
	for b := uint64(0); b < 2048; b += 64 {
		v.write(b, 48, byte(b))
	}
	want1 := v.content()
	m1, st1 := mustCreate(t, r, v, CreateOptions{})
	if st1.Parent != "" || st1.ChunksRead != 128 || st1.ChunksZero != 32 || st1.ChunksStored != 96 {
		t.Fatalf("full backup stats %+v", st1)
	}
	readFull := v.reads
	// 5% of the blocks change, in 6 places; the volume grows by 1 MiB.
	for _, b := range []uint64{5, 300, 700, 1100, 1500, 1900} {
		v.write(b, 17, 0xEE)
	}
	if err := v.Grow(context.Background(), 9<<20); err != nil {
		t.Fatal(err)
	}
	v.write(2200, 3, 7)
	want2 := v.content()
	m2, st2 := mustCreate(t, r, v, CreateOptions{})
	if st2.Parent != m1.ID || m2.Parent != m1.ID {
		t.Fatalf("second backup not incremental: %+v", st2)
	}
	if got := v.reads - readFull; got > 20*chunkBytes {
		t.Errorf("incremental read %d bytes, at most %d expected", got, 20*chunkBytes)
	}
	if st2.ChunksStored > 13 || st2.ChunksStored == 0 { // 6 writes over 2 chunks each, 1 in grown space
		t.Errorf("incremental stored %d chunks: %+v", st2.ChunksStored, st2)
	}
	t.Logf("full: %+v; incremental: %+v", st1, st2)
	if !bytes.Equal(restoreContent(t, r, m1), want1) {
		t.Fatal("restore of the full backup differs")
	}
	if got := restoreContent(t, r, m2); !bytes.Equal(got, want2) {
		t.Fatal("restore of the incremental backup differs")
	}
	if _, _, chain, _ := v.Info(context.Background()); len(chain) != 1 || chain[0] != m2.Snapshot {
		t.Fatalf("volume snapshots after two backups: %v, want only %s", chain, m2.Snapshot)
	}
	if err := r.Verify(context.Background(), m2, 4, nil); err != nil {
		t.Fatal(err)
	}
	// Over a volume holding other data: All writes the zero chunks too.
	dirty := newFake("dirty", 9<<20)
	dirty.write(0, 2304, 0x55)
	if err := r.Restore(context.Background(), m1, dirty, RestoreOptions{All: true}); err != nil {
		t.Fatal(err)
	}
	if got := dirty.content(); !bytes.Equal(got[:len(want1)], want1) {
		t.Fatal("restore with All over other data differs")
	}
	if n := countChunks(t, dir); n != 96+st2.ChunksStored {
		t.Errorf("%d chunk objects, want %d", n, 96+st2.ChunksStored)
	}
}

// TestDedupeAcrossVolumes: two volumes with the same data store it once;
// zero chunks are not stored.
func TestDedupeAcrossVolumes(t *testing.T) {
	r, dir := newDirRepo(t)
	a, b := newFake("a", 4<<20), newFake("b", 4<<20)
	a.write(0, 512, 1)
	b.write(0, 512, 1)  // the same 2 MiB
	b.write(600, 16, 9) // in chunks 37 and 38
	_, sa := mustCreate(t, r, a, CreateOptions{})
	_, sb := mustCreate(t, r, b, CreateOptions{})
	if sa.ChunksStored != 32 || sa.ChunksZero != 32 {
		t.Fatalf("volume a: %+v", sa)
	}
	if sb.ChunksDeduped != 32 || sb.ChunksStored != 2 || sb.ChunksZero != 30 {
		t.Fatalf("volume b: %+v, want 32 deduplicated and 2 stored", sb)
	}
	if n := countChunks(t, dir); n != 34 {
		t.Fatalf("%d chunk objects, want 34", n)
	}
}

// TestResumeAfterCancel: a backup cancelled midway leaves no manifest; the
// rerun uploads only what is missing.
func TestResumeAfterCancel(t *testing.T) {
	r, _ := newDirRepo(t)
	v := newFake("vol", 4<<20)
	v.write(0, 1024, 3)
	ctx, cancel := context.WithCancel(context.Background())
	_, _, err := r.Create(ctx, v, CreateOptions{ChunkBytes: chunkBytes, Parallel: 2, AfterChunks: func(n int) {
		if n == 20 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled backup: %v", err)
	}
	if refs, _ := r.List(context.Background(), "vol"); len(refs) != 0 {
		t.Fatalf("a cancelled backup left manifests %v", refs)
	}
	m, st := mustCreate(t, r, v, CreateOptions{})
	if st.ChunksDeduped < 20 || st.ChunksStored > 44 {
		t.Fatalf("rerun: %+v, want the first 20 chunks reused", st)
	}
	if !bytes.Equal(restoreContent(t, r, m), v.content()) {
		t.Fatal("restore after resume differs")
	}
	if _, _, chain, _ := v.Info(context.Background()); len(chain) != 1 {
		t.Fatalf("snapshots left: %v", chain)
	}
}

// TestDeleteDuringBackup: a backup reusing chunks of one being deleted
// keeps them: the delete removes the manifest at once and defers the
// sweep; a later sweep removes only what nothing references.
func TestDeleteDuringBackup(t *testing.T) {
	r, dir := newDirRepo(t)
	v := newFake("vol", 4<<20)
	v.write(0, 1024, 5)
	m1, _ := mustCreate(t, r, v, CreateOptions{})
	v.write(0, 16, 6)
	m2, _ := mustCreate(t, r, v, CreateOptions{})
	v.write(16, 16, 7)
	inBackup, release := make(chan struct{}), make(chan struct{})
	done := make(chan error)
	var m3 *backup.Manifest
	go func() {
		var err error
		m3, _, err = r.Create(context.Background(), v, CreateOptions{AfterChunks: func(n int) {
			if n == 1 {
				close(inBackup)
				<-release
			}
		}})
		done <- err
	}()
	<-inBackup
	st, err := r.Delete(context.Background(), "vol", m1.ID)
	if err != nil || !errors.Is(st.Deferred, backup.ErrBackupRunning) || st.Deleted != 0 {
		t.Fatalf("delete during a backup: %+v %v, want a deferred sweep", st, err)
	}
	st, err = r.Delete(context.Background(), "vol", m2.ID)
	if err != nil || st.Deleted != 0 {
		t.Fatalf("second delete: %+v %v", st, err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	st, err = r.Sweep(context.Background())
	if err != nil || st.Deferred != nil || st.Deleted != 2 {
		t.Fatalf("sweep after the backup: %+v %v, want 2 chunks of the deleted backups removed", st, err)
	}
	if err := r.Verify(context.Background(), m3, 4, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(restoreContent(t, r, m3), v.content()) {
		t.Fatal("restore of the surviving backup differs")
	}
	if n := countChunks(t, dir); n != 64 {
		t.Fatalf("%d chunks left, want 64", n)
	}
}

// TestCorruptChunk: a damaged chunk is found by Verify (naming it) and
// fails a restore; a missing one too.
func TestCorruptChunk(t *testing.T) {
	r, dir := newDirRepo(t)
	v := newFake("vol", 1<<20)
	v.write(0, 256, 1)
	m, _ := mustCreate(t, r, v, CreateOptions{})
	h := m.Chunks[3].Hash
	p := filepath.Join(dir, filepath.FromSlash(chunkKey(h)))
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40
	os.WriteFile(p, b, 0o644)
	err = r.Verify(context.Background(), m, 2, nil)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), h.String()) || !strings.Contains(err.Error(), "1 of 16 chunks bad") {
		t.Fatalf("verify: %v", err)
	}
	if err := r.Restore(context.Background(), m, newFake("x", 4096), RestoreOptions{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("restore: %v", err)
	}
	os.Remove(p)
	if err := r.Verify(context.Background(), m, 2, nil); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("verify with a missing chunk: %v", err)
	}
}

// TestDRFollowsBackups: a DR volume applies three backups incrementally
// (writing only what changed, zeroing what was trimmed) and activates
// with the latest data.
func TestDRFollowsBackups(t *testing.T) {
	r, _ := newDirRepo(t)
	ctx := context.Background()
	v := newFake("vol", 2<<20)
	standby := newFake("standby", 2<<20)
	if err := r.DRCreate(ctx, DR{Name: "dr1", Volume: "vol", Standby: "x"}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		v.write(uint64(i*40), 40, byte(10*i+1))
		if i == 2 {
			v.WriteZeroes(ctx, 0, 40*4096)
		}
		m, _ := mustCreate(t, r, v, CreateOptions{})
		id, err := r.DRSync(ctx, "dr1", standby, RestoreOptions{})
		if err != nil || id != m.ID {
			t.Fatalf("sync %d: %s %v", i, id, err)
		}
		if !bytes.Equal(standby.content(), v.content()) {
			t.Fatalf("standby differs after backup %d", i)
		}
	}
	v.write(500, 1, 99)
	last, _ := mustCreate(t, r, v, CreateOptions{})
	id, err := r.DRActivate(ctx, "dr1", standby, RestoreOptions{})
	if err != nil || id != last.ID || !bytes.Equal(standby.content(), v.content()) {
		t.Fatalf("activate: %s %v", id, err)
	}
	if _, err := r.DRSync(ctx, "dr1", standby, RestoreOptions{}); !errors.Is(err, ErrActivated) {
		t.Fatalf("sync after activate: %v", err)
	}
}

// TestMarkers: a live sweep marker makes a backup wait (ErrBusy); a stale
// one (its process died) does not; two backups of one volume exclude
// each other.
func TestMarkers(t *testing.T) {
	r, _ := newDirRepo(t)
	ctx := context.Background()
	v := newFake("vol", 1<<20)
	v.write(0, 8, 1)
	var clock atomic.Int64 // the lease refresher reads it too
	clock.Store(time.Now().UnixNano())
	r.Now = func() time.Time { return time.Unix(0, clock.Load()) }
	if err := r.putMarker(ctx, marker{Kind: backup.MarkerSweep, ID: "dead"}); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, _, err := r.Create(short, v, CreateOptions{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("backup beside a live sweep: %v, want it to wait", err)
	}
	// It waits the sweep out.
	go func() {
		time.Sleep(200 * time.Millisecond)
		r.Store.Delete(ctx, "locks/sweep-dead")
	}()
	if _, _, err := r.Create(ctx, v, CreateOptions{}); err != nil {
		t.Fatalf("backup after the sweep ended: %v", err)
	}
	if err := r.putMarker(ctx, marker{Kind: backup.MarkerSweep, ID: "dead"}); err != nil {
		t.Fatal(err)
	}
	clock.Add(int64(DefaultStaleAfter))
	if _, _, err := r.Create(ctx, v, CreateOptions{}); err != nil {
		t.Fatalf("backup beside a stale sweep marker: %v", err)
	}
	if err := r.putMarker(ctx, marker{Kind: backup.MarkerBackup, ID: "other", Volume: "vol"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Create(ctx, v, CreateOptions{}); !errors.Is(err, ErrBusy) {
		t.Fatalf("second backup of one volume: %v", err)
	}
	// The same marker from a process of this host that is gone (killed)
	// blocks nothing.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	b, _ := json.Marshal(marker{Kind: backup.MarkerBackup, ID: "other", Volume: "vol", RefreshedUnix: r.Now().Unix(), Host: host, PID: gone.Process.Pid})
	if err := r.Store.Put(ctx, "locks/backup-other", b); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Create(ctx, v, CreateOptions{}); err != nil {
		t.Fatalf("backup beside a killed backup's marker: %v", err)
	}
}
