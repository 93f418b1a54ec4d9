package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape is one scrape of a /metrics endpoint: the raw text, parsed.
type scrape struct {
	t        *testing.T
	text     []byte
	families map[string]*dto.MetricFamily
}

// scrapeMetrics GETs http://addr/metrics, checks the text with promtool
// (Prometheus' own linter: names, types, units, help), and parses it.
func scrapeMetrics(t *testing.T, addr string) *scrape {
	t.Helper()
	s := fetchMetrics(t, addr)
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = bytes.NewReader(s.text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
	return s
}

// fetchMetrics GETs http://addr/metrics and parses it.
func fetchMetrics(t *testing.T, addr string) *scrape {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	text, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s %v\n%s", addr, resp.Status, err, text)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		t.Fatalf("parse the scrape of %s: %v", addr, err)
	}
	return &scrape{t: t, text: text, families: fams}
}

// value returns the value of the series of name whose labels include
// labels ("k=v" pairs), and whether there is one.
func (s *scrape) value(name string, labels ...string) (float64, bool) {
	f := s.families[name]
	if f == nil {
		return 0, false
	}
series:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for _, kv := range labels {
			k, v, _ := strings.Cut(kv, "=")
			if have[k] != v {
				continue series
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

// must returns value's value or fails the test.
func (s *scrape) must(name string, labels ...string) float64 {
	s.t.Helper()
	v, ok := s.value(name, labels...)
	if !ok {
		s.t.Fatalf("no series %s%v in the scrape:\n%s", name, labels, s.text)
	}
	return v
}

// TestProcessDevMetrics: a real NBD client (qemu-io) writes and reads
// `drover dev`, which is scraped while it does (every scrape passes
// promtool, and an open NBD connection is counted); afterwards the
// metrics count what the client did. A block rotted on one replica's disk is found by a read and
// repaired from another: corrupt and repaired counters say 1.
func TestProcessDevMetrics(t *testing.T) {
	needTools(t, "qemu-io", "promtool")
	const writes = 300
	dataDir := t.TempDir()
	metricsAddr := freeAddr(t)
	c := newVolumeClient(t, freeAddr(t), 4<<20)
	sock := filepath.Join(dataDir, "nbd.sock")
	dev := start(t, "dev", nil, "dev", "--data-dir", dataDir, "--size", "4MiB", "--control", c.ctlAddr,
		"--nbd-listen", "unix:"+sock, "--metrics-listen", metricsAddr)
	c.waitModes("drover dev serving", "", "", "")
	eventually(t, "drover dev's metrics endpoint", func() (bool, string) {
		out := dev.output()
		return strings.Contains(out, "metrics on http://"+metricsAddr+"/metrics") && strings.Contains(out, "stop with"), out
	})
	uri := "nbd+unix:///dev?socket=" + sock
	args := []string{"-f", "raw"}
	for i := range writes {
		args = append(args, "-c", fmt.Sprintf("write -P 0x%02x %d 4096", i%250+1, i*8192))
	}
	client := exec.Command("qemu-io", append(args, "-c", "flush", "-c", "read -P 0x01 0 4096", uri)...)
	var clientOut bytes.Buffer
	client.Stdout, client.Stderr = &clientOut, &clientOut
	if err := client.Start(); err != nil {
		t.Fatal(err)
	}
	clientDone := make(chan error, 1)
	go func() { clientDone <- client.Wait() }()
	idle, err := net.Dial("unix", sock) // a connection in its handshake: counted too
	if err != nil {
		t.Fatal(err)
	}
	v := `volume=dev`
	eventually(t, "the open NBD connection counted", func() (bool, string) { // once the server accepted it
		n, _ := fetchMetrics(t, metricsAddr).value("drover_volume_frontend_connections", v, "frontend=nbd")
		return n >= 1, fmt.Sprint(n)
	})
	scrapes := 0
	for running := true; running; {
		select {
		case err := <-clientDone:
			if err != nil {
				t.Fatalf("qemu-io: %v\n%s", err, clientOut.String())
			}
			running = false
		default:
			s := scrapeMetrics(t, metricsAddr)
			if n := s.must("drover_volume_frontend_connections", v, "frontend=nbd"); n < 1 {
				t.Errorf("drover_volume_frontend_connections = %v with a connection open", n)
			}
			scrapes++
		}
	}
	idle.Close()
	t.Logf("%d scrapes while qemu-io wrote", scrapes)

	s := scrapeMetrics(t, metricsAddr)
	if n := s.must("drover_volume_write_ops_total", v); n < writes {
		t.Errorf("drover_volume_write_ops_total = %v after %d writes", n, writes)
	}
	if n := s.must("drover_volume_write_bytes_total", v); n < writes*4096 {
		t.Errorf("drover_volume_write_bytes_total = %v after %d writes of 4 KiB", n, writes)
	}
	if n := s.must("drover_volume_write_latency_seconds", v); n < writes {
		t.Errorf("drover_volume_write_latency_seconds counts %v requests after %d writes", n, writes)
	}
	if n := s.must("drover_volume_read_ops_total", v); n < 1 {
		t.Errorf("drover_volume_read_ops_total = %v after a read", n)
	}
	if n := s.must("drover_volume_flush_ops_total", v); n < 1 {
		t.Errorf("drover_volume_flush_ops_total = %v after a flush", n)
	}
	if n := s.must("drover_volume_actual_size_bytes", v); n != writes*4096 {
		t.Errorf("drover_volume_actual_size_bytes = %v, want %d (%d distinct blocks written)", n, writes*4096, writes)
	}
	for _, want := range []struct {
		name   string
		labels []string
		value  float64
	}{
		{"drover_volume_state", []string{v, "state=serving"}, 1},
		{"drover_volume_robustness", []string{v}, 1},
		{"drover_volume_capacity_bytes", []string{v}, 4 << 20},
		{"drover_replica_mode", []string{v, "replica=dev-1", "mode=RW"}, 1},
		{"drover_replica_mode", []string{v, "replica=dev-3", "mode=ERR"}, 0},
		{"drover_volume_corrupt_blocks_total", []string{v}, 0},
	} {
		if got := s.must(want.name, want.labels...); got != want.value {
			t.Errorf("%s%v = %v, want %v", want.name, want.labels, got, want.value)
		}
	}

	// Rot block 2 (written 0x02 at 8192) on dev-1's disk, then read it
	// once per replica: reads go round robin, so one finds the rot.
	rotBlock(t, filepath.Join(dataDir, "dev-1"), 2)
	args = []string{"-f", "raw"}
	for range 6 {
		args = append(args, "-c", "read -P 0x02 8192 4096")
	}
	sh(t, "qemu-io", append(args, uri)...)
	s = scrapeMetrics(t, metricsAddr)
	if n := s.must("drover_volume_corrupt_blocks_total", v); n != 1 {
		t.Errorf("drover_volume_corrupt_blocks_total = %v after one rotted block was read, want 1", n)
	}
	if n := s.must("drover_volume_repaired_blocks_total", v); n != 1 {
		t.Errorf("drover_volume_repaired_blocks_total = %v after one rotted block was read, want 1", n)
	}
	dev.stop()
}

// rotBlock overwrites block b's data in the replica directory's layer
// files that hold it (as bit rot would: the index's checksum stays).
func rotBlock(t *testing.T, dir string, b int64) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "layer-*.data"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no layer data files in %s: %v", dir, err)
	}
	rotted := false
	for _, name := range files {
		f, err := os.OpenFile(name, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if fi, err := f.Stat(); err == nil && fi.Size() >= (b+1)*4096 {
			if _, err := f.WriteAt(bytes.Repeat([]byte{0xee}, 4096), b*4096); err != nil {
				t.Fatal(err)
			}
			rotted = true
		}
		f.Close()
	}
	if !rotted {
		t.Fatalf("no layer file in %s holds block %d", dir, b)
	}
}

// TestProcessEngineMetrics: drover engine over three drover replica
// processes serves /metrics (and its console), and so does a replica. A replica killed
// with SIGKILL shows ERR in drover_replica_mode and the volume degraded;
// restarted, it is rebuilt: RW, healthy, and one rebuild done.
func TestProcessEngineMetrics(t *testing.T) {
	needTools(t, "promtool")
	const size = 4 << 20
	engineMetrics, replicaMetrics, consoleAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	c := &cluster{volumeClient: newVolumeClient(t, freeAddr(t), size), prefix: make([][]string, 3), replicas: make([]*proc, 3)}
	for i := range 3 {
		c.addrs = append(c.addrs, freeAddr(t))
		c.dirs = append(c.dirs, filepath.Join(t.TempDir(), fmt.Sprintf("r%d", i+1)))
	}
	c.replicas[0] = start(t, "replica 1", nil, "replica", "--dir", c.dirs[0], "--listen", c.addrs[0], "--size", fmt.Sprint(size),
		"--metrics-listen", replicaMetrics)
	c.startReplica(1)
	c.startReplica(2)
	c.startEngine("--metrics-listen", engineMetrics, "--console-listen", consoleAddr)
	l := newLoad(c.volumeClient, 7)
	for range 10 {
		l.write()
	}
	l.flush()

	s := scrapeMetrics(t, engineMetrics)
	v := "volume=test"
	if n := s.must("drover_volume_write_ops_total", v); n < 10 {
		t.Errorf("drover_volume_write_ops_total = %v after 10 writes", n)
	}
	if got := s.must("drover_volume_robustness", v); got != 1 {
		t.Errorf("drover_volume_robustness = %v with every replica RW, want 1", got)
	}
	rs := scrapeMetrics(t, replicaMetrics)
	if got := rs.must("drover_replica_size_bytes", "replica=r1"); got != size {
		t.Errorf("drover_replica_size_bytes = %v, want %d", got, size)
	}
	if got := rs.must("drover_replica_engine_connections", "replica=r1"); got != 1 {
		t.Errorf("drover_replica_engine_connections = %v with one engine, want 1", got)
	}
	if got := rs.must("drover_replica_actual_size_bytes", "replica=r1"); got <= 0 {
		t.Errorf("drover_replica_actual_size_bytes = %v after writes", got)
	}

	c.replicas[2].kill()
	l.write() // a write finds it gone at once
	c.waitModes("r3 ERR after kill -9", "RW", "RW", "ERR")
	s = scrapeMetrics(t, engineMetrics)
	for _, want := range []struct {
		name   string
		labels []string
		value  float64
	}{
		{"drover_replica_mode", []string{v, "replica=r3", "mode=ERR"}, 1},
		{"drover_replica_mode", []string{v, "replica=r3", "mode=RW"}, 0},
		{"drover_replica_connected", []string{v, "replica=r3"}, 0},
		{"drover_volume_robustness", []string{v}, 2},
		{"drover_volume_replica_failures_total", []string{v}, 1},
	} {
		if got := s.must(want.name, want.labels...); got != want.value {
			t.Errorf("after kill -9 of r3: %s%v = %v, want %v", want.name, want.labels, got, want.value)
		}
	}

	c.startReplica(2)
	c.waitModes("r3 rebuilt after restart", "RW", "RW", "RW")
	// The target reads RW once its promotion is proposed; the rebuild
	// counts as done when the membership commits, a moment later.
	s = scrapeMetrics(t, engineMetrics)
	for deadline := time.Now().Add(10 * time.Second); s.must("drover_volume_rebuilds_total", v, "result=done") < 1 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		s = scrapeMetrics(t, engineMetrics)
	}
	if got := s.must("drover_replica_mode", v, "replica=r3", "mode=RW"); got != 1 {
		t.Errorf("after r3's rebuild: drover_replica_mode{mode=RW} = %v, want 1", got)
	}
	if got := s.must("drover_volume_rebuilds_total", v, "result=done"); got < 1 {
		t.Errorf("after r3's rebuild: drover_volume_rebuilds_total{result=done} = %v, want at least 1", got)
	}
	if got := s.must("drover_volume_robustness", v); got != 1 {
		t.Errorf("after r3's rebuild: drover_volume_robustness = %v, want 1", got)
	}
	l.verify("after r3's rebuild")

	// drover engine serves the console too (off unless asked).
	resp, err := http.Get("http://" + consoleAddr + "/api/state")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		Phase      string
		Robustness string
		Replicas   []struct{ ID, Mode string }
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || st.Phase != "serving" || st.Robustness != "healthy" || len(st.Replicas) != 3 {
		t.Errorf("drover engine's console state: %+v (%v)", st, err)
	}
}
