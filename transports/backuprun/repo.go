// Package backuprun runs backups: it reads snapshots through a Source (a
// volume's control API), cuts them into chunks as core/backup plans,
// compresses them with zstd, and stores them in an objstore.Store under
// their SHA-256, writing the manifest last; it restores, verifies and
// deletes backups, sweeps unreferenced chunks, and keeps DR standby
// volumes following a volume's backups. See core/backup for the object
// layout and the delete protocol.
package backuprun

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/drover-io/drover/core/backup"
	"github.com/drover-io/drover/transports/objstore"
)

// Errors callers branch on.
var (
	// ErrCorrupt: a chunk's content does not match its hash (or is missing).
	ErrCorrupt = errors.New("backup data is corrupt")
	// ErrNoBackup: no such backup.
	ErrNoBackup = errors.New("no such backup")
	// ErrBusy: another backup of the volume, or a sweep, is running.
	ErrBusy = errors.New("busy")
)

// DefaultStaleAfter is how long a marker of a running backup or sweep
// blocks the other side without being refreshed.
const DefaultStaleAfter = 10 * time.Minute

// Repo is a backup target: a store and how backups are laid out in it.
type Repo struct {
	Store objstore.Store
	// StaleAfter: see DefaultStaleAfter (markers are refreshed every
	// StaleAfter/8).
	StaleAfter time.Duration
	// Now is the clock (tests move it).
	Now func() time.Time

	encOnce sync.Once
	enc     *zstd.Encoder
	dec     *zstd.Decoder
}

// NewRepo returns a Repo on s with the defaults.
func NewRepo(s objstore.Store) *Repo {
	return &Repo{Store: s, StaleAfter: DefaultStaleAfter, Now: time.Now}
}

func (r *Repo) codec() (*zstd.Encoder, *zstd.Decoder) {
	r.encOnce.Do(func() {
		r.enc, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
		// A chunk from a hostile bucket must not decompress into more
		// than any manifest may describe (a zstd bomb).
		r.dec, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(backup.MaxChunkBytes))
	})
	return r.enc, r.dec
}

func chunkKey(h backup.Hash) string {
	s := h.String()
	return "chunks/" + s[:2] + "/" + s
}

func manifestKey(volume, id string) string { return "backups/" + volume + "/" + id }

func checkName(what, s string) error {
	if s == "" || len(s) > 200 || strings.ContainsAny(s, "/\\ \t\n") || strings.Contains(s, "..") {
		return fmt.Errorf("%s %q: want 1..200 characters without slashes, spaces or '..'", what, s)
	}
	return nil
}

// newID returns a backup id that sorts by creation time.
func (r *Repo) newID() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return r.Now().UTC().Format("20060102T150405.000Z") + "-" + hex.EncodeToString(b[:])
}

// Manifest reads one backup's manifest.
func (r *Repo) Manifest(ctx context.Context, volume, id string) (*backup.Manifest, error) {
	b, err := r.Store.Get(ctx, manifestKey(volume, id))
	if errors.Is(err, objstore.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s/%s in %s", ErrNoBackup, volume, id, r.Store)
	}
	if err != nil {
		return nil, err
	}
	m, err := backup.DecodeManifest(b)
	if err != nil {
		return nil, fmt.Errorf("backup %s/%s: %w", volume, id, err)
	}
	if m.Volume != volume || m.ID != id {
		return nil, fmt.Errorf("backup %s/%s: %w: it names %s/%s", volume, id, backup.ErrBadManifest, m.Volume, m.ID)
	}
	return m, nil
}

// BackupRef names one backup.
type BackupRef struct{ Volume, ID string }

