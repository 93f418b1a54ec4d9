package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sort"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/frontends/nbd"
	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/k8s/volumekey"
	"github.com/drover-io/drover/transports/control"
	"github.com/drover-io/drover/transports/control/controlpb"
	"github.com/drover-io/drover/transports/device"
	"github.com/drover-io/drover/transports/enginerun"
	"github.com/drover-io/drover/transports/link"
	"github.com/drover-io/drover/transports/replicarun"
	"github.com/drover-io/drover/transports/tcp"
)

// statusPoll is how often a running engine's replica modes are copied
// into its status.
const statusPoll = time.Second

// engineInstance is one volume's engine with its NBD frontend.
type engineInstance struct {
	driver   *enginerun.Driver
	vol      *enginerun.Volume
	nbd      *nbd.Server
	endpoint string
	served   chan struct{} // closed when the NBD server stops
	// stopServe ends the wait for the engine to serve before the NBD
	// listener is served.
	stopServe context.CancelFunc
	grpc      *grpc.Server // the control API (drover volume/snapshot/backup --control)
	ctlAddr   string
	qos       *device.Limiter // the NBD export's IO limits (spec.qos)
	ctl       controlpb.ControlClient
	ctlConn   *grpc.ClientConn

	mu         sync.Mutex
	members    map[string]string // replica name -> address the engine was given
	adding     map[string]bool   // replicas being added (rebuilt)
	restoring  bool              // a restore runs
	restored   string            // the RestoreFrom written into the volume
	restoreErr error             // why the last restore failed
}

func (e *engineInstance) stop(log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e.stopServe()
	_ = e.nbd.Shutdown(ctx)
	<-e.served
	e.grpc.Stop()
	_ = e.ctlConn.Close()
	if err := e.vol.Flush(ctx); err != nil {
		log.Warn("engine final flush", "err", err)
	}
	_ = e.driver.Close()
}

type engineReconciler struct{ a *Agent }

