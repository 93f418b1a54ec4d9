// Package e2e is Drover's end-to-end test on a real single-node
// Kubernetes (make e2e): etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler and the kubelet built from the Go module proxy
// (make k8s-bins, make k8s-e2e-bins), containerd, runc and the CNI
// plugins from Debian. Drover's manager, agent and CSI driver run as Pods
// of deploy/manifests from the image make image builds, beside the CSI
// sidecars and the snapshot controller; the test drives it all through
// the API as a user would, with Pods that write and check files on
// Drover volumes.
//
// It runs only with DROVER_E2E=1 (make e2e sets it); then a missing tool,
// binary or root fails it under DROVER_REQUIRE_TOOLS=1 (transports/testenv).
package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/k8s/k8stest"
	"github.com/drover-io/drover/transports/testenv"
)

const (
	droverNS     = "drover-system"
	appNS        = "default"
	driverName   = "driver.drover.io"
	storageClass = "drover"
)

// run is one end-to-end run: the cluster, a client, and the steps' times.
type run struct {
	t     *testing.T
	c     *cluster
	cl    client.Client
	start time.Time
	steps []string
}

// step runs one step of the scenario as a subtest and prints how long it
// took. A failed step fails the test; a required one (the rest need it)
// also ends the scenario, others let it go on to the independent steps
// after them (each step cleans up what it made that the next need not).
func (r *run) step(name string, required bool, fn func(t *testing.T)) {
	parent := r.t
	parent.Helper()
	n := len(r.steps) + 1
	begin := time.Now()
	skipped := false
	ok := parent.Run(fmt.Sprintf("step%02d", n), func(t *testing.T) {
		r.t = t
		defer func() { r.t = parent; skipped = t.Skipped() }()
		t.Logf("step %d: %s", n, name)
		fn(t)
	})
	verdict := "ok"
	switch {
	case skipped:
		verdict = "SKIPPED"
	case !ok:
		verdict = "FAILED"
	}
	line := fmt.Sprintf("step %2d %-66s %6.1f s  %s", n, name, time.Since(begin).Seconds(), verdict)
	r.steps = append(r.steps, line)
	parent.Log(line)
	if skipped {
		parent.SkipNow()
	}
	if !ok && required {
		parent.FailNow()
	}
}

