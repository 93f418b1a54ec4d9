package main

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/drover-io/drover/transports/control/controlpb"
)

// TestProcessDevQoS: `drover volume qos` sets limits on `drover dev`
// while fio (its nbd engine, queue depth 16) writes through NBD; the
// limiter's counters, read through the control API, show no 100 ms
// refill admitting more than its bucket and IOs that waited. Raised
// mid-run, the same fio connection finishes under the new bucket, and
// `drover volume qos` prints the limits.
func TestProcessDevQoS(t *testing.T) {
	needTools(t, "fio")
	d := newDevServer(t, 32<<20, "32MiB")
	ctx := context.Background()
	stats := func() *controlpb.QoSResponse {
		st, err := d.client.GetQoS(ctx, &controlpb.Empty{})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	out := runDrover(t, "volume", "qos", "--control", d.ctlAddr, "--max-iops", "200")
	if !strings.Contains(out, "max IOPS:       200 IOs/s") || !strings.Contains(out, "max bandwidth:  none") {
		t.Errorf("drover volume qos --max-iops 200 printed:\n%s", out)
	}
	fio := exec.Command("fio", "--name=qos", "--ioengine=nbd", "--uri="+d.uri(), "--rw=randwrite", "--bs=4k",
		"--iodepth=16", "--number_ios=600", "--size=32M", "--output-format=terse")
	var fioOut lockedBuffer
	fio.Stdout, fio.Stderr = &fioOut, &fioOut
	if err := fio.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "200 IOs through the 200 IOPS limit", func() (bool, string) {
		st := stats()
		return st.Admitted >= 200, st.String()
	})
	if st := stats(); st.IosPerRefill != 20 || st.MaxIosPerRefill > 20 || st.Delayed == 0 {
		t.Errorf("at 200 IOPS: %v; want at most 20 IOs per refill, some delayed", st)
	}
	gen := stats().Generation
	runDrover(t, "volume", "qos", "--control", d.ctlAddr, "--max-bandwidth", "4MiB") // IOPS kept
	if err := fio.Wait(); err != nil {
		t.Fatalf("fio across the QoS change: %v\n%s", err, fioOut.String())
	}
	st := stats()
	if st.Generation != gen+1 || st.MaxIops != 200 || st.MaxBandwidthBytes != 4<<20 || st.Admitted == 0 ||
		st.MaxIosPerRefill > 20 || st.MaxBytesPerRefill > st.BytesPerRefill+4096 {
		t.Errorf("after adding 4 MiB/s: %v", st)
	}
	t.Logf("200 IOPS then + 4 MiB/s on one fio connection: %d IOs admitted since the change, at most %d per refill, %d delayed",
		st.Admitted, st.MaxIosPerRefill, st.Delayed)
	out = runDrover(t, "volume", "qos", "--control", d.ctlAddr, "--max-iops", "0", "--max-bandwidth", "0")
	if !strings.Contains(out, "max IOPS:       none") {
		t.Errorf("limits removed: printed\n%s", out)
	}
	d.proc.stop()
}
