// Package metrics exports what Drover's running parts know about
// themselves as Prometheus metrics: a volume's engine (its state,
// replicas, rebuilds, event counters and frontend IO), a replica server,
// and the frontends' connections. Collectors read the state at scrape
// time: the engine through its driver's Info (one trip through its loop
// per scrape), the IO counters from enginerun.IOStats (atomics the data
// path updates without allocating). Nothing here is on the data path.
//
// Names follow Prometheus conventions (base units, units last, _total
// on counters) and Longhorn's where the concept is the same
// (drover_volume_actual_size_bytes, drover_volume_capacity_bytes,
// drover_volume_robustness with Longhorn's values).
package metrics

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/enginerun"
)

// scrapeTimeout bounds how long a scrape waits for the engine's loop.
const scrapeTimeout = 2 * time.Second

// Robustness values, as Longhorn's longhorn_volume_robustness has them.
const (
	RobustnessUnknown  = 0
	RobustnessHealthy  = 1
	RobustnessDegraded = 2
	RobustnessFaulted  = 3
)

// Phases are the engine phases drover_volume_state has a series for.
var Phases = []string{"opening", "serving", "faulted", "fenced"}

// Modes are the replica modes drover_replica_mode has a series for.
var Modes = []engine.Mode{engine.ModeRW, engine.ModeWO, engine.ModeERR}

// Frontends tracks the frontends serving a volume: their connection
// gauges, and where hosts reach them (for the console). Safe for
// concurrent use; the zero value is ready.
type Frontends struct {
	mu   sync.Mutex
	list []frontend
}

type frontend struct {
	kind      string
	conns     func() int
	endpoints []string
}

// Add registers a frontend of kind ("nbd", "iscsi") whose Connections
// is conns, reached at endpoints (URIs, or a target and portal).
func (f *Frontends) Add(kind string, conns func() int, endpoints ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.list = append(f.list, frontend{kind, conns, endpoints})
}

// Endpoint is where hosts reach a frontend.
type Endpoint struct {
	Kind        string `json:"kind"`
	Address     string `json:"address"`
	Connections int    `json:"connections"`
}

// Endpoints lists every frontend's endpoints with its connections now.
func (f *Frontends) Endpoints() []Endpoint {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Endpoint
	for _, fe := range f.list {
		n := fe.conns()
		for _, e := range fe.endpoints {
			out = append(out, Endpoint{Kind: fe.kind, Address: e, Connections: n})
		}
	}
	return out
}

// connections sums the connections per kind.
func (f *Frontends) connections() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]int{}
	for _, fe := range f.list {
		out[fe.kind] += fe.conns()
	}
	return out
}

// Volume collects one volume's metrics from its engine driver.
type Volume struct {
	vol       *enginerun.Volume
	name      string
	frontends *Frontends
	jobs      *Jobs
	d         volumeDescs
	jd        jobDescs
}

type volumeDescs struct {
	state, robustness, capacity, actual, epoch            *prometheus.Desc
	mode, connected                                       *prometheus.Desc
	rbDone, rbTotal, rbCopied, rbRate                     *prometheus.Desc
	corrupt, repaired, failed, stale, heartbeat, replaced *prometheus.Desc
	rebuilds, connections                                 *prometheus.Desc
	ops, bytes, errs, latency                             [len(enginerun.IOOps)]*prometheus.Desc
	scrapeErrors                                          *prometheus.Desc
}