func TestEndToEnd(t *testing.T) {
	if os.Getenv("DROVER_E2E") != "1" {
		t.Skip("the end-to-end test on a real Kubernetes runs with DROVER_E2E=1 (make e2e)")
	}
	testenv.NeedRoot(t, "it runs containerd, a kubelet and mounts")
	testenv.NeedTools(t, "containerd", "containerd-shim-runc-v2", "ctr", "runc", "iptables", "ip", "go")
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		testenv.Unavailable(t, "the CNI plugins are missing (/usr/lib/cni/bridge): apt-get install containernetworking-plugins")
	}
	repo := k8stest.RepoRoot()
	bin := filepath.Join(repo, "bin")
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			testenv.Unavailable(t, "%s not found in %s: run make k8s-bins k8s-e2e-bins (make e2e does)", b, bin)
		}
	}
	droverImage := filepath.Join(bin, "drover-image.tar")
	if _, err := os.Stat(droverImage); err != nil {
		testenv.Unavailable(t, "%s not found: run make image (make e2e does)", droverImage)
	}
	root := os.Getenv("DROVER_E2E_ROOT")
	if root == "" {
		root = "/var/tmp/drover-e2e"
	}

	r := &run{t: t, start: time.Now()}
	c := newCluster(t, root, bin)
	r.c = c
	t.Cleanup(func() {
		if t.Failed() {
			r.diagnose()
		}
		begin := time.Now()
		problems := teardown(root)
		// Loop devices the run attached and did not detach (a failed
		// unstage): detach them, so that runs do not pile them up.
		for _, l := range c.newLoops() {
			if out, err := exec.Command("losetup", "-d", "/dev/"+l).CombinedOutput(); err != nil {
				problems = append(problems, fmt.Sprintf("losetup -d /dev/%s: %v %s", l, err, out))
			} else {
				t.Logf("teardown: detached /dev/%s, which the run left attached", l)
			}
		}
		for _, p := range problems {
			t.Errorf("teardown: %s", p)
		}
		if len(problems) == 0 {
			if err := os.RemoveAll(root); err != nil {
				t.Errorf("remove %s: %v", root, err)
			}
		}
		t.Logf("teardown: %.1f s", time.Since(begin).Seconds())
		t.Logf("scenario steps:\n%s\ntotal %.1f s", strings.Join(r.steps, "\n"), time.Since(r.start).Seconds())
	})

	r.step("start etcd, kube-apiserver, controller manager, scheduler, containerd, kubelet", true, func(t *testing.T) {
		c.pki(t)
		c.configure(t)
		c.up(t)
		scheme := k8sruntime.NewScheme()
		must(t, clientgoscheme.AddToScheme(scheme))
		must(t, v1alpha1.AddToScheme(scheme))
		must(t, apiextensionsv1.AddToScheme(scheme))
		cl, err := client.New(c.config, client.Options{Scheme: scheme})
		must(t, err)
		r.cl = cl
	})
	r.step("node Ready", true, func(t *testing.T) {
		c.waitFor(t, "node "+c.node+" Ready", 120*time.Second, "kubelet", func() error {
			var n corev1.Node
			if err := r.cl.Get(context.Background(), client.ObjectKey{Name: c.node}, &n); err != nil {
				return err
			}
			for _, cond := range n.Status.Conditions {
				if cond.Type == corev1.NodeReady {
					if cond.Status == corev1.ConditionTrue {
						return nil
					}
					return fmt.Errorf("Ready=%s: %s", cond.Status, cond.Message)
				}
			}
			return fmt.Errorf("no Ready condition")
		})
	})

	manifests := c.readObjects(t, filepath.Join(repo, "deploy", "manifests", "*.yaml"))
	snapshotController := c.readObjects(t, filepath.Join(repo, "deploy", "snapshot-controller", "*.yaml"))
	r.step("import images: drover (make image), sidecars, sandbox, workload", true, func(t *testing.T) {
		sidecars := map[string]string{}
		for _, o := range append(append([]*unstructured.Unstructured{}, manifests...), snapshotController...) {
			for _, img := range images(o) {
				if strings.HasPrefix(img, "registry.k8s.io/sig-storage/") {
					name := strings.SplitN(strings.TrimPrefix(img, "registry.k8s.io/sig-storage/"), ":", 2)[0]
					p := filepath.Join(bin, name)
					if _, err := os.Stat(p); err != nil {
						testenv.Unavailable(t, "%s (for image %s) not found: run make k8s-e2e-bins", p, img)
					}
					sidecars[img] = p
				}
			}
		}
		c.images(t, droverImage, sidecars)
	})

	r.step("apply CRDs (Drover's, snapshots'), deploy/manifests, snapshot controller, StorageClass", true, func(t *testing.T) {
		crds := append(c.readObjects(t, filepath.Join(repo, "deploy", "crds", "*.yaml")),
			c.readObjects(t, filepath.Join(repo, "deploy", "snapshot-controller", "crds", "*.yaml"))...)
		c.applyCRDs(t, r.cl, crds)
		for _, o := range append(manifests, snapshotController...) {
			c.adapt(t, o)
			// One node: a volume's replicas may share it (on different
			// disks), which are directories on one filesystem the machine
			// shares with everything else (it may be fuller than the
			// default 25% minimum free allows).
			if v, ok := e2eSettings[o.GetName()]; ok && o.GetKind() == "Setting" {
				o.Object["value"] = v
			}
			apply(t, r.cl, o)
		}
		for _, o := range c.readObjects(t, filepath.Join(repo, "deploy", "examples", "*.yaml")) {
			switch o.GetKind() {
			case "StorageClass", "Secret", "VolumeSnapshotClass", "VolumeAttributesClass":
				apply(t, r.cl, o)
			}
		}
	})

	r.step("drover manager, agent and CSI sidecars Running from the image; Drover Node registered", true, func(t *testing.T) {
		r.waitContainersRunning(droverNS, "app.kubernetes.io/component=manager", "manager", "csi-provisioner", "csi-attacher", "csi-resizer", "csi-snapshotter")
		r.waitContainersRunning(droverNS, "app.kubernetes.io/component=agent", "agent")
		r.waitContainersRunning("kube-system", "app.kubernetes.io/name=snapshot-controller", "snapshot-controller")
		c.waitFor(t, "Drover Node "+c.node+" with its disks", 120*time.Second, "kubelet", func() error {
			var n v1alpha1.Node
			if err := r.cl.Get(context.Background(), client.ObjectKey{Namespace: droverNS, Name: c.node}, &n); err != nil {
				return err
			}
			if len(n.Spec.Disks) != len(diskNames) {
				return fmt.Errorf("node has %d disks, want %d", len(n.Spec.Disks), len(diskNames))
			}
			return nil
		})
	})

	r.step("CSI driver Running and registered with the kubelet (CSINode)", true, func(t *testing.T) {
		r.waitContainersRunning(droverNS, "app.kubernetes.io/component=manager", "csi-controller")
		r.waitContainersRunning(droverNS, "app.kubernetes.io/component=agent", "csi-node")
		c.waitFor(t, "CSINode "+c.node+" lists "+driverName, 120*time.Second, "kubelet", func() error {
			var cn storagev1.CSINode
			if err := r.cl.Get(context.Background(), client.ObjectKey{Name: c.node}, &cn); err != nil {
				return err
			}
			for _, d := range cn.Spec.Drivers {
				if d.Name == driverName {
					return nil
				}
			}
			return fmt.Errorf("CSINode lists %d drivers, not %s", len(cn.Spec.Drivers), driverName)
		})
	})

	r.scenario()
}

