// Package control serves Drover's gRPC control API (controlpb) for one
// engine, and dials it for clients. The server is thin: every call goes
// through the engine driver's admin path (transports/enginerun), so the
// engine's own rules (snapshots hold IO, revert needs a detached volume,
// membership changes need a quorum) apply unchanged.
package control

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/control/controlpb"
	"github.com/drover-io/drover/transports/device"
	"github.com/drover-io/drover/transports/enginerun"
)

// maxIOBytes bounds one debug Read or Write.
const maxIOBytes = 4 << 20

// Server implements controlpb.ControlServer for one engine.
type Server struct {
	controlpb.UnimplementedControlServer
	d   *enginerun.Driver
	v   *enginerun.Volume
	qos *device.Limiter // nil: SetQoS and GetQoS refuse
}

// NewServer returns a control server for the volume v runs on.
func NewServer(v *enginerun.Volume) *Server {
	return &Server{d: v.Driver(), v: v}
}

// Register adds s to a gRPC server.
func (s *Server) Register(gs *grpc.Server) { controlpb.RegisterControlServer(gs, s) }

// DialConfig says how a client authenticates to the control API.
type DialConfig struct {
	// TLS, when set, is the mutual-TLS configuration for a TCP address
	// (certs.Files.ClientConfig). A unix socket never uses TLS: the
	// kernel names the caller to the server.
	TLS *tls.Config
}

// Dial returns a client of the control API at addr: host:port (TCP, with
// mutual TLS when cfg gives it) or unix:PATH.
func Dial(addr string, cfg ...DialConfig) (controlpb.ControlClient, *grpc.ClientConn, error) {
	var c DialConfig
	if len(cfg) > 0 {
		c = cfg[0]
	}
	target, creds := addr, insecure.NewCredentials()
	if path, ok := IsUnix(addr); ok {
		abs, err := filepath.Abs(path)
		if err != nil {
			return nil, nil, fmt.Errorf("control socket %s: %w", path, err)
		}
		target = "unix://" + abs
	} else if c.TLS != nil {
		creds = credentials.NewTLS(c.TLS)
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxIOBytes+1<<20)))
	if err != nil {
		return nil, nil, fmt.Errorf("control client for %s: %w", addr, err)
	}
	return controlpb.NewControlClient(conn), conn, nil
}

// toStatus maps engine and device errors to gRPC codes, keeping the text.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	code := codes.Internal
	switch {
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, engine.ErrInvalid), errors.Is(err, device.ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, engine.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, engine.ErrExists), errors.Is(err, enginerun.ErrSameAddress):
		code = codes.AlreadyExists
	case errors.Is(err, enginerun.ErrUnreachable):
		code = codes.Unavailable
	case errors.Is(err, engine.ErrBusy), errors.Is(err, engine.ErrDetached):
		code = codes.FailedPrecondition
	case errors.Is(err, engine.ErrNotOpen), errors.Is(err, engine.ErrFaulted), errors.Is(err, enginerun.ErrClosed):
		code = codes.Unavailable
	case errors.Is(err, engine.ErrFenced):
		code = codes.Aborted
	case errors.Is(err, engine.ErrNoSpace), errors.Is(err, device.ErrNoSpace):
		code = codes.ResourceExhausted
	}
	return status.Error(code, err.Error())
}

