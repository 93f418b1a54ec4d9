package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/enginerun"
	"github.com/drover-io/drover/transports/filestore"
	"github.com/drover-io/drover/transports/replicarun"
)

func init() { subcommands = append(subcommands, newDevCmd) }

const devLong = `Run a complete Drover volume in this one process: three replicas on
directories under the data dir, reached through in-process links (no sockets,
no extra goroutine hop), one engine, and the control API on a unix socket in
the data dir (mode 0600: only this user and root may use it; the drover
volume/snapshot/replica subcommands find it there without flags).

The first run creates the volume with --size, after checking that every listen
address is free and that the data dir's file system can hold a volume that
large (at most --over-provisioning-percent of its disk, 100 by default).
Later runs on the same data dir reopen it: every write flushed before a crash
or stop is there (a clean stop with Ctrl-C flushes everything acknowledged).
A later --size or --volume that differs from what the data dir holds is
refused with the fix to run; grow the volume with drover volume expand.

A replica whose files are damaged (metadata or index that does not load)
goes ERR with the reason (drover replica ls shows it, the log names the file)
and the volume serves on the others; nothing is wiped.

Hosts reach the volume over NBD (--frontend nbd, the default): the export is
named "dev" and served on a unix socket in the data dir and on
127.0.0.1:10809; drover dev prints its URIs and how to attach them. With
--frontend iscsi it is an iSCSI target on --iscsi-listen instead.

With --spares N, N more replicas wait on directories spare-1..spare-N under
the data dir (put the data dir's replicas on different disks with symlinks to
make that worth something). A replica that fails (a disk error stops it, or
its directory cannot be opened at start) goes ERR; once it has not come back
for --replace-after it leaves the volume for good and the first free spare is
rebuilt in its place, with or without IO flowing. Later runs find the spare in
the recorded membership; keep passing --spares so it is opened.

With --encryption-key-file (drover key new makes a key) a new volume is
encrypted in this process before replication (AES-256-XTS per 4 KiB block):
the replicas, snapshots and backups hold only ciphertext, and later runs
refuse to serve without that key or with another. --rekey-to NEW re-encrypts
the volume under a new key while it serves (see drover volume rekey --help
for the watermark that makes it resumable, and what it refuses); later runs
take NEW as --encryption-key-file.

The data dir is created mode 0700 and replica files 0600. --control adds a
TCP listener for the control API: on loopback it serves this user and root
only (the owner of the caller's socket is checked), as do the NBD export and a
CHAP-less iSCSI portal; elsewhere it needs mutual TLS (--tls-cert, --tls-key,
--tls-ca; see drover certs) or --insecure-listen. Every call that changes the
volume or reads its data is logged with the caller (uid, or certificate).

A web console (volume state, replicas, rebuild progress, snapshots, backups
with --backup-target, events) is served on http://127.0.0.1:7380/ and
Prometheus metrics on http://127.0.0.1:9570/metrics; --console-listen and
--metrics-listen move them ('' turns one off; a busy default is skipped with
a warning). Both serve loopback clients only by default.

The data dir defaults to $XDG_DATA_HOME/drover/dev, or ~/.local/share/drover/dev
(make run uses ./.drover). Only one drover dev may use a data dir at a time.`

const devExample = `  drover dev
  drover dev --size 10GiB --data-dir /var/tmp/drover
  drover dev --data-dir /var/tmp/drover   # then: drover volume info --control unix:/var/tmp/drover/control.sock
  drover dev --control 10.0.0.5:7370 --tls-cert certs/engine.crt --tls-key certs/engine.key --tls-ca certs/ca.crt
  drover dev --nbd-listen 127.0.0.1:10810
  drover dev --spares 1 --replace-after 30s
  drover dev --frontend iscsi --iscsi-listen 0.0.0.0:3260 --iscsi-chap-user u --iscsi-chap-secret 0123456789ab`

