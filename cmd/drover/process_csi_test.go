package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
	"github.com/onsi/gomega"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/k8s/k8stest"
	"github.com/drover-io/drover/transports/control"
	"github.com/drover-io/drover/transports/control/controlpb"
	"github.com/drover-io/drover/transports/testenv"
)

// csiSanitySkips are the csi-sanity specs this test skips, each with
// the reason. Every other spec
// whose capability the driver reports runs and must pass; specs for
// capabilities it does not report skip themselves ("... not supported").
var csiSanitySkips = map[string]string{
	"should create volume from an existing source snapshot": "its source volume is never attached, and a Drover snapshot " +
		"(the class's default type snap) of a detached volume is taken at its next attach, so the spec's wait for readyToUse " +
		"never ends; nor can a Drover snapshot fill a new volume yet (Unimplemented). Restoring a snapshot of type backup " +
		"is tested in BackupSnapshotRestore",
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
	dir := t.TempDir()
	t.Cleanup(func() { releaseMounts(t, dir) }) // after everything else: a failed test leaves no mount behind
	c := startK8sCluster(t, 2)
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
	cfg.TestVolumeMutableParameters = map[string]string{"maxIOPS": "1000", "maxBandwidthBytes": "100Mi"}
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
	checkNoNodeState(t, filepath.Join(dir, "state"))

	h := &csiHarness{t: t, c: c, dir: dir, sock: sock, drv: drv}
	t.Run("BadInput", h.badInput)
	t.Run("NoReformatAndRestart", h.noReformatAndRestart)
	t.Run("QoS", h.qos)
	t.Run("BackupSnapshotRestore", h.backupRestore)
	t.Run("OnlineExpand", h.onlineExpand)
	t.Run("LostAttachment", h.lostAttachment)
	t.Run("BlockVolume", h.blockVolume)
}

// releaseMounts unmounts whatever is still mounted under dir (deepest
// first), detaches loop devices over files there and ends nbdfuse
// mounts: what a failing test may leave.
func releaseMounts(t *testing.T, dir string) {
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	var points []string
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir) {
			points = append(points, f[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(points)))
	for _, p := range points {
		if strings.HasSuffix(p, ".fuse") {
			continue
		}
		if out, err := exec.Command("umount", "--lazy", p).CombinedOutput(); err != nil {
			t.Logf("umount %s: %v %s", p, err, out)
		}
	}
	loops, _ := exec.Command("losetup", "--noheadings", "--output", "NAME,BACK-FILE", "--list").Output()
	for _, line := range strings.Split(string(loops), "\n") {
		if f := strings.Fields(line); len(f) == 2 && strings.HasPrefix(f[1], dir) {
			_ = exec.Command("losetup", "--detach", f[0]).Run()
		}
	}
	for _, p := range points {
		if strings.HasSuffix(p, ".fuse") {
			_ = exec.Command("fusermount3", "-u", "-z", p).Run()
		}
	}
}

func checkNoNodeState(t *testing.T, stateDir string) {
	t.Helper()
	entries, _ := os.ReadDir(stateDir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) != 0 {
		t.Errorf("node state left behind in %s: %v", stateDir, names)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), stateDir) {
		t.Errorf("a mount under %s is left", stateDir)
	}
}

// csiHarness calls the driver the sanity test started.
type csiHarness struct {
	t    *testing.T
	c    *k8sCluster
	dir  string
	sock string
	drv  *proc
}

func (h *csiHarness) conn(t *testing.T) (csipb.ControllerClient, csipb.NodeClient) {
	conn, err := grpc.NewClient("unix://"+h.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return csipb.NewControllerClient(conn), csipb.NewNodeClient(conn)
}

func mountCap(fs string) *csipb.VolumeCapability {
	return &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: fs}},
		AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
}

func wantCode(t *testing.T, err error, code codes.Code, substr string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), substr) {
		t.Errorf("got %v (%v), want %v naming %q", status.Code(err), err, code, substr)
	}
}

func (h *csiHarness) volumeNames(t *testing.T) []string {
	var list v1alpha1.VolumeList
	if err := h.c.env.Client.List(context.Background(), &list, client.InNamespace(k8stest.Namespace)); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, v := range list.Items {
		if v.DeletionTimestamp.IsZero() {
			out = append(out, v.Name)
		}
	}
	return out
}