// List returns the backups of volume ("" = every volume), oldest first
// within a volume.
func (r *Repo) List(ctx context.Context, volume string) ([]BackupRef, error) {
	prefix := "backups/"
	if volume != "" {
		prefix += volume + "/"
	}
	keys, err := r.Store.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	var out []BackupRef
	for _, k := range keys {
		parts := strings.Split(k, "/")
		if len(parts) == 3 {
			out = append(out, BackupRef{Volume: parts[1], ID: parts[2]})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Volume != out[j].Volume {
			return out[i].Volume < out[j].Volume
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// Latest returns the newest backup of volume, or nil when there is none.
func (r *Repo) Latest(ctx context.Context, volume string) (*backup.Manifest, error) {
	refs, err := r.List(ctx, volume)
	if err != nil || len(refs) == 0 {
		return nil, err
	}
	last := refs[len(refs)-1]
	return r.Manifest(ctx, last.Volume, last.ID)
}

// chunks lists the stored chunks.
func (r *Repo) chunks(ctx context.Context) (map[backup.Hash]bool, error) {
	keys, err := r.Store.List(ctx, "chunks/")
	if err != nil {
		return nil, err
	}
	out := make(map[backup.Hash]bool, len(keys))
	for _, k := range keys {
		if h, err := backup.ParseHash(k[strings.LastIndex(k, "/")+1:]); err == nil {
			out[h] = true
		}
	}
	return out, nil
}

// getChunk fetches, decompresses and checks one chunk.
func (r *Repo) getChunk(ctx context.Context, h backup.Hash, length uint64) ([]byte, error) {
	b, err := r.Store.Get(ctx, chunkKey(h))
	if errors.Is(err, objstore.ErrNotExist) {
		return nil, fmt.Errorf("%w: chunk %s is missing", ErrCorrupt, h)
	}
	if err != nil {
		return nil, err
	}
	if length > backup.MaxChunkBytes {
		return nil, fmt.Errorf("%w: chunk %s of %d bytes is larger than any backup holds", ErrCorrupt, h, length)
	}
	// Every chunk is one frame that states its size (EncodeAll writes it):
	// refuse one that claims another before decompressing anything.
	var hdr zstd.Header
	if err := hdr.Decode(b); err != nil || !hdr.HasFCS || hdr.FrameContentSize != length {
		return nil, fmt.Errorf("%w: chunk %s does not hold one frame of %d bytes (header: %v)", ErrCorrupt, h, length, frameDesc(hdr, err))
	}
	_, dec := r.codec()
	data, err := dec.DecodeAll(b, make([]byte, 0, length))
	if err != nil {
		return nil, fmt.Errorf("%w: chunk %s does not decompress: %v", ErrCorrupt, h, err)
	}
	if backup.HashOf(data) != h || uint64(len(data)) != length {
		return nil, fmt.Errorf("%w: chunk %s holds %d bytes hashing to %s", ErrCorrupt, h, len(data), backup.HashOf(data))
	}
	return data, nil
}

// marker is the body of a locks/ object.
type marker struct {
	Kind          string `json:"kind"`
	ID            string `json:"id"`
	Volume        string `json:"volume,omitempty"`
	RefreshedUnix int64  `json:"refreshed_unix"`
	Host          string `json:"host,omitempty"`
	PID           int    `json:"pid,omitempty"`
}

// dead reports whether m's process is known to be gone: it ran on this
// host and no process has its pid. (A marker of a killed process would
// otherwise block the other side until it went stale.)
func (m marker) dead() bool {
	host, err := os.Hostname()
	if err != nil || m.Host != host || m.PID <= 0 || m.PID == os.Getpid() {
		return false
	}
	return errors.Is(syscall.Kill(m.PID, 0), syscall.ESRCH)
}

func (r *Repo) putMarker(ctx context.Context, m marker) error {
	m.RefreshedUnix = r.Now().Unix()
	m.Host, _ = os.Hostname()
	m.PID = os.Getpid()
	b, _ := json.Marshal(m)
	return r.Store.Put(ctx, "locks/"+m.Kind+"-"+m.ID, b)
}

func (r *Repo) markers(ctx context.Context) ([]marker, error) {
	keys, err := r.Store.List(ctx, "locks/")
	if err != nil {
		return nil, err
	}
	var out []marker
	for _, k := range keys {
		b, err := r.Store.Get(ctx, k)
		if errors.Is(err, objstore.ErrNotExist) {
			continue // finished meanwhile
		}
		if err != nil {
			return nil, err
		}
		var m marker
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("marker %s: %w", k, err)
		}
		if m.dead() {
			m.RefreshedUnix = 0 // as stale as can be
		}
		out = append(out, m)
	}
	return out, nil
}

func coreMarkers(ms []marker) []backup.Marker {
	out := make([]backup.Marker, 0, len(ms))
	for _, m := range ms {
		out = append(out, backup.Marker{Kind: m.Kind, ID: m.ID, RefreshedUnix: m.RefreshedUnix})
	}
	return out
}

// lease holds a marker and refreshes it until released; it tracks the
// longest gap between refreshes (backup.MustRecheck).
type lease struct {
	r      *Repo
	m      marker
	stop   chan struct{}
	done   chan struct{}
	mu     sync.Mutex
	last   time.Time
	maxGap time.Duration
	err    error
}

func (r *Repo) acquire(ctx context.Context, m marker) (*lease, error) {
	if err := r.putMarker(ctx, m); err != nil {
		return nil, fmt.Errorf("write %s marker: %w", m.Kind, err)
	}
	l := &lease{r: r, m: m, stop: make(chan struct{}), done: make(chan struct{}), last: r.Now()}
	go l.refresh()
	return l, nil
}

func (l *lease) refresh() {
	defer close(l.done)
	t := time.NewTicker(max(l.r.StaleAfter/8, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.touch(context.Background())
		}
	}
}

// touch rewrites the marker now and records the gap since the last one.
func (l *lease) touch(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, l.r.StaleAfter/4+time.Second)
	defer cancel()
	err := l.r.putMarker(ctx, l.m)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.err = err
		return
	}
	now := l.r.Now()
	l.maxGap = max(l.maxGap, now.Sub(l.last))
	l.last = now
}

// gap returns the longest time the marker went without a refresh so far.
func (l *lease) gap() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return max(l.maxGap, l.r.Now().Sub(l.last))
}

// resetGap starts counting gaps afresh (after a recheck).
func (l *lease) resetGap() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.maxGap, l.last = 0, l.r.Now()
}

func (l *lease) release(ctx context.Context) {
	close(l.stop)
	<-l.done
	_ = l.r.Store.Delete(ctx, "locks/"+l.m.Kind+"-"+l.m.ID)
}

func frameDesc(h zstd.Header, err error) string {
	switch {
	case err != nil:
		return err.Error()
	case !h.HasFCS:
		return "no content size"
	}
	return fmt.Sprintf("content size %d", h.FrameContentSize)
}