// e2eSettings are the Settings the one-node cluster changes.
var e2eSettings = map[string]string{
	"replica-node-soft-anti-affinity":      "true",
	"storage-minimal-available-percentage": "5",
}

// images lists the container images of a workload object.
func images(o *unstructured.Unstructured) []string {
	containers, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
	var out []string
	for _, ci := range containers {
		if img, ok := ci.(map[string]any)["image"].(string); ok {
			out = append(out, img)
		}
	}
	return out
}

// waitContainersRunning waits until a Pod matching selector in ns has
// every named container running.
func (r *run) waitContainersRunning(ns, selector string, names ...string) {
	r.t.Helper()
	sel, err := metav1.ParseToLabelSelector(selector)
	must(r.t, err)
	ls, err := metav1.LabelSelectorAsSelector(sel)
	must(r.t, err)
	r.c.waitFor(r.t, fmt.Sprintf("containers %v of a Pod %s in %s running", names, selector, ns), 180*time.Second, "kubelet", func() error {
		var pods corev1.PodList
		if err := r.cl.List(context.Background(), &pods, client.InNamespace(ns), client.MatchingLabelsSelector{Selector: ls}); err != nil {
			return err
		}
		if len(pods.Items) == 0 {
			return fmt.Errorf("no Pod yet")
		}
		var last error
		for _, p := range pods.Items {
			if last = containersRunning(&p, names); last == nil {
				return nil
			}
		}
		return last
	})
}

func containersRunning(p *corev1.Pod, names []string) error {
	state := map[string]corev1.ContainerStatus{}
	for _, s := range p.Status.ContainerStatuses {
		state[s.Name] = s
	}
	for _, n := range names {
		s, ok := state[n]
		if !ok {
			return fmt.Errorf("pod %s: no status of container %s (phase %s)", p.Name, n, p.Status.Phase)
		}
		if s.State.Running == nil {
			return fmt.Errorf("pod %s: container %s not running: %+v (restarts %d)", p.Name, n, s.State, s.RestartCount)
		}
	}
	return nil
}

// podLog is the current log of a Pod's container, from the kubelet's
// podLogsDir (kubectl logs needs the kubelet reachable from the API
// server; here it listens on loopback), without the CRI line prefixes.
func (r *run) podLog(ns, name, container string) string {
	var p corev1.Pod
	if err := r.cl.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &p); err != nil {
		return ""
	}
	dir := r.c.path("pod-logs", fmt.Sprintf("%s_%s_%s", ns, name, p.UID), container)
	return readCRILog(dir)
}

// readCRILog reads the newest N.log of a container's log directory.
func readCRILog(dir string) string {
	files, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	best, bestN := "", -1
	for _, f := range files {
		if n, err := strconv.Atoi(strings.TrimSuffix(filepath.Base(f), ".log")); err == nil && n > bestN {
			best, bestN = f, n
		}
	}
	if best == "" {
		return ""
	}
	fh, err := os.Open(best)
	if err != nil {
		return ""
	}
	defer fh.Close()
	var b strings.Builder
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		// TIMESTAMP STREAM TAG MESSAGE
		f := strings.SplitN(sc.Text(), " ", 4)
		if len(f) == 4 {
			b.WriteString(f[3])
		}
		b.WriteString("\n")
	}
	return b.String()
}

// diagnose prints what a failed run needs: Pods and their container
// states, recent events, the tails of the components' logs and the
// Drover containers' logs; and copies the logs to DROVER_TEST_ARTIFACTS.
func (r *run) diagnose() {
	t := r.t
	if r.cl != nil {
		ctx := context.Background()
		var pods corev1.PodList
		if err := r.cl.List(ctx, &pods); err == nil {
			for _, p := range pods.Items {
				t.Logf("pod %s/%s on %q: %s", p.Namespace, p.Name, p.Spec.NodeName, p.Status.Phase)
				for _, s := range p.Status.ContainerStatuses {
					t.Logf("  container %s: ready=%v restarts=%d state=%+v last=%+v", s.Name, s.Ready, s.RestartCount, s.State, s.LastTerminationState)
					{
						t.Logf("  --- log of %s:\n%s", s.Name, tail(r.podLog(p.Namespace, p.Name, s.Name), 12))
					}
				}
			}
		}
		var events corev1.EventList
		if err := r.cl.List(ctx, &events); err == nil {
			sort.Slice(events.Items, func(i, j int) bool { return events.Items[i].LastTimestamp.Before(&events.Items[j].LastTimestamp) })
			var lines []string
			for _, e := range events.Items {
				if e.Type != corev1.EventTypeNormal {
					lines = append(lines, fmt.Sprintf("%s %s/%s %s: %s", e.Type, e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message))
				}
			}
			t.Logf("warning events:\n%s", tail(strings.Join(lines, "\n"), 40))
		}
	}
	for _, n := range processes {
		t.Log(r.c.logTail(n, 8))
	}
	if art := os.Getenv("DROVER_TEST_ARTIFACTS"); art != "" {
		dst := filepath.Join(art, "TestEndToEnd")
		_ = os.MkdirAll(dst, 0o755)
		for _, d := range []string{"logs", "pod-logs"} {
			_ = exec.Command("cp", "-r", r.c.path(d), dst).Run()
		}
		t.Logf("logs copied to %s", dst)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// --- the scenario on Drover volumes ---

func quantity(s string) resource.Quantity { return resource.MustParse(s) }

func (r *run) pvc(name, size string, dataSource *corev1.TypedLocalObjectReference) *corev1.PersistentVolumeClaim {
	sc := storageClass
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: appNS, Name: name},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: &sc,
			DataSource:       dataSource,
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: quantity(size)}},
		},
	}
}