// badInput: unknown and malformed parameters are InvalidArgument naming
// the parameter; more replicas than nodes and impossible sizes are
// ResourceExhausted and leave no Volume; a size that is not a multiple
// of 4 KiB is rounded up.
func (h *csiHarness) badInput(t *testing.T) {
	ctl, _ := h.conn(t)
	ctx := context.Background()
	caps := []*csipb.VolumeCapability{mountCap("ext4")}
	before := h.volumeNames(t)
	for _, tc := range []struct {
		params map[string]string
		size   int64
		code   codes.Code
		substr string
	}{
		{map[string]string{"numberOfReplica": "2"}, 1 << 20, codes.InvalidArgument, "numberOfReplica"},
		{map[string]string{"numberOfReplicas": "two"}, 1 << 20, codes.InvalidArgument, "numberOfReplicas"},
		{map[string]string{"dataLocality": "nearby"}, 1 << 20, codes.InvalidArgument, "dataLocality"},
		{map[string]string{"staleReplicaTimeout": "-3"}, 1 << 20, codes.InvalidArgument, "staleReplicaTimeout"},
		{map[string]string{"recurringJobSelector": "daily"}, 1 << 20, codes.InvalidArgument, "recurringJobSelector"},
		{map[string]string{"numberOfReplicas": "3"}, 1 << 20, codes.ResourceExhausted, "node"},
		{map[string]string{"numberOfReplicas": "2"}, 1 << 49, codes.ResourceExhausted, "needs"},
		{map[string]string{"numberOfReplicas": "2"}, 1<<50 + 1, codes.ResourceExhausted, "1 PiB"},
	} {
		_, err := ctl.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: "bad", Parameters: tc.params, VolumeCapabilities: caps,
			CapacityRange: &csipb.CapacityRange{RequiredBytes: tc.size}})
		wantCode(t, err, tc.code, tc.substr)
	}
	if after := h.volumeNames(t); strings.Join(after, " ") != strings.Join(before, " ") {
		t.Errorf("refused CreateVolumes left volumes: %v, before %v", after, before)
	}
	resp, err := ctl.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: "odd-size", VolumeCapabilities: caps,
		Parameters: map[string]string{"numberOfReplicas": "2"}, CapacityRange: &csipb.CapacityRange{RequiredBytes: 10<<20 + 1}})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Volume.CapacityBytes; got != 10<<20+4096 {
		t.Errorf("10 MiB + 1 byte: capacity %d, want %d (rounded up to 4 KiB)", got, 10<<20+4096)
	}
	if _, err := ctl.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: "odd-size", VolumeCapabilities: caps,
		Parameters: map[string]string{"numberOfReplicas": "2"}, CapacityRange: &csipb.CapacityRange{RequiredBytes: 10<<20 + 1, LimitBytes: 10<<20 + 100}}); status.Code(err) != codes.OutOfRange {
		t.Errorf("a limit below the rounded size: %v, want OutOfRange", err)
	}
	if _, err := ctl.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: resp.Volume.VolumeId}); err != nil {
		t.Fatal(err)
	}
}

