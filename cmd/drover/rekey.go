package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/transports/backuprun"
	"github.com/drover-io/drover/transports/device"
	"github.com/drover-io/drover/transports/enginerun"
	"github.com/drover-io/drover/transports/filestore"
	"github.com/drover-io/drover/transports/replicarun"
)

const rekeyLong = `Re-encrypt a drover dev volume's data under a new data key (drover key
new makes one), offline: stop drover dev first (the data dir's lock is
taken); drover dev --rekey-to NEW does the same while the volume serves.
Every block is decrypted with the old key and written back encrypted with
the new one, through the engine, so every replica is rewritten in place.

The rekey keeps a watermark in <data-dir>/rekey: blocks below it are under the
new key, blocks above under the old. Before each 1 MiB chunk is rewritten, the
watermark file records digests of each block's old and new ciphertext, made
durable (fsync) before the chunk is written: if the rekey is killed (kill -9,
a crash, a power loss), running the same command again finishes that chunk,
telling from the digests which of its blocks were rewritten already, and goes
on (drover dev --rekey-to resumes it as well). Until it finishes, drover dev
refuses to serve the volume without --rekey-to. At the end the data dir
records the new key's check and the old key no longer opens the volume.

It refuses to start on a volume with snapshots (their layers hold old-key
ciphertext the new key cannot read: drover snapshot rm them first), with a
replica that is not RW or a rebuild running (its files would keep old-key
ciphertext), or with a replica directory that left the volume. Backups made
before the rekey hold old-key ciphertext: keep the old key as long as you keep
them (restore them with it); the newest backup's snapshot (backup-*) counts
as a snapshot: remove it, and the next backup is a full one. While a rekey
runs under drover dev, snapshots and backups are refused.`

const rekeyExample = `  drover key new new.key
  drover volume rekey --data-dir /var/tmp/drover --encryption-key-file old.key --new-key-file new.key
  drover dev --data-dir /var/tmp/drover --encryption-key-file new.key
  drover dev --data-dir /var/tmp/drover --encryption-key-file old.key --rekey-to new.key   # while serving`

// rekeyStateFile holds, in drover dev's data dir, a rekey's watermark
// while one is under way.
const rekeyStateFile = "rekey"

// rekeyKillAfterEnv, for tests, makes the rekey kill itself (SIGKILL)
// once it has written and flushed the chunk that ends at or past this
// block, before its state moves past the chunk.
const rekeyKillAfterEnv = "DROVER_TEST_REKEY_KILL_AFTER_BLOCK"

type rekeyOptions struct {
	dataDir                 string
	spares                  int
	keyFile, passFile       string
	newKeyFile, newPassFile string
	quiet                   bool
}

func newVolumeRekeyCmd() *cobra.Command {
	var o rekeyOptions
	cmd := &cobra.Command{Use: "rekey", Short: "Re-encrypt a stopped drover dev volume under a new key (resumable)",
		Long: rekeyLong, Example: rekeyExample, Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.dataDir == "" {
				d, err := defaultDataDir()
				if err != nil {
					return err
				}
				o.dataDir = d
			}
			return runRekey(cmd, o)
		}}
	f := cmd.Flags()
	f.StringVar(&o.dataDir, "data-dir", "", "drover dev's data dir (default $XDG_DATA_HOME/drover/dev)")
	f.IntVar(&o.spares, "spares", 0, "the --spares drover dev runs with")
	f.StringVar(&o.keyFile, "encryption-key-file", "", "the volume's current key")
	f.StringVar(&o.passFile, "encryption-passphrase-file", "", "passphrase that opens a wrapped --encryption-key-file")
	f.StringVar(&o.newKeyFile, "new-key-file", "", "the new key (drover key new)")
	f.StringVar(&o.newPassFile, "new-passphrase-file", "", "passphrase that opens a wrapped --new-key-file")
	f.BoolVar(&o.quiet, "quiet", false, "no progress bar")
	_ = cmd.MarkFlagRequired("encryption-key-file")
	_ = cmd.MarkFlagRequired("new-key-file")
	return cmd
}

