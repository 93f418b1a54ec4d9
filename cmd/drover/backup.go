package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover-io/drover/core/backup"
	"github.com/drover-io/drover/transports/backuprun"
	"github.com/drover-io/drover/transports/control"
	"github.com/drover-io/drover/transports/objstore"
)

func init() { subcommands = append(subcommands, newBackupCmd) }

const backupLong = `Back volumes up to a backup target, list, restore, verify and delete backups.

A backup target is a directory (a local disk or an NFS mount) or an S3 bucket:

  --target /mnt/backups
  --target s3://BUCKET/PREFIX?endpoint=HOST:PORT[&insecure=true][&region=R]

S3 credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or from
--credentials-file (lines "access_key = ..." and "secret_key = ..."). The
target may also be set with DROVER_BACKUP_TARGET.

A backup snapshots the volume (snapshot backup-ID, kept as the base of the
next backup), cuts it into chunks (2 MiB by default), and stores each chunk
once, compressed with zstd and named by the SHA-256 of its content: chunks are
shared by every backup and every volume in the target. The first backup of a
volume reads it whole; later ones read only the chunks that changed since the
previous backup's snapshot. All-zero chunks are not stored. The manifest
listing the chunks is written last, so an interrupted backup leaves no
backup behind, and running it again uploads only the chunks still missing.

Backups are named VOLUME/ID (VOLUME/latest is the newest of a volume).`

const backupExample = `  drover backup create --target /mnt/backups --control 127.0.0.1:7370
  drover backup ls --target /mnt/backups
  drover backup verify dev/latest --target /mnt/backups
  drover backup restore dev/latest --target /mnt/backups --control 127.0.0.1:7371
  drover backup restore dev/20261126T120000.000Z-a1b2c3 --to-file disk.img --target /mnt/backups
  drover backup rm dev/20261126T120000.000Z-a1b2c3 --target /mnt/backups
  AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \
    drover backup create --target 's3://backups/prod?endpoint=s3.example.com'`

// targetFlags open a backup target.
type targetFlags struct {
	target    string
	credsFile string
	parallel  int
	quiet     bool
	timeout   time.Duration
}

func (f *targetFlags) register(cmd *cobra.Command) {
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.target, "target", os.Getenv("DROVER_BACKUP_TARGET"), "backup target: a directory or s3://BUCKET/PREFIX?endpoint=HOST:PORT (default $DROVER_BACKUP_TARGET)")
	pf.StringVar(&f.credsFile, "credentials-file", "", "S3 credentials file (default: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
	pf.IntVar(&f.parallel, "parallel", 4, "chunks transferred at once (1-64)")
	pf.BoolVar(&f.quiet, "quiet", false, "no progress bar")
	pf.DurationVar(&f.timeout, "timeout", 0, "give up after this long (0: never)")
}

func (f *targetFlags) open(cmd *cobra.Command) (context.Context, context.CancelFunc, *backuprun.Repo, error) {
	ctx, cancel := cmd.Context(), context.CancelFunc(func() {})
	if ctx == nil {
		ctx = context.Background()
	}
	if f.timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, f.timeout)
	}
	if f.target == "" {
		cancel()
		return nil, nil, nil, errors.New("no backup target: pass --target DIR or --target s3://BUCKET/PREFIX?endpoint=HOST:PORT (or set DROVER_BACKUP_TARGET)")
	}
	if f.parallel < 1 || f.parallel > 64 {
		cancel()
		return nil, nil, nil, fmt.Errorf("--parallel %d: want 1 to 64", f.parallel)
	}
	creds, err := objstore.CredentialsFromEnv(f.credsFile)
	if err != nil {
		cancel()
		return nil, nil, nil, err
	}
	s, err := objstore.Open(ctx, f.target, creds)
	if err != nil {
		cancel()
		return nil, nil, nil, err
	}
	return ctx, cancel, backuprun.NewRepo(s), nil
}

func (f *targetFlags) progress(cmd *cobra.Command, what string) func(backuprun.Progress) {
	if f.quiet {
		return nil
	}
	return newProgressBar(cmd.ErrOrStderr(), what).update
}