// noReformatAndRestart: a volume staged as ext4 and written is refused
// when staged again as xfs (never formatted over); the driver is killed
// -9 while the volume is staged and published, and a new driver process
// unpublishes and unstages it, leaving nothing; staged again, the file
// is intact.
func (h *csiHarness) noReformatAndRestart(t *testing.T) {
	ctl, nd := h.conn(t)
	ctx := context.Background()
	vc := mountCap("ext4")
	vol, err := ctl.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: "keep", VolumeCapabilities: []*csipb.VolumeCapability{vc},
		Parameters: map[string]string{"numberOfReplicas": "2"}, CapacityRange: &csipb.CapacityRange{RequiredBytes: 32 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	id := vol.Volume.VolumeId
	pub, err := ctl.ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "node-a", VolumeCapability: vc})
	if err != nil {
		t.Fatal(err)
	}
	staging, target := filepath.Join(h.dir, "keep-staging"), filepath.Join(h.dir, "keep-target")
	stage := func(vc *csipb.VolumeCapability) error {
		_, err := nd.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
			VolumeCapability: vc, PublishContext: pub.PublishContext})
		return err
	}
	unstage := func() {
		t.Helper()
		if _, err := nd.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
			t.Fatal(err)
		}
	}
	// Concurrent stages of one volume: each is done or Aborted (another
	// call holds the volume), never half done; one is done.
	errs := make(chan error, 4)
	for range 4 {
		go func() { errs <- stage(vc) }()
	}
	done := 0
	for range 4 {
		switch err := <-errs; status.Code(err) {
		case codes.OK:
			done++
		case codes.Aborted:
		default:
			t.Errorf("a concurrent NodeStageVolume: %v", err)
		}
	}
	if done == 0 {
		t.Fatal("no concurrent NodeStageVolume succeeded")
	}
	if err := stage(vc); err != nil { // and once more: idempotent
		t.Fatal(err)
	}
	data := []byte("written before the restart\n")
	if err := os.WriteFile(filepath.Join(staging, "f"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	unstage()
	wantCode(t, stage(mountCap("xfs")), codes.FailedPrecondition, "refusing to format")
	unstage() // what the refused stage attached is undone too

	if err := stage(vc); err != nil {
		t.Fatal(err)
	}
	if _, err := nd.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		TargetPath: target, VolumeCapability: vc, PublishContext: pub.PublishContext}); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(target, "f")); err != nil || string(got) != string(data) {
		t.Fatalf("published file: %q, %v", got, err)
	}
	h.drv.kill()
	// Started on the parent test: it lives on for the subtests after this one.
	h.drv = start(h.t, "csi2", nil, "csi", "--mode", "all", "--node-id", "node-a", "--endpoint", "unix://"+h.sock,
		"--kubeconfig", h.c.env.Kubeconfig, "--namespace", k8stest.Namespace, "--state-dir", filepath.Join(h.dir, "state"))
	eventually(t, "the restarted driver answers", func() (bool, string) {
		_, err := nd.NodeGetInfo(ctx, &csipb.NodeGetInfoRequest{})
		return err == nil, fmt.Sprint(err)
	})
	if _, err := nd.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	unstage()
	checkNoNodeState(t, filepath.Join(h.dir, "state"))
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Errorf("target %s left: %v", target, err)
	}
	if err := stage(vc); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(staging, "f")); err != nil || string(got) != string(data) {
		t.Fatalf("after restage: %q, %v", got, err)
	}
	unstage()
	if _, err := ctl.ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: "node-a"}); err != nil {
		t.Fatal(err)
	}
	// Published read-only: staged read-only, the file reads, a write is
	// refused; publishing it read-write meanwhile is AlreadyExists.
	pub, err = ctl.ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "node-a", VolumeCapability: vc, Readonly: true})
	if err != nil || pub.PublishContext["readonly"] != "true" {
		t.Fatalf("read-only publish: %v %v", pub, err)
	}
	_, err = ctl.ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "node-a", VolumeCapability: vc})
	wantCode(t, err, codes.AlreadyExists, "readonly")
	if err := stage(vc); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(staging, "f")); err != nil || string(got) != string(data) {
		t.Errorf("read-only stage: %q, %v", got, err)
	}
	if err := os.WriteFile(filepath.Join(staging, "w"), data, 0o644); err == nil {
		t.Error("a write to a volume published read-only succeeded")
	}
	unstage()
	if _, err := ctl.ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: "node-a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
	checkNoNodeState(t, filepath.Join(h.dir, "state"))
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

// engine reads the Engine of a volume.
func (h *csiHarness) engine(t *testing.T, vol string) *v1alpha1.Engine {
	var eng v1alpha1.Engine
	if err := h.c.env.Client.Get(context.Background(), client.ObjectKey{Namespace: k8stest.Namespace, Name: vol}, &eng); err != nil {
		t.Fatal(err)
	}
	return &eng
}

