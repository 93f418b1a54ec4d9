package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/backingimage"
	"github.com/drover-io/drover/transports/certs"
	"github.com/drover-io/drover/transports/control/controlpb"
	"github.com/drover-io/drover/transports/enginerun"
	"github.com/drover-io/drover/transports/link"
	"github.com/drover-io/drover/transports/tcp"
)

func init() { subcommands = append(subcommands, newEngineCmd) }

const engineLong = `Run the engine of one volume: it opens the replicas listed in --replicas over
TCP, fences them at a new epoch, resyncs what a crash left unsettled, and then
replicates every write to all of them. Replicas that fail go ERR and are
rebuilt automatically once they are reachable again.

Each replica is named in the volume by its address, or by ID=ADDR. Keep the
names stable across restarts: membership is recorded by name.

--spares lists fresh replicas (on other disks or hosts, each with its own ID)
that the engine rebuilds in place of a member that stays ERR for
--replace-after: the failed member leaves the volume for good (recorded, so
it is never rebuilt back in, even if still listed in --replicas) and the
spare is rebuilt in, copying everything. A restarted engine finds the
replacement in the recorded membership, as long as --replicas or --spares
still tell it the spare's address. --rebuild-rate caps every rebuild's
copying (drover replica add --rate sets one rebuild's).

--backing-image NAME declares that the volume is on that backing image (the
replicas are created on it with drover replica --backing-image): the engine
does not serve if the replicas' chain starts on another image, or, for a new
volume, on none, and prints why. When --images-dir on this node holds the
image, its checksum is checked too: a replica created on another image of the
same name stays ERR (its why names both checksums) and a spare replaces it.

--size is checked against the replicas' size when they open: a larger --size
expands the volume; a smaller one is reported on stderr (volumes never shrink).

The control API (drover volume/snapshot/replica subcommands) is served on
a unix socket (mode 0600, in a directory of its own per volume under
$XDG_RUNTIME_DIR/drover, or /run/drover for root), where clients on this host
find it without flags; --control serves it on TCP instead (add
--control-socket to keep the socket too). Beyond loopback TCP needs mutual TLS
(--tls-cert, --tls-key, --tls-ca; see drover certs) or --insecure-listen.
Every call that changes the volume or reads its data is logged with the
caller. With --tls-* the links to replicas are mutual TLS too (replicas
started with the same CA's certificates; see drover replica).

With --encryption-key-file the frontends' data is encrypted in this process
(AES-256-XTS per 4 KiB block) before replication, as in drover dev; the
engine has no directory to remember the key by, so --encryption-key-check
(from drover key check) must say which key the volume was made with. Use a
key from the volume's first start on: a volume written without it reads as
garbage through it.

With --frontend nbd the volume is also an NBD export named after
the volume (on 127.0.0.1:10809 unless --nbd-listen says otherwise); with
--frontend iscsi an iSCSI target on --iscsi-listen. The default is none.`

const engineExample = `  drover engine --volume vol1 --size 10GiB --replicas 10.0.0.5:7400,10.0.0.6:7400,10.0.0.7:7400
  drover engine --volume vol1 --size 10GiB --replicas r1=10.0.0.5:7400,r2=10.0.0.6:7400 --control 10.0.0.4:7370 --tls-cert engine.crt --tls-key engine.key --tls-ca ca.crt
  drover engine --volume vol1 --replicas 10.0.0.5:7400,10.0.0.6:7400 --frontend nbd --nbd-listen unix:/run/drover/vol1.sock
  drover engine --volume vol1 --replicas r1=10.0.0.5:7400,r2=10.0.0.6:7400,r3=10.0.0.7:7400 --spares s1=10.0.0.8:7400 --rebuild-rate 200MiB`

