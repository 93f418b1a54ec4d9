// Package console serves Drover's web console for one volume: a page
// (HTML, JS and CSS embedded in the binary, nothing fetched from
// elsewhere) showing the volume's state and robustness, replicas with
// their modes, rebuild progress, the snapshot chain, frontends and
// recent events, kept live by server-sent events; and a small JSON API
// the page acts through (snapshot create/delete/revert, replica
// add/remove, attach/detach).
//
// Actions go through transports/control's Server methods, in process:
// the console does exactly what the drover CLI does over gRPC, with the
// same checks and errors. It is meant for a loopback address: it refuses
// requests whose Host is not a loopback name (DNS rebinding) and
// state-changing requests from another origin (cross-site requests),
// and otherwise trusts its caller as the control API does.
package console

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/transports/backuprun"
	"github.com/drover-io/drover/transports/control"
	"github.com/drover-io/drover/transports/control/controlpb"
	"github.com/drover-io/drover/transports/enginerun"
	"github.com/drover-io/drover/transports/metrics"
)

//go:embed assets
var assets embed.FS

const (
	defaultInterval = 500 * time.Millisecond
	// maxStreams bounds the live pages served at once.
	maxStreams = 16
	// maxBodyBytes bounds a request body (the API takes names and addresses).
	maxBodyBytes = 64 << 10
	// stateTimeout bounds how long building a state waits for the engine.
	stateTimeout = 5 * time.Second
	// actionTimeout bounds an action (a snapshot delete merges data).
	actionTimeout = 10 * time.Minute
)

// Config sets up a Server.
type Config struct {
	// Volume is the volume the console shows and acts on; required.
	Volume *enginerun.Volume
	// Frontends lists where hosts reach the volume (may be nil).
	Frontends *metrics.Frontends
	// Interval is how often a live page's state is refreshed (default
	// 500ms); an unchanged state is not sent again.
	Interval time.Duration
	// Backups, when set, is where the page lists, takes and restores the
	// volume's backups; BackupTarget names it on the page.
	Backups      *backuprun.Repo
	BackupTarget string
	// BackupError says why BackupTarget did not open (Backups is nil).
	BackupError string
	// Jobs tracks the backups and restores the page starts (default: a
	// tracker of its own; share one with the metrics collector).
	Jobs *metrics.Jobs
}

// Server is the console's HTTP handler.
type Server struct {
	cfg     Config
	ctl     *control.Server
	client  controlpb.ControlClient // ctl in process, for backuprun
	close   func()
	mux     *http.ServeMux
	streams chan struct{}
}

// New returns the console of cfg.Volume.
func New(cfg Config) (*Server, error) {
	if cfg.Volume == nil {
		return nil, errors.New("console: no volume")
	}
	if cfg.Frontends == nil {
		cfg.Frontends = &metrics.Frontends{}
	}
	if cfg.Interval <= 0 {
		cfg.Interval = defaultInterval
	}
	if cfg.Jobs == nil {
		cfg.Jobs = &metrics.Jobs{}
	}
	s := &Server{cfg: cfg, ctl: control.NewServer(cfg.Volume), mux: http.NewServeMux(), streams: make(chan struct{}, maxStreams),
		close: func() {}}
	static, err := fs.Sub(assets, "assets")
	if err != nil {
		return nil, fmt.Errorf("console: assets: %w", err)
	}
	if cfg.Backups != nil {
		if s.client, s.close, err = inProcessControl(s.ctl); err != nil {
			return nil, err
		}
	}
	s.mux.Handle("GET /", http.FileServerFS(static))
	s.mux.HandleFunc("GET /api/state", s.getState)
	s.mux.HandleFunc("GET /api/stream", s.stream)
	s.mux.HandleFunc("POST /api/snapshots", s.action(s.snapshotCreate))
	s.mux.HandleFunc("DELETE /api/snapshots/{name}", s.action(s.snapshotDelete))
	s.mux.HandleFunc("POST /api/snapshots/{name}/revert", s.action(s.snapshotRevert))
	s.mux.HandleFunc("POST /api/replicas", s.action(s.replicaAdd))
	s.mux.HandleFunc("DELETE /api/replicas/{id}", s.action(s.replicaRemove))
	s.mux.HandleFunc("POST /api/attach", s.action(s.attach(true)))
	s.mux.HandleFunc("POST /api/detach", s.action(s.attach(false)))
	s.mux.HandleFunc("GET /api/backups", s.listBackups)
	s.mux.HandleFunc("POST /api/backups", s.action(s.backupCreate))
	s.mux.HandleFunc("POST /api/backups/{id}/restore", s.action(s.backupRestore))
	return s, nil
}