func (er *engineReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	a := er.a
	var eng v1alpha1.Engine
	if err := a.client.Get(ctx, req.NamespacedName, &eng); err != nil {
		if client.IgnoreNotFound(err) == nil {
			a.stopEngine(req.Name)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if eng.Spec.NodeID != a.cfg.NodeName {
		return ctrl.Result{}, nil
	}
	if !eng.DeletionTimestamp.IsZero() || eng.Spec.DesiredState != v1alpha1.DesiredRunning {
		a.stopEngine(eng.Name)
		if !eng.DeletionTimestamp.IsZero() {
			if controllerutil.RemoveFinalizer(&eng, Finalizer) {
				if err := a.client.Update(ctx, &eng); err != nil {
					return ctrl.Result{}, fmt.Errorf("release engine %s: %w", eng.Name, err)
				}
			}
			return ctrl.Result{}, nil
		}
		return er.status(ctx, &eng, v1alpha1.InstanceStopped, "", nil, "", nil)
	}
	if controllerutil.AddFinalizer(&eng, Finalizer) {
		if err := a.client.Update(ctx, &eng); err != nil {
			return ctrl.Result{}, fmt.Errorf("finalizer on engine %s: %w", eng.Name, err)
		}
	}
	inst := a.engineInstance(eng.Name)
	if inst == nil {
		var err error
		var key []byte
		if key, err = a.engineKey(ctx, &eng); err == nil {
			inst, err = a.startEngine(&eng, key)
			clear(key)
		}
		if err != nil {
			if _, serr := er.status(ctx, &eng, v1alpha1.InstanceError, "", nil, err.Error(), nil); serr != nil {
				a.log.Warn("engine status", "engine", eng.Name, "err", serr)
			}
			return ctrl.Result{}, err
		}
	}
	a.syncMembers(inst, &eng)
	if !inst.driver.Serving() {
		_, err := er.status(ctx, &eng, v1alpha1.InstanceStarting, "", nil, "", nil)
		return ctrl.Result{RequeueAfter: statusPoll / 4}, err
	}
	if want := eng.Spec.RestoreFrom; want != "" && eng.Status.RestoredFrom != want {
		done, err := a.restoreStep(inst, eng.Name, eng.Namespace, want, eng.Spec.RestoreTarget, eng.Spec.RestoreCredentialSecret)
		if !done {
			msg := "restoring " + want
			if err != nil {
				msg = err.Error()
			}
			_, serr := er.status(ctx, &eng, v1alpha1.InstanceStarting, "", nil, msg, nil)
			if serr != nil {
				return ctrl.Result{}, serr
			}
			return ctrl.Result{RequeueAfter: statusPoll}, err
		}
		patch := client.MergeFrom(eng.DeepCopy())
		eng.Status.RestoredFrom = want
		if err := a.client.Status().Patch(ctx, &eng, patch); err != nil {
			return ctrl.Result{}, fmt.Errorf("status of engine %s: %w", eng.Name, err)
		}
	}
	if want := uint64(eng.Spec.VolumeSize); want > inst.driver.SizeBytes() {
		// The volume grew (online expansion): every replica grows with it.
		if _, err := inst.driver.Admin(ctx, engine.AdminRequest{Op: engine.AdminExpand, SizeBytes: want}); err != nil {
			return ctrl.Result{}, fmt.Errorf("expand engine %s to %d bytes: %w", eng.Name, want, err)
		}
		a.log.Info("volume expanded", "engine", eng.Name, "size", want)
	}
	qos, err := a.applyQoS(ctx, inst, &eng)
	if err != nil {
		return ctrl.Result{}, err
	}
	info, err := inst.driver.Info(ctx)
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("engine %s info: %w", eng.Name, err)
	}
	modes := map[string]v1alpha1.ReplicaMode{}
	for _, r := range info.Replicas {
		if m := r.Mode.String(); m == "RW" || m == "WO" || m == "ERR" {
			modes[string(r.ID)] = v1alpha1.ReplicaMode(m)
		}
	}
	_, err = er.status(ctx, &eng, v1alpha1.InstanceRunning, inst.endpoint, modes, "", qos)
	return ctrl.Result{RequeueAfter: statusPoll}, err
}

// applyQoS sets the spec's IO limits on the running engine's frontend
// through its control API (SetQoS: no restart, IOs in flight included)
// when they differ from what it enforces, and returns what it enforces.
func (a *Agent) applyQoS(ctx context.Context, inst *engineInstance, eng *v1alpha1.Engine) (*v1alpha1.VolumeQoS, error) {
	var want device.QoSLimits
	if q := eng.Spec.QoS; q != nil {
		want = device.QoSLimits{IOPS: uint64(max(q.MaxIOPS, 0)), BytesPerSecond: uint64(max(q.MaxBandwidthBytes, 0))}
	}
	if inst.qos.Limits() != want {
		if _, err := inst.ctl.SetQoS(ctx, &controlpb.QoSRequest{MaxIops: want.IOPS, MaxBandwidthBytes: want.BytesPerSecond}); err != nil {
			return nil, fmt.Errorf("engine %s: set QoS: %w", eng.Name, err)
		}
		a.log.Info("QoS set", "engine", eng.Name, "maxIOPS", want.IOPS, "maxBandwidthBytes", want.BytesPerSecond)
	}
	if want == (device.QoSLimits{}) {
		return nil, nil
	}
	return &v1alpha1.VolumeQoS{MaxIOPS: int64(want.IOPS), MaxBandwidthBytes: int64(want.BytesPerSecond)}, nil
}

func (er *engineReconciler) status(ctx context.Context, eng *v1alpha1.Engine, state v1alpha1.InstanceState, endpoint string,
	modes map[string]v1alpha1.ReplicaMode, msg string, applied *v1alpha1.VolumeQoS) (ctrl.Result, error) {
	ctlAddr := ""
	if inst := er.a.engineInstance(eng.Name); inst != nil && state != v1alpha1.InstanceStopped {
		ctlAddr = inst.ctlAddr
	}
	if eng.Status.CurrentState == state && eng.Status.Endpoint == endpoint && eng.Status.Message == msg &&
		modesEqual(eng.Status.ReplicaModeMap, modes) && eng.Status.ControlAddress == ctlAddr && qosSame(eng.Status.QoS, applied) {
		return ctrl.Result{}, nil
	}
	patch := client.MergeFrom(eng.DeepCopy())
	eng.Status.QoS = applied
	eng.Status.ControlAddress = ctlAddr
	eng.Status.CurrentState, eng.Status.Endpoint, eng.Status.Message = state, endpoint, msg
	eng.Status.ReplicaModeMap = modes
	if err := er.a.client.Status().Patch(ctx, eng, patch); err != nil {
		return ctrl.Result{}, fmt.Errorf("status of engine %s: %w", eng.Name, err)
	}
	return ctrl.Result{}, nil
}

func qosSame(a, b *v1alpha1.VolumeQoS) bool {
	return (a == nil && b == nil) || (a != nil && b != nil && *a == *b)
}

func modesEqual(a, b map[string]v1alpha1.ReplicaMode) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func (a *Agent) engineInstance(name string) *engineInstance {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.engines[name]
}

// startEngine starts the volume's engine on the replicas of its spec and
// an NBD export named after the volume on a port of the node's address.
// engineKey reads an encrypted volume's key from its Secret and checks it
// against the check value the volume recorded (nil: not encrypted).
func (a *Agent) engineKey(ctx context.Context, eng *v1alpha1.Engine) ([]byte, error) {
	name := eng.Spec.EncryptionKeySecret
	if name == "" {
		return nil, nil
	}
	if eng.Spec.EncryptionKeyCheck == "" {
		return nil, fmt.Errorf("engine %s: encrypted, but no key check was recorded: refusing to guess", eng.Name)
	}
	key, err := volumekey.Read(ctx, a.secrets, eng.Namespace, name)
	if err != nil {
		return nil, fmt.Errorf("engine %s: %w", eng.Name, err)
	}
	if err := volumekey.Verify(key, eng.Spec.EncryptionKeyCheck); err != nil {
		clear(key)
		return nil, fmt.Errorf("engine %s: encryption key secret %s: %w", eng.Name, name, err)
	}
	return key, nil
}

// startEngine starts the engine of eng; with key, its frontends see the
// volume through AES-256-XTS (device.Encrypted) while the control API,
// and so backups, see the ciphertext the replicas hold.
func (a *Agent) startEngine(eng *v1alpha1.Engine, key []byte) (*engineInstance, error) {
	var reps []enginerun.Replica
	for name, addr := range eng.Spec.ReplicaAddressMap {
		reps = append(reps, enginerun.Replica{ID: proto.ReplicaID(name), Addr: addr})
	}
	if len(reps) == 0 {
		return nil, fmt.Errorf("engine %s lists no replicas", eng.Name)
	}
	sort.Slice(reps, func(i, j int) bool { return reps[i].ID < reps[j].ID })
	log := a.log.With("engine", eng.Name)
	d, err := enginerun.New(enginerun.Config{Volume: eng.Spec.VolumeName, Replicas: reps, Dial: a.dial,
		ReplaceAfter: -1, Logger: log, RebuildRate: a.rebuildRate()})
	if err != nil {
		return nil, fmt.Errorf("engine %s: %w", eng.Name, err)
	}
	vol := enginerun.NewVolume(d)
	// The export's IOs pass a QoS limiter (no limits until applyQoS
	// sets the spec's through the control API).
	limiter := device.NewLimiter()
	var front device.Device = vol
	if key != nil {
		enc, err := device.NewEncrypted(vol, key)
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("engine %s: %w", eng.Name, err)
		}
		front = enc
	}
	limited := device.NewLimited(front, limiter)
	srv, err := nbd.NewServer(nbd.Config{Exports: []nbd.Export{
		{Name: eng.Spec.VolumeName, Description: "Drover volume " + eng.Spec.VolumeName, Device: limited},
		{Name: eng.Spec.VolumeName + v1alpha1.GrowableExportSuffix, Device: device.NewCeiling(limited, v1alpha1.GrowableExportBytes),
			Description: "Drover volume " + eng.Spec.VolumeName + ", advertising a ceiling size for hosts that attach it behind a size-limited loop device"},
	}})
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("engine %s: NBD: %w", eng.Name, err)
	}
	lis, err := a.listenEngine(eng)
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("engine %s: NBD listen: %w", eng.Name, err)
	}
	// The control API is for this process's backup code and an operator
	// on the node: loopback only (it has no authentication of its own).
	ctlLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		lis.Close()
		d.Close()
		return nil, fmt.Errorf("engine %s: control API listen: %w", eng.Name, err)
	}
	gs := grpc.NewServer(control.ServerOptions()...)
	control.NewServer(vol).WithQoS(limiter).Register(gs)
	go func() { _ = gs.Serve(ctlLis) }()
	ctl, conn, err := control.Dial(ctlLis.Addr().String())
	if err != nil {
		gs.Stop()
		lis.Close()
		d.Close()
		return nil, fmt.Errorf("engine %s: control API: %w", eng.Name, err)
	}
	serveCtx, stopServe := context.WithCancel(context.Background())
	inst := &engineInstance{driver: d, vol: vol, nbd: srv, endpoint: nbd.TCPURI(lis.Addr().String(), eng.Spec.VolumeName),
		served: make(chan struct{}), stopServe: stopServe, members: map[string]string{}, adding: map[string]bool{}, qos: limiter,
		grpc: gs, ctlAddr: ctlLis.Addr().String(), ctl: ctl, ctlConn: conn}
	for _, r := range reps {
		inst.members[string(r.ID)] = r.Addr
	}
	go func() {
		defer close(inst.served)
		defer lis.Close()
		// Clients are served once the engine serves IO: a host attachment
		// reconnecting to a restarted agent (drover nbd-relay) waits in
		// the listen backlog meanwhile, instead of having its requests
		// refused by an engine that has not opened its replicas yet.
		if err := d.WaitServing(serveCtx); err != nil {
			return
		}
		if err := srv.Serve(lis); err != nil && !errors.Is(err, nbd.ErrServerClosed) {
			log.Warn("NBD server stopped", "err", err)
		}
	}()
	a.mu.Lock()
	a.engines[eng.Name] = inst
	a.mu.Unlock()
	log.Info("engine started", "replicas", len(reps), "endpoint", inst.endpoint)
	return inst, nil
}