// rekeyRecord is the rekey file's content.
type rekeyRecord struct {
	OldCheck    string   `json:"old_check"`
	NewCheck    string   `json:"new_check"`
	TotalBlocks uint64   `json:"total_blocks"`
	NextBlock   uint64   `json:"next_block"`
	Pending     []string `json:"pending,omitempty"` // hex of old digest, then new digest
}

func runRekey(cmd *cobra.Command, o rekeyOptions) error {
	out := cmd.OutOrStdout()
	if !devHoldsVolume(o.dataDir, o.spares) {
		return fmt.Errorf("data dir %s holds no drover dev volume", o.dataDir)
	}
	unlock, err := lockDir(o.dataDir)
	if err != nil {
		return fmt.Errorf("%w (stop drover dev before a rekey)", err)
	}
	defer unlock()
	oldKey, err := loadKey(o.keyFile, o.passFile)
	if err != nil {
		return err
	}
	defer clear(oldKey)
	newKey, err := loadKey(o.newKeyFile, o.newPassFile)
	if err != nil {
		return err
	}
	defer clear(newKey)
	st, err := loadRekeyState(o.dataDir)
	if err != nil {
		return err
	}
	resuming := st != nil
	if !resuming {
		if _, err := devCheckEncryption(o.dataDir, o.keyFile, o.passFile, false); err != nil {
			return err
		}
	} else {
		if device.CheckKey(oldKey, st.OldCheck) != nil || device.CheckKey(newKey, st.NewCheck) != nil {
			return fmt.Errorf("data dir %s: a rekey between two other keys is under way (block %d of %d): give the keys it began with", o.dataDir, st.NextBlock, st.TotalBlocks)
		}
		fmt.Fprintf(out, "resuming the rekey at block %d of %d\n", st.NextBlock, st.TotalBlocks)
	}
	if !resuming || st.NextBlock < st.TotalBlocks {
		if st, err = rekeyVolume(cmd, o, st, oldKey, newKey); err != nil {
			return err
		}
	}
	if err := finishRekey(o.dataDir, st); err != nil {
		return err
	}
	fmt.Fprintf(out, "the volume in %s is encrypted with %s now; the old key no longer opens it (keep it only for backups made before)\n", o.dataDir, o.newKeyFile)
	return nil
}

// rekeyVolume opens the volume as drover dev does, without frontends,
// checks a rekey can rewrite every copy of its data, and runs it.
func rekeyVolume(cmd *cobra.Command, o rekeyOptions, st *device.RekeyState, oldKey, newKey []byte) (*device.RekeyState, error) {
	out := cmd.OutOrStdout()
	ctx := cmd.Context()
	dev := devOptions{dataDir: o.dataDir, volume: "dev", spares: o.spares, replaceAfter: -1,
		overProvisioningPercent: filestore.DefaultOverProvisioningPercent}
	if err := dev.resolveVolume(false); err != nil {
		return nil, err
	}
	cfg := enginerun.Config{Volume: dev.volume, ReplaceAfter: dev.replaceAfter}
	runners, closers, err := dev.openReplicas(cmd, &cfg)
	defer func() {
		for _, r := range closers {
			r.Close()
		}
	}()
	if err != nil {
		return nil, err
	}
	cfg.Dial = replicarun.LocalDialer(runners)
	d, err := enginerun.New(cfg)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	if err := waitServing(ctx, d, out); err != nil {
		return nil, err
	}
	if err := rekeyCheckVolume(ctx, cmd.ErrOrStderr(), d, o.dataDir, o.spares, st != nil); err != nil {
		return nil, err
	}
	vol := enginerun.NewVolume(d)
	if st == nil {
		if st, err = device.NewRekeyState(oldKey, newKey, vol.SizeBytes()); err != nil {
			return nil, err
		}
	}
	opt := device.RekeyOptions{Save: func(s *device.RekeyState) error { return saveRekeyState(o.dataDir, s) }}
	if !o.quiet {
		bar := newProgressBar(cmd.ErrOrStderr(), "rekey")
		bar.unit = "MiB"
		opt.Progress = func(done, total uint64) {
			const perMiB = (1 << 20) / device.CryptBlockBytes
			bar.update(backuprun.Progress{ChunksDone: int(done / perMiB), ChunksTotal: int(total / perMiB),
				BytesRead: done * device.CryptBlockBytes})
		}
	}
	if opt.AfterChunk, err = rekeyKillHook(out); err != nil {
		return nil, err
	}
	if err := device.Rekey(ctx, vol, oldKey, newKey, st, opt); err != nil {
		return nil, err
	}
	flushCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := vol.Flush(flushCtx); err != nil {
		return nil, fmt.Errorf("rekey: final flush: %w", err)
	}
	return st, nil
}