// Close releases the in-process control connection backups use. A
// backup or restore still running goes on until it fails.
func (s *Server) Close() { s.close() }

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !loopbackHost(r.Host) {
		http.Error(w, "console: Host "+r.Host+" is not a loopback address (the console serves localhost only)", http.StatusForbidden)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead && !sameOrigin(r) {
		http.Error(w, "console: cross-origin request refused", http.StatusForbidden)
		return
	}
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Frame-Options", "DENY")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
	s.mux.ServeHTTP(w, r)
}

// loopbackHost reports whether a Host header names this machine by a
// loopback address or "localhost": a page from another site that a DNS
// rebinding pointed at 127.0.0.1 still carries its own name.
func loopbackHost(host string) bool {
	h, _, err := net.SplitHostPort(host)
	if err != nil {
		h = host
	}
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(h, "[]"))
	return ip != nil && ip.IsLoopback()
}

// sameOrigin refuses what a page of another origin could send: an Origin
// (or, without one, a Referer) naming another host, and any body that is
// not JSON (a plain form post needs no CORS preflight).
func sameOrigin(r *http.Request) bool {
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return false
		}
	} else if ref := r.Header.Get("Referer"); ref != "" {
		u, err := url.Parse(ref)
		if err != nil || u.Host != r.Host {
			return false
		}
	}
	return r.ContentLength == 0 || strings.HasPrefix(r.Header.Get("Content-Type"), "application/json")
}

// State is what the page shows: the whole volume at one moment.
type State struct {
	Volume      string               `json:"volume"`
	Phase       string               `json:"phase"`
	Why         string               `json:"why,omitempty"`
	Robustness  string               `json:"robustness"`
	Attached    bool                 `json:"attached"`
	Epoch       uint64               `json:"epoch"`
	SizeBytes   uint64               `json:"sizeBytes"`
	ActualBytes uint64               `json:"actualBytes"`
	Frontends   []metrics.Endpoint   `json:"frontends"`
	Replicas    []Replica            `json:"replicas"`
	Rebuild     *Rebuild             `json:"rebuild,omitempty"`
	LastRebuild *Rebuild             `json:"lastRebuild,omitempty"`
	Spares      []string             `json:"spares"`
	Removed     []string             `json:"removed"`
	Snapshots   []Snapshot           `json:"snapshots"`
	Counters    map[string]uint64    `json:"counters"`
	Events      []Event              `json:"events"`
	IO          map[string]IOSummary `json:"io"`
	// Backups is nil when the console has no backup target.
	Backups  *BackupState `json:"backups,omitempty"`
	Settings Settings     `json:"settings"`
}

// Settings are the engine's settings (read-only here: they are its
// command's flags).
type Settings struct {
	MinHealthy          int     `json:"minHealthy"`
	ReplicaTimeoutSec   float64 `json:"replicaTimeoutSeconds"`
	RebuildAfterSec     float64 `json:"rebuildAfterSeconds"`    // negative: never
	ReplaceAfterSec     float64 `json:"replaceAfterSeconds"`    // negative: never
	RebuildRateBytesSec uint64  `json:"rebuildRateBytesPerSec"` // 0: no limit
	BackingImage        string  `json:"backingImage,omitempty"`
}

// Replica is one member as the engine sees it.
type Replica struct {
	ID        string `json:"id"`
	Address   string `json:"address"`
	Mode      string `json:"mode"`
	Connected bool   `json:"connected"`
	Why       string `json:"why,omitempty"`
}

