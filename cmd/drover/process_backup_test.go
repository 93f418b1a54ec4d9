package main

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drover-io/drover/frontends/nbd"
	"github.com/drover-io/drover/transports/control"
	"github.com/drover-io/drover/transports/control/controlpb"
	"github.com/drover-io/drover/transports/objstore/s3test"
	"github.com/drover-io/drover/transports/testenv"
)

// devVolume is a `drover dev` process serving one named volume.
type devVolume struct {
	t    *testing.T
	p    *proc
	ctl  string
	size uint64
	c    controlpb.ControlClient
}

func startDevVolume(t *testing.T, volume string, sizeBytes uint64) *devVolume {
	t.Helper()
	ctl := freeAddr(t)
	p := start(t, "dev "+volume, nil, "dev", "--data-dir", filepath.Join(t.TempDir(), volume), "--volume", volume,
		"--size", strconv.FormatUint(sizeBytes, 10), "--control", ctl, "--frontend", "none")
	c, conn, err := control.Dial(ctl)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	v := &devVolume{t: t, p: p, ctl: ctl, size: sizeBytes, c: c}
	eventually(t, volume+" serving", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		info, err := c.VolumeInfo(ctx, &controlpb.VolumeInfoRequest{})
		if err != nil {
			return false, err.Error()
		}
		return info.GetPhase() == "serving", info.GetPhase()
	})
	return v
}

// write writes n bytes of seeded random data at off and flushes.
func (v *devVolume) write(off, n uint64, seed uint64) []byte {
	v.t.Helper()
	rng := rand.New(rand.NewPCG(seed, 99))
	data := make([]byte, n)
	for i := 0; i < len(data); i += 8 {
		x := rng.Uint64()
		for j := 0; j < 8 && i+j < len(data); j++ {
			data[i+j] = byte(x >> (8 * j))
		}
	}
	ctx := context.Background()
	for at := uint64(0); at < n; at += 4 << 20 {
		end := min(n, at+4<<20)
		if _, err := v.c.Write(ctx, &controlpb.WriteRequest{Offset: off + at, Data: data[at:end]}); err != nil {
			v.t.Fatalf("write at %d: %v", off+at, err)
		}
	}
	if _, err := v.c.Flush(ctx, &controlpb.Empty{}); err != nil {
		v.t.Fatal(err)
	}
	return data
}

// sha256 reads the first n bytes with `drover volume read --sha256`.
func (v *devVolume) sha256(n uint64) string {
	v.t.Helper()
	out := runDrover(v.t, "volume", "read", "--control", v.ctl, "--offset", "0", "--length", strconv.FormatUint(n, 10), "--sha256")
	return strings.TrimSpace(out)
}

// droverFails runs drover expecting it to fail, and returns its output.
func droverFails(t *testing.T, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(droverBin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("drover %s succeeded; want a failure:\n%s", strings.Join(args, " "), out)
	}
	return string(out)
}

// droverEnv runs drover with extra environment and returns its output.
func droverEnv(t *testing.T, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(droverBin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("drover %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

var backupIDRe = regexp.MustCompile(`backup (\S+)/(\S+) \((full|incremental)`)

// backupID returns VOLUME/ID from `backup create` output.
func backupID(t *testing.T, out string) string {
	t.Helper()
	m := backupIDRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no backup id in:\n%s", out)
	}
	return m[1] + "/" + m[2]
}

func countFiles(t *testing.T, dir string) int {
	n := 0
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && !strings.HasPrefix(fi.Name(), ".") {
			n++
		}
		return nil
	})
	return n
}

