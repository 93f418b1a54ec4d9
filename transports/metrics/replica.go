package metrics

import (
	"io/fs"
	"path/filepath"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-io/drover/transports/replicarun"
)

// Replica collects a replica server's metrics: its size, the disk space
// its directory takes, whether it is damaged, and its engine
// connections.
type Replica struct {
	r                                         *replicarun.Runner
	dir                                       string
	conns                                     func() int
	size, actual, damaged, connections, epoch *prometheus.Desc
}

// NewReplica returns the collector of runner r, stored in dir; conns
// (may be nil) counts the engine connections it serves.
func NewReplica(r *replicarun.Runner, dir string, conns func() int) *Replica {
	l := []string{"replica"}
	return &Replica{r: r, dir: dir, conns: conns,
		size:        prometheus.NewDesc("drover_replica_size_bytes", "Volume size the replica holds.", l, nil),
		actual:      prometheus.NewDesc("drover_replica_actual_size_bytes", "Disk space the replica's directory takes (allocated blocks of its files).", l, nil),
		damaged:     prometheus.NewDesc("drover_replica_damaged", "1 if the replica's files are damaged and it serves nothing (engines see it ERR with the reason).", l, nil),
		connections: prometheus.NewDesc("drover_replica_engine_connections", "Engine connections the replica serves now.", l, nil),
		epoch:       prometheus.NewDesc("drover_replica_epoch", "Epoch the replica is fenced at.", l, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Replica) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.size, c.actual, c.damaged, c.connections, c.epoch} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Replica) Collect(ch chan<- prometheus.Metric) {
	id := string(c.r.ID())
	damaged := c.r.Failed() != ""
	ch <- gauge(c.damaged, b2f(damaged), id)
	if !damaged {
		info := c.r.Info()
		ch <- gauge(c.size, float64(info.SizeBytes), id)
		ch <- gauge(c.epoch, float64(info.Epoch), id)
	}
	if n, err := diskUsage(c.dir); err == nil {
		ch <- gauge(c.actual, float64(n), id)
	}
	if c.conns != nil {
		ch <- gauge(c.connections, float64(c.conns()), id)
	}
}

// diskUsage sums the allocated bytes of the regular files under dir (as
// du does; sparse files count what they hold).
func diskUsage(dir string) (uint64, error) {
	var n uint64
	err := filepath.WalkDir(dir, func(_ string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return nil // removed meanwhile
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			n += uint64(st.Blocks) * 512
		}
		return nil
	})
	return n, err
}