// VolumeInfo describes the volume.
func (s *Server) VolumeInfo(ctx context.Context, _ *controlpb.VolumeInfoRequest) (*controlpb.VolumeInfoResponse, error) {
	info, err := s.d.Info(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	out := &controlpb.VolumeInfoResponse{Volume: info.Volume, Phase: info.Phase.String(), Why: info.Why, Epoch: info.Epoch,
		SizeBytes: info.SizeBytes, Chain: info.Chain, MembershipGen: info.MembershipGen, Replicas: replicaStatuses(info)}
	if rb := info.Rebuild; rb != nil {
		out.Rebuild = rebuildProgress(*rb, info.Tick)
	}
	if rb := info.LastRebuild; rb != nil {
		out.LastRebuild = rebuildProgress(*rb, info.Tick)
	}
	for _, id := range info.Spares {
		out.Spares = append(out.Spares, string(id))
	}
	for _, id := range info.Removed {
		out.Removed = append(out.Removed, string(id))
	}
	for _, t := range info.Tasks {
		out.Tasks = append(out.Tasks, &controlpb.EngineTask{Kind: t.Kind.String(), Stage: t.Stage, Detail: t.Detail})
	}
	return out, nil
}

func rebuildProgress(rb engine.RebuildProgress, tick time.Duration) *controlpb.RebuildProgress {
	st := enginerun.Stats(rb, tick)
	return &controlpb.RebuildProgress{Target: string(rb.Target), Source: string(rb.Source), Stage: rb.Stage,
		BlocksScanned: rb.BlocksScanned, BlocksTotal: rb.BlocksTotal, BytesCopied: rb.BytesCopied,
		BytesDone: st.DoneBytes, BytesTotal: st.TotalBytes, ElapsedMs: uint64(st.Elapsed.Milliseconds()),
		RateBytesPerSec: st.RateBytesPerSec, EtaMs: uint64(st.ETA.Milliseconds()), LimitBytesPerSec: st.LimitBytesPerSec}
}

func replicaStatuses(info enginerun.Info) []*controlpb.ReplicaStatus {
	var out []*controlpb.ReplicaStatus
	for _, r := range info.Replicas {
		out = append(out, &controlpb.ReplicaStatus{Id: string(r.ID), Address: info.Addrs[r.ID], Mode: r.Mode.String(),
			Why: replicaWhy(r.Mode, r.Why, info.LinkErr[r.ID]), Connected: info.Connected[r.ID]})
	}
	return out
}

// replicaWhy is the engine's reason for a replica's mode, completed, when
// the replica is ERR, by what its link last saw: the engine records only
// that a replica "did not answer at open", while the replica's own answer
// (a damaged metadata file, say) or the dial error says what to fix.
func replicaWhy(mode engine.Mode, why, linkErr string) string {
	if mode != engine.ModeERR || linkErr == "" || strings.Contains(why, linkErr) {
		return why // (the engine may have quoted the replica's answer itself)
	}
	if why == "" {
		return linkErr
	}
	return why + ": " + linkErr
}

func (s *Server) admin(ctx context.Context, req engine.AdminRequest) (engine.AdminReply, error) {
	rep, err := s.d.Admin(ctx, req)
	return rep, toStatus(err)
}

// SnapshotDelete merges a snapshot into its child.
func (s *Server) SnapshotDelete(ctx context.Context, req *controlpb.SnapshotRequest) (*controlpb.Empty, error) {
	_, err := s.admin(ctx, engine.AdminRequest{Op: engine.AdminDeleteSnapshot, Name: req.GetName()})
	return &controlpb.Empty{}, err
}

// SnapshotRevert reverts the volume to a snapshot; it must be detached.
func (s *Server) SnapshotRevert(ctx context.Context, req *controlpb.SnapshotRequest) (*controlpb.Empty, error) {
	_, err := s.admin(ctx, engine.AdminRequest{Op: engine.AdminRevert, Name: req.GetName()})
	return &controlpb.Empty{}, err
}

// ChangedExtents lists blocks changed between two snapshots.
func (s *Server) ChangedExtents(ctx context.Context, req *controlpb.ChangedExtentsRequest) (*controlpb.ChangedExtentsResponse, error) {
	rep, err := s.admin(ctx, engine.AdminRequest{Op: engine.AdminChangedExtents, Name: req.GetFrom(), Name2: req.GetTo()})
	if err != nil {
		return nil, err
	}
	out := &controlpb.ChangedExtentsResponse{BlockSizeBytes: proto.BlockSize}
	for _, x := range rep.Extents {
		out.Extents = append(out.Extents, &controlpb.Extent{BlockIndex: x.BlockIndex, BlockCount: x.BlockCount})
	}
	return out, nil
}

// ReplicaList lists replicas.
func (s *Server) ReplicaList(ctx context.Context, _ *controlpb.Empty) (*controlpb.ReplicaListResponse, error) {
	info, err := s.d.Info(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &controlpb.ReplicaListResponse{Replicas: replicaStatuses(info)}, nil
}

// ReplicaAdd adds a replica and waits for its rebuild, or, with
// background set, until it has started.
func (s *Server) ReplicaAdd(ctx context.Context, req *controlpb.ReplicaAddRequest) (*controlpb.Empty, error) {
	id := req.GetId()
	if id == "" {
		id = req.GetAddress()
	}
	r := enginerun.Replica{ID: proto.ReplicaID(id), Addr: req.GetAddress()}
	opt := enginerun.AddOptions{RateBytesPerSec: req.GetRateBytesPerSec(), Replaces: proto.ReplicaID(req.GetReplaces())}
	if !req.GetBackground() {
		return &controlpb.Empty{}, toStatus(s.d.AddReplicaWith(ctx, r, opt))
	}
	// The rebuild outlives this call: it runs on the server's own context.
	errc := make(chan error, 1)
	go func() {
		err := s.d.AddReplicaWith(context.Background(), r, opt)
		if err != nil {
			slog.Warn("add replica", "replica", r.ID, "err", err)
		}
		errc <- err
	}()
	return &controlpb.Empty{}, toStatus(s.waitRebuildStarted(ctx, r.ID, errc))
}

// waitRebuildStarted waits until the engine rebuilds id (or has just
// rebuilt it), or the add failed.
func (s *Server) waitRebuildStarted(ctx context.Context, id proto.ReplicaID, errc <-chan error) error {
	for {
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		info, err := s.d.Info(ctx)
		if err != nil {
			return err
		}
		if rb := info.Rebuild; rb != nil && rb.Target == id {
			return nil
		}
	}
}

// ReplicaRemove removes a replica.
func (s *Server) ReplicaRemove(ctx context.Context, req *controlpb.ReplicaRemoveRequest) (*controlpb.Empty, error) {
	return &controlpb.Empty{}, toStatus(s.d.RemoveReplica(ctx, proto.ReplicaID(req.GetId())))
}

// Attach marks the volume attached.
func (s *Server) Attach(ctx context.Context, _ *controlpb.Empty) (*controlpb.Empty, error) {
	return &controlpb.Empty{}, toStatus(s.d.SetAttached(ctx, true))
}

// Detach marks the volume detached (frontend IO is refused).
func (s *Server) Detach(ctx context.Context, _ *controlpb.Empty) (*controlpb.Empty, error) {
	return &controlpb.Empty{}, toStatus(s.d.SetAttached(ctx, false))
}

// Read reads through the engine (a debug and test tool).
func (s *Server) Read(ctx context.Context, req *controlpb.ReadRequest) (*controlpb.ReadResponse, error) {
	if req.GetLength() > maxIOBytes {
		return nil, status.Errorf(codes.InvalidArgument, "read of %d bytes: at most %d per call", req.GetLength(), maxIOBytes)
	}
	p := make([]byte, req.GetLength())
	if err := s.v.ReadAt(ctx, p, req.GetOffset()); err != nil {
		return nil, toStatus(err)
	}
	return &controlpb.ReadResponse{Data: p}, nil
}

// Write writes through the engine (a debug and test tool).
func (s *Server) Write(ctx context.Context, req *controlpb.WriteRequest) (*controlpb.Empty, error) {
	return &controlpb.Empty{}, toStatus(s.v.WriteAt(ctx, req.GetData(), req.GetOffset(), req.GetFua()))
}

// Flush makes acknowledged writes durable.
func (s *Server) Flush(ctx context.Context, _ *controlpb.Empty) (*controlpb.Empty, error) {
	return &controlpb.Empty{}, toStatus(s.v.Flush(ctx))
}

// WithQoS gives the server the frontend's limiter, for SetQoS and GetQoS.
func (s *Server) WithQoS(l *device.Limiter) *Server {
	s.qos = l
	return s
}

func (s *Server) SetQoS(_ context.Context, req *controlpb.QoSRequest) (*controlpb.QoSResponse, error) {
	if s.qos == nil {
		return nil, status.Error(codes.FailedPrecondition, "this engine's frontend has no QoS limiter")
	}
	s.qos.SetLimits(device.QoSLimits{IOPS: req.MaxIops, BytesPerSecond: req.MaxBandwidthBytes})
	return qosResponse(s.qos.Stats()), nil
}

func (s *Server) GetQoS(context.Context, *controlpb.Empty) (*controlpb.QoSResponse, error) {
	if s.qos == nil {
		return nil, status.Error(codes.FailedPrecondition, "this engine's frontend has no QoS limiter")
	}
	return qosResponse(s.qos.Stats()), nil
}

func qosResponse(st device.QoSStats) *controlpb.QoSResponse {
	return &controlpb.QoSResponse{MaxIops: st.Limits.IOPS, MaxBandwidthBytes: st.Limits.BytesPerSecond,
		Generation: st.Generation, Admitted: st.Admitted, AdmittedBytes: st.AdmittedBytes, Delayed: st.Delayed,
		Refills: st.Refills, MaxIosPerRefill: st.MaxIOsPerRefill, MaxBytesPerRefill: st.MaxBytesPerRefill,
		IosPerRefill: st.IOsPerRefill, BytesPerRefill: st.BytesPerRefill}
}
