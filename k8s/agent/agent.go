// Package agent is Drover's per-node process (a DaemonSet in a cluster):
// it registers its Node and disks, heartbeats, and runs the Replica and
// Engine instances the manager assigned to its node in-process, on the
// same transports as drover replica and drover engine (filestore +
// replicarun behind the TCP data server; enginerun with TCP links and an
// NBD frontend). It reports their state in the objects' status; a
// failed start is retried with controller-runtime's exponential backoff.
//
// The agent keeps nothing a restart would miss: everything it runs is
// named by the objects, and a replica's data is found again on its disk.
package agent

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
)

// Finalizer is the agent's finalizer on Replicas and Engines: the agent
// removes it once the instance is stopped (and a replica's data removed).
const Finalizer = "storage.drover.io/agent"

// Config sets up an agent.
type Config struct {
	// Namespace holds Drover's objects.
	Namespace string
	// NodeName is this node's name (the Node object's).
	NodeName string
	// Address is the IP this node's replicas and frontends listen on, and
	// other nodes reach them at.
	Address string
	// Zone is the node's failure zone ("" when unknown).
	Zone string
	// Disks maps disk names to directories.
	Disks map[string]string
	// Heartbeat is how often the agent reports in (default 2s).
	Heartbeat time.Duration
	// Logger receives the agent's log (default slog.Default()).
	Logger *slog.Logger
}

// Agent runs one node's instances.
type Agent struct {
	cfg    Config
	client client.Client
	// secrets reads credential secrets uncached (see backuptarget.Open).
	secrets client.Reader
	log     *slog.Logger

	mu       sync.Mutex
	replicas map[string]*replicaInstance
	engines  map[string]*engineInstance
}

// New builds an agent on a controller-runtime manager; Start runs it.
func New(restCfg *rest.Config, c Config) (manager.Manager, *Agent, error) {
	if c.Namespace == "" || c.NodeName == "" || c.Address == "" {
		return nil, nil, fmt.Errorf("agent: namespace, node name and address are required")
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 2 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return nil, nil, err
	}
	// Secrets: backup targets' credentials and volumes' keys.
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, nil, err
	}
	mine := labels.SelectorFromSet(labels.Set{v1alpha1.LabelNode: c.NodeName})
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme: scheme,
		Cache: cache.Options{DefaultNamespaces: map[string]cache.Config{c.Namespace: {}},
			ByObject: map[client.Object]cache.ByObject{
				&v1alpha1.Replica{}: {Label: mine},
				&v1alpha1.Engine{}:  {Label: mine},
			}},
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
	})
	if err != nil {
		return nil, nil, fmt.Errorf("agent: %w", err)
	}
	a := &Agent{cfg: c, client: mgr.GetClient(), secrets: mgr.GetAPIReader(), log: c.Logger.With("node", c.NodeName),
		replicas: map[string]*replicaInstance{}, engines: map[string]*engineInstance{}}
	if err := mgr.Add(nodeRunnable{a}); err != nil {
		return nil, nil, err
	}
	if err := ctrl.NewControllerManagedBy(mgr).Named("replica").For(&v1alpha1.Replica{}).Complete(&replicaReconciler{a}); err != nil {
		return nil, nil, fmt.Errorf("replica controller: %w", err)
	}
	if err := ctrl.NewControllerManagedBy(mgr).Named("engine").For(&v1alpha1.Engine{}).Complete(&engineReconciler{a}); err != nil {
		return nil, nil, fmt.Errorf("engine controller: %w", err)
	}
	if err := (&snapshotReconciler{a}).setup(mgr); err != nil {
		return nil, nil, fmt.Errorf("snapshot controller: %w", err)
	}
	if err := (&backupReconciler{a}).setup(mgr); err != nil {
		return nil, nil, fmt.Errorf("backup controller: %w", err)
	}
	if err := (&backingImageReconciler{a: a}).setup(mgr); err != nil {
		return nil, nil, fmt.Errorf("backing image controller: %w", err)
	}
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		<-ctx.Done()
		a.stopAll()
		return nil
	})); err != nil {
		return nil, nil, err
	}
	return mgr, a, nil
}

// stopAll stops every instance on the way out (engines first: they flush).
// The lock is not held while they stop: an engine's links may redial
// (a.dial takes it) until the engine is closed.
func (a *Agent) stopAll() {
	a.mu.Lock()
	engines, replicas := a.engines, a.replicas
	a.engines, a.replicas = map[string]*engineInstance{}, map[string]*replicaInstance{}
	a.mu.Unlock()
	for _, e := range engines {
		e.stop(a.log)
	}
	for _, r := range replicas {
		r.stop()
	}
}

// nodeRunnable registers the Node and heartbeats. It runs on every agent
// (no leader election).
type nodeRunnable struct{ a *Agent }

func (nodeRunnable) NeedLeaderElection() bool { return false }

func (n nodeRunnable) Start(ctx context.Context) error {
	a := n.a
	for {
		if err := a.register(ctx); err == nil {
			break
		} else {
			a.log.Warn("register node", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	if err := a.removeOrphans(ctx); err != nil {
		a.log.Warn("remove orphaned replica data", "err", err)
	}
	t := time.NewTicker(a.cfg.Heartbeat)
	defer t.Stop()
	for {
		if err := a.heartbeat(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("heartbeat", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