// listenEngine listens for the engine's NBD clients on the port of its
// last endpoint when that was on this node's address, so that a
// restarted agent serves the volume where the host's attachment
// reconnects to; else (or when that port is taken) on a port the kernel
// picks.
func (a *Agent) listenEngine(eng *v1alpha1.Engine) (net.Listener, error) {
	if u, err := url.Parse(eng.Status.Endpoint); err == nil && u.Scheme == "nbd" && u.Hostname() == a.cfg.Address && u.Port() != "" {
		lis, err := net.Listen("tcp", u.Host)
		if err == nil {
			return lis, nil
		}
		a.log.Warn("engine's previous NBD port taken; attachments on it will not reconnect", "engine", eng.Name, "endpoint", eng.Status.Endpoint, "err", err)
	}
	return net.Listen("tcp", net.JoinHostPort(a.cfg.Address, "0"))
}

// syncMembers adds the replicas the spec lists that the engine lacks
// (each is rebuilt, in the background) and removes those it no longer
// lists.
func (a *Agent) syncMembers(inst *engineInstance, eng *v1alpha1.Engine) {
	inst.mu.Lock()
	defer inst.mu.Unlock()
	for name, addr := range eng.Spec.ReplicaAddressMap {
		if _, ok := inst.members[name]; ok || inst.adding[name] {
			continue
		}
		inst.adding[name] = true
		r := enginerun.Replica{ID: proto.ReplicaID(name), Addr: addr}
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
			defer cancel()
			err := inst.driver.AddReplica(ctx, r)
			inst.mu.Lock()
			delete(inst.adding, string(r.ID))
			if err == nil {
				inst.members[string(r.ID)] = r.Addr
			}
			inst.mu.Unlock()
			if err != nil {
				a.log.Warn("add replica", "engine", eng.Name, "replica", r.ID, "err", err)
				return
			}
			a.log.Info("replica added and rebuilt", "engine", eng.Name, "replica", r.ID)
		}()
	}
	for name := range inst.members {
		if _, ok := eng.Spec.ReplicaAddressMap[name]; ok {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := inst.driver.RemoveReplica(ctx, proto.ReplicaID(name))
		cancel()
		if err != nil {
			a.log.Warn("remove replica", "engine", eng.Name, "replica", name, "err", err)
			continue
		}
		delete(inst.members, name)
		a.log.Info("replica removed", "engine", eng.Name, "replica", name)
	}
}