// finishRekey records, once every block is under the new key, the new
// key's check in the data dir, then removes the watermark (a crash
// between the two redoes only this).
func finishRekey(dataDir string, st *device.RekeyState) error {
	if st.NextBlock != st.TotalBlocks || len(st.Pending) != 0 {
		return fmt.Errorf("rekey: finishing at block %d of %d", st.NextBlock, st.TotalBlocks)
	}
	rec := encryptionScheme + "\n" + hex.EncodeToString(st.NewCheck) + "\n"
	if err := writeFileDurably(dataDir, devEncryptionFile, []byte(rec)); err != nil {
		return fmt.Errorf("data dir: record the new key: %w", err)
	}
	if err := os.Remove(filepath.Join(dataDir, rekeyStateFile)); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	return syncDir(dataDir)
}

// rekeyKillHook is the test hook rekeyKillAfterEnv asks for, or nil.
func rekeyKillHook(out io.Writer) (func(uint64) error, error) {
	v := os.Getenv(rekeyKillAfterEnv)
	if v == "" {
		return nil, nil
	}
	killAt, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%s=%q: %w", rekeyKillAfterEnv, v, err)
	}
	return func(next uint64) error {
		if next >= killAt {
			fmt.Fprintf(out, "%s: killing this process after block %d\n", rekeyKillAfterEnv, next)
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
		return nil
	}, nil
}

// volumeCrypt is how runEngine encrypts a volume: with key, or during a
// rekey from key to rekey's.
type volumeCrypt struct {
	key   []byte
	rekey *onlineRekey
}

// onlineRekey is drover dev --rekey-to: a rekey run while the volume
// serves, its watermark in the data dir.
type onlineRekey struct {
	newKey  []byte
	newFile string
	st      *device.RekeyState // nil: a new one once the volume serves
	dataDir string
	spares  int
}

// open returns the device the frontends serve over vol, and a function
// that waits for a rekey's step under way to end once ctx is done.
func (c *volumeCrypt) open(ctx context.Context, d *enginerun.Driver, vol *enginerun.Volume, out io.Writer) (device.Device, func(), error) {
	defer clear(c.key)
	if c.rekey == nil {
		enc, err := device.NewEncrypted(vol, c.key)
		return enc, func() {}, err
	}
	r := c.rekey
	defer clear(r.newKey)
	if err := rekeyCheckVolume(ctx, out, d, r.dataDir, r.spares, r.st != nil); err != nil {
		return nil, nil, err
	}
	st := r.st
	if st == nil {
		var err error
		if st, err = device.NewRekeyState(c.key, r.newKey, vol.SizeBytes()); err != nil {
			return nil, nil, err
		}
		if err := saveRekeyState(r.dataDir, st); err != nil {
			return nil, nil, fmt.Errorf("data dir: save the rekey's watermark: %w", err)
		}
	}
	kill, err := rekeyKillHook(out)
	if err != nil {
		return nil, nil, err
	}
	last := time.Now()
	opt := device.RekeyOptions{AfterChunk: kill,
		Save: func(s *device.RekeyState) error { return saveRekeyState(r.dataDir, s) },
		Progress: func(done, total uint64) {
			if time.Since(last) >= 5*time.Second || done == total {
				last = time.Now()
				fmt.Fprintf(out, "rekey: %d of %d blocks (%.1f%%)\n", done, total, 100*float64(done)/float64(total))
			}
		}}
	enc, err := device.NewRekeying(vol, c.key, r.newKey, st, opt)
	if err != nil {
		return nil, nil, err
	}
	if err := enc.SettleRekey(ctx); err != nil {
		return nil, nil, err
	}
	// No snapshot (nor backup) while blocks are under two keys: it
	// could never be read whole.
	d.SetSnapshotGuard(func() error {
		if enc.Rekeying() {
			return errors.New("the volume is being re-encrypted (drover dev --rekey-to): wait for the rekey to end")
		}
		return nil
	})
	fmt.Fprintf(out, "rekey: re-encrypting the volume under %s from block %d of %d while it serves (watermark in %s)\n",
		r.newFile, st.NextBlock, st.TotalBlocks, filepath.Join(r.dataDir, rekeyStateFile))
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := enc.Rekey(ctx)
		switch {
		case err == nil:
			err = finishRekey(r.dataDir, st)
		case ctx.Err() != nil:
			fmt.Fprintf(out, "rekey: stopped at block %d of %d; the next start with --rekey-to resumes it\n", st.NextBlock, st.TotalBlocks)
			return
		}
		if err != nil {
			slog.Error("rekey stopped: restart with the same flags to resume it", "err", err)
			return
		}
		fmt.Fprintf(out, "rekey: done; the volume is encrypted with %s alone (run later with --encryption-key-file %s, without --rekey-to)\n", r.newFile, r.newFile)
	}()
	return enc, func() { <-done }, nil
}

