package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

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

The data dir defaults to $XDG_DATA_HOME/drover/dev, or ~/.local/share/drover/dev
(make run uses ./.drover). Only one drover dev may use a data dir at a time.`

const devExample = `  drover dev
  drover dev --size 10GiB --data-dir /var/tmp/drover
  drover dev --control 127.0.0.1:7371   # then: drover volume info --control 127.0.0.1:7371
  drover dev --nbd-listen 127.0.0.1:10810
  drover dev --frontend iscsi --iscsi-listen 0.0.0.0:3260 --iscsi-chap-user u --iscsi-chap-secret 0123456789ab`

func newDevCmd() *cobra.Command {
	var dataDir, controlAddr, volume string
	var ff frontendFlags
	var bf backingFlags
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
			return runDev(cmd, dataDir, volume, size.bytes, controlAddr, append(frontends, devFrontends...), backing)
		}}
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "directory holding the replicas (default $XDG_DATA_HOME/drover/dev)")
	cmd.Flags().Var(&size, "size", "volume size when creating it")
	cmd.Flags().StringVar(&controlAddr, "control", defaultControlAddr, "address for the control API")
	cmd.Flags().StringVar(&volume, "volume", "dev", "volume name (backups are kept per volume name; the NBD export and iSCSI target take it too)")
	ff.register(cmd.Flags(), "nbd", "unix:<data-dir>/nbd.sock,127.0.0.1:"+defaultNBDPort)
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

func runDev(cmd *cobra.Command, dataDir, volume string, sizeBytes uint64, controlAddr string, frontends []Frontend, backing *backingRef) error {
	out := cmd.OutOrStdout()
	if sizeBytes == 0 || sizeBytes%proto.BlockSize != 0 {
		return fmt.Errorf("--size %d: want a positive multiple of %d", sizeBytes, proto.BlockSize)
	}
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	unlock, err := lockDir(dataDir)
	if err != nil {
		return err
	}
	defer unlock()
	runners := map[string]*replicarun.Runner{}
	cfg := enginerun.Config{Volume: volume}
	for i := 1; i <= devReplicas; i++ {
		id := fmt.Sprintf("dev-%d", i)
		dir := filepath.Join(dataDir, id)
		rep, err := openReplicaDirOn(cmd.Context(), dir, proto.ReplicaID(id), sizeBytes, backing)
		if err != nil {
			return err
		}
		defer rep.Close()
		runners[id] = rep.runner
		cfg.Replicas = append(cfg.Replicas, enginerun.Replica{ID: proto.ReplicaID(id), Addr: id})
		fmt.Fprintf(out, "replica %s in %s\n", id, dir)
	}
	cfg.Dial = replicarun.LocalDialer(runners)
	return runEngine(cmd.Context(), out, cfg, controlAddr, frontends)
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