// NewVolume returns the collector of v's volume, named name. frontends
// may be nil (no frontend connection gauges), and so may jobs (no backup
// metrics: only a process that runs backups, such as drover dev's
// console, has them).
func NewVolume(v *enginerun.Volume, name string, frontends *Frontends, jobs *Jobs) *Volume {
	if frontends == nil {
		frontends = &Frontends{}
	}
	c := &Volume{vol: v, name: name, frontends: frontends, jobs: jobs, jd: newJobDescs()}
	vl := []string{"volume"}
	rl := []string{"volume", "replica"}
	d := &c.d
	d.state = prometheus.NewDesc("drover_volume_state", "Engine phase: 1 for the phase the volume is in (opening, serving, faulted, fenced), 0 for the others.", []string{"volume", "state"}, nil)
	d.robustness = prometheus.NewDesc("drover_volume_robustness", "Volume robustness as Longhorn counts it: 0 unknown (opening), 1 healthy (every replica RW), 2 degraded (serving without every replica RW), 3 faulted (not serving: faulted or fenced).", vl, nil)
	d.capacity = prometheus.NewDesc("drover_volume_capacity_bytes", "Volume size as hosts see it.", vl, nil)
	d.actual = prometheus.NewDesc("drover_volume_actual_size_bytes", "Bytes of data one replica stores for the volume: every layer's (snapshots and head) data blocks.", vl, nil)
	d.epoch = prometheus.NewDesc("drover_volume_epoch", "Epoch the engine fenced its replicas at.", vl, nil)
	d.mode = prometheus.NewDesc("drover_replica_mode", "Replica mode as the engine sees it: 1 for the replica's mode (RW, WO = rebuilding, ERR), 0 for the others.", []string{"volume", "replica", "mode"}, nil)
	d.connected = prometheus.NewDesc("drover_replica_connected", "1 if the engine's link to the replica is up.", rl, nil)
	d.rbDone = prometheus.NewDesc("drover_replica_rebuild_done_bytes", "Bytes of the rebuild in progress into the replica compared and brought up to date (every layer counts the volume's size once).", rl, nil)
	d.rbTotal = prometheus.NewDesc("drover_replica_rebuild_total_bytes", "Bytes the rebuild in progress into the replica compares in all.", rl, nil)
	d.rbCopied = prometheus.NewDesc("drover_replica_rebuild_copied_bytes", "Bytes the rebuild in progress actually copied to the replica (blocks it lacked or held with another checksum).", rl, nil)
	d.rbRate = prometheus.NewDesc("drover_replica_rebuild_rate_bytes_per_second", "Average pace of the rebuild in progress into the replica.", rl, nil)
	d.corrupt = prometheus.NewDesc("drover_volume_corrupt_blocks_total", "Blocks replicas answered reads with that failed their checksum.", vl, nil)
	d.repaired = prometheus.NewDesc("drover_volume_repaired_blocks_total", "Corrupt block copies rewritten from a good copy by read repair.", vl, nil)
	d.failed = prometheus.NewDesc("drover_volume_replica_failures_total", "Replicas that left the RW set (went ERR).", vl, nil)
	d.stale = prometheus.NewDesc("drover_volume_stale_replicas_at_open_total", "Replicas an open found could not prove they hold the newest data (rebuilt, not trusted).", vl, nil)
	d.heartbeat = prometheus.NewDesc("drover_volume_heartbeat_failures_total", "Lease heartbeats an RW replica did not answer, answered with an error, or answered as restarted.", vl, nil)
	d.replaced = prometheus.NewDesc("drover_volume_replica_replacements_total", "Failed members replaced by a spare.", vl, nil)
	d.rebuilds = prometheus.NewDesc("drover_volume_rebuilds_total", "Rebuilds that ended, by result (done, failed).", []string{"volume", "result"}, nil)
	d.connections = prometheus.NewDesc("drover_volume_frontend_connections", "Host connections the volume's frontend serves now.", []string{"volume", "frontend"}, nil)
	d.scrapeErrors = prometheus.NewDesc("drover_volume_scrape_errors", "1 if this scrape could not read the engine's state (its loop did not answer in time, or it is closed).", vl, nil)
	for i, op := range enginerun.IOOps {
		n := op.String()
		d.ops[i] = prometheus.NewDesc("drover_volume_"+n+"_ops_total", "Frontend "+n+" requests completed (failed ones included).", vl, nil)
		if op != enginerun.IOFlush {
			d.bytes[i] = prometheus.NewDesc("drover_volume_"+n+"_bytes_total", "Bytes of frontend "+n+" requests completed.", vl, nil)
		}
		d.errs[i] = prometheus.NewDesc("drover_volume_"+n+"_errors_total", "Frontend "+n+" requests that failed.", vl, nil)
		d.latency[i] = prometheus.NewDesc("drover_volume_"+n+"_latency_seconds", "Latency of frontend "+n+" requests, from the frontend handing it to the engine to its reply.", vl, nil)
	}
	return c
}

// Describe implements prometheus.Collector.
func (c *Volume) Describe(ch chan<- *prometheus.Desc) {
	d := &c.d
	for _, x := range []*prometheus.Desc{d.state, d.robustness, d.capacity, d.actual, d.epoch, d.mode, d.connected,
		d.rbDone, d.rbTotal, d.rbCopied, d.rbRate, d.corrupt, d.repaired, d.failed, d.stale, d.heartbeat, d.replaced,
		d.rebuilds, d.connections, d.scrapeErrors} {
		ch <- x
	}
	if c.jobs != nil {
		c.jd.describe(ch)
	}
	for i := range enginerun.IOOps {
		ch <- d.ops[i]
		if d.bytes[i] != nil {
			ch <- d.bytes[i]
		}
		ch <- d.errs[i]
		ch <- d.latency[i]
	}
}

