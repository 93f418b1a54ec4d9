package main

import (
	"bytes"
	"crypto/aes"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/xts"
)

// TestProcessDevRekey: a pattern written through NBD under one key is
// re-encrypted under another by drover volume rekey, killed with SIGKILL
// after a chunk is rewritten and before its watermark moves on, then run
// again: it resumes from the watermark, the pattern reads back through
// NBD with the new key, the old key no longer opens the volume, and no
// file under the data dir holds any pattern block's old-key ciphertext
// (every block's old ciphertext was there before, and its new-key
// ciphertext is there after: the search sees what it looks for). A
// rekey while drover dev runs, on a volume with a snapshot, or resumed
// with another key, is refused; so is drover dev while one is under way.
func TestProcessDevRekey(t *testing.T) {
	needTools(t, "nbdcopy")
	dir := t.TempDir()
	oldKey, newKey, third := filepath.Join(dir, "old.key"), filepath.Join(dir, "new.key"), filepath.Join(dir, "third.key")
	for _, k := range []string{oldKey, newKey, third} {
		runDrover(t, "key", "new", k)
	}
	const patternBlocks = 1024 // 4 MiB of the 8 MiB volume: chunks 0..3 of 8
	pattern := make([]byte, 0, patternBlocks*4096)
	for b := range patternBlocks {
		pattern = append(pattern, bytes.Repeat([]byte(fmt.Sprintf("REKEY block %06d ", b)), 4096/19+1)[:4096]...)
	}
	src := filepath.Join(dir, "pattern.img")
	if err := os.WriteFile(src, pattern, 0o600); err != nil {
		t.Fatal(err)
	}
	dataDir, sock := filepath.Join(dir, "data"), filepath.Join(dir, "nbd.sock")
	ctl := "unix:" + filepath.Join(dataDir, controlSocketName)
	devArgs := func(key string) []string {
		return []string{"dev", "--data-dir", dataDir, "--size", "8MiB", "--nbd-listen", "unix:" + sock,
			"--metrics-listen", "", "--console-listen", "", "--encryption-key-file", key}
	}
	startDev := func(key string) *proc {
		p := start(t, "dev", nil, devArgs(key)...)
		eventually(t, "dev serving NBD", func() (bool, string) {
			return strings.Contains(p.output(), "stop with Ctrl-C"), p.output()
		})
		return p
	}
	uri := "nbd+unix:///dev?socket=" + sock
	rekey := []string{"volume", "rekey", "--data-dir", dataDir, "--encryption-key-file", oldKey, "--new-key-file", newKey}

	p := startDev(oldKey)
	sh(t, "nbdcopy", src, uri)
	runDrover(t, "snapshot", "create", "s1", "--control", ctl)
	wantFail(t, []string{"stop drover dev"}, rekey...)
	p.stop()
	wantFail(t, []string{"rekey refused", "snapshots s1"}, rekey...)
	p = startDev(oldKey)
	runDrover(t, "snapshot", "rm", "s1", "--control", ctl)
	p.stop()

	oldCipher, newCipher := blockCiphertexts(t, oldKey, pattern), blockCiphertexts(t, newKey, pattern)
	if missing := countMissing(t, dataDir, oldCipher); missing != 0 {
		t.Fatalf("%d of %d pattern blocks' old-key ciphertext found in no file before the rekey: the search is blind", missing, patternBlocks)
	}

	// Killed after the chunk ending at block 512 is written and flushed,
	// before the watermark passes it.
	cmd := exec.Command(droverBin, append(rekey, "--quiet")...)
	cmd.Env = append(os.Environ(), rekeyKillAfterEnv+"=300")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("rekey with %s=300: %v, want killed by SIGKILL:\n%s", rekeyKillAfterEnv, err, out)
	}
	st, err := loadRekeyState(dataDir)
	if err != nil || st == nil || st.NextBlock != 256 || len(st.Pending) != 256 {
		t.Fatalf("watermark after the kill: %+v, %v; want block 256 with the chunk [256, 512) pending", st, err)
	}
	wantFail(t, []string{"rekey of the volume is under way", "block 256 of 2048"}, devArgs(oldKey)...)
	wantFail(t, []string{"between two other keys"}, "volume", "rekey", "--data-dir", dataDir, "--encryption-key-file", oldKey, "--new-key-file", third)
	if out := runDrover(t, rekey...); !strings.Contains(out, "resuming the rekey at block 256 of 2048") {
		t.Errorf("the second rekey did not resume at the watermark:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(dataDir, rekeyStateFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the watermark file is still there after the rekey: %v", err)
	}

	if held := patternBlocks - countMissing(t, dataDir, oldCipher); held != 0 {
		t.Errorf("%d pattern blocks' old-key ciphertext is still in a file under the data dir", held)
	}
	if missing := countMissing(t, dataDir, newCipher); missing != 0 {
		t.Errorf("%d pattern blocks' new-key ciphertext found in no file after the rekey", missing)
	}
	wantFail(t, []string{"wrong encryption key"}, devArgs(oldKey)...)
	p = startDev(newKey)
	back := filepath.Join(dir, "back.img")
	sh(t, "nbdcopy", uri, back)
	p.stop()
	got, err := os.ReadFile(back)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(pattern)], pattern) || !bytes.Equal(got[len(pattern):], make([]byte, len(got)-len(pattern))) {
		t.Fatal("after the rekey the volume does not read back the pattern and zeros through NBD with the new key")
	}
}