// Rebuild is a rebuild's progress.
type Rebuild struct {
	Target           string  `json:"target"`
	Source           string  `json:"source"`
	Stage            string  `json:"stage"`
	DoneBytes        uint64  `json:"doneBytes"`
	TotalBytes       uint64  `json:"totalBytes"`
	CopiedBytes      uint64  `json:"copiedBytes"`
	ElapsedSeconds   float64 `json:"elapsedSeconds"`
	RateBytesPerSec  float64 `json:"rateBytesPerSec"`
	ETASeconds       float64 `json:"etaSeconds"`
	LimitBytesPerSec uint64  `json:"limitBytesPerSec"`
}

// Snapshot is one layer of the chain, oldest first; the head is last.
type Snapshot struct {
	Name         string            `json:"name"`
	Head         bool              `json:"head,omitempty"`
	CreatedMs    int64             `json:"createdMs,omitempty"`
	SizeBytes    uint64            `json:"sizeBytes"`
	ReclaimBytes uint64            `json:"reclaimBytes"`
	Labels       map[string]string `json:"labels,omitempty"`
}

// Event is one engine event.
type Event struct {
	TimeMs  int64   `json:"timeMs"`
	Kind    string  `json:"kind"`
	Replica string  `json:"replica,omitempty"`
	Block   *uint64 `json:"block,omitempty"`
	Why     string  `json:"why,omitempty"`
	Warn    bool    `json:"warn,omitempty"`
}

// IOSummary counts one kind of frontend request.
type IOSummary struct {
	Ops    uint64 `json:"ops"`
	Bytes  uint64 `json:"bytes"`
	Errors uint64 `json:"errors"`
}

// State reads the volume's state.
func (s *Server) State(ctx context.Context) (*State, error) {
	d := s.cfg.Volume.Driver()
	info, err := d.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("volume info: %w", err)
	}
	st := &State{Volume: info.Volume, Phase: info.Phase.String(), Why: info.Why, Attached: info.Attached, Epoch: info.Epoch,
		SizeBytes: info.SizeBytes, Frontends: s.cfg.Frontends.Endpoints(), Spares: ids(info.Spares), Removed: ids(info.Removed),
		Robustness: robustnessNames[metrics.Robustness(info.VolumeInfo)], IO: map[string]IOSummary{}}
	for _, r := range info.Replicas {
		st.Replicas = append(st.Replicas, Replica{ID: string(r.ID), Address: info.Addrs[r.ID], Mode: r.Mode.String(),
			Connected: info.Connected[r.ID], Why: r.Why})
		if r.Mode == engine.ModeERR && r.Why == "" {
			st.Replicas[len(st.Replicas)-1].Why = info.LinkErr[r.ID]
		}
	}
	st.Rebuild, st.LastRebuild = rebuild(info.Rebuild, info.Tick), rebuild(info.LastRebuild, info.Tick)
	k := info.Counters
	st.Counters = map[string]uint64{"corruptBlocks": k.CorruptBlocks, "repairedBlocks": k.RepairedBlocks,
		"replicaFailures": k.ReplicaFailed, "staleAtOpen": k.StaleAtOpen, "rebuildsDone": k.RebuildsDone,
		"rebuildsFailed": k.RebuildsFailed, "heartbeatFailures": k.HeartbeatFailures, "replacements": uint64(info.Replaced)}
	for _, op := range enginerun.IOOps {
		o := s.cfg.Volume.Stats().Op(op)
		st.IO[op.String()] = IOSummary{Ops: o.Ops, Bytes: o.Bytes, Errors: o.Errors}
	}
	if info.Phase == engine.PhaseServing {
		if err := s.snapshots(ctx, st); err != nil {
			return nil, err
		}
	}
	st.Backups = s.backupState()
	cfg := d.Config()
	st.Settings = Settings{MinHealthy: max(cfg.MinHealthy, 1), ReplicaTimeoutSec: cfg.Timeout.Seconds(),
		RebuildAfterSec: cfg.RebuildAfter.Seconds(), ReplaceAfterSec: cfg.ReplaceAfter.Seconds(),
		RebuildRateBytesSec: cfg.RebuildRate, BackingImage: cfg.BackingImage}
	evs, _ := d.RecentEvents()
	for i := len(evs) - 1; i >= 0; i-- { // newest first
		st.Events = append(st.Events, event(evs[i]))
	}
	return st, nil
}