// parseRef parses VOLUME/ID or VOLUME/latest.
func parseRef(ctx context.Context, r *backuprun.Repo, s string) (*backup.Manifest, error) {
	vol, id, ok := strings.Cut(s, "/")
	if !ok || vol == "" || id == "" {
		return nil, fmt.Errorf("backup %q: want VOLUME/ID or VOLUME/latest (see drover backup ls)", s)
	}
	if id == "latest" {
		m, err := r.Latest(ctx, vol)
		if err == nil && m == nil {
			err = fmt.Errorf("%w: volume %s has no backups in %s", backuprun.ErrNoBackup, vol, r.Store)
		}
		return m, err
	}
	return r.Manifest(ctx, vol, id)
}

func newBackupCmd() *cobra.Command {
	var tf targetFlags
	cmd := &cobra.Command{Use: "backup", Short: "Back volumes up to a directory or S3, and restore them", Long: backupLong,
		Example: backupExample, Args: cobra.NoArgs}
	tf.register(cmd)
	cmd.AddCommand(newBackupCreateCmd(&tf), newBackupLsCmd(&tf), newBackupRmCmd(&tf), newBackupRestoreCmd(&tf),
		newBackupVerifyCmd(&tf), newBackupGCCmd(&tf))
	return cmd
}

func newBackupCreateCmd(tf *targetFlags) *cobra.Command {
	var ct controlTarget
	var labels []string
	var full, keepSnapshots bool
	chunk, rate := sizeFlag{bytes: backup.DefaultChunkBytes}, sizeFlag{}
	c := &cobra.Command{Use: "create", Short: "Back up the volume of a running engine", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opt := backuprun.CreateOptions{Parallel: tf.parallel, RateBytes: int64(rate.bytes), Full: full, Labels: map[string]string{}}
			if chunk.bytes%backup.BlockSize != 0 || chunk.bytes == 0 || chunk.bytes > 64<<20 {
				return fmt.Errorf("--chunk-size %d: want a multiple of 4KiB up to 64MiB", chunk.bytes)
			}
			if cmd.Flags().Changed("chunk-size") {
				opt.ChunkBytes = uint32(chunk.bytes) // else: the parent's, or the default for a full backup
			}
			for _, l := range labels {
				k, v, ok := strings.Cut(l, "=")
				if !ok || k == "" {
					return fmt.Errorf("--label %q: want KEY=VALUE", l)
				}
				opt.Labels[k] = v
			}
			ctx, cancel, r, err := tf.open(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			cc, conn, err := ct.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			opt.Progress = tf.progress(cmd, "backup")
			start := time.Now()
			m, st, err := r.Create(ctx, control.BackupVolume{C: cc}, opt)
			if err != nil {
				return fmt.Errorf("backup of the volume at %s to %s: %w", ct.addr, r.Store, err)
			}
			secs := time.Since(start).Seconds()
			kind := "full"
			if st.Parent != "" {
				kind = "incremental to " + st.Parent
			}
			fmt.Fprintf(cmd.OutOrStdout(), "backup %s/%s (%s): %d chunks of %s; read %d (%s, %.1f MB/s), stored %d new (%s compressed), %d already stored, %d zero\n",
				m.Volume, m.ID, kind, st.Chunks, formatSize(uint64(m.ChunkBytes)), st.ChunksRead, humanBytes(st.BytesRead),
				float64(st.BytesRead)/1e6/secs, st.ChunksStored, humanBytes(st.BytesStored), st.ChunksDeduped, st.ChunksZero)
			if keepSnapshots {
				return nil
			}
			// The new snapshot is the next backup's base; older backup
			// snapshots go (a merge into the next layer: it may take a while).
			dropped, err := backuprun.DropOldSnapshots(ctx, control.BackupVolume{C: cc}, m)
			if len(dropped) > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "deleted older backup snapshots %s\n", strings.Join(dropped, ", "))
			}
			if err != nil {
				return fmt.Errorf("the backup is complete, but deleting older backup snapshots failed (the next backup retries): %w", err)
			}
			return nil
		}}
	ct.register(c.Flags(), "control API of the engine serving the volume")
	c.Flags().StringArrayVar(&labels, "label", nil, "KEY=VALUE kept in the backup (repeatable)")
	c.Flags().BoolVar(&full, "full", false, "read the whole volume even if an earlier backup exists")
	c.Flags().BoolVar(&keepSnapshots, "keep-snapshots", false, "keep older backup snapshots (by default only the newest stays, as the next backup's base)")
	c.Flags().Var(&chunk, "chunk-size", "chunk size of a full backup (incremental ones keep their parent's)")
	c.Flags().Var(&rate, "rate-limit", "upload at most this many bytes per second (e.g. 50MiB; default: no limit)")
	return c
}

