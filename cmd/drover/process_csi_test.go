package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
	"github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/k8s/k8stest"
	"github.com/drover-io/drover/transports/testenv"
)

// csiSanitySkips are the csi-sanity specs this test skips, each with
// the reason (docs/ARCHITECTURE.md lists them too). Every other spec
// whose capability the driver reports runs and must pass; specs for
// capabilities it does not report skip themselves ("... not supported").
var csiSanitySkips = map[string]string{
	"should create volume from an existing source snapshot": "the manager cannot fill a new Volume from a Snapshot yet " +
		"(CreateVolume answers Unimplemented, naming fromBackup); the driver reports CREATE_DELETE_SNAPSHOT for the snapshots themselves",
}

// TestProcessCSISanity runs kubernetes-csi's csi-sanity (csi-test
// v5.6.0's pkg/sanity) against `drover csi --mode all` backed by the
// real manager and two agents on a real kube-apiserver: every volume
// is a Volume with two replicas, published volumes run their engine
// on node-a, and NodeStageVolume attaches them with nbdfuse + a loop
// device, mkfs.ext4 and mount, as on a real node of this kind.
func TestProcessCSISanity(t *testing.T) {
	testenv.NeedTools(t, "nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "blkid", "resize2fs", "mount", "umount")
	testenv.NeedRoot(t, "losetup and mount")
	testenv.NeedFUSE(t)
	began := time.Now()
	c := startK8sCluster(t, 2)
	dir := t.TempDir()
	sock := filepath.Join(dir, "csi.sock")
	drv := start(t, "csi", nil, "csi", "--mode", "all", "--node-id", "node-a", "--endpoint", "unix://"+sock,
		"--kubeconfig", c.env.Kubeconfig, "--namespace", k8stest.Namespace, "--state-dir", filepath.Join(dir, "state"))
	eventually(t, "the CSI socket", func() (bool, string) {
		_, err := os.Stat(sock)
		return err == nil, drv.output()
	})
	eventually(t, "both nodes ready", func() (bool, string) {
		var nodes v1alpha1.NodeList
		if err := c.env.Client.List(context.Background(), &nodes, client.InNamespace(k8stest.Namespace)); err != nil {
			return false, err.Error()
		}
		ready := 0
		for _, n := range nodes.Items {
			if meta.IsStatusConditionTrue(n.Status.Conditions, v1alpha1.NodeConditionReady) {
				ready++
			}
		}
		return ready == 2, fmt.Sprintf("%d of %d ready", ready, len(nodes.Items))
	})
	t.Logf("API server, manager, 2 agents and drover csi up: %v", time.Since(began).Round(time.Millisecond))

	cfg := sanity.NewTestConfig()
	cfg.Address = "unix://" + sock
	cfg.TargetPath = filepath.Join(dir, "target")
	cfg.StagingPath = filepath.Join(dir, "staging")
	cfg.TestVolumeSize = 32 << 20
	cfg.TestVolumeExpandSize = 64 << 20
	cfg.TestVolumeParameters = map[string]string{"numberOfReplicas": "2", "staleReplicaTimeout": "30"}
	cfg.IdempotentCount = 2
	sc := sanity.GinkgoTest(&cfg)
	gomega.RegisterFailHandler(ginkgo.Fail)
	var report types.Report
	ginkgo.ReportAfterSuite("drover csi sanity", func(r ginkgo.Report) { report = r })
	suite, reporter := ginkgo.GinkgoConfiguration()
	for name := range csiSanitySkips {
		suite.SkipStrings = append(suite.SkipStrings, name)
	}
	reporter.Succinct = true
	ran := time.Now()
	ginkgo.RunSpecs(t, "drover csi sanity", suite, reporter)
	sc.Finalize()
	summarizeSanity(t, report, time.Since(ran))
	// What the sanity specs staged is all undone: no state file, nbdfuse
	// mount or loop device is left.
	entries, _ := os.ReadDir(filepath.Join(dir, "state"))
	if len(entries) != 0 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("node state left behind: %v", names)
	}
}

// summarizeSanity logs the counts of passed and skipped specs, and each
// skip's reason.
func summarizeSanity(t *testing.T, r types.Report, took time.Duration) {
	var passed, failed, pending int
	skipped := map[string]int{}
	for _, s := range r.SpecReports {
		if s.LeafNodeType != types.NodeTypeIt {
			continue
		}
		switch s.State {
		case types.SpecStatePassed:
			passed++
		case types.SpecStatePending:
			pending++ // csi-test marks it XIt
		case types.SpecStateSkipped:
			reason := s.Failure.Message
			for name, why := range csiSanitySkips {
				if strings.Contains(s.FullText(), name) {
					reason = "skipped by this test: " + why
				}
			}
			if reason == "" {
				reason = "skipped"
			}
			skipped[reason]++
		default:
			failed++
		}
	}
	var reasons []string
	total := 0
	for why, n := range skipped {
		reasons = append(reasons, fmt.Sprintf("%d: %s", n, why))
		total += n
	}
	sort.Strings(reasons)
	t.Logf("csi-sanity in %v: %d passed, %d failed, %d pending (XIt upstream), %d skipped:\n  %s", took.Round(time.Millisecond), passed, failed, pending, total,
		strings.Join(reasons, "\n  "))
}