// workloadPod is a Pod running the workload image on claim at /data:
// init (if any) first, then main.
func workloadPod(name, claim string, init, main []string) *corev1.Pod {
	grace := int64(15)
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: appNS, Name: name},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name: "app", Image: workloadImage, ImagePullPolicy: corev1.PullNever, Args: main,
				VolumeMounts:             []corev1.VolumeMount{{Name: "data", MountPath: "/data"}},
				TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
			}},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}},
		},
	}
	if init != nil {
		p.Spec.InitContainers = []corev1.Container{{
			Name: "init", Image: workloadImage, ImagePullPolicy: corev1.PullNever, Args: init,
			VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}},
		}}
	}
	return p
}

func (r *run) create(obj client.Object) {
	r.t.Helper()
	if err := r.cl.Create(context.Background(), obj); err != nil {
		r.t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
	}
}

// waitBound waits for a claim to be Bound and returns its PV.
func (r *run) waitBound(name string) *corev1.PersistentVolume {
	r.t.Helper()
	var pv corev1.PersistentVolume
	r.c.waitFor(r.t, "PVC "+name+" Bound", 180*time.Second, "kube-controller-manager", func() error {
		var pvc corev1.PersistentVolumeClaim
		if err := r.cl.Get(context.Background(), client.ObjectKey{Namespace: appNS, Name: name}, &pvc); err != nil {
			return err
		}
		if pvc.Status.Phase != corev1.ClaimBound {
			return fmt.Errorf("phase %s", pvc.Status.Phase)
		}
		return r.cl.Get(context.Background(), client.ObjectKey{Name: pvc.Spec.VolumeName}, &pv)
	})
	return &pv
}

// waitVolumeHealthy waits for the Drover Volume behind a PV to have all
// its replicas ready and returns it.
func (r *run) waitVolumeHealthy(pv *corev1.PersistentVolume, replicas int32) *v1alpha1.Volume {
	r.t.Helper()
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != driverName {
		r.t.Fatalf("PV %s is not a %s volume: %+v", pv.Name, driverName, pv.Spec.PersistentVolumeSource)
	}
	var vol v1alpha1.Volume
	r.c.waitFor(r.t, "Drover Volume "+pv.Spec.CSI.VolumeHandle+" with its replicas", 180*time.Second, "kubelet", func() error {
		if err := r.cl.Get(context.Background(), client.ObjectKey{Namespace: droverNS, Name: pv.Spec.CSI.VolumeHandle}, &vol); err != nil {
			return err
		}
		var reps v1alpha1.ReplicaList
		if err := r.cl.List(context.Background(), &reps, client.InNamespace(droverNS)); err != nil {
			return err
		}
		n := int32(0)
		for _, rep := range reps.Items {
			if rep.Spec.VolumeName == vol.Name {
				n++
			}
		}
		if n < replicas {
			return fmt.Errorf("%d replicas of %d", n, replicas)
		}
		if vol.Status.State == v1alpha1.VolumeAttached && vol.Status.Robustness != v1alpha1.RobustnessHealthy {
			return fmt.Errorf("attached and %s (%d ready)", vol.Status.Robustness, vol.Status.ReplicasReady)
		}
		return nil
	})
	return &vol
}

// waitPodPhase waits for a Pod to reach phase and returns it.
func (r *run) waitPodPhase(name string, phase corev1.PodPhase, timeout time.Duration) *corev1.Pod {
	r.t.Helper()
	var p corev1.Pod
	r.c.waitFor(r.t, "Pod "+name+" "+string(phase), timeout, "kubelet", func() error {
		if err := r.cl.Get(context.Background(), client.ObjectKey{Namespace: appNS, Name: name}, &p); err != nil {
			return err
		}
		if p.Status.Phase == phase {
			return nil
		}
		if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
			r.t.Fatalf("Pod %s ended %s, not %s; log:\n%s", name, p.Status.Phase, phase, r.podLog(appNS, name, "app"))
		}
		return fmt.Errorf("phase %s", p.Status.Phase)
	})
	return &p
}