func newDevCmd() *cobra.Command {
	var dataDir, volume string
	var cf controlServeFlags
	var ff frontendFlags
	var bf backingFlags
	var mf, conf httpFlag
	var backupTarget string
	var spares, overProvisioning int
	var replaceAfter time.Duration
	var keyFile, passFile, newKeyFile, newPassFile string
	size := sizeFlag{bytes: 1 << 30}
	cmd := &cobra.Command{Use: "dev", Short: "Run a volume with three in-process replicas (the embedded default)",
		Long: devLong, Example: devExample, Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dataDir == "" {
				d, err := defaultDataDir()
				if err != nil {
					return err
				}
				dataDir = d
			}
			backing, err := bf.backing()
			if err != nil {
				return err
			}
			if spares < 0 {
				return fmt.Errorf("--spares %d: want 0 or more", spares)
			}
			o := devOptions{dataDir: dataDir, volume: volume, volumeGiven: cmd.Flags().Changed("volume"),
				sizeBytes: size.bytes, sizeGiven: cmd.Flags().Changed("size"), control: &cf,
				ff: &ff, metrics: &mf, console: &conf, backupTarget: backupTarget, backing: backing, spares: spares,
				replaceAfter: replaceAfter, overProvisioningPercent: overProvisioning, keyFile: keyFile, passFile: passFile,
				newKeyFile: newKeyFile, newPassFile: newPassFile}
			return runDev(cmd, o)
		}}
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "directory holding the replicas (default $XDG_DATA_HOME/drover/dev)")
	cmd.Flags().Var(&size, "size", "volume size when creating it (on a later run: must match, if given)")
	cf.register(cmd.Flags(), "<data-dir>/"+controlSocketName, "--control")
	cmd.Flags().StringVar(&volume, "volume", "dev", "volume name (backups are kept per volume name; the NBD export and iSCSI target take it too)")
	ff.register(cmd.Flags(), "nbd", "unix:<data-dir>/nbd.sock,127.0.0.1:"+defaultNBDPort)
	cmd.Flags().IntVar(&spares, "spares", 0, "spare replicas kept under the data dir (spare-1..N) to replace a failed replica with")
	cmd.Flags().DurationVar(&replaceAfter, "replace-after", time.Minute, "with --spares: a replica failed this long is replaced by a spare (negative: never)")
	cmd.Flags().IntVar(&overProvisioning, "over-provisioning-percent", filestore.DefaultOverProvisioningPercent,
		"largest volume size (at create and expand), in percent of the data dir's disk size")
	cmd.Flags().StringVar(&keyFile, "encryption-key-file", "", "encrypt the new volume with this key (drover key new makes one); later runs need the same key")
	cmd.Flags().StringVar(&passFile, "encryption-passphrase-file", "", "passphrase that opens a wrapped --encryption-key-file")
	cmd.Flags().StringVar(&newKeyFile, "rekey-to", "", "re-encrypt the volume under this new key while it serves (resumed by the next start with the same flags after a stop or crash)")
	cmd.Flags().StringVar(&newPassFile, "rekey-passphrase-file", "", "passphrase that opens a wrapped --rekey-to key")
	bf.register(cmd)
	mf.register(cmd.Flags(), "metrics-listen", defaultDevMetricsAddr, "metrics",
		"serve Prometheus metrics at http://ADDR/metrics ('' for none; the default is skipped with a warning when busy)")
	conf.register(cmd.Flags(), "console-listen", defaultConsoleAddr, "console",
		"serve the web console at http://ADDR/ (loopback only; '' for none; the default is skipped with a warning when busy)")
	cmd.Flags().StringVar(&backupTarget, "backup-target", os.Getenv("DROVER_BACKUP_TARGET"),
		"backup target the web console backs up to and restores from (as drover backup --target; default $DROVER_BACKUP_TARGET)")
	return cmd
}

func defaultDataDir() (string, error) {
	if x := os.Getenv("XDG_DATA_HOME"); x != "" {
		return filepath.Join(x, "drover", "dev"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no --data-dir and no home directory: %w", err)
	}
	return filepath.Join(home, ".local", "share", "drover", "dev"), nil
}

const devReplicas = 3

// devOptions are drover dev's settings.
type devOptions struct {
	dataDir, volume         string
	control                 *controlServeFlags
	volumeGiven, sizeGiven  bool // given on the command line, not defaults
	sizeBytes               uint64
	ff                      *frontendFlags
	metrics, console        *httpFlag
	backupTarget            string
	backing                 *backingRef
	spares                  int
	replaceAfter            time.Duration
	overProvisioningPercent int
	keyFile                 string // --encryption-key-file
	passFile                string // --encryption-passphrase-file
	newKeyFile, newPassFile string // --rekey-to, --rekey-passphrase-file
}

// socket is the control socket in the data dir (or --control-socket).
func (o *devOptions) socket() string {
	if o.control.socket != "" {
		return o.control.socket
	}
	return filepath.Join(o.dataDir, controlSocketName)
}

// defaultSocket is the control socket clients find without --control:
// the one in the default data dir.
func (o *devOptions) defaultSocket() string {
	dir, err := defaultDataDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, controlSocketName)
}