// blockCiphertexts returns each 4 KiB block of data encrypted with the
// key in keyFile as the volume encrypts it (AES-256-XTS, the block index
// as the tweak), computed with golang.org/x/crypto/xts.
func blockCiphertexts(t *testing.T, keyFile string, data []byte) [][]byte {
	t.Helper()
	b, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	c, err := xts.NewCipher(aes.NewCipher, key)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for i := 0; i < len(data); i += 4096 {
		ct := make([]byte, 4096)
		c.Encrypt(ct, data[i:i+4096], uint64(i/4096))
		out = append(out, ct)
	}
	return out
}

// countMissing returns how many of blocks (4 KiB each) are found in no
// regular file under root, at any 512-byte-aligned offset (where the
// replicas' files keep blocks; a full scan at every byte offset takes
// seconds per key).
func countMissing(t *testing.T, root string, blocks [][]byte) (missing int) {
	t.Helper()
	byPrefix := map[[32]byte][]int{}
	for i, blk := range blocks {
		k := [32]byte(blk[:32])
		byPrefix[k] = append(byPrefix[k], i)
	}
	found := make([]bool, len(blocks))
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for off := 0; off+4096 <= len(b); off += 512 {
			for _, i := range byPrefix[[32]byte(b[off:off+32])] {
				found[i] = found[i] || bytes.Equal(b[off:off+4096], blocks[i])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range found {
		if !f {
			missing++
		}
	}
	return missing
}

// TestProcessDevRekeyOnline: drover dev --rekey-to re-encrypts the
// volume while it serves. Killed by SIGKILL after a chunk is flushed and
// before the watermark passes it, the volume does not serve without
// --rekey-to; the next start with it resumes at the watermark and serves
// meanwhile (a write through NBD during the rekey lands under the right
// key); at the end the pattern and the write read back through NBD, no
// file holds a pattern block's old-key ciphertext, the old key is
// refused, and the same flags again serve with the new key.
func TestProcessDevRekeyOnline(t *testing.T) {
	needTools(t, "nbdcopy", "qemu-io")
	dir := t.TempDir()
	oldKey, newKey := filepath.Join(dir, "old.key"), filepath.Join(dir, "new.key")
	runDrover(t, "key", "new", oldKey)
	runDrover(t, "key", "new", newKey)
	const patternBlocks = 1024
	pattern := make([]byte, 0, patternBlocks*4096)
	for b := range patternBlocks {
		pattern = append(pattern, bytes.Repeat([]byte(fmt.Sprintf("ONLINE block %06d ", b)), 4096/20+1)[:4096]...)
	}
	src := filepath.Join(dir, "pattern.img")
	if err := os.WriteFile(src, pattern, 0o600); err != nil {
		t.Fatal(err)
	}
	dataDir, sock := filepath.Join(dir, "data"), filepath.Join(dir, "nbd.sock")
	uri := "nbd+unix:///dev?socket=" + sock
	args := func(extra ...string) []string {
		return append([]string{"dev", "--data-dir", dataDir, "--size", "8MiB", "--nbd-listen", "unix:" + sock,
			"--metrics-listen", "", "--console-listen", "", "--encryption-key-file", oldKey}, extra...)
	}
	startDev := func(prefix []string, extra ...string) *proc {
		p := start(t, "dev", prefix, args(extra...)...)
		eventually(t, "dev serving NBD", func() (bool, string) {
			return strings.Contains(p.output(), "stop with Ctrl-C"), p.output()
		})
		return p
	}
	p := startDev(nil)
	sh(t, "nbdcopy", src, uri)
	p.stop()
	oldCipher := blockCiphertexts(t, oldKey, pattern)

	p = start(t, "dev", []string{"env", rekeyKillAfterEnv + "=300"}, args("--rekey-to", newKey)...)
	select {
	case <-p.done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("dev with %s=300 still runs:\n%s", rekeyKillAfterEnv, p.output())
	}
	if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("dev ended with %v, want SIGKILL from the hook:\n%s", p.cmd.ProcessState, p.output())
	}
	wantFail(t, []string{"rekey of the volume is under way", "block 256 of 2048", "--rekey-to"}, args()...)

	p = startDev(nil, "--rekey-to", newKey)
	if !strings.Contains(p.output(), "rekey: resuming at block 256 of 2048") {
		t.Errorf("dev did not resume the rekey at the watermark:\n%s", p.output())
	}
	// 2 MiB at 4 MiB, written while the rekey runs (or after it ended).
	sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0x6b 4M 2M", "-c", "flush", uri)
	eventually(t, "the rekey ends", func() (bool, string) {
		return strings.Contains(p.output(), "rekey: done"), p.output()
	})
	p.stop()
	want := append(append(append([]byte{}, pattern...), bytes.Repeat([]byte{0x6b}, 2<<20)...), make([]byte, 2<<20)...)

	if held := patternBlocks - countMissing(t, dataDir, oldCipher); held != 0 {
		t.Errorf("%d pattern blocks' old-key ciphertext is still in a file under the data dir", held)
	}
	if missing := countMissing(t, dataDir, blockCiphertexts(t, newKey, want[:6<<20])); missing != 0 {
		t.Errorf("%d blocks' new-key ciphertext found in no file after the rekey", missing)
	}
	wantFail(t, []string{"wrong encryption key"}, args()...)
	p = startDev(nil, "--rekey-to", newKey)
	if !strings.Contains(p.output(), "encrypted with "+newKey+" already") {
		t.Errorf("a start with --rekey-to after the rekey ended does not say so:\n%s", p.output())
	}
	back := filepath.Join(dir, "back.img")
	sh(t, "nbdcopy", uri, back)
	p.stop()
	if got, err := os.ReadFile(back); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("after the online rekey the volume does not read back the pattern, the write and zeros (%v)", err)
	}
}
