package iscsi_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/drover-io/drover/frontends/iscsi"
	"github.com/drover-io/drover/transports/device"
)

// TestCompareWithTgtd runs iscsi-test-cu against Drover and against tgtd
// serving a file of the same size, and prints both counts. It runs only
// with DROVER_ISCSI_COMPARE=1 (make iscsi-compare), as root, with tgt
// installed.
func TestCompareWithTgtd(t *testing.T) {
	if os.Getenv("DROVER_ISCSI_COMPARE") != "1" {
		t.Skip("set DROVER_ISCSI_COMPARE=1 (make iscsi-compare)")
	}
	needTool(t, "iscsi-test-cu")
	needTool(t, "tgtd")
	addr := startServer(t, iscsi.TargetConfig{Volume: "compare", LUNs: []device.Device{fileLUN(t)}})
	drover := runSuite(t, fmt.Sprintf("iscsi://%s/%s/0", addr, iscsi.IQN("compare")))
	tgtURL, _ := startTgtdFile(t)
	tgt := runSuite(t, tgtURL)
	names := make([]string, 0, len(drover))
	for n := range drover {
		names = append(names, n)
	}
	slices.Sort(names)
	count := func(res map[string]cuOutcome, o cuOutcome) int {
		n := 0
		for _, v := range res {
			if v == o {
				n++
			}
		}
		return n
	}
	t.Logf("%-8s %6s %6s %7s", "target", "passed", "failed", "skipped")
	for _, r := range []struct {
		name string
		res  map[string]cuOutcome
	}{{"drover", drover}, {"tgtd", tgt}} {
		t.Logf("%-8s %6d %6d %7d", r.name, count(r.res, cuPassed), count(r.res, cuFailed), count(r.res, cuSkipped))
	}
	for _, n := range names {
		if drover[n] != tgt[n] {
			t.Logf("%-50s drover %-8s tgtd %s", n, drover[n], tgt[n])
		}
	}
}

func runSuite(t *testing.T, url string) map[string]cuOutcome {
	t.Helper()
	out, _ := run(t, "iscsi-test-cu", "-d", "-v", url)
	return parseCU(out)
}

// startTgtdFile starts tgtd on a free port with one file-backed 512-byte
// LUN of the same size as fileLUN and returns its URL and the file.
func startTgtdFile(t *testing.T) (url, file string) {
	t.Helper()
	port := 3300 + os.Getpid()%500
	control := strconv.Itoa(port)
	file = filepath.Join(t.TempDir(), "tgt-lun")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(file, 64<<20); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("tgtd", "-f", "-C", control, "--iscsi", fmt.Sprintf("portal=127.0.0.1:%d", port))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	const iqn = "iqn.2026-11.io.drover:tgtd-compare"
	adm := func(args ...string) error {
		out, err := exec.Command("tgtadm", append([]string{"-C", control, "--lld", "iscsi"}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("tgtadm %v: %w: %s", args, err, out)
		}
		return nil
	}
	var err error
	for range 50 { // tgtd needs a moment to create its control socket
		if err = adm("--op", "new", "--mode", "target", "--tid", "1", "-T", iqn); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := adm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", file); err != nil {
		t.Fatal(err)
	}
	if err := adm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("iscsi://127.0.0.1:%d/%s/1", port, iqn), file
}