// Collect implements prometheus.Collector.
func (c *Volume) Collect(ch chan<- prometheus.Metric) {
	c.collectIO(ch)
	if c.jobs != nil {
		c.jd.collect(ch, c.jobs, c.name)
	}
	conns := c.frontends.connections()
	for kind, n := range conns {
		ch <- gauge(c.d.connections, float64(n), c.name, kind)
	}
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	d := c.vol.Driver()
	info, err := d.Info(ctx)
	if err != nil {
		ch <- gauge(c.d.scrapeErrors, 1, c.name)
		return
	}
	ch <- gauge(c.d.scrapeErrors, 0, c.name)
	c.collectInfo(ch, info)
	if info.Phase == engine.PhaseServing {
		if rep, err := d.Admin(ctx, engine.AdminRequest{Op: engine.AdminListSnapshots}); err == nil {
			var blocks uint64
			for _, l := range rep.Snapshots {
				blocks += l.DataBlocks
			}
			ch <- gauge(c.d.actual, float64(blocks*proto.BlockSize), c.name)
		}
	}
}

func (c *Volume) collectIO(ch chan<- prometheus.Metric) {
	st := c.vol.Stats()
	for i, op := range enginerun.IOOps {
		s := st.Op(op)
		ch <- counter(c.d.ops[i], float64(s.Ops), c.name)
		if c.d.bytes[i] != nil {
			ch <- counter(c.d.bytes[i], float64(s.Bytes), c.name)
		}
		ch <- counter(c.d.errs[i], float64(s.Errors), c.name)
		buckets := make(map[float64]uint64, len(enginerun.LatencyBounds))
		var cum uint64
		for j, b := range enginerun.LatencyBounds {
			cum += s.Buckets[j]
			buckets[b.Seconds()] = cum
		}
		ch <- prometheus.MustNewConstHistogram(c.d.latency[i], s.Ops, s.Latency.Seconds(), buckets, c.name)
	}
}

func (c *Volume) collectInfo(ch chan<- prometheus.Metric, info enginerun.Info) {
	d, v := &c.d, c.name
	for _, ph := range Phases {
		ch <- gauge(d.state, b2f(info.Phase.String() == ph), v, ph)
	}
	ch <- gauge(d.robustness, float64(Robustness(info.VolumeInfo)), v)
	if info.SizeBytes > 0 {
		ch <- gauge(d.capacity, float64(info.SizeBytes), v)
	}
	ch <- gauge(d.epoch, float64(info.Epoch), v)
	for _, r := range info.Replicas {
		for _, m := range Modes {
			ch <- gauge(d.mode, b2f(r.Mode == m), v, string(r.ID), m.String())
		}
		ch <- gauge(d.connected, b2f(info.Connected[r.ID]), v, string(r.ID))
	}
	if rb := info.Rebuild; rb != nil {
		st := enginerun.Stats(*rb, info.Tick)
		id := string(rb.Target)
		ch <- gauge(d.rbDone, float64(st.DoneBytes), v, id)
		ch <- gauge(d.rbTotal, float64(st.TotalBytes), v, id)
		ch <- gauge(d.rbCopied, float64(st.CopiedBytes), v, id)
		ch <- gauge(d.rbRate, st.RateBytesPerSec, v, id)
	}
	k := info.Counters
	ch <- counter(d.corrupt, float64(k.CorruptBlocks), v)
	ch <- counter(d.repaired, float64(k.RepairedBlocks), v)
	ch <- counter(d.failed, float64(k.ReplicaFailed), v)
	ch <- counter(d.stale, float64(k.StaleAtOpen), v)
	ch <- counter(d.heartbeat, float64(k.HeartbeatFailures), v)
	ch <- counter(d.replaced, float64(info.Replaced), v)
	ch <- counter(d.rebuilds, float64(k.RebuildsDone), v, "done")
	ch <- counter(d.rebuilds, float64(k.RebuildsFailed), v, "failed")
}

// Robustness is the Longhorn robustness value of a volume's state.
func Robustness(info engine.VolumeInfo) int {
	switch info.Phase {
	case engine.PhaseFaulted, engine.PhaseFenced:
		return RobustnessFaulted
	case engine.PhaseServing:
		for _, r := range info.Replicas {
			if r.Mode != engine.ModeRW {
				return RobustnessDegraded
			}
		}
		return RobustnessHealthy
	}
	return RobustnessUnknown
}

func gauge(d *prometheus.Desc, v float64, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func counter(d *prometheus.Desc, v float64, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// NewRegistry returns a registry holding cs and the Go runtime's and
// the process's standard collectors (go_*, process_*).
func NewRegistry(cs ...prometheus.Collector) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	cs = append(cs, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return reg, nil
}

// Handler serves reg's metrics in the Prometheus text or OpenMetrics
// format, as the scraper asks.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true})
}
