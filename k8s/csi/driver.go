// Package csi is Drover's CSI driver (CSI spec v1): the identity,
// controller and node services `drover csi` serves on a unix socket.
//
// The controller service talks to the manager only through the
// storage.drover.io objects: CreateVolume creates a Volume, publishing
// sets its spec.nodeID (the manager then runs the engine on that node),
// snapshots are Snapshot objects. The node service attaches the engine's
// NBD export on the host as a block device (an nbdfuse file behind a
// loop device, where the kernel has no NBD client), formats it only when
// blkid finds nothing on it, and mounts it. What NodeStage did is kept in
// a state file per volume, so NodeUnstage undoes exactly that, also
// after a restart of the driver.
//
// Every call is idempotent; calls on one volume are serialized, and a
// call on a volume another call is working on returns Aborted at once.
package csi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
)

// DefaultDriverName is the CSI driver name when Config.Name is empty.
const DefaultDriverName = "driver.drover.io"

// Topology keys NodeGetInfo reports.
const (
	TopologyNodeKey = "topology.drover.io/node"
	TopologyZoneKey = "topology.kubernetes.io/zone"
)

// Mode says which CSI services a driver serves.
type Mode string

// Modes.
const (
	ModeController Mode = "controller"
	ModeNode       Mode = "node"
	ModeAll        Mode = "all"
)

// ParseMode reads a --mode value.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeController, ModeNode, ModeAll:
		return m, nil
	}
	return "", fmt.Errorf("mode %q: want controller, node or all", s)
}

// Config sets up a Driver.
type Config struct {
	// Name is the CSI driver name (default DefaultDriverName).
	Name string
	// Version is reported by GetPluginInfo.
	Version string
	// Mode says which services to serve (default ModeAll).
	Mode Mode
	// NodeID is this node's name, as the agent's Node object has it;
	// needed by the node service.
	NodeID string
	// Zone is this node's failure zone ("" when unknown).
	Zone string
	// Namespace holds Drover's objects.
	Namespace string
	// Client reaches the API server.
	Client client.Client
	// StateDir holds the node service's per-volume state files and FUSE
	// mount points (default /var/lib/drover/csi).
	StateDir string
	// DefaultSizeBytes is the size of a volume whose request names none
	// (default 1 GiB).
	DefaultSizeBytes int64
	// AttachTimeout bounds how long ControllerPublishVolume waits for
	// the engine to run on the node when the caller's context has no
	// deadline (default 2 minutes).
	AttachTimeout time.Duration
	// Logger receives the driver's log (default slog.Default()).
	Logger *slog.Logger
	// HostAttach runs each staged volume's nbdfuse (and the NBD relay
	// under it) in the host's mount namespace and the cgroup
	// AttachCgroup, through nsenter into PID 1's namespaces, so the
	// attachment outlives this process's container: the node service's
	// Pod (the agent's) may restart while the volumes stay staged and
	// their IO pauses. Needs the Pod's hostPID, and StateDir at the same
	// path on the host as in the container.
	HostAttach bool
	// ReconnectTimeout is how long a staged volume's IO waits for its
	// engine to come back after the connection to it was lost (an agent
	// restart) before it fails (default 2 minutes).
	ReconnectTimeout time.Duration
}

// Driver serves the CSI services.
type Driver struct {
	cfg Config
	c   client.Client
	log *slog.Logger

	binOnce sync.Once
	bin     string // the relay's drover executable (relayBinary)
	binErr  error

	mu   sync.Mutex
	busy map[string]string // volume or snapshot ID -> the call working on it
}

// New checks cfg and returns a Driver.
func New(cfg Config) (*Driver, error) {
	if cfg.Name == "" {
		cfg.Name = DefaultDriverName
	}
	if cfg.Mode == "" {
		cfg.Mode = ModeAll
	}
	if _, err := ParseMode(string(cfg.Mode)); err != nil {
		return nil, err
	}
	if cfg.Client == nil {
		return nil, errors.New("csi: no API client")
	}
	if cfg.Namespace == "" {
		return nil, errors.New("csi: no namespace")
	}
	if cfg.Mode != ModeController && cfg.NodeID == "" {
		return nil, fmt.Errorf("csi: mode %s serves the node service and needs a node ID", cfg.Mode)
	}
	if cfg.StateDir == "" {
		cfg.StateDir = "/var/lib/drover/csi"
	}
	if cfg.DefaultSizeBytes == 0 {
		cfg.DefaultSizeBytes = 1 << 30
	}
	if cfg.AttachTimeout == 0 {
		cfg.AttachTimeout = 2 * time.Minute
	}
	if cfg.ReconnectTimeout <= 0 {
		cfg.ReconnectTimeout = 2 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Mode != ModeController {
		if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
			return nil, fmt.Errorf("csi: state dir: %w", err)
		}
	}
	return &Driver{cfg: cfg, c: cfg.Client, log: cfg.Logger.With("csi", cfg.Mode), busy: map[string]string{}}, nil
}