func newBackupLsCmd(tf *targetFlags) *cobra.Command {
	return &cobra.Command{Use: "ls [VOLUME]", Short: "List backups, oldest first per volume", Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel, r, err := tf.open(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			vol := ""
			if len(args) == 1 {
				vol = args[0]
			}
			refs, err := r.List(ctx, vol)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 8, 2, ' ', 0)
			fmt.Fprintln(w, "BACKUP\tCREATED\tSIZE\tCHUNKS\tSTORED\tPARENT\tLABELS")
			for _, ref := range refs {
				m, err := r.Manifest(ctx, ref.Volume, ref.ID)
				if err != nil {
					fmt.Fprintf(w, "%s/%s\t(unreadable: %v)\n", ref.Volume, ref.ID, err)
					continue
				}
				data, stored := 0, uint64(0)
				for _, c := range m.Chunks {
					if !c.Zero {
						data++
						stored += uint64(c.StoredBytes)
					}
				}
				parent := m.Parent
				if parent == "" {
					parent = "-"
				}
				fmt.Fprintf(w, "%s/%s\t%s\t%s\t%d\t%s\t%s\t%s\n", m.Volume, m.ID, time.Unix(m.CreatedUnix, 0).UTC().Format(time.RFC3339),
					formatSize(m.SizeBytes), data, humanBytes(stored), parent, formatLabels(m.Labels))
			}
			return w.Flush()
		}}
}

func formatLabels(l map[string]string) string {
	var out []string
	for k, v := range l {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	if len(out) == 0 {
		return "-"
	}
	return strings.Join(out, ",")
}

func newBackupRmCmd(tf *targetFlags) *cobra.Command {
	return &cobra.Command{Use: "rm VOLUME/ID", Short: "Delete a backup and the chunks nothing else uses", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel, r, err := tf.open(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			m, err := parseRef(ctx, r, args[0])
			if err != nil {
				return err
			}
			st, err := r.Delete(ctx, m.Volume, m.ID)
			if err != nil {
				return err
			}
			printSweep(cmd.OutOrStdout(), fmt.Sprintf("deleted backup %s/%s", m.Volume, m.ID), st)
			return nil
		}}
}

func printSweep(w io.Writer, head string, st backuprun.SweepStats) {
	if st.Deferred != nil {
		fmt.Fprintf(w, "%s; its chunks stay until a later 'drover backup gc': %v\n", head, st.Deferred)
		return
	}
	fmt.Fprintf(w, "%s; %d unreferenced chunks of %d removed\n", head, st.Deleted, st.Chunks)
}

func newBackupGCCmd(tf *targetFlags) *cobra.Command {
	return &cobra.Command{Use: "gc", Short: "Remove chunks no backup references (deferred while a backup runs)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel, r, err := tf.open(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			st, err := r.Sweep(ctx)
			if err != nil {
				return err
			}
			printSweep(cmd.OutOrStdout(), "gc", st)
			return nil
		}}
}