func newEngineCmd() *cobra.Command {
	var volume, replicas string
	var cf controlServeFlags
	var size sizeFlag
	var timeout time.Duration
	var minHealthy int
	var ff frontendFlags
	var spares string
	var replaceAfter time.Duration
	var rebuildRate sizeFlag
	var bf backingFlags
	var keyFile, passFile, keyCheck string
	var mf, conf httpFlag
	cmd := &cobra.Command{Use: "engine --volume NAME --size SIZE --replicas ADDR,...", Short: "Run a volume's engine over TCP replicas",
		Long: engineLong, Example: engineExample, Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			reps, err := parseReplicas(replicas)
			if err != nil {
				return err
			}
			frontends, err := ff.frontends(volume, []string{"127.0.0.1:" + defaultNBDPort})
			if err != nil {
				return err
			}
			dial, err := replicaDialer(cf.tls.files)
			if err != nil {
				return err
			}
			cfg := enginerun.Config{Volume: volume, Replicas: reps, Dial: dial, Timeout: timeout, MinHealthy: minHealthy,
				ReplaceAfter: replaceAfter, RebuildRate: rebuildRate.bytes}
			if spares != "" {
				if cfg.Spares, err = parseReplicas(spares); err != nil {
					return fmt.Errorf("--spares: %w", err)
				}
			}
			if bf.image != "" {
				if cfg.BackingImage, cfg.BackingSHA256, err = engineBacking(&bf); err != nil {
					return err
				}
			}
			if err := checkDistinctAddrs(append(append([]enginerun.Replica{}, cfg.Replicas...), cfg.Spares...)); err != nil {
				return err
			}
			key, err := engineKey(keyFile, passFile, keyCheck)
			if err != nil {
				return err
			}
			var socket string
			if cf.socket == "" && cf.addr == "" {
				if socket, err = engineSocket(volume); err != nil {
					return err
				}
			}
			ctl, err := listenControl(&cf, socket, false)
			if err != nil {
				return err
			}
			if bf.image != "" {
				go reportOpenFailure(cmd, ctl.self)
			}
			if size.bytes != 0 {
				go ensureSize(cmd, ctl.self, size.bytes)
			}
			sidecars, err := engineSidecars(cmd.OutOrStdout(), &mf, &conf, volume, &ff.conns)
			if err != nil {
				ctl.Close()
				return err
			}
			var crypt *volumeCrypt
			if key != nil {
				crypt = &volumeCrypt{key: key}
			}
			return runEngine(cmd.Context(), cmd.OutOrStdout(), cfg, ctl, ctl.describe(""), frontends, crypt, sidecars...)
		}}
	cmd.Flags().StringVar(&volume, "volume", "", "volume name")
	cmd.Flags().Var(&size, "size", "volume size (expands the volume if the replicas are smaller)")
	cmd.Flags().StringVar(&replicas, "replicas", "", "comma-separated replica addresses (host:port or ID=host:port)")
	cf.register(cmd.Flags(), "<run-dir>/drover/VOLUME/"+controlSocketName+", unless --control gives a TCP address", "--control and the links to replicas")
	cmd.Flags().DurationVar(&timeout, "replica-timeout", 5*time.Second, "a replica that takes longer to answer goes ERR")
	cmd.Flags().IntVar(&minHealthy, "min-healthy", 1, "fewest RW replicas with which writes are still acknowledged")
	cmd.Flags().StringVar(&spares, "spares", "", "comma-separated spare replicas (ID=host:port) to replace failed members with")
	cmd.Flags().DurationVar(&replaceAfter, "replace-after", time.Minute, "a member ERR this long is replaced by a spare (negative: never)")
	cmd.Flags().Var(&rebuildRate, "rebuild-rate", "cap on each rebuild's copying, bytes per second (e.g. 100MiB; default none)")
	cmd.Flags().StringVar(&bf.image, "backing-image", "", "the volume is on this backing image: replicas on another (by name, or by checksum when --images-dir holds it) are refused")
	cmd.Flags().StringVar(&bf.dir, "images-dir", "", "backing images directory to read the image's checksum from (default $XDG_DATA_HOME/drover/images; optional)")
	ff.register(cmd.Flags(), "none", "127.0.0.1:"+defaultNBDPort)
	cmd.Flags().StringVar(&keyFile, "encryption-key-file", "", "encrypt what the frontends write with this key (drover key new); the volume must have been made with it")
	cmd.Flags().StringVar(&passFile, "encryption-passphrase-file", "", "passphrase that opens a wrapped --encryption-key-file")
	cmd.Flags().StringVar(&keyCheck, "encryption-key-check", "", "the key's check value (drover key check), recorded when the volume was made: a wrong key is refused")
	mf.register(cmd.Flags(), "metrics-listen", "", "metrics", "serve Prometheus metrics at http://ADDR/metrics (host:port; default none)")
	conf.register(cmd.Flags(), "console-listen", "", "console", "serve the web console at http://ADDR/ (a loopback host:port; default none)")
	_ = cmd.MarkFlagRequired("volume")
	_ = cmd.MarkFlagRequired("replicas")
	return cmd
}

// replicaDialer dials replicas over TCP, with mutual TLS when the
// engine has certificates.
func replicaDialer(files certs.Files) (link.Dialer, error) {
	if files.Empty() {
		return tcp.Dial, nil
	}
	cfg, err := files.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("TLS to replicas: %w", err)
	}
	return tcp.NewDialer(tcp.DialConfig{TLS: cfg}), nil
}

