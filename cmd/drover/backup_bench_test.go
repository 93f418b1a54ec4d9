package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drover-io/drover/transports/control/controlpb"
)

// TestBackupBench is `make bench-backup` (part of `make bench`): a 2 GiB
// volume (40% random, 40% text-like, 20% zeros, in 2 MiB regions) is
// backed up to a directory target and restored into a new volume, timed
// against `tar | zstd -T0` and `zstd -d | tar x` of the same data in the
// same run on the same disk; then 5% of the volume changes (in 4 MiB
// extents) and an incremental backup runs. It prints MB/s, ratios, objects
// per GiB and the incremental's share of bytes uploaded.
func TestBackupBench(t *testing.T) {
	if os.Getenv("DROVER_BACKUP_BENCH") == "" {
		t.Skip("set DROVER_BACKUP_BENCH=1 (make bench-backup)")
	}
	sizeBytes := uint64(2 << 30)
	if s := os.Getenv("DROVER_BACKUP_BENCH_SIZE"); s != "" {
		n, err := parseSize(s)
		if err != nil {
			t.Fatal(err)
		}
		sizeBytes = n
	}
	base := os.Getenv("DROVER_BACKUP_BENCH_DIR")
	if base == "" {
		base = t.TempDir()
	}
	dir, err := os.MkdirTemp(base, "backup-bench-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "volume.img")
	writeBenchImage(t, img, sizeBytes)
	src := startDevVolume(t, "bench", sizeBytes)
	loadImage(t, src, img)
	target := filepath.Join(dir, "target")
	os.Mkdir(target, 0o755)
	mb := float64(sizeBytes) / 1e6

	// Every timed step starts with clean page cache writeback (sync), and
	// ends durable: the reference syncs its output as backups fsync theirs.
	// Reference: tar | zstd (all cores) of the same data, to the same disk.
	tarZst := filepath.Join(dir, "volume.tar.zst")
	syncAll(t)
	tTar := timeIt(t, "bash", "-c", fmt.Sprintf("tar -C %s -cf - volume.img | zstd -q -T0 -o %s && sync -f %s", dir, tarZst, tarZst))
	out := filepath.Join(dir, "untar")
	os.Mkdir(out, 0o755)
	syncAll(t)
	tUntar := timeIt(t, "bash", "-c", fmt.Sprintf("zstd -q -dc %s | tar -C %s -xf - && sync -f %s/volume.img", tarZst, out, out))
	os.RemoveAll(out)
	st, _ := os.Stat(tarZst)

	syncAll(t)
	tBackup := timeIt(t, droverBin, "backup", "create", "--control", src.ctl, "--target", target, "--quiet")
	objects := countFiles(t, target)
	stored := dirBytes(t, filepath.Join(target, "chunks"))

	restored := filepath.Join(dir, "restored.img")
	syncAll(t)
	tRestoreFile := timeIt(t, droverBin, "backup", "restore", "bench/latest", "--to-file", restored, "--target", target, "--quiet")
	if a, b := fileSHA(t, img), fileSHA(t, restored); a != b {
		t.Fatalf("restored image sha256 %s, source %s", b, a)
	}
	os.Remove(restored)
	dst := startDevVolume(t, "bench-restore", 4<<20)
	syncAll(t)
	tRestore := timeIt(t, droverBin, "backup", "restore", "bench/latest", "--control", dst.ctl, "--target", target, "--quiet")
	if a, b := src.sha256(sizeBytes), dst.sha256(sizeBytes); a != b {
		t.Fatalf("restored volume sha256 %s, source %s", b, a)
	}
	dst.p.stop()

	// 5% of the volume changes, in 4 MiB extents at random 4 MiB offsets,
	// with new content of the same mix.
	rng := rand.New(rand.NewPCG(5, 5))
	extents := int(sizeBytes / 20 / (4 << 20))
	seen := map[uint64]bool{}
	region := make([]byte, 2<<20)
	for len(seen) < extents {
		off := rng.Uint64N(sizeBytes/(4<<20)) * (4 << 20)
		if seen[off] {
			continue
		}
		seen[off] = true
		for half := uint64(0); half < 2; half++ {
			benchRegion(rng, region)
			if _, err := src.c.Write(t.Context(), &controlpb.WriteRequest{Offset: off + half*(2<<20), Data: region}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := src.c.Flush(t.Context(), &controlpb.Empty{}); err != nil {
		t.Fatal(err)
	}
	before := dirBytes(t, filepath.Join(target, "chunks"))
	incrOut := runDrover(t, "backup", "create", "--control", src.ctl, "--target", target, "--quiet")
	incr := dirBytes(t, filepath.Join(target, "chunks")) - before
	if !strings.Contains(incrOut, "incremental") {
		t.Fatalf("second backup not incremental: %s", incrOut)
	}

	var b bytes.Buffer
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Fprintf(&b, "backup bench: %s volume, %d cores, load average %s\n", formatSize(sizeBytes), nprocs(), strings.Join(strings.Fields(string(load))[:3], " "))
	fmt.Fprintf(&b, "  tar | zstd -T0:        %6.1f MB/s (%.1fs, %s)\n", mb/tTar, tTar, humanBytes(uint64(st.Size())))
	fmt.Fprintf(&b, "  drover backup create:  %6.1f MB/s (%.1fs, %s in chunks)  ratio %.2f\n", mb/tBackup, tBackup, humanBytes(stored), tTar/tBackup)
	fmt.Fprintf(&b, "  zstd -d | tar x:       %6.1f MB/s (%.1fs)\n", mb/tUntar, tUntar)
	fmt.Fprintf(&b, "  drover backup restore --to-file:          %6.1f MB/s (%.1fs)  ratio %.2f\n", mb/tRestoreFile, tRestoreFile, tUntar/tRestoreFile)
	fmt.Fprintf(&b, "  drover backup restore (3-replica volume): %6.1f MB/s (%.1fs)  ratio %.2f\n", mb/tRestore, tRestore, tUntar/tRestore)
	fmt.Fprintf(&b, "  objects: %d for %s (%.0f per GiB of volume)\n", objects, formatSize(sizeBytes), float64(objects)/(float64(sizeBytes)/(1<<30)))
	fmt.Fprintf(&b, "  incremental after 5%% changed (%d extents of 4 MiB): %s uploaded = %.1f%% of the full backup's %s\n",
		extents, humanBytes(incr), 100*float64(incr)/float64(stored), humanBytes(stored))
	fmt.Fprintf(&b, "  %s", regexp.MustCompile(`\s+`).ReplaceAllString(strings.TrimSpace(incrOut), " "))
	t.Log("\n" + b.String())
	fmt.Println(b.String())
	if 100*float64(incr)/float64(stored) > 7 {
		t.Errorf("incremental uploaded %.1f%% of the bytes, the bar is 7%%", 100*float64(incr)/float64(stored))
	}
}

// writeBenchImage writes the bench's content: per 2 MiB region, 40%
// random, 40% text-like (compresses about 3x), 20% zeros.
func writeBenchImage(t *testing.T, path string, sizeBytes uint64) {
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	region := make([]byte, 2<<20)
	for off := uint64(0); off < sizeBytes; off += uint64(len(region)) {
		benchRegion(rng, region)
		if _, err := f.Write(region[:min(uint64(len(region)), sizeBytes-off)]); err != nil {
			t.Fatal(err)
		}
	}
}

var benchWords = strings.Fields("the quick brown fox jumps over lazy dog block replica engine snapshot volume chunk backup restore data " +
	"kubernetes storage cluster node write read flush epoch membership rebuild zstd manifest object bucket")

// benchRegion fills region: random (40%), text-like (40%) or zeros.
func benchRegion(rng *rand.Rand, region []byte) {
	switch k := rng.IntN(10); {
	case k < 4:
		for i := 0; i+8 <= len(region); i += 8 {
			x := rng.Uint64()
			for j := range 8 {
				region[i+j] = byte(x >> (8 * j))
			}
		}
	case k < 8:
		out := region[:0]
		for len(out) < len(region) {
			out = append(out, benchWords[rng.IntN(len(benchWords))]...)
			out = append(out, ' ')
			if rng.IntN(12) == 0 {
				out = strconv.AppendUint(out, rng.Uint64N(1e9), 10)
				out = append(out, '\n')
			}
		}
		copy(region, out)
	default:
		clear(region)
	}
}

func syncAll(t *testing.T) {
	if out, err := exec.Command("sync").CombinedOutput(); err != nil {
		t.Fatalf("sync: %v %s", err, out)
	}
}

func fileSHA(t *testing.T, path string) string {
	out, err := exec.Command("sha256sum", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(out))[0]
}

func loadImage(t *testing.T, v *devVolume, img string) {
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	for off := uint64(0); ; off += uint64(len(buf)) {
		n, _ := f.ReadAt(buf, int64(off))
		if n == 0 {
			break
		}
		if _, err := v.c.Write(t.Context(), &controlpb.WriteRequest{Offset: off, Data: buf[:n]}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := v.c.Flush(t.Context(), &controlpb.Empty{}); err != nil {
		t.Fatal(err)
	}
}

func timeIt(t *testing.T, name string, args ...string) float64 {
	t.Helper()
	start := time.Now()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return time.Since(start).Seconds()
}

func dirBytes(t *testing.T, dir string) uint64 {
	var n uint64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += uint64(fi.Size())
		}
		return nil
	})
	return n
}

func nprocs() int {
	b, _ := exec.Command("nproc").Output()
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}