// qos: a volume created with a VolumeAttributesClass's maxIOPS and
// published; qemu-img bench writes through its NBD endpoint at queue
// depth 8; the limiter's own counters (read through the engine's
// control API) show no refill period admitted more than its share and
// that IOs waited. Mid-run, ControllerModifyVolume raises the limit:
// the same NBD connection goes on (the bench succeeds), the engine is
// not restarted (same endpoint, no restart counted), and the IOs after
// the change are counted under the new limit; then a bandwidth limit,
// then none.
func (h *csiHarness) qos(t *testing.T) {
	testenv.NeedTools(t, "qemu-img")
	ctl, _ := h.conn(t)
	ctx := context.Background()
	vc := mountCap("ext4")
	vol, err := ctl.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: "qos", VolumeCapabilities: []*csipb.VolumeCapability{vc},
		Parameters: map[string]string{"numberOfReplicas": "2"}, MutableParameters: map[string]string{"maxIOPS": "100"},
		CapacityRange: &csipb.CapacityRange{RequiredBytes: 32 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	id := vol.Volume.VolumeId
	pub, err := ctl.ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "node-a", VolumeCapability: vc})
	if err != nil {
		t.Fatal(err)
	}
	endpoint := pub.PublishContext["endpoint"]
	waitQoS := func(iops, bw int64) *v1alpha1.Engine {
		var eng *v1alpha1.Engine
		eventually(t, fmt.Sprintf("the engine enforcing %d IOPS, %d B/s", iops, bw), func() (bool, string) {
			eng = h.engine(t, id)
			q := eng.Status.QoS
			if iops == 0 && bw == 0 {
				return q == nil, fmt.Sprintf("%+v", q)
			}
			return q != nil && q.MaxIOPS == iops && q.MaxBandwidthBytes == bw, fmt.Sprintf("%+v", q)
		})
		return eng
	}
	eng := waitQoS(100, 0)
	qc, conn, err := control.Dial(eng.Status.ControlAddress)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stats := func() *controlpb.QoSResponse {
		t.Helper()
		st, err := qc.GetQoS(ctx, &controlpb.Empty{})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	gen := stats().Generation
	bench := exec.Command("qemu-img", "bench", "-f", "raw", "-w", "-c", "400", "-d", "8", "-s", "4096", endpoint)
	var out lockedBuffer
	bench.Stdout, bench.Stderr = &out, &out
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "100 IOs through the 100 IOPS limit", func() (bool, string) {
		st := stats()
		return st.Admitted >= 100, fmt.Sprintf("%+v", st)
	})
	st := stats()
	if st.Generation != gen || st.IosPerRefill != 10 || st.MaxIosPerRefill > 10 || st.Delayed == 0 {
		t.Errorf("at 100 IOPS: %+v; want at most 10 IOs per refill and some delayed", st)
	}
	t.Logf("100 IOPS: %d IOs admitted in %d refills, at most %d per refill (bucket %d), %d delayed",
		st.Admitted, st.Refills, st.MaxIosPerRefill, st.IosPerRefill, st.Delayed)
	if _, err := ctl.ControllerModifyVolume(ctx, &csipb.ControllerModifyVolumeRequest{VolumeId: id,
		MutableParameters: map[string]string{"maxIOPS": "400"}}); err != nil {
		t.Fatal(err)
	}
	after := waitQoS(400, 0)
	if err := bench.Wait(); err != nil {
		t.Fatalf("qemu-img bench across the QoS change: %v\n%s", err, out.String())
	}
	st = stats()
	if st.Generation != gen+1 || st.IosPerRefill != 40 || st.MaxIosPerRefill > 40 || st.Admitted == 0 {
		t.Errorf("at 400 IOPS: %+v; want generation %d, IOs admitted, at most 40 per refill", st, gen+1)
	}
	t.Logf("400 IOPS, same connection: %d IOs admitted, at most %d per refill (bucket %d), %d delayed",
		st.Admitted, st.MaxIosPerRefill, st.IosPerRefill, st.Delayed)
	if after.Status.Endpoint != eng.Status.Endpoint || after.Status.Restarts != eng.Status.Restarts ||
		after.Status.ControlAddress != eng.Status.ControlAddress {
		t.Errorf("the engine restarted: %+v, before %+v", after.Status, eng.Status)
	}

	// Bandwidth: 1 MiB/s with 64 KiB writes.
	if _, err := ctl.ControllerModifyVolume(ctx, &csipb.ControllerModifyVolumeRequest{VolumeId: id,
		MutableParameters: map[string]string{"maxIOPS": "0", "maxBandwidthBytes": "1Mi"}}); err != nil {
		t.Fatal(err)
	}
	waitQoS(0, 1<<20)
	if b, err := exec.Command("qemu-img", "bench", "-f", "raw", "-w", "-c", "24", "-d", "4", "-s", "65536", endpoint).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img bench: %v\n%s", err, b)
	}
	st = stats()
	if st.BytesPerRefill != (1<<20)/10 || st.AdmittedBytes < 24<<16 || st.MaxBytesPerRefill > st.BytesPerRefill+64<<10 || st.Delayed == 0 {
		t.Errorf("at 1 MiB/s: %+v; want at most one bucket and one IO per refill, some delayed", st)
	}
	t.Logf("1 MiB/s: %d bytes admitted, at most %d per refill (bucket %d), %d delayed",
		st.AdmittedBytes, st.MaxBytesPerRefill, st.BytesPerRefill, st.Delayed)

	_, err = ctl.ControllerModifyVolume(ctx, &csipb.ControllerModifyVolumeRequest{VolumeId: id,
		MutableParameters: map[string]string{"maxBandwidthBytes": "0"}})
	if err != nil {
		t.Fatal(err)
	}
	waitQoS(0, 0)
	_, err = ctl.ControllerModifyVolume(ctx, &csipb.ControllerModifyVolumeRequest{VolumeId: id,
		MutableParameters: map[string]string{"maxIOPs": "5"}})
	wantCode(t, err, codes.InvalidArgument, "maxIOPs")
	if _, err := ctl.ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: "node-a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
}