func newBackupRestoreCmd(tf *targetFlags) *cobra.Command {
	var file, devDir string
	var ct controlTarget
	var overwrite bool
	var replicaDirs []string
	c := &cobra.Command{Use: "restore VOLUME/ID", Short: "Restore a backup to a volume, new replica directories, or an image file",
		Long: `Restore a backup into the volume of a running engine (--control: it should be a new,
empty volume; it is grown to the backup's size if smaller), straight into new
replica directories without an engine (--to-dev-dir D makes D/dev-1..3 for
"drover dev --data-dir D"; --to-replica-dirs D1,D2,... makes replicas named
after each directory for "drover replica --dir Di"), or into a raw image file
(--to-file). Every chunk is checked against its SHA-256 before it is written:
a damaged or missing chunk stops the restore with an error naming it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel, r, err := tf.open(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			m, err := parseRef(ctx, r, args[0])
			if err != nil {
				return err
			}
			var target backuprun.Target
			where := file
			if devDir != "" || len(replicaDirs) > 0 {
				dirs, ids := devReplicaDirs(devDir)
				if len(replicaDirs) > 0 {
					dirs, ids = replicaDirs, nil
					for _, d := range replicaDirs {
						ids = append(ids, filepath.Base(filepath.Clean(d)))
					}
				}
				rs, err := openReplicaSet(dirs, ids, m.SizeBytes)
				if err != nil {
					return err
				}
				defer rs.Close()
				target, where = rs, "replicas "+strings.Join(dirs, ", ")
			} else if file != "" {
				f, err := os.OpenFile(file, os.O_RDWR|os.O_CREATE, 0o600)
				if err != nil {
					return err
				}
				defer f.Close()
				target = backuprun.File{F: f}
			} else {
				cc, conn, err := ct.dial()
				if err != nil {
					return err
				}
				defer conn.Close()
				target, where = control.BackupVolume{C: cc}, "the volume at "+ct.addr
			}
			start := time.Now()
			opt := backuprun.RestoreOptions{Parallel: tf.parallel, Progress: tf.progress(cmd, "restore"), All: overwrite}
			if err := r.Restore(ctx, m, target, opt); err != nil {
				return fmt.Errorf("restore %s/%s to %s: %w", m.Volume, m.ID, where, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "restored %s/%s (%s) to %s in %.1fs\n", m.Volume, m.ID, formatSize(m.SizeBytes), where, time.Since(start).Seconds())
			return nil
		}}
	ct.register(c.Flags(), "control API of the engine serving the volume to restore into")
	c.Flags().StringVar(&file, "to-file", "", "restore into this image file instead of a volume")
	c.Flags().BoolVar(&overwrite, "overwrite", false, "the target holds data: write the backup's zero chunks as zeros too (by default they are skipped, as on a new volume)")
	c.Flags().StringVar(&devDir, "to-dev-dir", "", "restore into new replicas DIR/dev-1..3 for drover dev --data-dir DIR")
	c.Flags().StringSliceVar(&replicaDirs, "to-replica-dirs", nil, "restore into new replica directories (comma-separated) for drover replica --dir")
	return c
}

func newBackupVerifyCmd(tf *targetFlags) *cobra.Command {
	return &cobra.Command{Use: "verify VOLUME/ID", Short: "Re-read every chunk of a backup and check its hash", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel, r, err := tf.open(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			m, err := parseRef(ctx, r, args[0])
			if err != nil {
				return err
			}
			if err := r.Verify(ctx, m, tf.parallel, tf.progress(cmd, "verify")); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "backup %s/%s: every chunk is intact\n", m.Volume, m.ID)
			return nil
		}}
}

// humanBytes renders n in decimal units, one decimal.
func humanBytes(n uint64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.1f GB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1f kB", float64(n)/1e3)
	}
	return fmt.Sprintf("%d B", n)
}

// progressBar draws one line on a terminal (or a line every few seconds
// elsewhere): a bar, chunks done, bytes moved, and the rate.
type progressBar struct {
	w     io.Writer
	what  string
	start time.Time
	last  time.Time
	tty   bool
	unit  string // what ChunksDone counts (default "chunks")
}

func newProgressBar(w io.Writer, what string) *progressBar {
	tty := false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &progressBar{w: w, what: what, start: time.Now(), tty: tty, unit: "chunks"}
}

func (p *progressBar) update(pr backuprun.Progress) {
	now := time.Now()
	final := pr.ChunksDone == pr.ChunksTotal
	every := 5 * time.Second
	if p.tty {
		every = 200 * time.Millisecond
	}
	if !final && now.Sub(p.last) < every {
		return
	}
	p.last = now
	pct := 100.0
	if pr.ChunksTotal > 0 {
		pct = 100 * float64(pr.ChunksDone) / float64(pr.ChunksTotal)
	}
	const width = 30
	filled := int(pct / 100 * width)
	bar := strings.Repeat("#", filled) + strings.Repeat(".", width-filled)
	moved := max(pr.BytesRead, pr.BytesStored)
	rate := float64(moved) / 1e6 / max(now.Sub(p.start).Seconds(), 1e-3)
	line := fmt.Sprintf("%s [%s] %5.1f%% %d/%d %s %s %.1f MB/s", p.what, bar, pct, pr.ChunksDone, pr.ChunksTotal, p.unit, humanBytes(moved), rate)
	switch {
	case p.tty && final:
		fmt.Fprintf(p.w, "\r%s\n", line)
	case p.tty:
		fmt.Fprintf(p.w, "\r%s", line)
	default:
		fmt.Fprintln(p.w, line)
	}
}
