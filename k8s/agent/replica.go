package agent

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/transports/filestore"
	"github.com/drover-io/drover/transports/replicadir"
	"github.com/drover-io/drover/transports/replicarun"
	"github.com/drover-io/drover/transports/tcp"
)

// replicaInstance is one replica served over TCP in the agent's process.
type replicaInstance struct {
	runner *replicarun.Runner
	store  *filestore.Store
	srv    *tcp.Server
	addr   string
	done   chan struct{} // closed when the server stops serving
	err    error         // why it stopped, once done is closed
}

func (r *replicaInstance) stop() {
	r.srv.Close()
	<-r.done
	_ = r.runner.Close()
	_ = r.store.Close()
}

// replicaDir is where a replica's data lives on its disk.
func replicaDir(rep *v1alpha1.Replica) string {
	return filepath.Join(rep.Spec.DiskPath, "replicas", rep.Name)
}

type replicaReconciler struct{ a *Agent }

func (rr *replicaReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	a := rr.a
	var rep v1alpha1.Replica
	if err := a.client.Get(ctx, req.NamespacedName, &rep); err != nil {
		if client.IgnoreNotFound(err) == nil {
			a.stopReplica(req.Name)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if rep.Spec.NodeID != a.cfg.NodeName {
		return ctrl.Result{}, nil
	}
	if !rep.DeletionTimestamp.IsZero() {
		a.stopReplica(rep.Name)
		if rep.Spec.DiskPath != "" {
			if err := os.RemoveAll(replicaDir(&rep)); err != nil {
				return ctrl.Result{}, fmt.Errorf("remove data of replica %s: %w", rep.Name, err)
			}
		}
		if controllerutil.RemoveFinalizer(&rep, Finalizer) {
			if err := a.client.Update(ctx, &rep); err != nil {
				return ctrl.Result{}, fmt.Errorf("release replica %s: %w", rep.Name, err)
			}
		}
		return ctrl.Result{}, nil
	}
	if controllerutil.AddFinalizer(&rep, Finalizer) {
		if err := a.client.Update(ctx, &rep); err != nil {
			return ctrl.Result{}, fmt.Errorf("finalizer on replica %s: %w", rep.Name, err)
		}
	}
	if rep.Spec.DesiredState != v1alpha1.DesiredRunning {
		a.stopReplica(rep.Name)
		return rr.status(ctx, &rep, v1alpha1.InstanceStopped, "", "", false)
	}
	inst, crashed := a.replicaInstance(rep.Name)
	restarted := false
	if inst == nil {
		if crashed != nil {
			restarted = true
			a.log.Warn("replica instance stopped; restarting", "replica", rep.Name, "err", crashed)
		}
		if ok, cond := a.backingReady(ctx, &rep); !ok || rep.Spec.BackingImage != "" {
			if err := a.setReplicaCondition(ctx, &rep, cond); err != nil {
				return ctrl.Result{}, err
			}
			if !ok {
				return ctrl.Result{RequeueAfter: backingWait}, nil
			}
		}
		var err error
		inst, err = a.startReplica(ctx, &rep)
		if err != nil {
			// The error return makes controller-runtime retry with
			// exponential backoff.
			if _, serr := rr.status(ctx, &rep, v1alpha1.InstanceError, "", err.Error(), restarted); serr != nil {
				a.log.Warn("replica status", "replica", rep.Name, "err", serr)
			}
			return ctrl.Result{}, err
		}
	}
	res, err := rr.status(ctx, &rep, v1alpha1.InstanceRunning, inst.addr, "", restarted)
	// Look again in a while: a server that stopped is restarted then.
	res.RequeueAfter = replicaCheck
	return res, err
}

// replicaCheck is how often a running replica's server is checked.
const replicaCheck = 5 * time.Second

// status records the instance's state; restarted counts one restart.
func (rr *replicaReconciler) status(ctx context.Context, rep *v1alpha1.Replica, state v1alpha1.InstanceState, addr, msg string,
	restarted bool) (ctrl.Result, error) {
	if rep.Status.CurrentState == state && rep.Status.Address == addr && rep.Status.Message == msg && !restarted {
		return ctrl.Result{}, nil
	}
	patch := client.MergeFrom(rep.DeepCopy())
	rep.Status.CurrentState, rep.Status.Address, rep.Status.Message = state, addr, msg
	if restarted {
		rep.Status.Restarts++
	}
	if err := rr.a.client.Status().Patch(ctx, rep, patch); err != nil {
		return ctrl.Result{}, fmt.Errorf("status of replica %s: %w", rep.Name, err)
	}
	return ctrl.Result{}, nil
}

// replicaInstance returns the running instance, or nil and why the last
// one stopped (nil if there was none).
func (a *Agent) replicaInstance(name string) (*replicaInstance, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	inst := a.replicas[name]
	if inst == nil {
		return nil, nil
	}
	select {
	case <-inst.done:
		delete(a.replicas, name)
		inst.stop()
		if inst.err == nil {
			return nil, fmt.Errorf("server stopped")
		}
		return nil, inst.err
	default:
		return inst, nil
	}
}

// startReplica opens (or creates) the replica's data and serves it on a
// port of the node's address.
func (a *Agent) startReplica(ctx context.Context, rep *v1alpha1.Replica) (*replicaInstance, error) {
	if rep.Spec.DiskPath == "" {
		return nil, fmt.Errorf("replica %s has no disk path", rep.Name)
	}
	dir := replicaDir(rep)
	backing, err := a.linkBacking(ctx, rep, dir)
	if err != nil {
		return nil, err
	}
	rd, err := replicadir.Open(replicadir.Config{Dir: dir, ID: proto.ReplicaID(rep.Name), CreateSizeBytes: uint64(rep.Spec.VolumeSize), Backing: backing})
	if err != nil {
		return nil, fmt.Errorf("replica %s: %w", rep.Name, err)
	}
	runner, st := rd.Runner, rd.Store
	lis, err := a.listenReplica(rep)
	if err != nil {
		runner.Close()
		st.Close()
		return nil, fmt.Errorf("replica %s: listen: %w", rep.Name, err)
	}
	log := a.log.With("replica", rep.Name)
	inst := &replicaInstance{runner: runner, store: st, addr: lis.Addr().String(), done: make(chan struct{}),
		srv: tcp.NewServer(runner, func(format string, args ...any) { log.Info(fmt.Sprintf(format, args...)) })}
	go func() {
		inst.err = inst.srv.Serve(lis)
		close(inst.done)
	}()
	a.mu.Lock()
	a.replicas[rep.Name] = inst
	a.mu.Unlock()
	log.Info("replica serving", "addr", inst.addr, "dir", dir, "size", rep.Spec.VolumeSize)
	return inst, nil
}

func (a *Agent) stopReplica(name string) {
	a.mu.Lock()
	inst := a.replicas[name]
	delete(a.replicas, name)
	a.mu.Unlock()
	if inst != nil {
		inst.stop()
		a.log.Info("replica stopped", "replica", name)
	}
}

// removeOrphans removes replica directories on the agent's disks that no
// Replica of this node names: data of replicas deleted while the agent
// was down (the manager released them without it).
func (a *Agent) removeOrphans(ctx context.Context) error {
	var reps v1alpha1.ReplicaList
	if err := a.client.List(ctx, &reps, client.InNamespace(a.cfg.Namespace),
		client.MatchingLabels{v1alpha1.LabelNode: a.cfg.NodeName}); err != nil {
		return fmt.Errorf("list replicas: %w", err)
	}
	known := map[string]bool{}
	for _, r := range reps.Items {
		known[r.Name] = true
	}
	for _, path := range a.cfg.Disks {
		entries, err := os.ReadDir(filepath.Join(path, "replicas"))
		if err != nil {
			continue // no replica was ever made here
		}
		for _, e := range entries {
			if e.IsDir() && !known[e.Name()] {
				a.log.Info("removing data of a deleted replica", "dir", filepath.Join(path, "replicas", e.Name()))
				if err := os.RemoveAll(filepath.Join(path, "replicas", e.Name())); err != nil {
					return fmt.Errorf("remove %s: %w", e.Name(), err)
				}
			}
		}
	}
	return nil
}

// listenReplica listens for the replica's engines: on the port it had
// before when it can (its engine's membership names that address, so a
// restarted agent is found again), else on a port the kernel picks.
func (a *Agent) listenReplica(rep *v1alpha1.Replica) (net.Listener, error) {
	if host, port, err := net.SplitHostPort(rep.Status.Address); err == nil && host == a.cfg.Address {
		if lis, err := net.Listen("tcp", net.JoinHostPort(host, port)); err == nil {
			return lis, nil
		}
	}
	return net.Listen("tcp", net.JoinHostPort(a.cfg.Address, "0"))
}