// TestProcessBackupS3 runs against a real S3 server (versitygw, its own
// process) and `drover dev` processes: a full and an incremental backup
// each restore into a new volume with the same SHA-256; a second volume
// holding the same data stores no chunk twice; a chunk damaged in the
// server's storage is caught by verify and by restore; bad credentials and
// a missing bucket are clear errors.
func TestProcessBackupS3(t *testing.T) {
	srv := s3test.Start(t, "drover")
	env := []string{"AWS_ACCESS_KEY_ID=" + srv.AccessKey, "AWS_SECRET_ACCESS_KEY=" + srv.SecretKey}
	target := srv.URL("drover", "prod")
	const size = 64 << 20
	a := startDevVolume(t, "alpha", size)
	a.write(0, 24<<20, 1)
	full := droverEnv(t, env, "backup", "create", "--control", a.ctl, "--target", target, "--label", "app=db")
	first := backupID(t, full)
	sum1 := a.sha256(size)
	a.write(8<<20, 3<<20, 2) // about 5% of the volume
	incr := droverEnv(t, env, "backup", "create", "--control", a.ctl, "--target", target)
	second := backupID(t, incr)
	if !strings.Contains(incr, "incremental to") || !strings.Contains(incr, "read 2 ") {
		t.Fatalf("second backup is not incremental (2 chunks read):\n%s", incr)
	}
	sum2 := a.sha256(size)
	chunksDir := filepath.Join(srv.Root, "drover", "prod", "chunks")
	stored := countFiles(t, chunksDir)
	if stored != 12+2 {
		t.Fatalf("%d chunk objects after the two backups, want 14 (12 + 2 changed)", stored)
	}
	ls := droverEnv(t, env, "backup", "ls", "--target", target)
	if !strings.Contains(ls, first) || !strings.Contains(ls, second) || !strings.Contains(ls, "app=db") {
		t.Fatalf("backup ls:\n%s", ls)
	}
	for _, tc := range []struct{ ref, sum string }{{first, sum1}, {second, sum2}} {
		r := startDevVolume(t, "restored", 16<<20) // grown to the backup's size
		droverEnv(t, env, "backup", "restore", tc.ref, "--control", r.ctl, "--target", target, "--quiet")
		if got := r.sha256(size); got != tc.sum {
			t.Fatalf("restore of %s: sha256 %s, the volume had %s", tc.ref, got, tc.sum)
		}
		r.p.stop()
	}
	// Straight into a new replica set, then served by drover dev.
	devDir := filepath.Join(t.TempDir(), "fromdir")
	droverEnv(t, env, "backup", "restore", second, "--to-dev-dir", devDir, "--target", target, "--quiet")
	out := droverFails(t, env, "backup", "restore", second, "--to-dev-dir", devDir, "--target", target, "--quiet")
	if !strings.Contains(out, "not empty") {
		t.Fatalf("restore over existing replicas:\n%s", out)
	}
	ctl := freeAddr(t)
	rd := start(t, "dev fromdir", nil, "dev", "--data-dir", devDir, "--volume", "fromdir", "--control", ctl, "--frontend", "none")
	eventually(t, "restored replicas serving", func() (bool, string) {
		b, err := exec.Command(droverBin, "volume", "info", "--control", ctl).CombinedOutput()
		return err == nil && strings.Contains(string(b), "serving"), string(b)
	})
	if got := strings.TrimSpace(runDrover(t, "volume", "read", "--control", ctl, "--offset", "0", "--length", strconv.Itoa(size), "--sha256")); got != sum2 {
		t.Fatalf("replicas restored directly: sha256 %s, the volume had %s", got, sum2)
	}
	rd.stop()
	// Shared data: a second volume with alpha's first 24 MiB.
	b := startDevVolume(t, "beta", 32<<20)
	b.write(0, 24<<20, 1)
	b.write(8<<20, 3<<20, 2)
	out = droverEnv(t, env, "backup", "create", "--control", b.ctl, "--target", target)
	if !strings.Contains(out, "stored 0 new") || !strings.Contains(out, "12 already stored") {
		t.Fatalf("beta's backup stored shared chunks again:\n%s", out)
	}
	if n := countFiles(t, chunksDir); n != stored {
		t.Fatalf("%d chunk objects after beta's backup, want %d", n, stored)
	}
	// Damage one chunk in the server's storage.
	var victim string
	filepath.Walk(chunksDir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && victim == "" {
			victim = p
		}
		return nil
	})
	data, err := os.ReadFile(victim)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/3] ^= 0x10
	if err := os.WriteFile(victim, data, 0o644); err != nil {
		t.Fatal(err)
	}
	out = droverFails(t, env, "backup", "verify", "beta/latest", "--target", target)
	if !strings.Contains(out, "corrupt") || !strings.Contains(out, filepath.Base(victim)) {
		t.Fatalf("verify of a damaged chunk:\n%s", out)
	}
	r := startDevVolume(t, "restored2", 32<<20)
	out = droverFails(t, env, "backup", "restore", "beta/latest", "--control", r.ctl, "--target", target)
	if !strings.Contains(out, "corrupt") {
		t.Fatalf("restore of a damaged chunk:\n%s", out)
	}
	// Bad credentials, a missing bucket, a server that is not there.
	out = droverFails(t, []string{"AWS_ACCESS_KEY_ID=" + srv.AccessKey, "AWS_SECRET_ACCESS_KEY=wrong"}, "backup", "ls", "--target", target)
	if !strings.Contains(out, "access denied") {
		t.Fatalf("bad secret:\n%s", out)
	}
	out = droverFails(t, env, "backup", "create", "--control", a.ctl, "--target", srv.URL("no-such-bucket", ""))
	if !strings.Contains(out, `bucket "no-such-bucket": bucket does not exist`) {
		t.Fatalf("missing bucket:\n%s", out)
	}
	out = droverFails(t, nil, "backup", "ls", "--target", target)
	if !strings.Contains(out, "no credentials") {
		t.Fatalf("no credentials:\n%s", out)
	}
}