var robustnessNames = map[int]string{metrics.RobustnessUnknown: "unknown", metrics.RobustnessHealthy: "healthy",
	metrics.RobustnessDegraded: "degraded", metrics.RobustnessFaulted: "faulted"}

func (s *Server) snapshots(ctx context.Context, st *State) error {
	list, err := s.ctl.SnapshotList(ctx, &controlpb.Empty{})
	if err != nil {
		return fmt.Errorf("snapshot list: %w", err)
	}
	for _, l := range list.GetSnapshots() {
		snap := Snapshot{Name: l.GetName(), Head: l.GetName() == "", SizeBytes: l.GetSizeBytes(),
			ReclaimBytes: l.GetReclaimBytes(), Labels: l.GetLabels()}
		if l.GetCreatedUnixNano() != 0 {
			snap.CreatedMs = l.GetCreatedUnixNano() / 1e6
		}
		st.ActualBytes += snap.SizeBytes
		st.Snapshots = append(st.Snapshots, snap)
	}
	return nil
}

func rebuild(p *engine.RebuildProgress, tick time.Duration) *Rebuild {
	if p == nil {
		return nil
	}
	st := enginerun.Stats(*p, tick)
	return &Rebuild{Target: string(p.Target), Source: string(p.Source), Stage: p.Stage, DoneBytes: st.DoneBytes,
		TotalBytes: st.TotalBytes, CopiedBytes: st.CopiedBytes, ElapsedSeconds: st.Elapsed.Seconds(),
		RateBytesPerSec: st.RateBytesPerSec, ETASeconds: st.ETA.Seconds(), LimitBytesPerSec: st.LimitBytesPerSec}
}

func event(ev enginerun.TimedEvent) Event {
	out := Event{TimeMs: ev.Time.UnixMilli(), Kind: ev.Kind.String(), Replica: string(ev.Replica), Why: ev.Why,
		Warn: ev.Kind == engine.EventCorrupt || ev.Kind == engine.EventReplicaFailed || ev.Kind == engine.EventRebuildFailed || ev.Kind == engine.EventInternalFailed}
	if ev.Kind == engine.EventCorrupt || ev.Kind == engine.EventRepaired {
		b := ev.Block
		out.Block = &b
	}
	return out
}

func ids[T ~string](xs []T) []string {
	out := make([]string, 0, len(xs))
	for _, x := range xs {
		out = append(out, string(x))
	}
	sort.Strings(out)
	return out
}

func (s *Server) getState(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), stateTimeout)
	defer cancel()
	st, err := s.State(ctx)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, st)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(v)
}

// stream sends the state as server-sent events ("state"), at most every
// Interval and only when it changed, until the page goes away. A state
// that cannot be read is sent as an "error" event with the reason.
func (s *Server) stream(w http.ResponseWriter, r *http.Request) {
	select {
	case s.streams <- struct{}{}:
		defer func() { <-s.streams }()
	default:
		http.Error(w, fmt.Sprintf("console: %d live pages already open; close one", maxStreams), http.StatusServiceUnavailable)
		return
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "console: streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	var last []byte
	for {
		ctx, cancel := context.WithTimeout(r.Context(), stateTimeout)
		st, err := s.State(ctx)
		cancel()
		kind, b := "state", []byte(nil)
		if err != nil {
			kind, b = "error", mustJSON(map[string]string{"error": err.Error()})
		} else {
			b = mustJSON(st)
		}
		if !bytes.Equal(b, last) {
			if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", kind, b); err != nil {
				return
			}
			flusher.Flush()
			last = b
		}
		select {
		case <-r.Context().Done():
			return
		case <-t.C:
		}
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("console: encode %T: %v", v, err)) // only plain structs and maps are encoded
	}
	return b
}

