package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/drover-io/drover/k8s/agent"
	"github.com/drover-io/drover/k8s/manager"
)

func init() { subcommands = append(subcommands, newManagerCmd, newAgentCmd) }

// kubeFlags find the API server.
type kubeFlags struct {
	kubeconfig string
	namespace  string
}

func (k *kubeFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&k.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, then the in-cluster service account)")
	cmd.Flags().StringVar(&k.namespace, "namespace", envOr("DROVER_NAMESPACE", "drover-system"), "namespace holding Drover's objects ($DROVER_NAMESPACE)")
}

func (k *kubeFlags) config() (*rest.Config, error) {
	// controller-runtime logs through logr; send it to slog like the rest.
	ctrl.SetLogger(logr.FromSlogHandler(slog.Default().Handler()))
	var cfg *rest.Config
	var err error
	if k.kubeconfig != "" {
		if cfg, err = clientcmd.BuildConfigFromFlags("", k.kubeconfig); err != nil {
			return nil, fmt.Errorf("--kubeconfig %s: %w", k.kubeconfig, err)
		}
	} else if cfg, err = ctrl.GetConfig(); err != nil {
		return nil, fmt.Errorf("find the API server: %w (give --kubeconfig)", err)
	}
	// client-go's default of 5 requests a second (burst 10) makes the
	// manager take a minute to place 100 volumes; the API server's own
	// priority and fairness protects it.
	if cfg.QPS == 0 {
		cfg.QPS, cfg.Burst = 100, 200
	}
	return cfg, nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

const managerLong = `Run Drover's cluster manager: the controllers that schedule each Volume's
replicas onto Nodes' disks, replace replicas whose node stays down longer
than the volume's staleReplicaTimeout, and put the engine on the node a
volume is attached to (spec.nodeID). It only reads and writes the
storage.drover.io objects; the agents on the nodes run the instances.

Several managers may run; with --leader-elect (the default) one acts at a
time, holding a Lease in the namespace.

With --webhook-port every manager also serves a validating admission
webhook that refuses deleting a Node still holding replicas or engines,
removing a Node's disk that holds replicas, and deleting a BackingImage
volumes use. Its certificate is in --webhook-secret (generated, with a CA,
when missing) and the CA is written into --webhook-configuration's caBundle.`

func newManagerCmd() *cobra.Command {
	var kf kubeFlags
	var cfg manager.Config
	cmd := &cobra.Command{Use: "manager", Short: "Run the Kubernetes controllers (one active per cluster)", Long: managerLong,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rc, err := kf.config()
			if err != nil {
				return err
			}
			cfg.Namespace = kf.namespace
			mgr, err := manager.New(rc, cfg)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return mgr.Start(ctx)
		}}
	kf.register(cmd)
	cmd.Flags().BoolVar(&cfg.LeaderElection, "leader-elect", true, "act only while holding the namespace's drover-manager Lease")
	cmd.Flags().StringVar(&cfg.MetricsAddr, "metrics-addr", "0", "where to serve controller metrics (0: nowhere)")
	cmd.Flags().StringVar(&cfg.HealthAddr, "health-addr", "0", "where to serve health probes (0: nowhere)")
	cmd.Flags().DurationVar(&cfg.Resync, "resync", 5*time.Second, "how often each volume is looked at again without an event")
	cmd.Flags().IntVar(&cfg.Webhook.Port, "webhook-port", 0, "serve the validating admission webhook on this port (0: no webhook)")
	cmd.Flags().StringVar(&cfg.Webhook.Host, "webhook-host", "", "address the webhook listens on (default: every address)")
	cmd.Flags().StringVar(&cfg.Webhook.ServiceName, "webhook-service", "drover-webhook", "the Service in front of the webhook (its DNS names go in the certificate)")
	cmd.Flags().StringArrayVar(&cfg.Webhook.Hosts, "webhook-cert-name", nil, "another DNS name or IP the generated webhook certificate covers (repeatable)")
	cmd.Flags().StringVar(&cfg.Webhook.SecretName, "webhook-secret", "drover-webhook-tls", "TLS Secret holding the webhook's certificate (made with a new CA when missing)")
	cmd.Flags().StringVar(&cfg.Webhook.ConfigurationName, "webhook-configuration", "drover-webhook", "ValidatingWebhookConfiguration whose caBundle the manager sets (empty: leave it)")
	return cmd
}

const agentLong = `Run Drover's node agent (one per node): it registers the node's disks as a
Node object, reports in every --heartbeat, and runs the Replicas and Engines
the manager assigns to the node in this process, serving replicas over TCP
and each engine's volume as an NBD export on --address.`

func newAgentCmd() *cobra.Command {
	var kf kubeFlags
	var cfg agent.Config
	var disks []string
	cmd := &cobra.Command{Use: "agent --node NAME --address IP --disk NAME=PATH", Short: "Run the node agent that runs replicas and engines",
		Long: agentLong, Args: cobra.NoArgs,
		Example: `  drover agent --node worker-1 --address 10.0.0.5 --disk default=/var/lib/drover`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Disks = map[string]string{}
			for _, d := range disks {
				name, path, ok := strings.Cut(d, "=")
				if !ok || name == "" || !strings.HasPrefix(path, "/") {
					return fmt.Errorf("--disk %q: want NAME=/absolute/path", d)
				}
				cfg.Disks[name] = path
			}
			rc, err := kf.config()
			if err != nil {
				return err
			}
			cfg.Namespace = kf.namespace
			mgr, _, err := agent.New(rc, cfg)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return mgr.Start(ctx)
		}}
	kf.register(cmd)
	cmd.Flags().StringVar(&cfg.NodeName, "node", envOr("NODE_NAME", ""), "this node's name ($NODE_NAME)")
	cmd.Flags().StringVar(&cfg.Address, "address", envOr("POD_IP", ""), "IP to serve replicas and NBD exports on ($POD_IP)")
	cmd.Flags().StringVar(&cfg.Zone, "zone", "", "this node's failure zone")
	cmd.Flags().StringArrayVar(&disks, "disk", nil, "a disk for replicas, NAME=PATH (repeatable)")
	cmd.Flags().DurationVar(&cfg.Heartbeat, "heartbeat", 2*time.Second, "how often to report in")
	return cmd
}