// stageNew creates, publishes and stages (ext4) a volume on node-a,
// optionally from a snapshot, and returns its ID and staging path.
func (h *csiHarness) stageNew(t *testing.T, name string, from string) (string, string) {
	return h.stageNewFrom(t, name, from, mountCap("ext4"), 32<<20)
}

// stageNewFS is stageNew with a capability and size.
func (h *csiHarness) stageNewFS(t *testing.T, name string, vc *csipb.VolumeCapability, sizeBytes int64) (string, string) {
	return h.stageNewFrom(t, name, "", vc, sizeBytes)
}

func (h *csiHarness) stageNewFrom(t *testing.T, name, from string, vc *csipb.VolumeCapability, sizeBytes int64) (string, string) {
	ctl, nd := h.conn(t)
	ctx := context.Background()
	req := &csipb.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csipb.VolumeCapability{vc},
		Parameters: map[string]string{"numberOfReplicas": "2"}, CapacityRange: &csipb.CapacityRange{RequiredBytes: sizeBytes}}
	if from != "" {
		req.VolumeContentSource = &csipb.VolumeContentSource{Type: &csipb.VolumeContentSource_Snapshot{
			Snapshot: &csipb.VolumeContentSource_SnapshotSource{SnapshotId: from}}}
	}
	vol, err := ctl.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if from != "" && vol.Volume.ContentSource.GetSnapshot().GetSnapshotId() != from {
		t.Errorf("content source %v, want snapshot %s", vol.Volume.ContentSource, from)
	}
	id := vol.Volume.VolumeId
	pub, err := ctl.ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "node-a", VolumeCapability: vc})
	if err != nil {
		t.Fatal(err)
	}
	staging := filepath.Join(h.dir, name+"-staging")
	if _, err := nd.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		VolumeCapability: vc, PublishContext: pub.PublishContext}); err != nil {
		t.Fatal(err)
	}
	return id, staging
}

// removeStaged undoes stageNew.
func (h *csiHarness) removeStaged(t *testing.T, id, staging string) {
	ctl, nd := h.conn(t)
	ctx := context.Background()
	if _, err := nd.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: "node-a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
}