// TestProcessBackupKillResumeDeleteDR uses a directory target: a backup
// killed (SIGKILL) midway leaves no backup and its rerun uploads only the
// missing chunks; a backup deleted while another runs loses its manifest
// at once and its own chunks at the next gc, the running one keeps the
// chunks it shares; a DR volume follows three more backups (one zeroing a
// range) and activates with the latest data.
func TestProcessBackupKillResumeDeleteDR(t *testing.T) {
	target := t.TempDir()
	const size = 96 << 20
	a := startDevVolume(t, "alpha", size)
	a.write(0, 64<<20, 7)
	// A rate-limited backup, killed after a few chunks are stored.
	bk := start(t, "backup", nil, "backup", "create", "--control", a.ctl, "--target", target, "--rate-limit", "8MiB", "--parallel", "2")
	chunks := filepath.Join(target, "chunks")
	eventually(t, "some chunks stored", func() (bool, string) {
		n := countFiles(t, chunks)
		return n >= 4, strconv.Itoa(n)
	})
	bk.kill()
	killed := countFiles(t, chunks)
	if killed >= 32 {
		t.Fatalf("the backup finished (%d chunks) before it was killed", killed)
	}
	if countFiles(t, filepath.Join(target, "backups")) != 0 {
		t.Fatal("a killed backup left a manifest")
	}
	out := runDrover(t, "backup", "create", "--control", a.ctl, "--target", target)
	first := backupID(t, out)
	if !strings.Contains(out, "(full)") || !strings.Contains(out, "stored "+strconv.Itoa(32-killed)+" new") {
		t.Fatalf("rerun after kill (%d chunks stored before): want the other %d stored:\n%s", killed, 32-killed, out)
	}
	if snaps := runDrover(t, "snapshot", "ls", "--control", a.ctl); strings.Count(snaps, "backup-") != 1 {
		t.Fatalf("backup snapshots after the rerun:\n%s", snaps)
	}
	// Delete the first backup while a second (slow) one runs.
	a.write(0, 16<<20, 8) // 8 of the first backup's chunks now differ
	bk2 := start(t, "backup 2", nil, "backup", "create", "--control", a.ctl, "--target", target, "--rate-limit", "4MiB", "--parallel", "1")
	eventually(t, "second backup storing chunks", func() (bool, string) {
		return strings.Contains(bk2.output(), "backup ["), bk2.output()
	})
	out = runDrover(t, "backup", "rm", first, "--target", target)
	if !strings.Contains(out, "a backup is running") {
		t.Fatalf("rm during a backup:\n%s", out)
	}
	select {
	case <-bk2.done:
	case <-time.After(90 * time.Second):
		t.Fatal("second backup did not finish")
	}
	if bk2.cmd.ProcessState.ExitCode() != 0 {
		t.Fatalf("second backup failed:\n%s", bk2.output())
	}
	out = runDrover(t, "backup", "gc", "--target", target)
	if !strings.Contains(out, "8 unreferenced chunks of 40 removed") {
		t.Fatalf("gc after the backup: %s", out)
	}
	runDrover(t, "backup", "verify", "alpha/latest", "--target", target)
	// DR: a standby follows the next backups.
	d := startDevVolume(t, "standby", 16<<20)
	dr := start(t, "dr follow", nil, "dr", "create", "dr1", "--volume", "alpha", "--control", d.ctl, "--target", target,
		"--follow", "--interval", "100ms", "--quiet")
	waitApplied := func() {
		t.Helper()
		lines := strings.Split(strings.TrimSpace(runDrover(t, "backup", "ls", "alpha", "--target", target)), "\n")
		latest := strings.Fields(lines[len(lines)-1])[0]
		eventually(t, "DR applies "+latest, func() (bool, string) {
			b, _ := exec.Command(droverBin, "dr", "status", "dr1", "--target", target).CombinedOutput()
			st := string(b)
			return strings.Contains(st, "(0 backups behind)") && strings.Contains(st, "applied "+strings.TrimPrefix(latest, "alpha/")), st
		})
	}
	waitApplied()
	for i := range 3 {
		a.write(uint64(i)*20<<20, 6<<20, uint64(20+i))
		if i == 2 {
			if _, err := a.c.WriteZeroes(context.Background(), &controlpb.WriteZeroesRequest{Offset: 0, Length: 8 << 20}); err != nil {
				t.Fatal(err)
			}
		}
		runDrover(t, "backup", "create", "--control", a.ctl, "--target", target, "--quiet")
		waitApplied()
	}
	want := a.sha256(size)
	a.write(90<<20, 1<<20, 99) // not in any backup
	out = runDrover(t, "dr", "activate", "dr1", "--target", target)
	if !strings.Contains(out, "activated") {
		t.Fatalf("activate: %s", out)
	}
	select {
	case <-dr.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the DR follower did not stop after activation")
	}
	if got := d.sha256(size); got != want {
		t.Fatalf("activated DR volume sha256 %s, the last backup's volume %s", got, want)
	}
}