// engineSocket is the engine's default control socket: one directory per
// volume under the run directory, so clients on this host find it.
func engineSocket(volume string) (string, error) {
	if volume == "" || volume == "." || volume == ".." || strings.ContainsAny(volume, "/\x00") {
		return "", fmt.Errorf("--volume %q: want a name without slashes", volume)
	}
	dir, err := runDir()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("control socket directory: %w", err)
	}
	// Under a shared temporary directory another user could have made
	// it first: use it only if it is ours and closed to others.
	st, err := os.Lstat(dir)
	if err != nil {
		return "", fmt.Errorf("control socket directory: %w", err)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); !st.IsDir() || !ok || int(sys.Uid) != os.Geteuid() || st.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("control socket directory %s is not a directory of this user's closed to others: pass --control-socket", dir)
	}
	return filepath.Join(dir, volume, controlSocketName), nil
}

// parseReplicas parses "ADDR,ID=ADDR,...".
func parseReplicas(s string) ([]enginerun.Replica, error) {
	var out []enginerun.Replica
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		id, addr, ok := strings.Cut(part, "=")
		if !ok {
			id, addr = part, part
		}
		if id == "" || addr == "" {
			return nil, fmt.Errorf("--replicas: %q: want ADDR or ID=ADDR", part)
		}
		out = append(out, enginerun.Replica{ID: proto.ReplicaID(id), Addr: addr})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--replicas: no replica given")
	}
	return out, nil
}

// checkDistinctAddrs refuses two replicas at one address, also when the
// addresses differ only in spelling (localhost:7400 and 127.0.0.1:7400):
// one replica under two IDs would fence itself and take every write
// twice, and the volume would fault at its first flush.
func checkDistinctAddrs(reps []enginerun.Replica) error {
	seen := map[string]proto.ReplicaID{}
	for _, r := range reps {
		key := r.Addr
		if a, err := net.ResolveTCPAddr("tcp", r.Addr); err == nil {
			key = a.String()
		}
		if other, ok := seen[key]; ok {
			return fmt.Errorf("--replicas: %s and %s are the same replica (address %s): list each replica once", other, r.ID, r.Addr)
		}
		seen[key] = r.ID
	}
	return nil
}

// ensureSize expands the volume to sizeBytes once it serves, through the
// control API like any other client.
func ensureSize(cmd *cobra.Command, ct controlTarget, sizeBytes uint64) {
	cf := clientFlags{controlTarget: ct, timeout: 24 * time.Hour}
	err := cf.run(cmd, func(ctx context.Context, c controlpb.ControlClient) error {
		for {
			info, err := c.VolumeInfo(ctx, &controlpb.VolumeInfoRequest{})
			if err == nil && info.GetPhase() == engine.PhaseServing.String() {
				switch {
				case info.GetSizeBytes() < sizeBytes:
					_, err = c.Expand(ctx, &controlpb.ExpandRequest{SizeBytes: sizeBytes})
					return err
				case info.GetSizeBytes() > sizeBytes:
					return fmt.Errorf("--size %s is below the volume's %s (volumes never shrink)", formatSize(sizeBytes), formatSize(info.GetSizeBytes()))
				}
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
	if err != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "drover engine: %v\n", err)
	}
}

// engineBacking returns the image name and, when this node's images
// directory holds it, its SHA-256: the engine then refuses replicas
// created on another image of that name. Without the image here the
// current replicas' checksum is the volume's.
func engineBacking(bf *backingFlags) (name, sha256 string, err error) {
	st, err := bf.store()
	if err != nil {
		return "", "", err
	}
	img, err := st.Get(bf.image)
	switch {
	case err == nil:
		return bf.image, img.SHA256, nil
	case errors.Is(err, backingimage.ErrNotFound):
		return bf.image, "", nil
	}
	return "", "", fmt.Errorf("--backing-image %s: %w", bf.image, err)
}

// reportOpenFailure prints why the engine does not serve (for example a
// backing image mismatch), once per distinct reason, until it serves.
func reportOpenFailure(cmd *cobra.Command, ct controlTarget) {
	cf := clientFlags{controlTarget: ct, timeout: 24 * time.Hour}
	_ = cf.run(cmd, func(ctx context.Context, c controlpb.ControlClient) error {
		last := ""
		for {
			info, err := c.VolumeInfo(ctx, &controlpb.VolumeInfoRequest{})
			if err == nil && info.GetPhase() == engine.PhaseServing.String() {
				return nil
			}
			if err == nil && info.GetWhy() != "" && info.GetWhy() != last {
				last = info.GetWhy()
				fmt.Fprintf(cmd.ErrOrStderr(), "drover engine: not serving: %s\n", last)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
	})
}