// deleteAndWait deletes an object and waits until it is gone.
func (r *run) deleteAndWait(obj client.Object, timeout time.Duration) {
	r.t.Helper()
	if err := r.cl.Delete(context.Background(), obj); err != nil && !apierrors.IsNotFound(err) {
		r.t.Fatalf("delete %T %s: %v", obj, obj.GetName(), err)
	}
	r.c.waitFor(r.t, fmt.Sprintf("%T %s gone", obj, obj.GetName()), timeout, "kubelet", func() error {
		err := r.cl.Get(context.Background(), client.ObjectKeyFromObject(obj), obj)
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (%v)", err)
	})
}

// verifyPod runs a Pod that checks every file's checksum on claim and
// returns how many files it checked; with hold the Pod keeps the volume
// in use (Running) until the caller deletes it, else it is deleted here.
func (r *run) verifyPod(name, claim string, hold bool) int {
	r.t.Helper()
	args := []string{"verify", "/data"}
	if hold {
		args = append(args, "hold")
	}
	r.create(workloadPod(name, claim, nil, args))
	var n int
	verified := func() error {
		for _, line := range strings.Split(r.podLog(appNS, name, "app"), "\n") {
			if _, err := fmt.Sscanf(line, "verified %d files", &n); err == nil {
				return nil
			}
		}
		return fmt.Errorf("not verified yet")
	}
	if hold {
		r.waitPodPhase(name, corev1.PodRunning, 240*time.Second)
		r.c.waitFor(r.t, "Pod "+name+" verified the files", 120*time.Second, "kubelet", func() error {
			var p corev1.Pod
			if err := r.cl.Get(context.Background(), client.ObjectKey{Namespace: appNS, Name: name}, &p); err == nil && p.Status.Phase == corev1.PodFailed {
				r.t.Fatalf("Pod %s failed; log:\n%s", name, r.podLog(appNS, name, "app"))
			}
			return verified()
		})
		return n
	}
	r.waitPodPhase(name, corev1.PodSucceeded, 240*time.Second)
	if err := verified(); err != nil || n == 0 {
		r.t.Fatalf("Pod %s verified nothing; log:\n%s", name, r.podLog(appNS, name, "app"))
	}
	r.deleteAndWait(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: appNS, Name: name}}, 120*time.Second)
	return n
}

// lastSize is the last filesystem size a churn Pod reported.
func (r *run) lastSize(name string) (size int64, files int) {
	for _, line := range strings.Split(r.podLog(appNS, name, "app"), "\n") {
		var s int64
		var f int
		if _, err := fmt.Sscanf(line, "size %d files %d", &s, &f); err == nil {
			size, files = s, f
		}
	}
	return size, files
}

// stagedMount finds the staging mount of a volume on the host: its
// filesystem type and source device.
func (r *run) stagedMount(volumeHandle string) (fstype, source string, err error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", "", err
	}
	staging := r.c.path("kubelet", "plugins", "kubernetes.io", "csi", driverName)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 10 || !strings.HasPrefix(f[4], staging) || !strings.HasSuffix(f[4], "/globalmount") {
			continue
		}
		// The fields after " - " are the type and the source.
		for i, x := range f {
			if x == "-" && i+2 < len(f) {
				return f[i+1], f[i+2], nil
			}
		}
	}
	return "", "", fmt.Errorf("no staging mount under %s", staging)
}