// TestProcessBackupFio: fio (nbd engine, crc32c verification) writes a
// volume, a full backup is taken, fio writes another region, an
// incremental backup is taken; each backup restored into a new volume
// passes fio's --verify_only of exactly the regions written before it.
func TestProcessBackupFio(t *testing.T) {
	needTools(t, "fio")
	if out, _ := exec.Command("fio", "--enghelp=nbd").CombinedOutput(); !bytes.Contains(out, []byte("uri")) {
		testenv.Unavailable(t, "this fio has no nbd engine")
	}
	target := t.TempDir()
	devNBD := func(volume string, size uint64) (*devVolume, string) {
		sock := filepath.Join(t.TempDir(), volume+".sock")
		ctl := freeAddr(t)
		p := start(t, "dev "+volume, nil, "dev", "--data-dir", filepath.Join(t.TempDir(), volume), "--volume", volume,
			"--size", strconv.FormatUint(size, 10), "--control", ctl, "--frontend", "nbd", "--nbd-listen", "unix:"+sock)
		eventually(t, volume+" serving over NBD", func() (bool, string) {
			b, err := exec.Command(droverBin, "volume", "info", "--control", ctl).CombinedOutput()
			_, serr := os.Stat(sock)
			return err == nil && serr == nil && strings.Contains(string(b), "serving"), string(b)
		})
		return &devVolume{t: t, p: p, ctl: ctl, size: size}, nbd.UnixURI(sock, volume)
	}
	fio := func(uri, offset string, verifyOnly bool) {
		t.Helper()
		args := []string{"--name=region" + offset, "--ioengine=nbd", "--uri=" + uri, "--rw=randwrite", "--bsrange=4k-64k",
			"--iodepth=8", "--size=16M", "--offset=" + offset, "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
			"--verify_state_save=0"}
		if verifyOnly {
			args = append(args, "--verify_only")
		}
		cmd := exec.Command("fio", args...)
		cmd.Dir = t.TempDir()
		if out, err := cmd.CombinedOutput(); err != nil || bytes.Contains(out, []byte("verify: bad")) {
			t.Fatalf("fio at %s (verify only %v): %v\n%s", offset, verifyOnly, err, out)
		}
	}
	src, uri := devNBD("fiosrc", 64<<20)
	fio(uri, "0", false)
	first := backupID(t, runDrover(t, "backup", "create", "--control", src.ctl, "--target", target, "--quiet"))
	fio(uri, "32M", false)
	second := backupID(t, runDrover(t, "backup", "create", "--control", src.ctl, "--target", target, "--quiet"))
	for _, tc := range []struct {
		ref     string
		regions []string
	}{{first, []string{"0"}}, {second, []string{"0", "32M"}}} {
		dst, duri := devNBD("fiodst", 4<<20)
		runDrover(t, "backup", "restore", tc.ref, "--control", dst.ctl, "--target", target, "--quiet")
		for _, r := range tc.regions {
			fio(duri, r, true)
		}
		dst.p.stop()
	}
}
