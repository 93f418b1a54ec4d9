package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// JobKinds are the kinds of job Jobs tracks.
var JobKinds = []string{"backup", "restore"}

// Job is one backup or restore a process runs (the console starts them).
type Job struct {
	Kind        string    `json:"kind"` // "backup" or "restore"
	Name        string    `json:"name"` // the backup's VOLUME/ID, once known
	Started     time.Time `json:"started"`
	Ended       time.Time `json:"ended,omitzero"`
	ChunksDone  int       `json:"chunksDone"`
	ChunksTotal int       `json:"chunksTotal"`
	Bytes       uint64    `json:"bytes"` // read from the volume (backup) or written to it (restore)
	Err         string    `json:"error,omitempty"`
}

// Jobs tracks one volume's backup and restore jobs: the one running, the
// last ones, and when each kind last succeeded. At most one job runs at
// a time. Safe for concurrent use; the zero value is ready.
type Jobs struct {
	mu          sync.Mutex
	running     *Job
	recent      []Job // newest last, at most maxRecentJobs
	lastSuccess map[string]time.Time
	failures    map[string]uint64
}

const maxRecentJobs = 20

// Start begins a job of kind named name, or returns false while another
// job runs.
func (j *Jobs) Start(kind, name string, now time.Time) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.running != nil {
		return false
	}
	j.running = &Job{Kind: kind, Name: name, Started: now}
	return true
}

// Progress records the running job's progress.
func (j *Jobs) Progress(chunksDone, chunksTotal int, bytes uint64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if r := j.running; r != nil {
		r.ChunksDone, r.ChunksTotal, r.Bytes = chunksDone, chunksTotal, bytes
	}
}

// End ends the running job (named name, if it is known only now) with
// err.
func (j *Jobs) End(name string, err error, now time.Time) {
	j.mu.Lock()
	defer j.mu.Unlock()
	r := j.running
	if r == nil {
		return
	}
	j.running = nil
	r.Ended = now
	if name != "" {
		r.Name = name
	}
	if err != nil {
		r.Err = err.Error()
		if j.failures == nil {
			j.failures = map[string]uint64{}
		}
		j.failures[r.Kind]++
	} else {
		if j.lastSuccess == nil {
			j.lastSuccess = map[string]time.Time{}
		}
		j.lastSuccess[r.Kind] = now
	}
	j.recent = append(j.recent, *r)
	if len(j.recent) > maxRecentJobs {
		j.recent = j.recent[len(j.recent)-maxRecentJobs:]
	}
}

// Snapshot returns the running job (nil if none) and the recent ones,
// newest first.
func (j *Jobs) Snapshot() (*Job, []Job) {
	j.mu.Lock()
	defer j.mu.Unlock()
	var running *Job
	if j.running != nil {
		r := *j.running
		running = &r
	}
	out := make([]Job, 0, len(j.recent))
	for i := len(j.recent) - 1; i >= 0; i-- {
		out = append(out, j.recent[i])
	}
	return running, out
}

// jobDescs are the backup metrics of a volume.
type jobDescs struct {
	running, done, total, lastSuccess, failures *prometheus.Desc
}

func newJobDescs() jobDescs {
	l := []string{"volume", "kind"}
	return jobDescs{
		running:     prometheus.NewDesc("drover_backup_running", "1 while a job of the kind (backup, restore) runs on the volume.", l, nil),
		done:        prometheus.NewDesc("drover_backup_progress_chunks", "Chunks the running job has done.", l, nil),
		total:       prometheus.NewDesc("drover_backup_chunks", "Chunks the running job does in all.", l, nil),
		lastSuccess: prometheus.NewDesc("drover_backup_last_success_timestamp_seconds", "When the last job of the kind succeeded (Unix time; absent if none has since the process started).", l, nil),
		failures:    prometheus.NewDesc("drover_backup_failures_total", "Jobs of the kind that failed.", l, nil),
	}
}

func (d jobDescs) describe(ch chan<- *prometheus.Desc) {
	for _, x := range []*prometheus.Desc{d.running, d.done, d.total, d.lastSuccess, d.failures} {
		ch <- x
	}
}

func (d jobDescs) collect(ch chan<- prometheus.Metric, j *Jobs, volume string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, kind := range JobKinds {
		r := j.running
		on := r != nil && r.Kind == kind
		ch <- gauge(d.running, b2f(on), volume, kind)
		if on {
			ch <- gauge(d.done, float64(r.ChunksDone), volume, kind)
			ch <- gauge(d.total, float64(r.ChunksTotal), volume, kind)
		}
		if t, ok := j.lastSuccess[kind]; ok {
			ch <- gauge(d.lastSuccess, float64(t.UnixNano())/1e9, volume, kind)
		}
		ch <- counter(d.failures, float64(j.failures[kind]), volume, kind)
	}
}
