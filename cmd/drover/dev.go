package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/enginerun"
	"github.com/drover-io/drover/transports/replicarun"
)

func init() { subcommands = append(subcommands, newDevCmd) }

const devLong = `Run a complete Drover volume in this one process: three replicas on
directories under the data dir, reached through in-process links (no sockets,
no extra goroutine hop), one engine, and the control API on localhost.

The first run creates the volume with --size. Later runs on the same data dir
reopen it: every write flushed before a crash or stop is there (a clean stop
with Ctrl-C flushes everything acknowledged). --size is then ignored; grow the
volume with drover volume expand.

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

The data dir defaults to $XDG_DATA_HOME/drover/dev, or ~/.local/share/drover/dev
(make run uses ./.drover). Only one drover dev may use a data dir at a time.`

const devExample = `  drover dev
  drover dev --size 10GiB --data-dir /var/tmp/drover
  drover dev --control 127.0.0.1:7371   # then: drover volume info --control 127.0.0.1:7371
  drover dev --nbd-listen 127.0.0.1:10810
  drover dev --spares 1 --replace-after 30s
  drover dev --frontend iscsi --iscsi-listen 0.0.0.0:3260 --iscsi-chap-user u --iscsi-chap-secret 0123456789ab`

func newDevCmd() *cobra.Command {
	var dataDir, controlAddr, volume string
	var ff frontendFlags
	var bf backingFlags
	var spares int
	var replaceAfter time.Duration
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
			frontends, err := ff.frontends(volume, []string{"unix:" + filepath.Join(dataDir, "nbd.sock"), "127.0.0.1:" + defaultNBDPort})
			if err != nil {
				return err
			}
			backing, err := bf.backing()
			if err != nil {
				return err
			}
			if spares < 0 {
				return fmt.Errorf("--spares %d: want 0 or more", spares)
			}
			o := devOptions{dataDir: dataDir, volume: volume, sizeBytes: size.bytes, controlAddr: controlAddr,
				frontends: append(frontends, devFrontends...), backing: backing, spares: spares, replaceAfter: replaceAfter}
			return runDev(cmd, o)
		}}
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "directory holding the replicas (default $XDG_DATA_HOME/drover/dev)")
	cmd.Flags().Var(&size, "size", "volume size when creating it")
	cmd.Flags().StringVar(&controlAddr, "control", defaultControlAddr, "address for the control API")
	cmd.Flags().StringVar(&volume, "volume", "dev", "volume name (backups are kept per volume name; the NBD export and iSCSI target take it too)")
	ff.register(cmd.Flags(), "nbd", "unix:<data-dir>/nbd.sock,127.0.0.1:"+defaultNBDPort)
	cmd.Flags().IntVar(&spares, "spares", 0, "spare replicas kept under the data dir (spare-1..N) to replace a failed replica with")
	cmd.Flags().DurationVar(&replaceAfter, "replace-after", time.Minute, "with --spares: a replica failed this long is replaced by a spare (negative: never)")
	bf.register(cmd)
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
	dataDir, volume, controlAddr string
	sizeBytes                    uint64
	frontends                    []Frontend
	backing                      *backingRef
	spares                       int
	replaceAfter                 time.Duration
}

func runDev(cmd *cobra.Command, o devOptions) error {
	out := cmd.OutOrStdout()
	if o.sizeBytes == 0 || o.sizeBytes%proto.BlockSize != 0 {
		return fmt.Errorf("--size %d: want a positive multiple of %d", o.sizeBytes, proto.BlockSize)
	}
	if err := os.MkdirAll(o.dataDir, 0o755); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	unlock, err := lockDir(o.dataDir)
	if err != nil {
		return err
	}
	defer unlock()
	runners := map[string]*replicarun.Runner{}
	var closers []*replicaDir
	cfg := enginerun.Config{Volume: o.volume, ReplaceAfter: o.replaceAfter}
	open := func(id string) error {
		dir := filepath.Join(o.dataDir, id)
		rep, err := openReplicaDirOn(cmd.Context(), dir, proto.ReplicaID(id), o.sizeBytes, o.backing)
		if err != nil {
			return err
		}
		runners[id] = rep.runner
		closers = append(closers, rep)
		fmt.Fprintf(out, "replica %s in %s\n", id, dir)
		return nil
	}
	defer func() {
		for _, r := range closers {
			r.Close()
		}
	}()
	for i := 1; i <= devReplicas+o.spares; i++ {
		id := fmt.Sprintf("dev-%d", i)
		if i > devReplicas {
			id = fmt.Sprintf("spare-%d", i-devReplicas)
			cfg.Spares = append(cfg.Spares, enginerun.Replica{ID: proto.ReplicaID(id), Addr: id})
		} else {
			cfg.Replicas = append(cfg.Replicas, enginerun.Replica{ID: proto.ReplicaID(id), Addr: id})
		}
		if err := open(id); err != nil {
			if o.spares == 0 {
				return err
			}
			// With spares, a replica (or spare) whose directory cannot
			// be opened is a failed one: the engine serves from the
			// others and replaces it after --replace-after.
			fmt.Fprintf(out, "replica %s failed to open (the volume goes on without it; a spare replaces it): %v\n", id, err)
		}
	}
	cfg.Dial = replicarun.LocalDialer(runners)
	return runEngine(cmd.Context(), out, cfg, o.controlAddr, o.frontends)
}

// lockDir takes an exclusive lock on dir (a lock file in it), so that two
// processes never run the same replicas. The lock file holds the pid of
// the process holding it, for the error the next one prints.
func lockDir(dir string) (func(), error) {
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
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