// devEncryption settles how drover dev encrypts the volume: not at all,
// with its key, or re-encrypting it (--rekey-to, or a rekey under way).
func devEncryption(out io.Writer, o *devOptions, isNew bool) (*volumeCrypt, error) {
	st, err := loadRekeyState(o.dataDir)
	if err != nil {
		return nil, err
	}
	if o.newKeyFile != "" && o.keyFile == "" {
		return nil, errors.New("--rekey-to needs --encryption-key-file, the volume's current key")
	}
	if o.newKeyFile == "" {
		key, err := devCheckEncryption(o.dataDir, o.keyFile, o.passFile, isNew)
		if key == nil || err != nil {
			return nil, err
		}
		return &volumeCrypt{key: key}, nil
	}
	if isNew {
		return nil, errors.New("--rekey-to re-encrypts an existing volume: make a new one with --encryption-key-file alone")
	}
	oldKey, err := loadKey(o.keyFile, o.passFile)
	if err != nil {
		return nil, err
	}
	newKey, err := loadKey(o.newKeyFile, o.newPassFile)
	if err != nil {
		clear(oldKey)
		return nil, err
	}
	r := &onlineRekey{newKey: newKey, newFile: o.newKeyFile, st: st, dataDir: o.dataDir, spares: o.spares}
	if st != nil {
		if device.CheckKey(oldKey, st.OldCheck) != nil || device.CheckKey(newKey, st.NewCheck) != nil {
			clear(oldKey)
			clear(newKey)
			return nil, fmt.Errorf("data dir %s: a rekey between two other keys is under way (block %d of %d): give the keys it began with", o.dataDir, st.NextBlock, st.TotalBlocks)
		}
		fmt.Fprintf(out, "rekey: resuming at block %d of %d\n", st.NextBlock, st.TotalBlocks)
		return &volumeCrypt{key: oldKey, rekey: r}, nil
	}
	if check, recorded, err := recordedKeyCheck(o.dataDir); err == nil && recorded && device.CheckKey(newKey, check) == nil {
		clear(oldKey)
		fmt.Fprintf(out, "rekey: the volume is encrypted with %s already (an earlier rekey ended): serving with it; drop --rekey-to\n", o.newKeyFile)
		return &volumeCrypt{key: newKey}, nil
	}
	clear(oldKey)
	if oldKey, err = devCheckEncryption(o.dataDir, o.keyFile, o.passFile, false); err != nil {
		clear(newKey)
		return nil, err
	}
	return &volumeCrypt{key: oldKey, rekey: r}, nil
}

// rekeyCheckVolume refuses a rekey that would leave old-key ciphertext
// in a replica's files: snapshots, a replica not RW (or a rebuild), a
// replica directory outside the volume. A resumed rekey only warns: the
// volume cannot serve until it ends.
func rekeyCheckVolume(ctx context.Context, warn io.Writer, d *enginerun.Driver, dataDir string, spares int, resuming bool) error {
	var why []string
	var info enginerun.Info
	// A replica may need a moment after the open to come back RW.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		var err error
		if info, err = d.Info(ctx); err != nil {
			return err
		}
		why = rekeyObstacles(info.VolumeInfo, dataDir, spares)
		if len(why) == 0 || !settling(info.VolumeInfo) || time.Now().After(deadline) {
			break
		}
	}
	if len(why) == 0 {
		return nil
	}
	if resuming {
		fmt.Fprintf(warn, "warning: %s\n", strings.Join(why, "; "))
		return nil
	}
	return fmt.Errorf("rekey refused, old-key ciphertext would be left behind: %s", strings.Join(why, "; "))
}

