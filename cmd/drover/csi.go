package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/k8s/csi"
	"github.com/drover-io/drover/k8s/pluginreg"
)

func init() { subcommands = append(subcommands, newCSICmd) }

const csiLong = `Serve Drover's CSI driver (CSI spec v1) on a unix socket, for the
Kubernetes CSI sidecars and kubelet.

--mode controller serves the identity and controller services: it runs
beside the manager (external-provisioner, -attacher, -resizer and
-snapshotter talk to it) and turns CreateVolume, ControllerPublishVolume,
CreateSnapshot and ControllerExpandVolume into Volume and Snapshot objects.
--mode node serves the identity and node services on each node (beside the
agent): NodeStageVolume attaches the volume's engine (its NBD export) as a
block device through an nbdfuse file and a loop device, formats it only
when blkid finds nothing on it (ext4 unless the capability asks for xfs; a
device holding another filesystem is refused, never reformatted) and mounts
it; NodePublishVolume bind-mounts it (or the device, for volumeMode Block).
What a stage did is kept in --state-dir, so an unstage after a restart
undoes exactly that. --mode all serves everything (tests, one-node setups).

StorageClass parameters: numberOfReplicas, staleReplicaTimeout (minutes or
a duration), fromBackup, dataLocality, backingImage, frontend, diskSelector,
nodeSelector (comma-separated tags), encrypted (false only, for now),
recurringJobSelector (Longhorn's JSON list of groups). Anything else is
refused with InvalidArgument naming it.`

func newCSICmd() *cobra.Command {
	var kf kubeFlags
	var cfg csi.Config
	var endpoint, mode, registryDir string
	cmd := &cobra.Command{Use: "csi --endpoint unix:///PATH --mode controller|node|all", Short: "Serve the CSI driver (controller and node services)",
		Long: csiLong, Args: cobra.NoArgs,
		Example: `  # controller, beside the manager and the CSI sidecars
  drover csi --mode controller --endpoint unix:///csi/csi.sock

  # node plugin, in the agent's pod on every node
  drover csi --mode node --node-id $NODE_NAME --endpoint unix:///var/lib/kubelet/plugins/driver.drover.io/csi.sock`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := csi.ParseMode(mode)
			if err != nil {
				return fmt.Errorf("--mode: %w", err)
			}
			cfg.Mode = m
			rc, err := kf.config()
			if err != nil {
				return err
			}
			scheme := k8sruntime.NewScheme()
			if err := v1alpha1.AddToScheme(scheme); err != nil {
				return err
			}
			c, err := client.New(rc, client.Options{Scheme: scheme})
			if err != nil {
				return fmt.Errorf("API client: %w", err)
			}
			cfg.Client, cfg.Namespace, cfg.Logger = c, kf.namespace, slog.Default()
			d, err := csi.New(cfg)
			if err != nil {
				return err
			}
			lis, err := csi.Listen(endpoint)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if registryDir == "" || m == csi.ModeController {
				return d.Serve(ctx, lis)
			}
			// Register with the kubelet once the CSI socket listens; the
			// driver stops when the registration server fails.
			name := cfg.Name
			if name == "" {
				name = csi.DefaultDriverName
			}
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			regErr := make(chan error, 1)
			go func() {
				err := pluginreg.Serve(ctx, registryDir, name, endpoint, nil)
				if err != nil {
					cancel()
				}
				regErr <- err
			}()
			err = d.Serve(ctx, lis)
			cancel()
			if rerr := <-regErr; err == nil {
				err = rerr
			}
			return err
		}}
	kf.register(cmd)
	cmd.Flags().StringVar(&endpoint, "endpoint", envOr("CSI_ENDPOINT", "unix:///csi/csi.sock"), "unix socket to serve on ($CSI_ENDPOINT)")
	cmd.Flags().StringVar(&registryDir, "kubelet-registry-dir", "", "the kubelet's plugins_registry directory: register the node service with the kubelet there (node and all modes; e.g. /var/lib/kubelet/plugins_registry)")
	cmd.Flags().StringVar(&mode, "mode", "all", "services to serve: controller, node or all")
	cmd.Flags().StringVar(&cfg.Name, "driver-name", csi.DefaultDriverName, "CSI driver name (the StorageClass's provisioner)")
	cmd.Flags().StringVar(&cfg.NodeID, "node-id", envOr("NODE_NAME", ""), "this node's name, as the agent registers it ($NODE_NAME; node and all modes)")
	cmd.Flags().StringVar(&cfg.Zone, "zone", "", "this node's zone, reported as topology.kubernetes.io/zone")
	cmd.Flags().StringVar(&cfg.StateDir, "state-dir", "/var/lib/drover/csi", "where the node service keeps per-volume state and nbdfuse mounts")
	cmd.Flags().BoolVar(&cfg.HostAttach, "host-attach", false, "start each volume's nbdfuse and NBD relay in the host's mount namespace and the cgroup "+csi.AttachCgroup+
		" (nsenter into PID 1's: the Pod needs hostPID, and --state-dir at the same path on the host), so staged volumes keep their attachment when this container restarts")
	cmd.Flags().DurationVar(&cfg.ReconnectTimeout, "reconnect-timeout", 2*time.Minute, "how long a staged volume's IO waits for its engine to come back (an agent restart) before it fails")
	cmd.Flags().DurationVar(&cfg.AttachTimeout, "attach-timeout", 2*time.Minute, "how long ControllerPublishVolume waits for the engine when its caller sets no deadline")
	return cmd
}