// action wraps a state-changing handler: a bounded JSON body, a time
// limit, and errors as JSON with the HTTP status of their gRPC code.
func (s *Server) action(fn func(ctx context.Context, r *http.Request, body []byte) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := readBody(w, r)
		if err != nil {
			writeJSONError(w, http.StatusBadRequest, err.Error())
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), actionTimeout)
		defer cancel()
		if err := fn(ctx, r, body); err != nil {
			writeError(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("{}\n"))
	}
}

func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(r.Body); err != nil {
		return nil, fmt.Errorf("read request: %w", err)
	}
	return buf.Bytes(), nil
}

// decode parses a JSON body into v, refusing unknown fields.
func decode(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return status.Errorf(codes.InvalidArgument, "request body: %v", err)
	}
	return nil
}

func (s *Server) snapshotCreate(ctx context.Context, _ *http.Request, body []byte) error {
	var req struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
	}
	if err := decode(body, &req); err != nil {
		return err
	}
	_, err := s.ctl.SnapshotCreate(ctx, &controlpb.SnapshotRequest{Name: strings.TrimSpace(req.Name), Labels: req.Labels})
	return err
}

func (s *Server) snapshotDelete(ctx context.Context, r *http.Request, _ []byte) error {
	_, err := s.ctl.SnapshotDelete(ctx, &controlpb.SnapshotRequest{Name: r.PathValue("name")})
	return err
}

// snapshotRevert detaches the volume, reverts it and attaches it again,
// as drover snapshot revert --detach does (the page asks first: a host
// with the volume mounted must unmount it before).
func (s *Server) snapshotRevert(ctx context.Context, r *http.Request, _ []byte) error {
	if _, err := s.ctl.Detach(ctx, &controlpb.Empty{}); err != nil {
		return err
	}
	_, err := s.ctl.SnapshotRevert(ctx, &controlpb.SnapshotRequest{Name: r.PathValue("name")})
	if _, aerr := s.ctl.Attach(context.WithoutCancel(ctx), &controlpb.Empty{}); err == nil {
		err = aerr
	}
	return err
}

func (s *Server) replicaAdd(ctx context.Context, _ *http.Request, body []byte) error {
	var req struct {
		ID              string `json:"id"`
		Address         string `json:"address"`
		RateBytesPerSec uint64 `json:"rateBytesPerSec"`
	}
	if err := decode(body, &req); err != nil {
		return err
	}
	if strings.TrimSpace(req.Address) == "" {
		return status.Error(codes.InvalidArgument, "a replica needs an address")
	}
	_, err := s.ctl.ReplicaAdd(ctx, &controlpb.ReplicaAddRequest{Id: strings.TrimSpace(req.ID), Address: strings.TrimSpace(req.Address),
		RateBytesPerSec: req.RateBytesPerSec, Background: true})
	return err
}

func (s *Server) replicaRemove(ctx context.Context, r *http.Request, _ []byte) error {
	_, err := s.ctl.ReplicaRemove(ctx, &controlpb.ReplicaRemoveRequest{Id: r.PathValue("id")})
	return err
}

func (s *Server) attach(attached bool) func(context.Context, *http.Request, []byte) error {
	return func(ctx context.Context, _ *http.Request, _ []byte) error {
		var err error
		if attached {
			_, err = s.ctl.Attach(ctx, &controlpb.Empty{})
		} else {
			_, err = s.ctl.Detach(ctx, &controlpb.Empty{})
		}
		return err
	}
}

// writeError answers with err's message and the HTTP status of its gRPC
// code (the control server's errors carry one).
func writeError(w http.ResponseWriter, err error) {
	st, _ := status.FromError(err)
	code := http.StatusInternalServerError
	switch st.Code() {
	case codes.InvalidArgument:
		code = http.StatusBadRequest
	case codes.NotFound:
		code = http.StatusNotFound
	case codes.AlreadyExists, codes.FailedPrecondition, codes.Aborted:
		code = http.StatusConflict
	case codes.Unavailable, codes.ResourceExhausted:
		code = http.StatusServiceUnavailable
	case codes.DeadlineExceeded:
		code = http.StatusGatewayTimeout
	}
	msg := st.Message()
	if msg == "" {
		msg = err.Error()
	}
	writeJSONError(w, code, msg)
}

func writeJSONError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}