func (a *Agent) stopEngine(name string) {
	a.mu.Lock()
	inst := a.engines[name]
	delete(a.engines, name)
	a.mu.Unlock()
	if inst != nil {
		inst.stop(a.log)
		a.log.Info("engine stopped", "engine", name)
	}
}

// dial reaches a replica: one this agent serves over the in-process link
// (no socket, no extra goroutine hop: the fast path a strict-local
// volume's single replica is on), any other over TCP.
func (a *Agent) dial(addr string, h link.Handler) (link.Link, error) {
	a.mu.Lock()
	var local *replicarun.Runner
	for _, r := range a.replicas {
		if r.addr == addr {
			local = r.runner
		}
	}
	a.mu.Unlock()
	if local != nil {
		a.log.Info("replica reached over the in-process link", "addr", addr)
		return replicarun.NewLocalLink(local, h), nil
	}
	return tcp.Dial(addr, h)
}

// rebuildRate reads the replica-rebuild-rate-bytes-per-sec Setting (0,
// no limit, when it is missing or bad); engines take it at start.
func (a *Agent) rebuildRate() uint64 {
	var s v1alpha1.Setting
	key := types.NamespacedName{Namespace: a.cfg.Namespace, Name: v1alpha1.SettingReplicaRebuildRateBytesPerS}
	if err := a.client.Get(context.Background(), key, &s); err != nil {
		return 0
	}
	n, err := strconv.ParseUint(s.Value, 10, 64)
	if err != nil {
		return 0
	}
	return n
}