// settling reports whether a replica may yet come back RW on its own.
func settling(info engine.VolumeInfo) bool {
	for _, r := range info.Replicas {
		if r.Mode != engine.ModeRW {
			return true
		}
	}
	return info.Rebuild != nil
}

func rekeyObstacles(info engine.VolumeInfo, dataDir string, spares int) []string {
	var why []string
	if len(info.Chain) > 0 {
		why = append(why, fmt.Sprintf("the volume has snapshots %s (drover snapshot rm them first)", strings.Join(info.Chain, ", ")))
	}
	if info.Rebuild != nil {
		why = append(why, fmt.Sprintf("a rebuild of %s is running (wait for it)", info.Rebuild.Target))
	}
	members := map[string]bool{}
	for _, r := range info.Replicas {
		members[string(r.ID)] = true
		if r.Mode != engine.ModeRW {
			why = append(why, fmt.Sprintf("replica %s is %s, not RW (%s)", r.ID, r.Mode, r.Why))
		}
	}
	for i := 1; i <= devReplicas+spares; i++ {
		for _, id := range []string{fmt.Sprintf("dev-%d", i), fmt.Sprintf("spare-%d", i)} {
			if _, err := os.Lstat(filepath.Join(dataDir, id, "meta")); err == nil && !members[id] {
				why = append(why, fmt.Sprintf("directory %s holds a replica that left the volume (remove it)", filepath.Join(dataDir, id)))
			}
		}
	}
	return why
}

// loadRekeyState reads the rekey file; nil when there is none.
func loadRekeyState(dataDir string) (*device.RekeyState, error) {
	path := filepath.Join(dataDir, rekeyStateFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	var rec rekeyRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("%s: damaged: %w", path, err)
	}
	st := &device.RekeyState{TotalBlocks: rec.TotalBlocks, NextBlock: rec.NextBlock}
	if st.OldCheck, err = hex.DecodeString(rec.OldCheck); err != nil {
		return nil, fmt.Errorf("%s: damaged old_check: %w", path, err)
	}
	if st.NewCheck, err = hex.DecodeString(rec.NewCheck); err != nil {
		return nil, fmt.Errorf("%s: damaged new_check: %w", path, err)
	}
	for i, p := range rec.Pending {
		raw, err := hex.DecodeString(p)
		if err != nil || len(raw) != 2*device.RekeyDigestBytes {
			return nil, fmt.Errorf("%s: damaged pending entry %d", path, i)
		}
		var blk device.RekeyBlock
		copy(blk.Old[:], raw)
		copy(blk.New[:], raw[device.RekeyDigestBytes:])
		st.Pending = append(st.Pending, blk)
	}
	if st.NextBlock+uint64(len(st.Pending)) > st.TotalBlocks {
		return nil, fmt.Errorf("%s: damaged: watermark %d+%d beyond %d blocks", path, st.NextBlock, len(st.Pending), st.TotalBlocks)
	}
	return st, nil
}

// saveRekeyState replaces the rekey file durably.
func saveRekeyState(dataDir string, st *device.RekeyState) error {
	rec := rekeyRecord{OldCheck: hex.EncodeToString(st.OldCheck), NewCheck: hex.EncodeToString(st.NewCheck),
		TotalBlocks: st.TotalBlocks, NextBlock: st.NextBlock}
	for _, p := range st.Pending {
		rec.Pending = append(rec.Pending, hex.EncodeToString(p.Old[:])+hex.EncodeToString(p.New[:]))
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return writeFileDurably(dataDir, rekeyStateFile, append(b, '\n'))
}

// writeFileDurably replaces dir/name with b: a temporary file written
// and synced, renamed over it, and the directory synced.
func writeFileDurably(dir, name string, b []byte) error {
	tmp := filepath.Join(dir, name+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