// devVolumeFile records, in the data dir, the name of the volume its
// replicas hold (replicas do not record it; NBD exports, iSCSI targets
// and backups are named after it).
const devVolumeFile = "volume"

func runDev(cmd *cobra.Command, o devOptions) (err error) {
	out := cmd.OutOrStdout()
	if o.sizeBytes == 0 || o.sizeBytes%proto.BlockSize != 0 {
		return fmt.Errorf("--size %d: want a positive multiple of %d", o.sizeBytes, proto.BlockSize)
	}
	_, statErr := os.Stat(o.dataDir)
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	unlock, err := lockDir(o.dataDir)
	if err != nil {
		return err
	}
	defer unlock()
	if errors.Is(statErr, fs.ErrNotExist) {
		// A refused first run leaves no data dir behind.
		defer func() {
			if err != nil {
				os.Remove(filepath.Join(o.dataDir, "lock"))
				if !devHoldsVolume(o.dataDir, o.spares) {
					// The key check goes only with the volume it checks
					// (a stop during the first start keeps both).
					os.Remove(filepath.Join(o.dataDir, devEncryptionFile))
				}
				os.Remove(o.dataDir) // only if empty
			}
		}()
	}
	isNew := !devHoldsVolume(o.dataDir, o.spares)
	if err := o.resolveVolume(isNew); err != nil {
		return err
	}
	frontends, err := o.ff.frontends(o.volume, []string{"unix:" + filepath.Join(o.dataDir, "nbd.sock"), "127.0.0.1:" + defaultNBDPort})
	if err != nil {
		return err
	}
	frontends = append(frontends, devFrontends...)
	// Every address is checked before a volume is created: one in use
	// must not leave a half-made data dir behind.
	ctl, err := listenControl(o.control, o.socket(), true)
	if err != nil {
		return err
	}
	defer ctl.Close()
	if err := o.ff.checkListen(o.volume, []string{"unix:" + filepath.Join(o.dataDir, "nbd.sock"), "127.0.0.1:" + defaultNBDPort}); err != nil {
		return err
	}
	sidecars, closeSidecars, err := o.listenSidecars(out)
	if err != nil {
		return err
	}
	defer closeSidecars()
	if isNew {
		if err := checkSizeAt(o.dataDir, o.sizeBytes, o.overProvisioningPercent); err != nil {
			return err
		}
	}
	crypt, err := devEncryption(out, &o, isNew)
	if err != nil {
		return err
	}
	cfg := enginerun.Config{Volume: o.volume, ReplaceAfter: o.replaceAfter}
	runners, closers, err := o.openReplicas(cmd, &cfg)
	defer func() {
		for _, r := range closers {
			r.Close()
		}
	}()
	if err != nil {
		return err
	}
	if err := o.checkSize(closers); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(o.dataDir, devVolumeFile)); isNew || errors.Is(err, fs.ErrNotExist) {
		// New, or made before the name was recorded: --volume names it.
		if err := os.WriteFile(filepath.Join(o.dataDir, devVolumeFile), []byte(o.volume+"\n"), 0o600); err != nil {
			return fmt.Errorf("data dir: record the volume name: %w", err)
		}
	}
	cfg.Dial = replicarun.LocalDialer(runners)
	return runEngine(cmd.Context(), out, cfg, ctl, ctl.describe(o.defaultSocket()), frontends, crypt, sidecars...)
}

// devHoldsVolume reports whether the data dir holds a volume already:
// whether any of its replica directories has metadata.
func devHoldsVolume(dataDir string, spares int) bool {
	for i := 1; i <= devReplicas+spares; i++ {
		for _, id := range []string{fmt.Sprintf("dev-%d", i), fmt.Sprintf("spare-%d", i)} {
			if _, err := os.Lstat(filepath.Join(dataDir, id, "meta")); err == nil {
				return true
			}
		}
	}
	return false
}