// backupRestore: a CSI snapshot of class type backup is a Backup in the
// BackupTarget "default"; a volume created from it is restored at its
// first attach and holds the file written before the snapshot, not one
// written after. A Drover snapshot as a source is Unimplemented, naming
// the way that works.
func (h *csiHarness) backupRestore(t *testing.T) {
	ctl, _ := h.conn(t)
	ctx := context.Background()
	bt := &v1alpha1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: k8stest.Namespace},
		Spec: v1alpha1.BackupTargetSpec{URL: t.TempDir()}}
	if err := h.c.env.Client.Create(ctx, bt); err != nil {
		t.Fatal(err)
	}
	src, staging := h.stageNew(t, "src", "")
	want := bytes.Repeat([]byte("before the snapshot\n"), 1000)
	if err := os.WriteFile(filepath.Join(staging, "f"), want, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("sync", "-f", filepath.Join(staging, "f")).CombinedOutput(); err != nil {
		t.Fatalf("sync: %v %s", err, out)
	}
	began := time.Now()
	snapReq := &csipb.CreateSnapshotRequest{Name: "src-backup", SourceVolumeId: src, Parameters: map[string]string{"type": "backup"}}
	snap, err := ctl.CreateSnapshot(ctx, snapReq)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the backup snapshot ready", func() (bool, string) {
		got, err := ctl.GetSnapshot(ctx, &csipb.GetSnapshotRequest{SnapshotId: snap.Snapshot.SnapshotId})
		return err == nil && got.Snapshot.ReadyToUse, fmt.Sprint(got, err)
	})
	again, err := ctl.CreateSnapshot(ctx, snapReq) // idempotent, and now ready
	if err != nil || !again.Snapshot.ReadyToUse || again.Snapshot.SnapshotId != snap.Snapshot.SnapshotId || again.Snapshot.SizeBytes != 32<<20 {
		t.Fatalf("CreateSnapshot again: %v %v", again, err)
	}
	t.Logf("backup snapshot %s of a 32 MiB volume ready: %v", snap.Snapshot.SnapshotId, time.Since(began).Round(time.Millisecond))
	if err := os.WriteFile(filepath.Join(staging, "g"), []byte("after"), 0o644); err != nil {
		t.Fatal(err)
	}
	list, err := ctl.ListSnapshots(ctx, &csipb.ListSnapshotsRequest{SourceVolumeId: src})
	if err != nil || len(list.Entries) != 1 || list.Entries[0].Snapshot.SnapshotId != snap.Snapshot.SnapshotId {
		t.Errorf("ListSnapshots of %s: %v %v", src, list, err)
	}

	began = time.Now()
	dst, dstStaging := h.stageNew(t, "restored", snap.Snapshot.SnapshotId)
	t.Logf("volume from the backup snapshot created, restored, attached and staged: %v", time.Since(began).Round(time.Millisecond))
	if got, err := os.ReadFile(filepath.Join(dstStaging, "f")); err != nil || !bytes.Equal(got, want) {
		t.Errorf("restored file: %d bytes, %v; want the %d written", len(got), err, len(want))
	}
	if _, err := os.Stat(filepath.Join(dstStaging, "g")); !os.IsNotExist(err) {
		t.Errorf("a file written after the snapshot is in the restored volume: %v", err)
	}
	h.removeStaged(t, dst, dstStaging)

	// A Drover snapshot (the default type) cannot fill a volume yet.
	plain, err := ctl.CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: "src-snap", SourceVolumeId: src})
	if err != nil {
		t.Fatal(err)
	}
	_, err = ctl.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: "from-plain", VolumeCapabilities: []*csipb.VolumeCapability{mountCap("ext4")},
		VolumeContentSource: &csipb.VolumeContentSource{Type: &csipb.VolumeContentSource_Snapshot{
			Snapshot: &csipb.VolumeContentSource_SnapshotSource{SnapshotId: plain.Snapshot.SnapshotId}}}})
	wantCode(t, err, codes.Unimplemented, "type is backup")
	_, err = ctl.CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: "bad", SourceVolumeId: src, Parameters: map[string]string{"type": "clone"}})
	wantCode(t, err, codes.InvalidArgument, "type")
	for _, id := range []string{plain.Snapshot.SnapshotId, snap.Snapshot.SnapshotId} {
		if _, err := ctl.DeleteSnapshot(ctx, &csipb.DeleteSnapshotRequest{SnapshotId: id}); err != nil {
			t.Fatal(err)
		}
	}
	h.removeStaged(t, src, staging)
	checkNoNodeState(t, filepath.Join(h.dir, "state"))
}

