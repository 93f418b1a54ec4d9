// Package manager is Drover's cluster-wide controller process: one active
// copy (leader election) runs the controllers that turn Volumes into
// Replica and Engine objects with a node name. It never dials a node: the
// agents read those objects and run the instances.
//
// Controllers:
//
//   - settings: creates every Setting missing from the namespace with its
//     default at start.
//   - nodes: marks a Node not Ready when its agent's heartbeat is older
//     than the node-down-grace-period Setting.
//   - recurring jobs: on the cron schedule, a Snapshot (or a Backup) of
//     every attached volume in the job's groups; the job's snapshots
//     (backups) beyond retain are deleted.
//   - backups: a deleted Backup is deleted from its target.
//   - webhook (every copy, when configured): refuses deleting a Node
//     that holds replicas or engines, removing a disk that holds
//     replicas, deleting a BackingImage volumes use (webhook.go).
//   - volumes: finalizer, replica scheduling (k8s/schedule) and
//     replenishment, failed-replica marking and stale-replica removal
//     (never the last healthy copy), the engine on the attaching node,
//     and the volume's status (state, robustness, Scheduled condition).
package manager

import (
	"context"
	"fmt"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
)

// Config sets up a manager.
type Config struct {
	// Namespace holds every Drover object the manager watches.
	Namespace string
	// LeaderElection makes only one of several managers act at a time
	// (a Lease named LeaderElectionID in Namespace).
	LeaderElection   bool
	LeaderElectionID string
	// MetricsAddr and HealthAddr are where controller-runtime serves
	// metrics and health probes ("0": not served).
	MetricsAddr, HealthAddr string
	// Resync is how often every volume is looked at again even without an
	// event, so time-based decisions (stale replicas) happen (default 5s).
	Resync time.Duration
	// Webhook is the validating admission webhook (off unless its Port is
	// set).
	Webhook WebhookConfig
}

// Scheme holds the types the manager reads and writes.
func Scheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("scheme: %w", err)
	}
	// Secrets: backup targets' credentials and volumes' keys.
	if err := corev1.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("scheme: %w", err)
	}
	// The webhook's ValidatingWebhookConfiguration (its caBundle).
	if err := admissionregistrationv1.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("scheme: %w", err)
	}
	return s, nil
}

// New builds a manager with its controllers; Start runs it.
func New(cfg *rest.Config, c Config) (manager.Manager, error) {
	if c.Namespace == "" {
		return nil, fmt.Errorf("manager: no namespace given")
	}
	if c.LeaderElectionID == "" {
		c.LeaderElectionID = "drover-manager"
	}
	if c.Resync <= 0 {
		c.Resync = 5 * time.Second
	}
	scheme, err := Scheme()
	if err != nil {
		return nil, err
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  scheme,
		Cache:                   cache.Options{DefaultNamespaces: map[string]cache.Config{c.Namespace: {}}},
		LeaderElection:          c.LeaderElection,
		LeaderElectionID:        c.LeaderElectionID,
		LeaderElectionNamespace: c.Namespace,
		// A manager that loses its lease exits: its cache and queues may
		// be behind the new leader's writes.
		LeaderElectionReleaseOnCancel: true,
		Metrics:                       metricsserver.Options{BindAddress: orZero(c.MetricsAddr)},
		// A process runs one manager; tests run several one after
		// another, which would trip the global controller-name check.
		Controller:             ctrlconfig.Controller{SkipNameValidation: ptr(true)},
		HealthProbeBindAddress: orZero(c.HealthAddr),
	})
	if err != nil {
		return nil, fmt.Errorf("manager: %w", err)
	}
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		return ensureSettings(ctx, mgr.GetClient(), c.Namespace)
	})); err != nil {
		return nil, err
	}
	if err := (&nodeReconciler{Client: mgr.GetClient(), ns: c.Namespace}).setup(mgr); err != nil {
		return nil, fmt.Errorf("node controller: %w", err)
	}
	if err := (&recurringJobReconciler{Client: mgr.GetClient(), ns: c.Namespace}).setup(mgr); err != nil {
		return nil, fmt.Errorf("recurring job controller: %w", err)
	}
	if err := (&backupReconciler{Client: mgr.GetClient(), secrets: mgr.GetAPIReader()}).setup(mgr); err != nil {
		return nil, fmt.Errorf("backup controller: %w", err)
	}
	if c.Webhook.Port > 0 {
		if err := setupWebhook(mgr, c.Namespace, c.Webhook); err != nil {
			return nil, fmt.Errorf("webhook: %w", err)
		}
	}
	vr := &volumeReconciler{Client: mgr.GetClient(), secrets: mgr.GetAPIReader(), ns: c.Namespace, resync: c.Resync}
	if err := vr.setup(mgr); err != nil {
		return nil, fmt.Errorf("volume controller: %w", err)
	}
	return mgr, nil
}

func orZero(addr string) string {
	if addr == "" {
		return "0"
	}
	return addr
}

// ensureSettings creates every Setting the namespace lacks with its
// default; existing ones keep their values.
func ensureSettings(ctx context.Context, c client.Client, ns string) error {
	for name, def := range v1alpha1.SettingDefinitions {
		s := &v1alpha1.Setting{}
		s.Name, s.Namespace, s.Value = name, ns, def.Default
		if err := c.Create(ctx, s); err != nil && !isAlreadyExists(err) {
			return fmt.Errorf("create setting %s: %w", name, err)
		}
	}
	<-ctx.Done()
	return nil
}

func ptr[T any](v T) *T { return &v }
