package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/certs"
	"github.com/drover-io/drover/transports/control/controlpb"
	"github.com/drover-io/drover/transports/filestore"
	"github.com/drover-io/drover/transports/tcp"
)

func init() { subcommands = append(subcommands, newReplicaCmd) }

const replicaLong = `Serve one replica over TCP, or manage the replicas of a running engine.

drover replica --dir D --listen ADDR serves the replica stored in directory D
to engines on ADDR (the binary data protocol, one TCP connection per engine).
If D holds no replica and --size is given, an empty one of that size is
created; an existing replica keeps its size (engines grow it on expand). A
size D's file system cannot address, or over --over-provisioning-percent of
its disk (100 by default), is refused at create and at expand, before
anything is written. A replica whose files are damaged (metadata or index
that does not load) stays up and answers engines with the damage, so the
engine shows it ERR with the reason; nothing is wiped.

Anyone who reaches ADDR could read and overwrite the volume, so beyond
loopback the replica needs mutual TLS (--tls-cert, --tls-key, --tls-ca from
drover certs; it then serves only engines with a certificate from the same CA,
run with --tls-* too) or --insecure-listen, which warns at every start. The
directory is created 0700 and its files 0600.

The subcommands talk to a running engine's control API instead:
  ls   lists the volume's replicas with their modes (RW, WO = rebuilding, ERR)
  add  adds a replica (by address) and rebuilds it into the volume (--wait
       shows a progress bar; --replaces removes a failed one afterwards)
  rm   takes a replica out of the volume
checksum reads a stopped replica's directory and prints its content's SHA-256.`

const replicaExample = `  drover replica --dir /var/lib/drover/r1 --listen 10.0.0.5:7400 --size 10GiB --tls-cert r1.crt --tls-key r1.key --tls-ca ca.crt
  drover replica --dir /tmp/r1 --listen 127.0.0.1:7400 --size 1GiB
  drover replica ls
  drover replica add 10.0.0.7:7400
  drover replica add 10.0.0.8:7400 --id s1 --replaces r3 --wait
  drover replica rm 10.0.0.7:7400
  drover replica checksum --dir /var/lib/drover/r1`

func newReplicaCmd() *cobra.Command {
	var dir, listen, id string
	var size sizeFlag
	var bf backingFlags
	var overProvisioning int
	var tf tlsFlags
	var insecure bool
	var mf httpFlag
	cmd := &cobra.Command{Use: "replica --dir D --listen ADDR", Short: "Serve a replica over TCP, or list/add/remove an engine's replicas",
		Long: replicaLong, Example: replicaExample, Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" || listen == "" {
				return fmt.Errorf("drover replica needs --dir and --listen (or a subcommand: ls, add, rm, checksum)")
			}
			if id == "" {
				id = filepath.Base(filepath.Clean(dir))
			}
			backing, err := bf.backing()
			if err != nil {
				return err
			}
			tlsCfg, err := replicaTLS(listen, tf.files, insecure)
			if err != nil {
				return err
			}
			return serveReplica(cmd, replicaServeOptions{dir: dir, listen: listen, id: proto.ReplicaID(id), createBytes: size.bytes,
				backing: backing, overProvisioningPercent: overProvisioning, tls: tlsCfg, metrics: &mf})
		}}
	bf.register(cmd)
	cmd.Flags().IntVar(&overProvisioning, "over-provisioning-percent", filestore.DefaultOverProvisioningPercent,
		"largest volume size this replica takes (at create and expand), in percent of its disk's size")
	cmd.Flags().StringVar(&dir, "dir", "", "directory holding the replica")
	cmd.Flags().StringVar(&listen, "listen", "", "TCP address to serve engines on (host:port)")
	cmd.Flags().StringVar(&id, "id", "", "replica name recorded when creating it (default: the directory's name)")
	cmd.Flags().Var(&size, "size", "create an empty replica of this size if the directory holds none")
	tf.register(cmd.Flags(), "--listen: engines must present a certificate from the same CA")
	cmd.Flags().BoolVar(&insecure, "insecure-listen", false, "allow --listen beyond loopback without TLS: anyone who reaches it can read and overwrite the volume")
	mf.register(cmd.Flags(), "metrics-listen", "", "metrics", "serve Prometheus metrics at http://ADDR/metrics (host:port; default none)")
	var cf clientFlags
	ls := &cobra.Command{Use: "ls", Short: "List the volume's replicas and their modes", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cf.run(cmd, func(ctx context.Context, c controlpb.ControlClient) error {
				info, err := c.VolumeInfo(ctx, &controlpb.VolumeInfoRequest{})
				if err != nil {
					return err
				}
				printReplicas(cmd.OutOrStdout(), info.GetReplicas())
				printRebuild(cmd.OutOrStdout(), info)
				return nil
			})
		}}
	add := newReplicaAddCmd(&cf)
	rm := &cobra.Command{Use: "rm ID", Short: "Take a replica out of the volume", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cf.run(cmd, func(ctx context.Context, c controlpb.ControlClient) error {
				_, err := c.ReplicaRemove(ctx, &controlpb.ReplicaRemoveRequest{Id: args[0]})
				return err
			})
		}}
	for _, sub := range []*cobra.Command{ls, add, rm} {
		cf.register(sub)
	}
	cmd.AddCommand(ls, add, rm, newReplicaChecksumCmd())
	return cmd
}

func newReplicaChecksumCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{Use: "checksum --dir D", Short: "Print the SHA-256 of a stopped replica's content",
		Long: `Open the replica in --dir (which no process may be serving), fence it at a new
epoch as an engine would, read its whole content, and print its SHA-256 and
size. Replicas of one volume that are in sync print the same checksum.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			unlock, err := lockDir(dir)
			if err != nil {
				return err
			}
			defer unlock()
			r, err := openReplicaDir(dir, "", 0)
			if err != nil {
				return err
			}
			defer r.Close()
			sum, size, err := r.checksum(nil)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s  %d\n", sum, size)
			return nil
		}}
	cmd.Flags().StringVar(&dir, "dir", "", "directory holding the replica")
	_ = cmd.MarkFlagRequired("dir")
	return cmd
}

// replicaTLS is the replica's TLS configuration, or nil; a plain listen
// beyond loopback is refused unless insecure.
func replicaTLS(listen string, files certs.Files, insecure bool) (*tls.Config, error) {
	if !files.Empty() {
		cfg, err := files.ServerConfig()
		if err != nil {
			return nil, fmt.Errorf("replica TLS: %w", err)
		}
		return cfg, nil
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("--listen %q: %w", listen, err)
	}
	switch {
	case isLoopbackHost(host):
	case insecure:
		slog.Warn("replica listens without TLS (--insecure-listen): anyone who can reach it can read and overwrite the volume", "addr", listen)
	default:
		return nil, fmt.Errorf("replica on %s: refusing plain TCP beyond loopback: anyone who can reach it could read or overwrite the volume; "+
			"give it certificates (drover certs init, drover certs issue NAME --host HOST, then --tls-cert/--tls-key/--tls-ca, and the same CA to the engine), "+
			"listen on 127.0.0.1, or pass --insecure-listen on a network you trust", listen)
	}
	return nil, nil
}

// replicaServeOptions say what serveReplica serves and how.
type replicaServeOptions struct {
	dir, listen             string
	id                      proto.ReplicaID
	createBytes             uint64
	backing                 *backingRef
	overProvisioningPercent int
	tls                     *tls.Config // nil: plain TCP
	metrics                 *httpFlag
}

// serveReplica runs one replica over TCP until SIGINT or SIGTERM.
func serveReplica(cmd *cobra.Command, o replicaServeOptions) error {
	dir, listen, id := o.dir, o.listen, o.id
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("replica dir: %w", err)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return err
	}
	defer unlock()
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("replica %s: listen on %s: %w", id, listen, err)
	}
	defer lis.Close()
	ml, err := o.metrics.listen(cmd.OutOrStdout())
	if err != nil {
		return err
	}
	if ml != nil {
		defer ml.Close()
	}
	r, err := openReplicaDirOn(cmd.Context(), dir, id, o.createBytes, o.backing, o.overProvisioningPercent)
	if err != nil {
		// A damaged replica stays up and tells engines why it serves
		// nothing (they mark it ERR with that reason, replica ls shows
		// it, a spare replaces it): exiting would leave the engine only
		// "connection refused", and a supervisor restarting it forever.
		failed := failedReplica(id, dir, err)
		if failed == nil {
			return err
		}
		r = &replicaDir{runner: failed}
	}
	defer r.Close()
	srv := tcp.NewServer(r.runner, func(format string, args ...any) { slog.Info(fmt.Sprintf(format, args...)) })
	if o.tls != nil {
		srv.RequireTLS(o.tls)
	} else {
		srv.AcceptOnly(localPeerOnly) // on loopback, only this user's (and root's) engines
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if why := r.runner.Failed(); why != "" {
		fmt.Fprintf(cmd.OutOrStdout(), "replica %s in %s DAMAGED, answering engines on %s with: %s\n", id, dir, lis.Addr(), why)
	} else {
		info := r.runner.Info()
		fmt.Fprintf(cmd.OutOrStdout(), "replica %s (%s) in %s serving on %s (TLS: %v)\n", info.ID, formatSize(info.SizeBytes), dir, lis.Addr(), o.tls != nil)
	}
	if ml != nil {
		if err := serveReplicaMetrics(ctx, cmd.OutOrStdout(), ml, r.runner, dir, srv.Connections); err != nil {
			return err
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case <-ctx.Done():
		srv.Close()
		return nil
	case err := <-errc:
		return fmt.Errorf("replica %s: serve: %w", id, err)
	}
}

// checksum fences the replica at an epoch above its own (as an engine
// opening it would), reads its whole merged view, and returns the SHA-256
// of the content and the size.
func (r *replicaDir) checksum(w io.Writer) (string, uint64, error) {
	info := r.runner.Info()
	epoch := info.Epoch + 1
	if rep := r.runner.Do(proto.Request{ID: 1, Epoch: epoch, Op: proto.OpOpen}); rep.Status != proto.StatusOK {
		return "", 0, fmt.Errorf("open replica %s: %v %s", info.ID, rep.Status, rep.Err)
	}
	h := sha256.New()
	blocks := info.SizeBytes / proto.BlockSize
	for b, id := uint64(0), uint64(2); b < blocks; b, id = b+1024, id+1 {
		n := uint32(min(1024, blocks-b))
		rep := r.runner.Do(proto.Request{ID: id, Epoch: epoch, Op: proto.OpRead, BlockIndex: b, BlockCount: n})
		if rep.Status != proto.StatusOK {
			return "", 0, fmt.Errorf("read replica %s blocks [%d, +%d): %v %s", info.ID, b, n, rep.Status, rep.Err)
		}
		h.Write(rep.Data)
		if w != nil {
			if _, err := w.Write(rep.Data); err != nil {
				return "", 0, fmt.Errorf("write output: %w", err)
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil)), info.SizeBytes, nil
}