// onlineExpand: a staged and published xfs volume of 320 MiB (mkfs.xfs's
// minimum is 300) with a file on it grows to 448 MiB while mounted
// (ControllerExpandVolume, then NodeExpandVolume on the published path):
// the loop device and the filesystem grow with no unmount or reconnect,
// a 160 MiB file that could not fit before is written into the new
// space, and both files read back intact after a restage. An ext4
// volume's device grows the same way; its filesystem grows online only
// with CAP_SYS_RESOURCE, which this machine withholds from root, and
// NodeExpandVolume says so.
func (h *csiHarness) onlineExpand(t *testing.T) {
	testenv.NeedTools(t, "mkfs.xfs", "xfs_growfs")
	ctl, nd := h.conn(t)
	ctx := context.Background()
	vc := mountCap("xfs")
	id, staging := h.stageNewFS(t, "grow", vc, 320<<20)
	target := filepath.Join(h.dir, "grow-target")
	if _, err := nd.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		TargetPath: target, VolumeCapability: vc}); err != nil {
		t.Fatal(err)
	}
	total := func() int64 {
		st, err := nd.NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
		if err != nil {
			t.Fatal(err)
		}
		return st.Usage[0].Total
	}
	small := bytes.Repeat([]byte("kept across the expansion\n"), 4000)
	if err := os.WriteFile(filepath.Join(target, "small"), small, 0o644); err != nil {
		t.Fatal(err)
	}
	before := total()
	big := make([]byte, before+16<<20) // more than the filesystem holds now
	for i := range big {
		big[i] = byte(i*7 + i>>12)
	}
	began := time.Now()
	exp, err := ctl.ControllerExpandVolume(ctx, &csipb.ControllerExpandVolumeRequest{VolumeId: id,
		CapacityRange: &csipb.CapacityRange{RequiredBytes: 448 << 20}, VolumeCapability: vc})
	if err != nil || !exp.NodeExpansionRequired || exp.CapacityBytes != 448<<20 {
		t.Fatalf("ControllerExpandVolume: %v %v", exp, err)
	}
	eventually(t, "NodeExpandVolume", func() (bool, string) {
		_, err := nd.NodeExpandVolume(ctx, &csipb.NodeExpandVolumeRequest{VolumeId: id, VolumePath: target,
			CapacityRange: &csipb.CapacityRange{RequiredBytes: 448 << 20}, VolumeCapability: vc, StagingTargetPath: staging})
		return err == nil, fmt.Sprint(err)
	})
	after := total()
	t.Logf("online expansion 320 -> 448 MiB, mounted xfs: %v; filesystem %d -> %d bytes", time.Since(began).Round(time.Millisecond), before, after)
	if after < before+120<<20 {
		t.Errorf("the filesystem grew from %d to %d bytes; want about 128 MiB more", before, after)
	}
	if err := os.WriteFile(filepath.Join(target, "big"), big, 0o644); err != nil {
		t.Fatalf("%d bytes into the grown volume: %v", len(big), err)
	}
	if _, err := nd.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	// Unstaged and staged again (a new nbdfuse connection): the data is
	// on the volume, not only in a cache.
	if _, err := nd.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	if _, err := nd.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		VolumeCapability: vc, PublishContext: map[string]string{"endpoint": h.volumeEndpoint(t, id)}}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][]byte{"small": small, "big": big} {
		if got, err := os.ReadFile(filepath.Join(staging, name)); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s after restage: %d bytes, %v; want the %d written", name, len(got), err, len(want))
		}
	}
	h.removeStaged(t, id, staging)

	// ext4: the device grows online; the filesystem needs CAP_SYS_RESOURCE.
	vc = mountCap("ext4")
	id, staging = h.stageNewFS(t, "grow4", vc, 32<<20)
	if _, err := ctl.ControllerExpandVolume(ctx, &csipb.ControllerExpandVolumeRequest{VolumeId: id,
		CapacityRange: &csipb.CapacityRange{RequiredBytes: 64 << 20}, VolumeCapability: vc}); err != nil {
		t.Fatal(err)
	}
	var last error
	eventually(t, "NodeExpandVolume of ext4 past the engine's growth", func() (bool, string) {
		_, last = nd.NodeExpandVolume(ctx, &csipb.NodeExpandVolumeRequest{VolumeId: id, VolumePath: staging,
			CapacityRange: &csipb.CapacityRange{RequiredBytes: 64 << 20}, VolumeCapability: vc})
		return status.Code(last) != codes.Unavailable, fmt.Sprint(last)
	})
	if last != nil {
		wantCode(t, last, codes.FailedPrecondition, "CAP_SYS_RESOURCE")
		t.Logf("ext4 online: %v", last)
	}
	var st stageStateView
	b, err := os.ReadFile(filepath.Join(h.dir, "state", id+".json"))
	if err != nil || json.Unmarshal(b, &st) != nil || st.SizeBytes != 64<<20 {
		t.Errorf("the ext4 volume's loop device was not grown: %s %v", b, err)
	}
	// Staged again, the filesystem grows offline before it is mounted
	// (no CAP_SYS_RESOURCE needed), and NodeExpandVolume has nothing left.
	statTotal := func() int64 {
		st, err := nd.NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: staging})
		if err != nil {
			t.Fatal(err)
		}
		return st.Usage[0].Total
	}
	before = statTotal()
	if _, err := nd.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	if _, err := nd.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		VolumeCapability: vc, PublishContext: map[string]string{"endpoint": h.volumeEndpoint(t, id)}}); err != nil {
		t.Fatal(err)
	}
	if after := statTotal(); after < before+28<<20 {
		t.Errorf("ext4 restaged after expansion: %d bytes, %d before; want about 32 MiB more", after, before)
	}
	if _, err := nd.NodeExpandVolume(ctx, &csipb.NodeExpandVolumeRequest{VolumeId: id, VolumePath: staging,
		CapacityRange: &csipb.CapacityRange{RequiredBytes: 64 << 20}, VolumeCapability: vc}); err != nil {
		t.Errorf("NodeExpandVolume after the offline growth: %v", err)
	}
	h.removeStaged(t, id, staging)
	checkNoNodeState(t, filepath.Join(h.dir, "state"))
}