// resolveVolume settles the volume's name: the data dir's recorded name
// wins over the default, and a different --volume is refused (it would
// rename the NBD export, the iSCSI target and the backups' volume).
func (o *devOptions) resolveVolume(isNew bool) error {
	b, err := os.ReadFile(filepath.Join(o.dataDir, devVolumeFile))
	if err != nil || isNew {
		return nil // new, or made before the name was recorded: --volume names it
	}
	held := strings.TrimSpace(string(b))
	switch {
	case held == "" || held == o.volume:
	case o.volumeGiven:
		return fmt.Errorf("data dir %s holds volume %s, not %s: run with --volume %s (or leave --volume out), or use another --data-dir for a new volume %s",
			o.dataDir, held, o.volume, held, o.volume)
	default:
		o.volume = held
	}
	return nil
}

// openReplicas opens the replicas and spares under the data dir and adds
// them to cfg. A replica whose store is damaged goes ERR (an engine
// reaching it is told why) and the volume serves on the others; one that
// cannot be opened at all is an error, unless spares can replace it.
func (o *devOptions) openReplicas(cmd *cobra.Command, cfg *enginerun.Config) (map[string]*replicarun.Runner, []*replicaDir, error) {
	out := cmd.OutOrStdout()
	runners := map[string]*replicarun.Runner{}
	var opened []*replicaDir
	var damaged []string
	for i := 1; i <= devReplicas+o.spares; i++ {
		id := fmt.Sprintf("dev-%d", i)
		if i > devReplicas {
			id = fmt.Sprintf("spare-%d", i-devReplicas)
			cfg.Spares = append(cfg.Spares, enginerun.Replica{ID: proto.ReplicaID(id), Addr: id})
		} else {
			cfg.Replicas = append(cfg.Replicas, enginerun.Replica{ID: proto.ReplicaID(id), Addr: id})
		}
		dir := filepath.Join(o.dataDir, id)
		rep, err := openReplicaDirOn(cmd.Context(), dir, proto.ReplicaID(id), o.sizeBytes, o.backing, o.overProvisioningPercent)
		if err == nil {
			runners[id] = rep.runner
			opened = append(opened, rep)
			fmt.Fprintf(out, "replica %s in %s\n", id, dir)
			continue
		}
		if failed := failedReplica(proto.ReplicaID(id), dir, err); failed != nil {
			runners[id] = failed
			opened = append(opened, &replicaDir{runner: failed})
			if i <= devReplicas {
				damaged = append(damaged, err.Error())
			}
			fmt.Fprintf(out, "replica %s in %s is DAMAGED (ERR; see drover replica ls): %s\n", id, dir, failed.Failed())
			continue
		}
		if o.spares == 0 {
			return nil, opened, err
		}
		// With spares, a replica (or spare) whose directory cannot
		// be opened is a failed one: the engine serves from the
		// others and replaces it after --replace-after.
		fmt.Fprintf(out, "replica %s failed to open (the volume goes on without it; a spare replaces it): %v\n", id, err)
	}
	if len(damaged) == devReplicas {
		return nil, opened, fmt.Errorf("every replica is damaged, nothing to serve from:\n  %s", strings.Join(damaged, "\n  "))
	}
	return runners, opened, nil
}

// checkSize refuses a --size that differs from the size of the volume the
// data dir holds (dev never resizes on its own: that is drover volume
// expand's job, online).
func (o *devOptions) checkSize(reps []*replicaDir) error {
	var held uint64
	for _, r := range reps {
		held = max(held, r.runner.Info().SizeBytes)
	}
	if !o.sizeGiven || held == 0 || held == o.sizeBytes {
		return nil
	}
	fix := fmt.Sprintf("use drover volume expand --size %s --control unix:%s while it runs to grow it", formatSize(o.sizeBytes), o.socket())
	if o.sizeBytes < held {
		fix = "volumes shrink only detached: drover volume expand --allow-shrink --detach"
	}
	return fmt.Errorf("data dir %s holds volume %s of %s, not --size %s: run with --size %s (or leave --size out); %s",
		o.dataDir, o.volume, formatSize(held), formatSize(o.sizeBytes), formatSize(held), fix)
}

// lockDir takes an exclusive lock on dir (a lock file in it), so that two
// processes never run the same replicas. The lock file holds the pid of
// the process holding it, for the error the next one prints.
func lockDir(dir string) (func(), error) {
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		pid, _ := os.ReadFile(path)
		f.Close()
		return nil, fmt.Errorf("lock %s: another drover process (pid %s) uses it: %w", dir, strings.TrimSpace(string(pid)), err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() { f.Close() }, nil
}