// Register adds the services of the driver's mode to s.
func (d *Driver) Register(s *grpc.Server) {
	csipb.RegisterIdentityServer(s, identity{d: d})
	if d.cfg.Mode != ModeNode {
		csipb.RegisterControllerServer(s, controller{d: d})
	}
	if d.cfg.Mode != ModeController {
		csipb.RegisterNodeServer(s, node{d: d})
	}
}

// Listen opens a CSI endpoint, unix:///path (or a bare absolute path);
// a stale socket file left by an earlier run is removed first.
func Listen(endpoint string) (net.Listener, error) {
	path := endpoint
	if u, err := url.Parse(endpoint); err == nil && u.Scheme != "" {
		if u.Scheme != "unix" {
			return nil, fmt.Errorf("endpoint %s: only unix:// sockets are served", endpoint)
		}
		path = u.Path
		if path == "" {
			path = u.Opaque
		}
	}
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("endpoint %s: want unix:///absolute/path", endpoint)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", endpoint, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("endpoint %s: %s exists and is not a socket", endpoint, path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("endpoint %s: remove stale socket: %w", endpoint, err)
		}
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", endpoint, err)
	}
	return lis, nil
}

// Serve serves the driver on lis until ctx ends.
func (d *Driver) Serve(ctx context.Context, lis net.Listener) error {
	s := grpc.NewServer(grpc.UnaryInterceptor(d.logCalls))
	d.Register(s)
	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			s.GracefulStop()
		case <-stopped:
		}
	}()
	d.log.Info("CSI driver serving", "name", d.cfg.Name, "endpoint", lis.Addr().String(), "node", d.cfg.NodeID)
	err := s.Serve(lis)
	close(stopped)
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("csi: serve: %w", err)
	}
	return nil
}

func (d *Driver) logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	if err != nil {
		d.log.Info("CSI call failed", "method", info.FullMethod, "code", status.Code(err).String(), "err", err,
			"took", time.Since(start).Round(time.Millisecond))
	} else {
		d.log.Debug("CSI call", "method", info.FullMethod, "took", time.Since(start).Round(time.Millisecond))
	}
	return resp, err
}

// lock claims id for one call; another call on id gets Aborted until
// the returned function releases it.
func (d *Driver) lock(id, call string) (func(), error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if other, ok := d.busy[id]; ok {
		return nil, status.Errorf(codes.Aborted, "%s: %s is in progress on %s; retry", call, other, id)
	}
	d.busy[id] = call
	return func() {
		d.mu.Lock()
		delete(d.busy, id)
		d.mu.Unlock()
	}, nil
}

// identity is the CSI identity service.
type identity struct {
	csipb.UnimplementedIdentityServer
	d *Driver
}

func (i identity) GetPluginInfo(context.Context, *csipb.GetPluginInfoRequest) (*csipb.GetPluginInfoResponse, error) {
	v := i.d.cfg.Version
	if v == "" {
		v = "dev"
	}
	return &csipb.GetPluginInfoResponse{Name: i.d.cfg.Name, VendorVersion: v}, nil
}

func (i identity) GetPluginCapabilities(context.Context, *csipb.GetPluginCapabilitiesRequest) (*csipb.GetPluginCapabilitiesResponse, error) {
	svc := func(t csipb.PluginCapability_Service_Type) *csipb.PluginCapability {
		return &csipb.PluginCapability{Type: &csipb.PluginCapability_Service_{Service: &csipb.PluginCapability_Service{Type: t}}}
	}
	caps := []*csipb.PluginCapability{
		svc(csipb.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS),
		{Type: &csipb.PluginCapability_VolumeExpansion_{VolumeExpansion: &csipb.PluginCapability_VolumeExpansion{
			Type: csipb.PluginCapability_VolumeExpansion_ONLINE}}},
	}
	if i.d.cfg.Mode != ModeNode {
		caps = append(caps, svc(csipb.PluginCapability_Service_CONTROLLER_SERVICE))
	}
	return &csipb.GetPluginCapabilitiesResponse{Capabilities: caps}, nil
}

// Probe is ready when the API server answers (the manager and agents
// are reached only through it) and, for the node service, when this
// node's agent has registered its Node.
func (i identity) Probe(ctx context.Context, _ *csipb.ProbeRequest) (*csipb.ProbeResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var nodes v1alpha1.NodeList
	if err := i.d.c.List(ctx, &nodes, client.InNamespace(i.d.cfg.Namespace), client.Limit(1)); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "API server not reachable: %v", err)
	}
	ready := true
	if i.d.cfg.Mode != ModeController {
		var n v1alpha1.Node
		err := i.d.c.Get(ctx, client.ObjectKey{Namespace: i.d.cfg.Namespace, Name: i.d.cfg.NodeID}, &n)
		ready = err == nil
	}
	return &csipb.ProbeResponse{Ready: wrapperspb.Bool(ready)}, nil
}