// stageStateView is the part of the node's state file this test reads.
type stageStateView struct {
	SizeBytes int64 `json:"sizeBytes"`
}

func (h *csiHarness) volumeEndpoint(t *testing.T, id string) string {
	var v v1alpha1.Volume
	if err := h.c.env.Client.Get(context.Background(), client.ObjectKey{Namespace: k8stest.Namespace, Name: id}, &v); err != nil {
		t.Fatal(err)
	}
	return v.Status.Endpoint
}

// lostAttachment: the nbdfuse process of a staged volume is killed -9
// (as a reboot or an OOM kill would); NodeStageVolume called again finds
// the attachment gone, takes down what is left and attaches again: the
// synced file reads back.
func (h *csiHarness) lostAttachment(t *testing.T) {
	_, nd := h.conn(t)
	ctx := context.Background()
	id, staging := h.stageNew(t, "lost", "")
	data := bytes.Repeat([]byte("synced before the loss\n"), 500)
	if err := os.WriteFile(filepath.Join(staging, "f"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("sync", "-f", filepath.Join(staging, "f")).CombinedOutput(); err != nil {
		t.Fatalf("sync: %v %s", err, out)
	}
	pidText, err := os.ReadFile(filepath.Join(h.dir, "state", id+".fuse.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(pidText)))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, "nbdfuse gone", func() (bool, string) {
		return syscall.Kill(pid, 0) != nil, ""
	})
	if _, err := nd.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		VolumeCapability: mountCap("ext4"), PublishContext: map[string]string{"endpoint": h.volumeEndpoint(t, id)}}); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(staging, "f")); err != nil || !bytes.Equal(got, data) {
		t.Errorf("after attaching again: %d bytes, %v; want the %d synced", len(got), err, len(data))
	}
	h.removeStaged(t, id, staging)
	checkNoNodeState(t, filepath.Join(h.dir, "state"))
}

// blockVolume: volumeMode Block: staged without a filesystem (nothing
// formatted), published as a device file; bytes written through it with
// O_DIRECT read back through a second publish, and NodeGetVolumeStats
// reports the device's size.
func (h *csiHarness) blockVolume(t *testing.T) {
	_, nd := h.conn(t)
	ctx := context.Background()
	vc := &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}},
		AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	id, staging := h.stageNewFS(t, "raw", vc, 16<<20)
	targets := []string{filepath.Join(h.dir, "raw-dev1"), filepath.Join(h.dir, "raw-dev2")}
	for _, target := range targets {
		if _, err := nd.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging,
			TargetPath: target, VolumeCapability: vc}); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("blkid", "-p", targets[0]).CombinedOutput(); err == nil {
		t.Errorf("a block volume got a filesystem: %s", out)
	}
	src := filepath.Join(h.dir, "raw-in")
	data := bytes.Repeat([]byte("raw block bytes "), 65536) // 1 MiB
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("dd", "if="+src, "of="+targets[0], "bs=64k", "seek=16", "oflag=direct", "conv=fsync").CombinedOutput(); err != nil {
		t.Fatalf("dd into the device: %v %s", err, out)
	}
	back := filepath.Join(h.dir, "raw-out")
	if out, err := exec.Command("dd", "if="+targets[1], "of="+back, "bs=64k", "skip=16", "count=16", "iflag=direct").CombinedOutput(); err != nil {
		t.Fatalf("dd from the device: %v %s", err, out)
	}
	if got, err := os.ReadFile(back); err != nil || !bytes.Equal(got, data) {
		t.Errorf("read back through the second publish: %d bytes, %v", len(got), err)
	}
	st, err := nd.NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: targets[0]})
	if err != nil || st.Usage[0].Total != 16<<20 {
		t.Errorf("NodeGetVolumeStats of the block volume: %v %v", st, err)
	}
	for _, target := range targets {
		if _, err := nd.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(target); !os.IsNotExist(err) {
			t.Errorf("target %s left: %v", target, err)
		}
	}
	h.removeStaged(t, id, staging)
	checkNoNodeState(t, filepath.Join(h.dir, "state"))
}
