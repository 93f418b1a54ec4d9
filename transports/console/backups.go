package console

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sort"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/drover-io/drover/transports/backuprun"
	"github.com/drover-io/drover/transports/control"
	"github.com/drover-io/drover/transports/control/controlpb"
	"github.com/drover-io/drover/transports/metrics"
)

// maxListedBackups bounds the backups the page lists (the newest).
const maxListedBackups = 50

// Backup is one backup of the volume, as the page lists it.
type Backup struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"` // VOLUME/ID
	CreatedMs int64             `json:"createdMs"`
	SizeBytes uint64            `json:"sizeBytes"`
	Chunks    int               `json:"chunks"`
	Parent    string            `json:"parent,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
}

// BackupState is the backup part of State: where backups go, the job
// running and the last ones.
type BackupState struct {
	Target  string        `json:"target"`
	Error   string        `json:"error,omitempty"` // why the target did not open
	Running *metrics.Job  `json:"running,omitempty"`
	Recent  []metrics.Job `json:"recent"`
}

// inProcessControl returns a control API client of ctl that reaches it
// through an in-memory gRPC connection, so that backups run through
// control.BackupVolume exactly as drover backup does over TCP.
func inProcessControl(ctl *control.Server) (controlpb.ControlClient, func(), error) {
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer(control.ServerOptions()...)
	ctl.Register(gs)
	go func() { _ = gs.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///console", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
	if err != nil {
		gs.Stop()
		return nil, nil, fmt.Errorf("console: in-process control client: %w", err)
	}
	return controlpb.NewControlClient(conn), func() { conn.Close(); gs.Stop() }, nil
}

func (s *Server) backupState() *BackupState {
	if s.cfg.Backups == nil {
		if s.cfg.BackupError != "" {
			return &BackupState{Target: s.cfg.BackupTarget, Error: s.cfg.BackupError}
		}
		return nil
	}
	running, recent := s.cfg.Jobs.Snapshot()
	return &BackupState{Target: s.cfg.BackupTarget, Running: running, Recent: recent}
}

// listBackups answers the volume's newest backups, newest first.
func (s *Server) listBackups(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Backups == nil {
		writeError(w, errNoTarget)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), time.Minute)
	defer cancel()
	refs, err := s.cfg.Backups.List(ctx, s.volumeName(ctx))
	if err != nil {
		writeError(w, fmt.Errorf("list backups in %s: %w", s.cfg.BackupTarget, err))
		return
	}
	sort.Slice(refs, func(i, j int) bool { return refs[i].ID > refs[j].ID })
	out := []Backup{}
	for _, ref := range refs[:min(len(refs), maxListedBackups)] {
		m, err := s.cfg.Backups.Manifest(ctx, ref.Volume, ref.ID)
		if err != nil {
			writeError(w, fmt.Errorf("backup %s/%s: %w", ref.Volume, ref.ID, err))
			return
		}
		out = append(out, Backup{ID: m.ID, Name: m.Volume + "/" + m.ID, CreatedMs: m.CreatedUnix * 1000, SizeBytes: m.SizeBytes,
			Chunks: len(m.Chunks), Parent: m.Parent, Labels: m.Labels})
	}
	writeJSON(w, out)
}

var errNoTarget = status.Error(codes.FailedPrecondition, "no backup target: start drover dev with --backup-target DIR or s3://BUCKET/PREFIX?endpoint=HOST:PORT")

func (s *Server) volumeName(ctx context.Context) string {
	if info, err := s.cfg.Volume.Driver().Info(ctx); err == nil {
		return info.Volume
	}
	return ""
}

// backupCreate starts a backup of the volume and returns at once; the
// page follows it in the state's backups.running. Like drover backup
// create, older backup snapshots are deleted once it is stored.
func (s *Server) backupCreate(ctx context.Context, _ *http.Request, _ []byte) error {
	if s.cfg.Backups == nil {
		return errNoTarget
	}
	if !s.cfg.Jobs.Start("backup", "", time.Now()) {
		return status.Error(codes.FailedPrecondition, "a backup or restore is running; wait for it to end")
	}
	go func() {
		ctx := context.Background()
		src := control.BackupVolume{C: s.client}
		m, _, err := s.cfg.Backups.Create(ctx, src, backuprun.CreateOptions{Progress: s.progress})
		name := ""
		if err == nil {
			name = m.Volume + "/" + m.ID
			if _, derr := backuprun.DropOldSnapshots(ctx, src, m); derr != nil {
				err = fmt.Errorf("the backup is stored, but deleting older backup snapshots failed (the next backup retries): %w", derr)
			}
		}
		s.cfg.Jobs.End(name, err, time.Now())
	}()
	return nil
}

// backupRestore starts restoring backup {id} of the volume over the
// volume's content (every chunk written, zeros too) and returns at once.
// The page asks first: hosts must not use the volume meanwhile.
func (s *Server) backupRestore(ctx context.Context, r *http.Request, _ []byte) error {
	if s.cfg.Backups == nil {
		return errNoTarget
	}
	vol := s.volumeName(ctx)
	m, err := s.cfg.Backups.Manifest(ctx, vol, r.PathValue("id"))
	if err != nil {
		return status.Errorf(codes.NotFound, "backup %s/%s: %v", vol, r.PathValue("id"), err)
	}
	name := m.Volume + "/" + m.ID
	if !s.cfg.Jobs.Start("restore", name, time.Now()) {
		return status.Error(codes.FailedPrecondition, "a backup or restore is running; wait for it to end")
	}
	go func() {
		err := s.cfg.Backups.Restore(context.Background(), m, control.BackupVolume{C: s.client},
			backuprun.RestoreOptions{All: true, Progress: s.progress})
		s.cfg.Jobs.End("", err, time.Now())
	}()
	return nil
}

func (s *Server) progress(p backuprun.Progress) {
	s.cfg.Jobs.Progress(p.ChunksDone, p.ChunksTotal, max(p.BytesRead, p.BytesStored))
}