func (r *run) scenario() {
	cl := r.cl
	ctx := context.Background()
	var pv *corev1.PersistentVolume
	var vol *v1alpha1.Volume
	written := 0

	r.step("5 GiB RWO PVC → PV provisioned and bound, Drover Volume with 3 replicas", true, func(t *testing.T) {
		r.create(r.pvc("data", "5Gi", nil))
		pv = r.waitBound("data")
		vol = r.waitVolumeHealthy(pv, 3)
		if got := pv.Spec.Capacity.Storage().Value(); got < 5<<30 {
			t.Fatalf("PV capacity %d, want 5 GiB", got)
		}
		t.Logf("PV %s → Drover Volume %s: %d replicas wanted, size %d", pv.Name, vol.Name, *vol.Spec.NumberOfReplicas, vol.Spec.Size)
	})

	r.step("Pod writes files and checksums: attached, staged ext4 on a loop device, published", true, func(t *testing.T) {
		r.create(workloadPod("writer", "data", []string{"write", "/data", "32"}, []string{"churn", "/data"}))
		r.waitPodPhase("writer", corev1.PodRunning, 240*time.Second)
		var vas storagev1.VolumeAttachmentList
		must(t, cl.List(ctx, &vas))
		attached := false
		for _, va := range vas.Items {
			if va.Spec.Source.PersistentVolumeName != nil && *va.Spec.Source.PersistentVolumeName == pv.Name && va.Status.Attached {
				attached = true
				t.Logf("VolumeAttachment %s: attached to %s", va.Name, va.Spec.NodeName)
			}
		}
		if !attached {
			t.Fatalf("no attached VolumeAttachment for PV %s", pv.Name)
		}
		fstype, source, err := r.stagedMount(pv.Spec.CSI.VolumeHandle)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("staged: %s on %s", fstype, source)
		if fstype != "ext4" {
			t.Errorf("staged filesystem %s, want ext4", fstype)
		}
		// Let it churn a little, then stop it: it finishes its file.
		time.Sleep(2 * time.Second)
		r.deleteAndWait(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: appNS, Name: "writer"}}, 120*time.Second)
	})

	r.step("new Pod on the same PVC: files intact", true, func(t *testing.T) {
		written = r.verifyPod("reader", "data", true)
		t.Logf("%d files verified", written)
		if written < 32 {
			t.Fatalf("verified %d files, wrote at least 32", written)
		}
	})

	// The snapshot is taken while the reader holds the volume: a Drover
	// snapshot is taken by the volume's engine, which runs only while the
	// volume is attached.
	r.step("VolumeSnapshot (backup class, volume in use) → restored PVC → third Pod reads it", false, func(t *testing.T) {
		reader := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: appNS, Name: "reader"}}
		defer r.deleteAndWait(reader, 120*time.Second)
		// A volume is filled only from a backup (not yet from a Drover
		// snapshot): the class takes backups to a directory target on
		// the node, under the agent's data directory.
		// The directory exists first (a target is never created), open
		// to the manager's user, which lists and deletes backups.
		must(t, os.MkdirAll(r.c.path("drover", "backups"), 0o777))
		must(t, os.Chmod(r.c.path("drover", "backups"), 0o1777))
		r.create(&v1alpha1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Namespace: droverNS, Name: "default"},
			Spec: v1alpha1.BackupTargetSpec{URL: r.c.path("drover", "backups")}})
		backupClass := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
			"metadata": map[string]any{"name": "drover-backup"}, "driver": driverName, "deletionPolicy": "Delete",
			"parameters": map[string]any{"type": "backup"},
		}}
		r.create(backupClass)
		snap := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
			"metadata": map[string]any{"name": "data-snap", "namespace": appNS},
			"spec": map[string]any{"volumeSnapshotClassName": "drover-backup",
				"source": map[string]any{"persistentVolumeClaimName": "data"}},
		}}
		r.create(snap)
		r.c.waitFor(t, "VolumeSnapshot readyToUse", 180*time.Second, "kubelet", func() error {
			if err := cl.Get(ctx, client.ObjectKeyFromObject(snap), snap); err != nil {
				return err
			}
			if ready, _, _ := unstructured.NestedBool(snap.Object, "status", "readyToUse"); !ready {
				msg, _, _ := unstructured.NestedString(snap.Object, "status", "error", "message")
				return fmt.Errorf("not ready %s", msg)
			}
			return nil
		})
		r.deleteAndWait(reader, 120*time.Second)
		apiGroup := "snapshot.storage.k8s.io"
		r.create(r.pvc("restored", "5Gi", &corev1.TypedLocalObjectReference{APIGroup: &apiGroup, Kind: "VolumeSnapshot", Name: "data-snap"}))
		rpv := r.waitBound("restored")
		r.waitVolumeHealthy(rpv, 3)
		if n := r.verifyPod("restored-reader", "restored", false); n != written {
			t.Fatalf("restored volume holds %d files, the snapshot %d", n, written)
		}
	})

	// Growing a mounted ext4 (resize2fs, EXT4_IOC_RESIZE_FS) needs
	// CAP_SYS_RESOURCE, which this machine's sandbox withholds even from
	// privileged containers; growing a mounted xfs (xfs_growfs) does not,
	// so online expansion runs on an xfs volume of its own.
	r.step("expand an xfs PVC online 5 → 6 GiB: the filesystem grows in the Pod", false, func(t *testing.T) {
		var sc storagev1.StorageClass
		must(t, cl.Get(ctx, client.ObjectKey{Name: storageClass}, &sc))
		xfs := sc.DeepCopy()
		xfs.ObjectMeta = metav1.ObjectMeta{Name: storageClass + "-xfs"}
		xfs.Parameters["csi.storage.k8s.io/fstype"] = "xfs"
		r.create(xfs)
		claim := r.pvc("grow", "5Gi", nil)
		claim.Spec.StorageClassName = &xfs.Name
		r.create(claim)
		r.waitBound("grow")
		grower := workloadPod("grower", "grow", nil, []string{"churn", "/data"})
		r.create(grower)
		defer r.deleteAndWait(grower, 120*time.Second)
		r.waitPodPhase("grower", corev1.PodRunning, 240*time.Second)
		var before int64
		r.c.waitFor(t, "grower reports its size", 30*time.Second, "kubelet", func() error {
			if before, _ = r.lastSize("grower"); before == 0 {
				return fmt.Errorf("no size yet")
			}
			return nil
		})
		var pvc corev1.PersistentVolumeClaim
		must(t, cl.Get(ctx, client.ObjectKey{Namespace: appNS, Name: "grow"}, &pvc))
		pvc.Spec.Resources.Requests[corev1.ResourceStorage] = quantity("6Gi")
		must(t, cl.Update(ctx, &pvc))
		r.c.waitFor(t, "filesystem grown in the Pod", 180*time.Second, "kubelet", func() error {
			after, _ := r.lastSize("grower")
			if after <= before+512<<20 {
				return fmt.Errorf("size %d, was %d", after, before)
			}
			return nil
		})
		after, _ := r.lastSize("grower")
		t.Logf("xfs filesystem %d → %d bytes in the running Pod", before, after)
	})

	r.step("kill a replica while the Pod writes: rebuilt, files intact", false, func(t *testing.T) {
		r.create(workloadPod("churner", "data", nil, []string{"churn", "/data"}))
		r.waitPodPhase("churner", corev1.PodRunning, 240*time.Second)
		r.c.waitFor(t, "churner writes", 30*time.Second, "kubelet", func() error {
			if _, n := r.lastSize("churner"); n < 10 {
				return fmt.Errorf("%d files", n)
			}
			return nil
		})
		replicasOf := func() map[string]v1alpha1.Replica {
			var reps v1alpha1.ReplicaList
			must(t, cl.List(ctx, &reps, client.InNamespace(droverNS)))
			out := map[string]v1alpha1.Replica{}
			for _, rep := range reps.Items {
				if rep.Spec.VolumeName == vol.Name {
					out[rep.Name] = rep
				}
			}
			return out
		}
		before := replicasOf()
		var victim *v1alpha1.Replica
		for _, rep := range before {
			victim = &rep
			break
		}
		if victim == nil {
			t.Fatalf("no replica of %s", vol.Name)
		}
		_, filesBefore := r.lastSize("churner")
		r.deleteAndWait(victim, 120*time.Second)
		t.Logf("deleted replica %s (on %s) with the Pod at %d files", victim.Name, victim.Spec.DiskName, filesBefore)
		r.c.waitFor(t, "a new replica rebuilt (mode RW) and the volume healthy", 180*time.Second, "kubelet", func() error {
			var eng v1alpha1.EngineList
			must(t, cl.List(ctx, &eng, client.InNamespace(droverNS)))
			modes := map[string]v1alpha1.ReplicaMode{}
			for _, e := range eng.Items {
				if e.Spec.VolumeName == vol.Name {
					modes = e.Status.ReplicaModeMap
				}
			}
			rw, rebuilt := 0, false
			for name := range replicasOf() {
				if modes[name] == v1alpha1.ReplicaModeRW {
					rw++
					if _, old := before[name]; !old {
						rebuilt = true
					}
				}
			}
			if rw >= 3 && rebuilt {
				return nil
			}
			return fmt.Errorf("%d replicas RW", rw)
		})
		r.c.waitFor(t, "the Pod still writes", 60*time.Second, "kubelet", func() error {
			if _, n := r.lastSize("churner"); n <= filesBefore+10 {
				return fmt.Errorf("%d files, had %d", n, filesBefore)
			}
			return nil
		})
	})

	r.step("restart the agent Pod while the Pod writes: rebuilt, files intact", false, func(t *testing.T) {
		var pods corev1.PodList
		must(t, cl.List(ctx, &pods, client.InNamespace(droverNS), client.MatchingLabels{"app.kubernetes.io/component": "agent"}))
		if len(pods.Items) != 1 {
			t.Fatalf("%d agent Pods", len(pods.Items))
		}
		old := pods.Items[0]
		_, filesBefore := r.lastSize("churner")
		r.deleteAndWait(&old, 120*time.Second)
		r.waitContainersRunning(droverNS, "app.kubernetes.io/component=agent", "agent", "csi-node")
		r.waitVolumeHealthy(pv, 3)
		r.c.waitFor(t, "the Pod writes again", 120*time.Second, "kubelet", func() error {
			if _, n := r.lastSize("churner"); n <= filesBefore+5 {
				return fmt.Errorf("%d files, had %d", n, filesBefore)
			}
			return nil
		})
		// How long the staged volume's IO waited: the relay logs each
		// reconnection with the time the connection was down.
		logs, _ := filepath.Glob(r.c.path("drover", "csi", "*.fuse.log"))
		for _, l := range logs {
			b, _ := os.ReadFile(l)
			for _, line := range strings.Split(string(b), "\n") {
				if strings.Contains(line, "reconnected") || strings.Contains(line, "replayed") {
					t.Logf("%s: %s", filepath.Base(l), line)
				}
			}
		}
		r.deleteAndWait(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: appNS, Name: "churner"}}, 120*time.Second)
		n := r.verifyPod("reader-2", "data", false)
		t.Logf("%d files verified after the replica kill and the agent restart", n)
		if n <= written {
			t.Fatalf("verified %d files, had %d before the churn", n, written)
		}
	})

	r.step("delete everything: nothing left in the API or on disk", true, func(t *testing.T) {
		var pods corev1.PodList
		must(t, cl.List(ctx, &pods, client.InNamespace(appNS)))
		for i := range pods.Items {
			r.deleteAndWait(&pods.Items[i], 120*time.Second)
		}
		// Delete the rest at once, then wait for all of it, so that
		// whatever stays behind is named together.
		snap := &unstructured.Unstructured{}
		snap.SetAPIVersion("snapshot.storage.k8s.io/v1")
		snap.SetKind("VolumeSnapshot")
		snap.SetNamespace(appNS)
		snap.SetName("data-snap")
		for _, o := range []client.Object{snap,
			&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: appNS, Name: "restored"}},
			&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: appNS, Name: "grow"}},
			&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: appNS, Name: "data"}}} {
			if err := cl.Delete(ctx, o); err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("delete %s: %v", o.GetName(), err)
			}
		}
		list := func(gvk string) *unstructured.UnstructuredList {
			l := &unstructured.UnstructuredList{}
			l.SetAPIVersion("snapshot.storage.k8s.io/v1")
			l.SetKind(gvk)
			return l
		}
		r.c.waitFor(t, "no claims, snapshots, PVs, VolumeAttachments or Drover objects left", 180*time.Second, "kubelet", func() error {
			var pvcs corev1.PersistentVolumeClaimList
			var pvs corev1.PersistentVolumeList
			var vas storagev1.VolumeAttachmentList
			var vols v1alpha1.VolumeList
			var reps v1alpha1.ReplicaList
			var engs v1alpha1.EngineList
			var snaps v1alpha1.SnapshotList
			var backups v1alpha1.BackupList
			vss, vscs := list("VolumeSnapshotList"), list("VolumeSnapshotContentList")
			lists := []struct {
				name string
				l    client.ObjectList
				n    func() int
			}{
				{"PVCs", &pvcs, func() int { return len(pvcs.Items) }},
				{"VolumeSnapshots", vss, func() int { return len(vss.Items) }},
				{"VolumeSnapshotContents", vscs, func() int { return len(vscs.Items) }},
				{"PVs", &pvs, func() int { return len(pvs.Items) }},
				{"VolumeAttachments", &vas, func() int { return len(vas.Items) }},
				{"Volumes", &vols, func() int { return len(vols.Items) }},
				{"Replicas", &reps, func() int { return len(reps.Items) }},
				{"Engines", &engs, func() int { return len(engs.Items) }},
				{"Snapshots", &snaps, func() int { return len(snaps.Items) }},
				{"Backups", &backups, func() int { return len(backups.Items) }},
			}
			var left []string
			for _, x := range lists {
				if err := cl.List(ctx, x.l); err != nil {
					return err
				}
				if n := x.n(); n > 0 {
					left = append(left, fmt.Sprintf("%d %s", n, x.name))
				}
			}
			if len(left) > 0 {
				return fmt.Errorf("left: %s", strings.Join(left, ", "))
			}
			return nil
		})
		r.c.waitFor(t, "no replica data, staging or loop device left", 60*time.Second, "kubelet", func() error {
			for _, d := range diskNames {
				entries, _ := os.ReadDir(r.c.path("drover", d))
				for _, e := range entries {
					if strings.HasPrefix(e.Name(), "replicas") {
						sub, _ := os.ReadDir(r.c.path("drover", d, e.Name()))
						if len(sub) > 0 {
							return fmt.Errorf("%s/%s holds %d entries", d, e.Name(), len(sub))
						}
					}
				}
			}
			if _, _, err := r.stagedMount(""); err == nil {
				return fmt.Errorf("a staging mount is left")
			}
			// The node service's loop devices show their backing file as
			// seen inside the FUSE mount ("/disk"): any attached since the
			// cluster started is one it left.
			if left := r.c.newLoops(); len(left) > 0 {
				return fmt.Errorf("loop devices left attached: %v", left)
			}
			if left := attachmentProcesses(); len(left) > 0 {
				return fmt.Errorf("attachment processes (nbdfuse, nbd-relay) left: %v", left)
			}
			// The node service's per-volume state: VOL.json, VOL.fuse
			// (with .pid and .log); its bin/ (the relay's binary) stays.
			entries, _ := os.ReadDir(r.c.path("drover", "csi"))
			for _, e := range entries {
				if e.Name() != "bin" {
					return fmt.Errorf("node service state left: %s", e.Name())
				}
			}
			return nil
		})
	})
}
